"""The same bytes get the same verdict from both backends, under sparkfeed's own pixel limit.

* A PNG is judged as libpng (DALI's CPU decoder) judges it, by the PIL backend too: a critical
  chunk failing its CRC, an unknown critical chunk or a file ending before IEND is a bad row
  (an error, or a counted skip); an ancillary chunk failing its CRC is dropped and the image
  decodes. PIL alone decoded a PNG whose pixel data failed its CRC, and refused one whose text
  chunk did.
* `ImageDecode(max_pixels=)` is the one pixel limit for every format PIL opens: Pillow's own
  (`Image.MAX_IMAGE_PIXELS`, process-wide) refused other formats at 2x its value with its own
  message, whatever max_pixels said, and warned at 1x.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import sparkfeed
from sparkfeed.decode import ImageDecode, ImageDecoder
from sparkfeed.errors import CorruptSampleError

BACKENDS = ["dali", "pil"]


def _png(w: int = 48, h: int = 32, mode: str = "RGB") -> bytes:
    rs = np.random.RandomState(w * h)
    im = Image.fromarray(rs.randint(0, 255, (h, w, 3), np.uint8))
    im = im.convert("P", palette=Image.ADAPTIVE) if mode == "P" else im
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def _chunks(png: bytes) -> list[tuple[bytes, int, int]]:
    """(type, offset of the chunk, data length) of each chunk."""
    out, i = [], 8
    while i < len(png):
        n = int.from_bytes(png[i:i + 4], "big")
        out.append((png[i + 4:i + 8], i, n))
        i += 12 + n
    return out


def _flip_crc(png: bytes, kind: bytes, nth: int = 0) -> bytes:
    """The PNG with the CRC of its `nth` chunk of type `kind` changed."""
    _, at, n = [c for c in _chunks(png) if c[0] == kind][nth]
    b = bytearray(png)
    b[at + 8 + n] ^= 0xFF
    return bytes(b)


def _split_idat(png: bytes) -> bytes:
    """The PNG with its pixel data in two IDAT chunks (as libpng writes large images)."""
    _, at, n = [c for c in _chunks(png) if c[0] == b"IDAT"][0]
    data = png[at + 8:at + 8 + n]
    return png[:at] + _chunk(b"IDAT", data[:n // 2]) + _chunk(b"IDAT", data[n // 2:]) + png[at + 12 + n:]


def _before_idat(png: bytes, chunk: bytes) -> bytes:
    return png[:33] + chunk + png[33:]  # after the signature and IHDR


def _before_iend(png: bytes, chunk: bytes) -> bytes:
    return png[:-12] + chunk + png[-12:]


GOOD, PAL = _png(), _png(mode="P")
TEXT = _chunk(b"tEXt", b"Comment\x00hello")
BAD_TEXT = TEXT[:-1] + bytes([TEXT[-1] ^ 0xFF])
def _gray_png(rows: int, declared: int = 8, color: int = 0) -> bytes:
    """A 16x`declared` 8-bit PNG whose pixel data (a complete zlib stream) holds `rows` rows."""
    ihdr = (16).to_bytes(4, "big") + declared.to_bytes(4, "big") + bytes([8, color, 0, 0, 0])
    raw = b"".join(b"\x00" + bytes(range(16)) for _ in range(rows))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


EXIF = _chunk(b"eXIf", b"MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06"
               b"\x00\x00\x00\x00\x00\x00")  # orientation 6: turned a quarter
BAD_EXIF = EXIF[:-1] + bytes([EXIF[-1] ^ 0xFF])
CASES = {  # name: (bytes, a bad row?)
    # DALI turned the image by this tag while libpng dropped the chunk: scrambled pixels
    "eXIf CRC": (_before_idat(GOOD, BAD_EXIF), True),
    "eXIf CRC after the pixels": (_before_iend(GOOD, BAD_EXIF), True),
    "eXIf": (_before_idat(GOOD, EXIF), False),
    "pixel data CRC": (_flip_crc(GOOD, b"IDAT"), True),
    "second IDAT's CRC": (_flip_crc(_split_idat(GOOD), b"IDAT", 1), True),
    "palette CRC": (_flip_crc(PAL, b"PLTE"), True),
    "header CRC": (_flip_crc(GOOD, b"IHDR"), True),
    "unknown critical chunk": (_before_idat(GOOD, _chunk(b"ABCD", b"xx")), True),
    "no IEND": (GOOD[:-12], True),
    "no IEND after a text chunk": (_before_iend(GOOD, TEXT)[:-12], True),
    "cut inside a chunk after IDAT": (_before_iend(GOOD, TEXT)[:-12 - 5], True),
    # PIL filled the missing rows with black; libpng: "Not enough image data"
    "pixel data short of its rows": (_gray_png(rows=6), True),
    "palette PNG without PLTE": (_gray_png(rows=8, color=3), True),
    "pixel data with its rows": (_gray_png(rows=8), False),
    "text CRC before the pixels": (_before_idat(GOOD, BAD_TEXT), False),
    "text CRC after the pixels": (_before_iend(GOOD, BAD_TEXT), False),
    "IEND's CRC": (_flip_crc(GOOD, b"IEND"), False),
    "unknown ancillary chunk": (_before_idat(GOOD, _chunk(b"abCd", b"xx")), False),
    "bytes after IEND": (GOOD + b"trailing" * 8, False),
    "two IDATs": (_split_idat(GOOD), False),
    "a palette": (PAL, False),
}


def _decode(backend: str, items: list[bytes], **kw):
    return ImageDecoder(ImageDecode(device="cpu", backend=backend, **kw), max_batch_size=32).decode(items)


def test_a_png_gets_the_same_verdict_and_pixels_from_both_backends():
    names = list(CASES)
    items = [CASES[n][0] for n in names]
    results = {b: _decode(b, items, size=32) for b in BACKENDS}
    for backend, res in results.items():
        bad = {names[r] for r, _ in res.failures}
        assert bad == {n for n in names if CASES[n][1]}, backend
    dali, pil = results["dali"], results["pil"]
    assert dali.ok_rows.tolist() == pil.ok_rows.tolist()
    assert (dali.images.int() - pil.images.int()).abs().max() <= 1  # PNG: lossless, resize rounding
    reasons = dict(pil.failures)
    assert "PNG chunk IDAT at byte 33 fails its CRC check" in reasons[names.index("pixel data CRC")]
    assert "ends without its IEND chunk" in reasons[names.index("no IEND")]
    assert "pixel data holds 102 of the 136 bytes its header declares" in reasons[names.index("pixel data short of its rows")]


def test_a_damaged_png_is_a_counted_skip_or_an_error_naming_the_row(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    images = [GOOD] * 6
    images[4] = CASES["pixel data CRC"][0]
    pq.write_table(pa.table({"id": list(range(6)), "image": pa.array(images, pa.binary())}),
                   str(root / "part-0.parquet"), row_group_size=3)
    sparkfeed.index(str(root), progress=False)
    for backend in BACKENDS:
        decode = {"image": ImageDecode(size=16, device="cpu", backend=backend)}
        loader = sparkfeed.DataLoader(str(root), batch_size=4, columns=["id", "image"], decode=decode,
                                      on_error="skip")
        assert [i for b in loader for i in b["id"].tolist()] == [0, 1, 2, 3, 5]
        assert loader.stats()["samples_skipped"] == 1
        with pytest.raises(CorruptSampleError, match="sample 'row 1'.*cannot decode") as info:
            list(sparkfeed.DataLoader(str(root), batch_size=4, columns=["id", "image"], decode=decode))
        assert (info.value.shard, info.value.row_group) == ("part-0.parquet", 1)


# ------------------------------------------------------------------ sparkfeed's pixel limit


def _image(fmt: str, w: int = 100, h: int = 80) -> bytes:
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], -1).astype(np.uint8)
    buf = io.BytesIO()
    options = {"WEBP": {"lossless": True}, "ICO": {"sizes": [(w, h)]}}.get(fmt, {})
    Image.fromarray(a).save(buf, fmt, **options)
    return buf.getvalue()


FORMATS = {"dali": ["BMP", "TIFF", "WEBP", "PPM", "PNG", "JPEG"],
           "pil": ["BMP", "TIFF", "WEBP", "PPM", "PNG", "JPEG", "GIF", "TGA", "ICO", "PCX"]}


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_pixels_is_the_limit_for_every_format_not_pillows(backend, monkeypatch):
    """With Pillow's process-wide limit far below the images (another library, or the user, set
    it), max_pixels alone decides: every format decodes, without Pillow's warning; and with
    max_pixels below the images every format is refused with sparkfeed's message."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 100x80 = 8000 pixels: over 2x
    items = [_image(f) for f in FORMATS[backend]]
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        res = _decode(backend, items, size=32)
    assert res.failures == () and tuple(res.images.shape) == (len(items), 3, 32, 32)
    res = _decode(backend, items, size=32, max_pixels=5000)
    assert [r for r, _ in res.failures] == list(range(len(items)))
    assert all(reason == "image is 100x80 = 8000 pixels, over max_pixels=5000; refused before decoding"
               for _, reason in res.failures)


