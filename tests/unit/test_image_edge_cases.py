"""Image decoding as a demanding user meets it: odd but valid files, files that lie, and the
reasons given for refused rows. Images are made in memory; PIL is the reference."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from sparkfeed.decode import ImageDecode, ImageDecoder

BACKENDS = ["dali", "pil"]


def _decoder(backend="dali", **kw) -> ImageDecoder:
    return ImageDecoder(ImageDecode(device="cpu", backend=backend, **kw), max_batch_size=16, seed=0)


def _gradient(w: int, h: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 128)], -1).astype(np.uint8)


def _save(a: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_declaring(w: int, h: int) -> bytes:
    """A PNG whose IHDR declares w x h pixels (and holds none)."""
    head = _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + head + _chunk(b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b"")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_strip_over_max_pixels_is_one_failure_with_one_reason(backend):
    """A 50,000,000 x 2 PNG is over `max_pixels` as stored and once resized: before, the row came
    back twice in `failures`, and the loader's message said "2 bad sample(s)" for one."""
    good = _save(_gradient(40, 30), "PNG")
    res = _decoder(backend, size=16).decode([_png_declaring(50_000_000, 2), good])
    assert res.ok_rows.tolist() == [1]
    assert [r for r, _ in res.failures] == [0]
    assert "over max_pixels=89478485" in res.failures[0][1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("w,h", [(0, 0), (40, 0), (0, 30)])
def test_an_image_declaring_no_pixels_is_refused_from_its_header(backend, w, h):
    """A PNG (or JPEG) whose header declares a zero side used to reach the decoder: DALI failed
    the batch (bisected) with "nvImageCodec failure: '#2'" and PIL named a BytesIO's address."""
    jpeg = bytearray(_save(_gradient(40, 30), "JPEG", quality=90))
    sof = jpeg.find(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", h, w)
    good = _save(_gradient(40, 30), "JPEG", quality=90)
    res = _decoder(backend, size=16).decode([_png_declaring(w, h), bytes(jpeg), good])
    assert res.ok_rows.tolist() == [2]
    assert res.failures == tuple((r, f"image is {w}x{h}: its header declares no pixels; refused before decoding")
                                 for r in (0, 1))


def test_pil_reasons_do_not_carry_a_memory_address():
    """A PNG whose IHDR reads but that PIL cannot identify (a bit depth of 3, its CRC right; one
    failing its CRC is refused as damaged first, tests/unit/test_decode_verdicts.py): PIL's
    reason was "cannot identify image file <_io.BytesIO object at 0x7f...>", different on every
    run and naming no image."""
    good = _save(_gradient(40, 30), "PNG")
    broken = bytearray(good)
    broken[24] = 3  # the IHDR's bit depth
    broken[29:33] = zlib.crc32(bytes(broken[12:29])).to_bytes(4, "big")
    res = _decoder("pil", size=16).decode([bytes(broken), good])
    assert res.ok_rows.tolist() == [1] and [r for r, _ in res.failures] == [0]
    assert "0x" not in res.failures[0][1] and "BytesIO" not in res.failures[0][1]
    assert res.failures[0][1].startswith("PIL could not decode the image (not a recognised image")


def test_a_float_tiff_decodes_to_the_same_pixels_in_both_backends():
    """A 32-bit float grayscale TIFF (values 0..1): DALI scales it to 0..255; the PIL backend
    gave an all-black image (Pillow's "F" -> "RGB" conversion clips 0..1 to 0 and 1)."""
    gray = _gradient(40, 24)[..., 0]
    data = _save(gray.astype(np.float32) / 255, "TIFF")
    want = torch.from_numpy(np.repeat(gray[..., None], 3, -1)).int()
    for backend in BACKENDS:
        got = _decoder(backend, layout="NHWC").decode([data]).images[0].int()
        assert (got - want).abs().max() <= 1, backend


def _exif_after_pixels(a: np.ndarray, orientation: int) -> bytes:
    """A PNG whose eXIf chunk (an orientation tag) comes after its IDAT, as some writers put it."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    tiff = exif.tobytes()
    tiff = tiff[6:] if tiff.startswith(b"Exif\x00\x00") else tiff
    png = _save(a, "PNG")
    iend = png.rfind(b"IEND") - 4
    return png[:iend] + _chunk(b"eXIf", tiff) + png[iend:]


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_resized_crop_of_a_png_turned_by_an_exif_chunk_after_its_pixels(backend):
    """Both decoders turn a PNG upright by an eXIf chunk after IDAT, but the header check stopped
    looking at IDAT and drew the window on the stored size: squeezed in DALI, and cut partly
    outside the turned image (black) by the PIL backend."""
    turned = _exif_after_pixels(_gradient(96, 48), 6)
    with Image.open(io.BytesIO(turned)) as im:
        upright = ImageOps.exif_transpose(im).convert("RGB")
        assert upright.size == (48, 96)  # the reference turns it too
    buf = io.BytesIO()
    upright.save(buf, "PNG")
    keys = np.arange(8, dtype=np.int64)
    dec = _decoder(backend, size=24, crop="random_resized")
    got = dec.decode([turned] * 8, keys=keys).images.int()
    want = dec.decode([buf.getvalue()] * 8, keys=keys).images.int()
    assert (got - want).abs().max() <= 3


@pytest.mark.parametrize("kwargs,message", [
    ({"mean": (0.0,), "std": (float("nan"),)}, "`std` should be finite numbers, but got std=(nan,)"),
    ({"mean": (1.0, float("inf"), 3.0), "std": (1.0,)}, "`mean` should be finite numbers, but got mean=(1.0, inf, 3.0)"),
    ({"size": 8, "crop": "random_resized", "ratio": (1.0, float("inf"))},
     "`ratio` should be a pair of finite numbers, but got ratio=(1.0, inf)"),
])
def test_non_finite_normalisation_and_ranges_are_refused_when_the_spec_is_built(kwargs, message):
    """A NaN `std` made every pixel NaN and an infinite `ratio` drew windows from an infinite
    log-range, both silently: now refused with a sentence, like every other bad field."""
    with pytest.raises(ValueError) as e:
        ImageDecode(**kwargs)
    assert str(e.value) == message


def _with_app1(jpeg: bytes, exif: bytes, after_frame: bool = False) -> bytes:
    """`jpeg` with an APP1 segment holding `exif`, after SOI or after the frame header."""
    at = 2
    if after_frame:
        sof = jpeg.find(b"\xff\xc0")
        at = sof + 2 + int.from_bytes(jpeg[sof + 2:sof + 4], "big")
    return jpeg[:at] + b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif + jpeg[at:]


def _ifd(kind: int, value: bytes, count: int = 1) -> bytes:
    """A big-endian EXIF block whose IFD0 declares `count` entries and holds one: orientation."""
    entry = struct.pack(">HHI", 0x0112, kind, 1) + value
    return b"Exif\x00\x00MM\x00*" + (8).to_bytes(4, "big") + count.to_bytes(2, "big") + entry + b"\x00" * 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_resized_crop_of_a_jpeg_whose_exif_follows_its_frame_header(backend):
    """Both decoders turn a JPEG by an EXIF segment placed after the frame header; the header
    check stopped at the frame header and drew the window on the stored size."""
    stored = _gradient(96, 48)
    turned = _with_app1(_save(stored, "JPEG", quality=95), _ifd(3, b"\x00\x06\x00\x00"), after_frame=True)
    upright = _save(np.ascontiguousarray(np.rot90(stored, -1)), "PNG")
    keys = np.arange(8, dtype=np.int64)
    dec = _decoder(backend, size=24, crop="random_resized")
    got = dec.decode([turned] * 8, keys=keys).images.int()
    want = dec.decode([upright] * 8, keys=keys).images.int()
    assert (got - want).abs().max() <= 6


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # PIL's open reads the block too
@pytest.mark.parametrize("block", [_ifd(4, b"\x00\x00\x00\x06"), _ifd(3, b"\x00\x06\x00\x00", count=3)],
                         ids=["orientation-a-LONG", "directory-past-its-block"])
def test_a_malformed_orientation_tag_is_read_the_same_by_both_backends(block):
    """DALI ignores an orientation stored as a LONG, or in a directory whose entries run past the
    block; PIL's `exif_transpose` took both, so the PIL backend turned the image that DALI did
    not (another shape), and a random_resized window was drawn for a turn DALI never made."""
    data = _with_app1(_save(_gradient(40, 24), "JPEG", quality=95), block)
    keys = np.arange(4, dtype=np.int64)
    for kw in ({"layout": "NHWC"}, {"size": 16, "crop": "random_resized"}):
        dali = _decoder("dali", **kw).decode([data] * 4, keys=keys).images.int()
        pil = _decoder("pil", **kw).decode([data] * 4, keys=keys).images.int()
        assert dali.shape == pil.shape and (dali - pil).abs().max() <= 6, kw
    assert _decoder("pil", layout="NHWC").decode([data]).images.shape == (1, 24, 40, 3)  # as stored


def test_random_crops_of_exif_turned_photos_are_the_same_pixels_in_both_backends():
    """A photo tagged EXIF 5-8 is cropped after it is turned, where the crop's room is not the one
    its position was drawn for, so `pos * room` can fall just below a half: PIL rounded its
    float32 product (11.4999998 became 11.5, then 12) while DALI took 11, one pixel apart (2 of
    64 noise images over 4 epochs). PIL now places the crop in double precision, as DALI does."""
    rs = np.random.RandomState(1)
    images = []
    for _ in range(64):
        w, h = rs.randint(17, 90), rs.randint(17, 90)
        exif = Image.Exif()
        exif[0x0112] = int(rs.choice([5, 6, 7, 8]))
        images.append(_save(rs.randint(0, 255, (h, w, 3), np.uint8), "PNG", exif=exif.tobytes()))
    keys = np.arange(64) * 7919 + 3
    for epoch in range(4):
        out = []
        for backend in ("dali", "pil"):
            spec = ImageDecode(size=16, crop="random", resize=None, mirror=True, device="cpu", backend=backend)
            dec = ImageDecoder(spec, max_batch_size=64, seed=3)
            dec.set_epoch(epoch)
            out.append(dec.decode(images, keys=keys).images)
        assert torch.equal(out[0], out[1]), epoch


@pytest.mark.parametrize("ratio", [(50.0, 100.0), (2.0, 3.0)])
def test_a_random_resized_window_is_never_empty(ratio):
    """torchvision's fallback window (no attempt fits) of a 3 px wide image under ratio=(50, 100)
    was rint(3 / 50) = 0 rows high: DALI failed the row ('#2'), PIL stretched it from nothing.
    The window is at least a pixel each way, inside the image, and both backends agree."""
    from sparkfeed.crops import _keyed_window_uniforms, _random_resized_windows

    sizes = np.array([[w, h] for w in (1, 2, 3, 7, 5000) for h in (1, 2, 3, 7, 5000)])
    for epoch in range(20):
        u = _keyed_window_uniforms(1, epoch, np.arange(len(sizes)))
        x0, y0, cw, ch = _random_resized_windows(u, sizes, (0.5, 1.0), ratio).T
        assert ((cw >= 1) & (ch >= 1) & (x0 >= 0) & (y0 >= 0)).all()
        assert ((x0 + cw <= sizes[:, 0]) & (y0 + ch <= sizes[:, 1])).all()
    strip = _save(np.random.RandomState(0).randint(0, 255, (200, 3, 3), np.uint8), "PNG")
    out = [_decoder(b, size=16, crop="random_resized", ratio=ratio).decode([strip]) for b in ("dali", "pil")]
    assert out[0].failures == () and out[1].failures == ()
    assert int((out[0].images.int() - out[1].images.int()).abs().max()) <= 2  # resampling rounding


@pytest.mark.parametrize("kind, value", [(4, b"\x06\x00\x00\x00"), (1, b"\x06\x00\x00\x00"), (8, b"\x06\x00\x00\x00")],
                         ids=["LONG", "BYTE", "SSHORT"])
def test_an_orientation_of_another_type_is_read_as_dali_reads_it(kind, value):
    """DALI reads the orientation's first two value bytes in the block's byte order whatever the
    tag's type: a little-endian LONG, BYTE or SSHORT 6 turns the image (a big-endian LONG reads 0,
    above). sparkfeed took only SHORTs, so the PIL backend left such a photo as stored."""
    entry = struct.pack("<HHI", 0x0112, kind, 1) + value
    block = b"Exif\x00\x00II*\x00" + (8).to_bytes(4, "little") + (1).to_bytes(2, "little") + entry + b"\x00" * 4
    data = _with_app1(_save(_gradient(40, 24), "JPEG", quality=95), block)
    keys = np.arange(4, dtype=np.int64)
    for kw in ({"layout": "NHWC"}, {"size": 16, "crop": "random_resized"}):
        dali = _decoder("dali", **kw).decode([data] * 4, keys=keys).images.int()
        pil = _decoder("pil", **kw).decode([data] * 4, keys=keys).images.int()
        assert dali.shape == pil.shape and (dali - pil).abs().max() <= 6, kw
    assert _decoder("pil", layout="NHWC").decode([data]).images.shape == (1, 40, 24, 3)  # turned


def test_resized_sizes_round_as_dali_resizes():
    """`resized_sizes` (the PIL path's resize, the crop's room, the resize-bomb guard) is DALI's
    `resize_shorter` output size. It rounded half to even where DALI rounds half up (20x50 to a
    shorter side of 37: 37x92 against DALI's 37x93), so the PIL backend's image was a pixel
    shorter and its crops a pixel apart (31 of 3,843 sizes and targets tried)."""
    from nvidia.dali import fn, pipeline_def, types

    from sparkfeed.headers import resized_sizes

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def resize(t):
        enc = fn.external_source(name="enc", dtype=types.UINT8, ndim=1)
        return fn.resize(fn.decoders.image(enc, device="cpu", output_type=types.RGB), resize_shorter=t, antialias=True)

    pipes = {t: resize(t) for t in (16, 37, 224)}
    for pipe in pipes.values():
        pipe.build()
    for w, h in [(20, 50), (66, 64), (74, 64), (48, 97), (76, 64), (1, 3), (3, 1), (448, 333), (500, 375), (17, 17)]:
        data = np.frombuffer(_save(np.zeros((h, w, 3), np.uint8), "PNG"), np.uint8)
        for t, pipe in pipes.items():
            pipe.feed_input("enc", [data])
            (out,) = pipe.run()
            dali_h, dali_w = out.as_array().shape[1:3]
            (rw,), (rh,) = resized_sizes([w], [h], t)
            assert (int(rw), int(rh)) == (dali_w, dali_h), (w, h, t)