def _bmp_header(w: int, h: int) -> bytes:
    """A BMP's headers declaring `w` x `h` 24-bit pixels, with no pixel data."""
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + w * h * 3, 0, 0, 14 + len(info)) + info


def test_a_huge_header_is_refused_by_max_pixels_naming_dataset_shard_row_and_limit(tmp_path):
    """A 14000x14000 BMP (196M pixels, over 2x Pillow's limit) was refused with Pillow's message
    and Pillow's limit (178956970), not the max_pixels in force."""
    root = tmp_path / "ds"
    root.mkdir()
    pq.write_table(pa.table({"id": [0, 1], "image": pa.array([GOOD, _bmp_header(14000, 14000)])}),
                   str(root / "part-0.parquet"))
    sparkfeed.index(str(root), progress=False)
    for backend in BACKENDS:
        decode = {"image": ImageDecode(size=16, device="cpu", backend=backend)}
        with pytest.raises(CorruptSampleError, match=r"sample 'row 1': cannot decode: image is 14000x14000 = "
                           r"196000000 pixels, over max_pixels=89478485; refused before decoding") as info:
            list(sparkfeed.DataLoader(str(root), batch_size=2, columns=["id", "image"], decode=decode))
        assert (info.value.dataset, info.value.shard) == (str(root), "part-0.parquet")


def test_sizes_a_header_does_not_give_up_front_are_bounded_too():
    """An ICO's directory says 16x16 while its embedded PNG is 200x200; a GIF's screen is 10x10
    while its first frame is 300x300: both are refused by their real size."""
    png = _png(200, 200)
    ico = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png), 22) + png
    buf = io.BytesIO()
    Image.fromarray(np.zeros((300, 300), np.uint8)).convert("P").save(buf, "GIF")
    gif = bytearray(buf.getvalue())
    gif[6:10] = struct.pack("<HH", 10, 10)
    res = _decode("pil", [ico, bytes(gif)], size=16, max_pixels=5000)
    assert [reason.split(";")[0] for _, reason in res.failures] == [
        "image is 200x200 = 40000 pixels, over max_pixels=5000", "image is 300x300 = 90000 pixels, over max_pixels=5000"]


def test_dali_never_delivers_the_scrambled_pixels_of_a_png_whose_exif_fails_its_crc():
    """DALI's parser turned the output's shape by the tag, its PNG decoder dropped the chunk:
    the stored rows were delivered laid out 32 wide instead of 48, every pixel misplaced."""
    res = _decode("dali", [CASES["eXIf CRC"][0], CASES["eXIf"][0]])
    assert res.ok_rows.tolist() == [1] and tuple(res.images.shape) == (1, 3, 48, 32)
    assert "eXIf chunk fails its CRC check" in res.failures[0][1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("crop", ["center", "random_resized"])
def test_a_png_declaring_sides_near_2_32_is_refused_from_its_header(backend, crop):
    """Two such sides multiplied in int64 wrapped negative and passed the max_pixels check: DALI
    then failed with std::bad_alloc (an allocation of the declared size) or an assert."""
    ihdr = struct.pack(">IIBBBBB", 0xC0000000, 0xC0000000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 8)) + _chunk(b"IEND", b"")
    res = _decode(backend, [png, GOOD], size=16, crop=crop)
    assert res.ok_rows.tolist() == [1]
    assert res.failures == ((0, "image is 3221225472x3221225472 = 10376293541461622784 pixels, over "
                                "max_pixels=89478485; refused before decoding"),)
