"""ImageDecode / ImageDecoder: DALI (CPU mode) and PIL backends, on images made in memory."""

from __future__ import annotations

import gc
import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from sparkfeed.binarycols import BinaryColumn
from sparkfeed.decode import DecodeResult, ImageDecode, ImageDecoder
from sparkfeed.imagespec import dali_package

BACKENDS = ["dali", "pil"]


def _encode(w: int, h: int, mode: str = "RGB", fmt: str = "JPEG", shift: int = 0) -> bytes:
    """A smooth gradient image (JPEG-friendly, so both decoders agree closely)."""
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([(x * 255 // w + shift) % 256, y * 255 // h, (x + y) * 255 // (w + h)], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).convert(mode).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _column(items: list[bytes]) -> BinaryColumn:
    data = torch.from_numpy(np.frombuffer(b"".join(items), np.uint8).copy())
    offsets = torch.tensor(np.cumsum([0] + [len(b) for b in items]), dtype=torch.int64)
    return BinaryColumn(data, offsets)


def _decoder(backend="dali", max_batch_size=16, seed=0, **kw) -> ImageDecoder:
    return ImageDecoder(ImageDecode(device="cpu", backend=backend, **kw), max_batch_size=max_batch_size, seed=seed)


MIXED = [_encode(64, 48), _encode(50, 70, "L"), _encode(40, 40, "CMYK"), _encode(33, 44, fmt="PNG"),
         _encode(100, 60, shift=40), _encode(48, 48, "RGBA", fmt="PNG")]


def _truncated() -> bytes:
    good = _encode(200, 150)
    return good[: int(len(good) * 0.8)]  # header intact, scan data cut


def _undecodable() -> bytes:
    """A JPEG whose headers read (size, whole scan, end marker) but whose scan names Huffman
    tables never defined: only the decoders find it bad (DALI fails its whole run)."""
    good = bytearray(_encode(200, 150))
    good[good.index(b"\xff\xda") + 6] = 0x33  # the first component's DC/AC tables: 3, undefined
    return bytes(good)


# -- shapes, dtypes, layouts ---------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout,shape", [("NCHW", (6, 3, 32, 32)), ("NHWC", (6, 32, 32, 3))])
def test_shapes_dtype_layout(backend, layout, shape):
    res = _decoder(backend, size=32, layout=layout).decode(MIXED)
    assert isinstance(res, DecodeResult)
    assert res.images.shape == shape and res.images.dtype == torch.uint8
    assert res.images.device.type == "cpu" and res.images.is_contiguous()
    assert res.ok_rows.tolist() == list(range(6)) and res.ok_rows.dtype == torch.int64
    assert res.failures == ()


@pytest.mark.parametrize("backend", BACKENDS)
def test_native_size_and_mixed_sizes_error(backend):
    same = [_encode(40, 30), _encode(40, 30, "L")]
    res = _decoder(backend, layout="NHWC").decode(same)
    assert res.images.shape == (2, 30, 40, 3)
    with pytest.raises(ValueError, match="same-sized images"):
        _decoder(backend).decode([_encode(40, 30), _encode(30, 40)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_float_dtype_without_norm_keeps_0_255(backend):
    res = _decoder(backend, size=16, dtype=torch.float32).decode(MIXED[:2])
    assert res.images.dtype == torch.float32 and 0 <= res.images.min() and res.images.max() <= 255


# -- agreement between backends ------------------------------------------------------------------

def test_dali_matches_pil_reference():
    dali = _decoder("dali", size=32).decode(MIXED).images.float()
    pil = _decoder("pil", size=32).decode(MIXED).images.float()
    assert (dali.mean((1, 2, 3)) - pil.mean((1, 2, 3))).abs().max() < 2.0  # per-image means
    assert (dali - pil).abs().mean() < 4.0  # per-pixel agreement (resampling differs slightly)


def test_sixteen_bit_grayscale_png_is_scaled_the_same_by_both_backends():
    """A 16-bit PNG (PIL's "I;16"): scaled to 8 bits, not clipped to white by the PIL backend."""
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (48, 1))
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "PNG")
    dali = _decoder("dali", layout="NHWC").decode([buf.getvalue()]).images[0].int()
    pil = _decoder("pil", layout="NHWC").decode([buf.getvalue()]).images[0].int()
    assert (dali - pil).abs().max() <= 1
    assert pil[0, 0, 0] == 0 and pil[0, -1, 0] == 255 and 120 <= pil[0, 32, 0] <= 135


def _oriented(w: int, h: int, orientation: int, fmt: str = "JPEG") -> bytes:
    """A gradient image stored with an EXIF orientation tag (1: as stored; 2-8: mirrored/turned)."""
    y, x = np.mgrid[0:h, 0:w]
    im = Image.fromarray(np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 128)], -1).astype(np.uint8))
    exif = im.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_exif_orientation_is_applied_by_both_backends(fmt):
    """Orientations 2-8 come out as shown (PIL's `ImageOps.exif_transpose`, what DALI's decoders
    and torchvision's `apply_exif_orientation=True` give), the same from both backends."""
    from PIL import ImageOps

    for orientation in range(1, 9):
        data = _oriented(40, 24, orientation, fmt)
        with Image.open(io.BytesIO(data)) as im:
            shown = torch.from_numpy(np.array(ImageOps.exif_transpose(im).convert("RGB")))
        for backend in BACKENDS:
            got = _decoder(backend, layout="NHWC").decode([data]).images[0]
            assert got.shape == shown.shape, (backend, orientation)
            assert (got.int() - shown.int()).abs().max() <= 2, (backend, orientation)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_random_resized_crop_of_a_turned_photo_is_the_crop_of_the_upright_image(backend, fmt):
    """An image tagged with a quarter turn (EXIF 5-8) gets, for the same key, the crop the same
    picture stored upright gets: its window is drawn on the size as shown, not as stored (else
    the window's aspect ratio is squeezed by (h/w)^2, outside `ratio`)."""
    from PIL import ImageOps

    keys = np.arange(8, dtype=np.int64)
    for orientation in (5, 6, 7, 8):
        turned = _oriented(96, 48, orientation, fmt)
        with Image.open(io.BytesIO(turned)) as im:
            buf = io.BytesIO()
            ImageOps.exif_transpose(im).convert("RGB").save(buf, "PNG")
        dec = _decoder(backend, size=24, crop="random_resized", seed=5)
        got = dec.decode([turned] * 8, keys=keys).images.int()
        want = dec.decode([buf.getvalue()] * 8, keys=keys).images.int()
        assert (got - want).abs().max() <= 3, orientation


def test_grayscale_and_cmyk_come_out_rgb():
    gray = _decoder(size=16, layout="NHWC").decode([_encode(40, 40, "L")]).images[0].int()
    assert gray.shape[-1] == 3 and (gray[..., 0] - gray[..., 1]).abs().max() <= 2
    cmyk = _decoder(size=16).decode([_encode(40, 40, "CMYK")]).images.float()
    rgb = _decoder(size=16).decode([_encode(40, 40, "RGB")]).images.float()
    assert (cmyk - rgb).abs().mean() < 6.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_mean_std_normalisation(backend):
    mean, std = (120.0, 110.0, 100.0), (50.0, 60.0, 70.0)
    raw = _decoder(backend, size=24).decode(MIXED).images.float()
    norm = _decoder(backend, size=24, mean=mean, std=std).decode(MIXED).images
    assert norm.dtype == torch.float32
    expected = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(norm, expected, atol=1e-4, rtol=1e-4)


def test_scalar_mean_std_and_float16():
    res = _decoder(size=8, mean=(127.5,), std=(127.5,), dtype=torch.float16).decode(MIXED[:1])
    assert res.images.dtype == torch.float16 and -1.01 <= res.images.min() and res.images.max() <= 1.01


# -- random crop / mirror reproducibility --------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_random_augment_reproducible_per_epoch(backend):
    dec = _decoder(backend, size=24, crop="random", mirror=True, seed=7)
    imgs = [_encode(120, 60, shift=s) for s in range(8)]
    dec.set_epoch(3, rank=1)
    a1, a2 = dec.decode(imgs).images, dec.decode(imgs).images
    dec.set_epoch(3, rank=1)
    b1, b2 = dec.decode(imgs).images, dec.decode(imgs).images
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2)  # successive batches draw anew
    dec.set_epoch(4, rank=1)
    assert not torch.equal(dec.decode(imgs).images, a1)
    dec.set_epoch(3, rank=0)
    assert not torch.equal(dec.decode(imgs).images, a1)
    other = _decoder(backend, size=24, crop="random", mirror=True, seed=7)
    other.set_epoch(3, rank=1)
    assert torch.equal(other.decode(imgs).images, a1)  # a fresh decoder agrees


@pytest.mark.parametrize("backend", BACKENDS)
def test_keyed_draws_belong_to_the_row_not_the_batch(backend):
    imgs = [_encode(120, 60, shift=s) for s in range(8)]
    keys = np.array([(u << 32) | r for u, r in [(0, 5), (0, 6), (3, 0), (3, 1), (7, 2), (9, 9), (1, 0), (2, 4)]])
    dec = _decoder(backend, size=24, crop="random", mirror=True, seed=7)
    dec.set_epoch(2)
    whole = dec.decode(imgs, keys=keys).images
    again = dec.decode(imgs, keys=torch.from_numpy(keys)).images  # a tensor works too
    halves = torch.cat([dec.decode(imgs[:3], keys=keys[:3]).images, dec.decode(imgs[3:], keys=keys[3:]).images])
    perm = [5, 2, 7, 0, 1, 3, 6, 4]
    shuffled = dec.decode([imgs[i] for i in perm], keys=keys[perm]).images
    assert torch.equal(whole, again) and torch.equal(whole, halves) and torch.equal(whole[perm], shuffled)
    other_keys = dec.decode(imgs, keys=keys + 1).images
    dec.set_epoch(3)
    other_epoch = dec.decode(imgs, keys=keys).images
    assert not torch.equal(whole, other_keys) and not torch.equal(whole, other_epoch)
    with pytest.raises(ValueError, match="one integer per image"):
        dec.decode(imgs, keys=keys[:3])


def test_keyed_draws_are_uniform():
    from sparkfeed.crops import _keyed_draws

    pos, flip = _keyed_draws(0, 0, np.arange(20_000, dtype=np.int64))
    assert pos.shape == (2, 20_000) and pos.dtype == np.float32 and flip.dtype == np.int32
    assert 0 <= pos.min() and pos.max() < 1 and abs(pos.mean() - 0.5) < 0.01
    assert abs(flip.mean() - 0.5) < 0.02 and abs(np.corrcoef(pos[0], pos[1])[0, 1]) < 0.03
    assert np.histogram(pos[0], bins=10, range=(0, 1))[0].min() > 1_800  # no empty tenth


def test_random_augment_same_draws_in_both_backends():
    imgs = [_encode(120, 60, shift=s) for s in range(6)]
    out = {}
    for backend in BACKENDS:
        dec = _decoder(backend, size=24, crop="random", mirror=True, seed=1)
        dec.set_epoch(2)
        out[backend] = dec.decode(imgs).images.float()
    assert (out["dali"] - out["pil"]).abs().mean() < 4.0


@pytest.mark.parametrize("crop,mirror", [("center", False), ("random", True)])
def test_images_at_size_skip_the_resize_with_the_same_pixels(crop, mirror):
    """A batch whose shorter sides already equal `size` is only cropped (no DALI resize); its
    pixels match what the resizing pipeline makes of the same images, crops and flips included."""
    at_size = [_encode(24 + 8 * i, 24, shift=i) for i in range(5)] + [_encode(24, 40, "L")]
    last = {"crop only": _encode(24, 24, shift=9), "resized": _encode(64, 48)}  # 64x48 forces a resize
    outs = {}
    for name, extra in last.items():
        dec = _decoder(size=24, crop=crop, mirror=mirror, seed=3)
        dec._backend.pipes.clear()
        res = dec.decode(at_size + [extra])  # same batch size: the same crop and flip draws
        assert set(dec._backend.pipes) == {"resize" if name == "resized" else "crop"}
        outs[name] = res.images[:len(at_size)].float()
    assert outs["crop only"].shape == (6, 3, 24, 24)
    assert (outs["crop only"] - outs["resized"]).abs().max() <= 1.0  # an identity resize may round


def test_needs_resize_looks_at_the_shorter_side():
    from sparkfeed.decodejob import _needs_resize

    spec = ImageDecode(size=32, device="cpu")
    assert not _needs_resize(spec, [(32, 32), (48, 32), (32, 90)])
    assert _needs_resize(spec, [(32, 32), (33, 40)])
    assert not _needs_resize(spec, [])
    assert not _needs_resize(ImageDecode(device="cpu"), [(10, 20)])  # size=None keeps native sizes


def test_center_crop_is_deterministic_across_epochs():
    dec = _decoder(size=24)
    a = dec.decode(MIXED).images
    dec.set_epoch(5)
    assert torch.equal(a, dec.decode(MIXED).images)


def test_mirror_flips_horizontally():
    img = [_encode(32, 32)]
    plain = _decoder(size=32, layout="NHWC").decode(img).images[0]
    flips = _decoder(size=32, layout="NHWC", mirror=True, max_batch_size=32).decode(img * 32).images
    flipped = [torch.equal(f, plain.flip(1)) for f in flips]
    assert any(flipped) and not all(flipped)
    assert all(torch.equal(f, plain) or torch.equal(f, plain.flip(1)) for f in flips)


# -- bad input is reported, good rows still decode ------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_rows_reported_good_rows_decode(backend):
    good = _encode(64, 48)
    batch = [good, _undecodable(), b"", b"\x00\x01random bytes" * 20, good[:40], _encode(300, 300), good]
    res = _decoder(backend, size=16, max_pixels=200 * 200).decode(batch)
    assert res.ok_rows.tolist() == [0, 6]
    assert res.images.shape == (2, 3, 16, 16) and torch.equal(res.images[0], res.images[1])
    reasons = dict(res.failures)
    assert sorted(reasons) == [1, 2, 3, 4, 5]
    assert "could not decode" in reasons[1]
    assert "empty" in reasons[2]
    assert "not a recognised image" in reasons[3]
    assert "300x300 = 90000 pixels, over max_pixels=40000" in reasons[5]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("crop", [dict(crop="random", resize=None), dict(crop="random_resized")],
                         ids=["stored-pixels", "random_resized"])
def test_bad_rows_in_training_crops(backend, crop):
    """Window decoding (image_crop, image_slice) finds bad rows the same way: header refusals
    first, then bisection of the DALI batch; good rows keep their keyed crops."""
    good = [_encode(64, 48, shift=s) for s in range(3)]
    no_tables = _undecodable()  # headers intact, no pixel data decodes: any window fails
    batch = [good[0], no_tables, b"", good[1], _encode(300, 300), good[2]]
    keys = np.arange(6, dtype=np.int64)
    dec = _decoder(backend, size=16, mirror=True, max_pixels=200 * 200, **crop)
    res = dec.decode(batch, keys=keys)
    assert res.ok_rows.tolist() == [0, 3, 5] and res.images.shape == (3, 3, 16, 16)
    reasons = dict(res.failures)
    assert sorted(reasons) == [1, 2, 4]
    assert "could not decode" in reasons[1] and "empty" in reasons[2]
    assert "300x300 = 90000 pixels, over max_pixels=40000" in reasons[4]
    alone = dec.decode([good[0], good[1], good[2]], keys=keys[[0, 3, 5]]).images
    assert torch.equal(res.images, alone)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_rows_bad_gives_empty_batch(backend):
    res = _decoder(backend, size=16).decode([b"", _undecodable()])
    assert res.images.shape == (0, 3, 16, 16) and res.ok_rows.tolist() == []
    assert [r for r, _ in res.failures] == [0, 1]


def test_decoder_keeps_working_after_failures():
    dec = _decoder(size=16)
    first = dec.decode(MIXED).images
    dec.decode([_undecodable(), MIXED[0]])
    assert torch.equal(dec.decode(MIXED).images, first)


# -- inputs and batch sizes ------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_binary_column_equals_list_of_bytes(backend):
    dec = _decoder(backend, size=20)
    assert torch.equal(dec.decode(_column(MIXED)).images, dec.decode(MIXED).images)
    sub = _column(MIXED).select([4, 0])
    assert torch.equal(dec.decode(sub).images, dec.decode([MIXED[4], MIXED[0]]).images)


def test_variable_batch_sizes():
    dec = _decoder(size=16, max_batch_size=8)
    for n in (8, 1, 5, 8, 3):
        assert dec.decode([MIXED[i % 6] for i in range(n)]).images.shape == (n, 3, 16, 16)
    with pytest.raises(ValueError, match="larger than max_batch_size=8"):
        dec.decode(MIXED + MIXED)
    assert dec.decode([]).images.shape == (0, 3, 16, 16)
    dec.close()


def test_bad_input_type():
    with pytest.raises(TypeError, match="BinaryColumn or a sequence of bytes"):
        _decoder().decode(b"not a batch")


# -- argument validation ----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,message", [
    ({"size": 0}, "`size` should be a positive integer or None, but got size=0"),
    ({"size": 2.5}, "`size` should be a positive integer or None, but got size=2.5"),
    ({"crop": "left"}, "`crop` should be 'center' or 'random' or 'random_resized', but got crop='left'"),
    ({"crop": "random_resized"}, "`crop` should be 'center' when size is None"),
    ({"size": 8, "resize": 4}, "`resize` should be at least size=8 (the crop is cut from the resized image), but got resize=4"),
    ({"resize": 256}, "`resize` should be 'size' or None when size is None"),
    ({"size": 8, "scale": (0.5, 1.0)}, "`scale` should be left at its default unless crop='random_resized' (crop='center'"),
    ({"size": 8, "crop": "random", "ratio": (1, 1)}, "`ratio` should be left at its default unless crop='random_resized'"),
    ({"size": 8, "resize": "8"}, "`resize` should be 'size', None or a positive integer, but got resize='8'"),
    ({"size": 8, "crop": "random_resized", "resize": 16}, "`resize` should be 'size' or None with crop='random_resized'"),
    ({"size": 8, "scale": (0.5, 0.1)}, "`scale` should be a (min, max) pair of positive numbers with min <= max, but got scale=(0.5, 0.1)"),
    ({"size": 8, "scale": (0.5, 1.5)}, "`scale` should be within (0, 1]"),
    ({"size": 8, "ratio": (0, 1)}, "`ratio` should be a (min, max) pair of positive numbers"),
    ({"crop": "random"}, "`crop` should be 'center' when size is None (a random crop needs a size), but got crop='random'"),
    ({"layout": "CHW"}, "`layout` should be 'NCHW' or 'NHWC', but got layout='CHW'"),
    ({"device": "cuda"}, "`device` should be 'gpu' or 'cpu' or 'auto', but got device='cuda'"),
    ({"backend": "opencv"}, "`backend` should be 'dali' or 'pil', but got backend='opencv'"),
    ({"mirror": 1}, "`mirror` should be True or False, but got mirror=1"),
    ({"mean": (1.0, 2.0, 3.0)}, "`std` should be given together with mean"),
    ({"mean": (1.0, 2.0), "std": (1.0, 1.0)}, "`mean` should be a tuple of 1 or 3 numbers"),
    ({"mean": (0.0,), "std": (0.0,)}, "`std` should be positive"),
    ({"dtype": torch.int32}, "`dtype` should be torch.uint8, torch.float32, torch.float16 or None"),
    ({"mean": (0.0,), "std": (1.0,), "dtype": torch.uint8}, "`dtype` should be a floating type"),
    ({"max_pixels": 0}, "`max_pixels` should be a positive integer, but got max_pixels=0"),
])
def test_spec_validation(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        ImageDecode(**kwargs)


def test_spec_defaults_and_normalised_mean():
    spec = ImageDecode(mean=[1, 2, 3], std=(4, 5, 6))
    assert spec.mean == (1.0, 2.0, 3.0) and spec.out_dtype == torch.float32
    assert ImageDecode().out_dtype == torch.uint8 and ImageDecode().device == "auto"
    assert hash(ImageDecode(size=3)) == hash(ImageDecode(size=3))


@pytest.mark.parametrize("kwargs,message", [
    ({"max_batch_size": 0}, "`max_batch_size` should be a positive integer, but got max_batch_size=0"),
    ({"max_batch_size": 4, "seed": -1}, r"`seed` should be an integer in \[0, 2\*\*64\)"),
    ({"max_batch_size": 4, "num_threads": 0}, "`num_threads` should be a positive integer or None"),
])
def test_decoder_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageDecoder(ImageDecode(device="cpu"), **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_gpu_without_cuda_is_a_clear_error():
    spec = ImageDecode(size=8, device="gpu")  # a spec may be built on a CPU box and shipped
    message = "`device` should be 'cpu' or 'auto' on a machine without CUDA .*but got device='gpu'"
    with pytest.raises(ValueError, match=message):
        spec.resolve()
    with pytest.raises(ValueError, match=message):  # the decoder resolves the same way
        ImageDecoder(spec, max_batch_size=4)
    auto = ImageDecoder(ImageDecode(size=8), max_batch_size=4)  # auto -> CPU here
    assert auto.decode(MIXED[:1]).images.device.type == "cpu"


def test_missing_dali_message(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_dali(name, *args, **kwargs):
        if name.startswith("nvidia"):
            raise ImportError("No module named 'nvidia.dali'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dali)
    wheel = dali_package()
    with pytest.raises(ValueError, match="`backend` should be 'pil' where NVIDIA DALI is not installed "
                                         rf"\(`pip install {wheel}`\), but got backend='dali'"):
        ImageDecode(device="cpu").resolve()
    with pytest.raises(ValueError, match=f"pip install {wheel}"):
        ImageDecoder(ImageDecode(device="cpu"), max_batch_size=2)
    # PIL needs no DALI; "auto" still means the GPU (for the output) where there is one
    assert ImageDecode(device="auto", backend="pil").resolve().device == (
        "gpu" if torch.cuda.is_available() else "cpu")
    ImageDecoder(ImageDecode(device="cpu", backend="pil"), max_batch_size=2)  # PIL needs no DALI


def test_header_fast_path_agrees_with_pil():
    from sparkfeed.headers import _fast_size

    def jpeg(**save):
        buf = io.BytesIO()
        Image.fromarray(np.zeros((37, 53, 3), np.uint8)).save(buf, "JPEG", **save)
        return buf.getvalue()

    exif = Image.Exif()
    exif[0x010E] = "x" * 3000  # a big APP1 segment before the frame header
    samples = [jpeg(), jpeg(progressive=True), jpeg(exif=exif.tobytes()), _encode(53, 37, "L"),
               _encode(53, 37, "CMYK"), _encode(53, 37, fmt="PNG")]
    for data in samples:
        assert _fast_size(memoryview(data)) == Image.open(io.BytesIO(data)).size == (53, 37)
    for data in (b"", b"\xff\xd8", b"\xff\xd8\xff\xe0\x00", b"GIF89a", _encode(53, 37, fmt="BMP")):
        assert _fast_size(memoryview(data)) is None  # unknown or cut short: PIL decides


# -- training crops: resize=, crop="random_resized" --------------------------------------------------

def _noise(w: int, h: int, seed: int) -> bytes:
    """A high-detail image: any shift of a crop window changes the pixels."""
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_crop_of_stored_pixels_moves(backend):
    """resize=None: a 12x12 crop of a 16x16 image is a window of the stored pixels (RandomCrop),
    at a position that changes with the key."""
    img = _noise(16, 16, 0)
    full = _decoder(backend).decode([img]).images[0]  # (3, 16, 16), no geometry
    dec = _decoder(backend, size=12, crop="random", resize=None, seed=5, max_batch_size=32)
    keys = np.arange(32, dtype=np.int64)
    out = dec.decode([img] * 32, keys=keys).images
    assert out.shape == (32, 3, 12, 12)
    offsets = set()
    for crop in out:
        found = [(y, x) for y in range(5) for x in range(5) if torch.equal(full[:, y:y + 12, x:x + 12], crop)]
        assert len(found) == 1
        offsets.add(found[0])
    assert len(offsets) > 8  # the window moves over the 5x5 possible positions
    assert torch.equal(dec.decode([img] * 32, keys=keys).images, out)  # same key, same crop


def test_crop_of_stored_pixels_refuses_small_images():
    dec = _decoder(size=20, crop="random", resize=None)
    res = dec.decode([_encode(32, 24), _encode(40, 16), _encode(20, 20)])
    assert res.images.shape == (2, 3, 20, 20) and res.ok_rows.tolist() == [0, 2]
    assert res.failures == ((1, "image is 40x16, smaller than the 20x20 crop cut from stored pixels (resize=None)"),)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_thin_strip_is_refused_before_its_resize_exceeds_max_pixels(backend):
    """max_pixels bounds the image resized to the shorter side too: a 1x600 strip (600 pixels)
    resized to 32 would be 32x19200; with max_pixels=100_000 it is refused before decoding (at
    the defaults a 1x3000 PNG of a few KB took 0.8 GB in DALI, 1.7 GB in PIL). A window resized
    to size (random_resized) never grows the image: there it decodes."""
    strip, square = _encode(1, 600, fmt="PNG"), _encode(64, 48)
    res = _decoder(backend, size=32, max_pixels=100_000).decode([square, strip])
    assert res.ok_rows.tolist() == [0] and res.images.shape == (1, 3, 32, 32)
    assert res.failures == ((1, "image is 1x600: resized to shorter side 32 it would be 32x19200 = 614400 "
                                "pixels, over max_pixels=100000; refused before decoding"),)
    rrc = _decoder(backend, size=32, crop="random_resized", max_pixels=100_000).decode([square, strip])
    assert rrc.ok_rows.tolist() == [0, 1]


def test_formats_dali_cannot_decode_are_refused_from_the_header_naming_the_pil_backend():
    """GIF, ICO and TGA (web crawls hold them) are not DALI formats: a DALI decoder refuses them
    from the header, saying so and naming backend='pil', which decodes them; DALI's formats that
    are read through PIL's header (BMP, TIFF, WebP) still decode."""
    others = [_encode(40, 30, fmt=f) for f in ("GIF", "ICO", "TGA")]
    dali_ok = [_encode(40, 30, fmt=f) for f in ("BMP", "TIFF", "WEBP")]
    res = _decoder("dali", size=16).decode([_encode(40, 30)] + others + dali_ok)
    assert res.ok_rows.tolist() == [0, 4, 5, 6]
    assert [(r, why.split(" is not")[0]) for r, why in res.failures] == [(1, "GIF"), (2, "ICO"), (3, "TGA")]
    assert all("not a format DALI decodes" in why and "backend='pil'" in why for _, why in res.failures)
    assert _decoder("pil", size=16).decode(others).ok_rows.tolist() == [0, 1, 2]


def test_resize_sets_the_shorter_side_before_the_crop():
    img = _encode(80, 60)
    big = _decoder(size=30, resize=60).decode([img]).images  # no resize needed: only the centre crop
    full = _decoder().decode([img]).images
    assert big.shape == (1, 3, 30, 30) and torch.equal(big[0], full[0, :, 15:45, 25:55])
    small = _decoder(size=30).decode([img]).images  # default resize=size: the whole height
    assert not torch.equal(small, big)


def test_random_resized_windows_follow_torchvision():
    from sparkfeed.crops import _RRC_TRIES, _random_resized_windows

    rng = np.random.default_rng(0)
    n = 4000
    sizes = np.tile([[160, 120]], (n, 1))
    win = _random_resized_windows(rng.random((n, _RRC_TRIES, 4)), sizes, (0.08, 1.0), (3 / 4, 4 / 3))
    x0, y0, cw, ch = win.T
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + cw <= 160).all() and (y0 + ch <= 120).all()
    frac, aspect = cw * ch / (160 * 120), cw / ch
    assert frac.min() > 0.07 and frac.max() <= 1.0 and abs(np.median(frac) - 0.5) < 0.1
    assert aspect.min() > 0.7 and aspect.max() < 1.4
    assert len(set(map(tuple, win))) > n * 0.9  # windows differ
    # no attempt fits a 400x10 strip with ratio in [3/4, 4/3]: centre crop clamped to 4/3
    strip = _random_resized_windows(rng.random((1, _RRC_TRIES, 4)), np.array([[400, 10]]), (0.08, 1.0), (3 / 4, 4 / 3))
    assert strip.tolist() == [[193, 0, 13, 10]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_resized_crop_sizes_and_keys(backend):
    imgs = [_encode(96, 64, shift=s) for s in range(6)]
    dec = _decoder(backend, size=32, crop="random_resized", mirror=True, seed=3)
    keys = np.arange(6, dtype=np.int64) * 11
    a = dec.decode(imgs, keys=keys).images
    assert a.shape == (6, 3, 32, 32) and a.dtype == torch.uint8
    assert torch.equal(dec.decode(imgs[::-1], keys=keys[::-1]).images, a.flip(0))  # the key, not the batch
    assert not torch.equal(dec.decode(imgs, keys=keys + 1).images, a)
    dec.set_epoch(1)
    assert not torch.equal(dec.decode(imgs, keys=keys).images, a)


def test_random_resized_crop_pil_and_dali_agree():
    imgs = [_encode(96, 64, shift=s) for s in range(6)]
    keys = np.arange(6, dtype=np.int64)
    out = {b: _decoder(b, size=32, crop="random_resized", mirror=True, seed=9).decode(imgs, keys=keys).images.float()
           for b in BACKENDS}
    assert (out["dali"] - out["pil"]).abs().mean() < 4.0
    whole = _decoder("pil", size=32, crop="random_resized", scale=(1.0, 1.0), ratio=(1.5, 1.5))
    squashed = whole.decode([_encode(96, 64)]).images.float()  # the whole 96x64 image to 32x32
    plain = torch.from_numpy(np.array(Image.open(io.BytesIO(_encode(96, 64))).convert("RGB").resize(
        (32, 32), Image.BILINEAR))).permute(2, 0, 1).float()
    assert (squashed[0] - plain).abs().max() <= 1.0


def test_resolve_makes_the_device_concrete():
    spec = ImageDecode(size=8, backend="pil")
    resolved = spec.resolve()
    assert spec.device == "auto" and resolved.device == ("gpu" if torch.cuda.is_available() else "cpu")
    assert resolved.resolve() == resolved and resolved.size == 8
    bad = ImageDecode(size=8)
    object.__setattr__(bad, "device", "tpu")  # as a spec unpickled from elsewhere could be
    with pytest.raises(ValueError, match="`device` should be 'gpu', 'cpu' or 'auto', but got device='tpu'"):
        bad.resolve()


def test_batch_header_scan_agrees_with_the_row_walk():
    """`_scan_sizes` (every row of a buffer at once) reads what `_fast_size` reads row by row,
    on JPEGs (baseline, progressive, grey), PNGs, rows cut short anywhere and junk."""
    from sparkfeed.headers import _fast_size, _scan_sizes

    rng = np.random.default_rng(0)
    rows = []
    for i in range(120):
        a = rng.integers(0, 256, (int(rng.integers(1, 40)), int(rng.integers(1, 40)), 3), dtype=np.uint8)
        buf = io.BytesIO()
        im = Image.fromarray(a).convert("L" if i % 5 == 0 else "RGB")
        im.save(buf, "PNG") if i % 2 else im.save(buf, "JPEG", progressive=i % 4 == 0)
        data = buf.getvalue()
        if i % 7 == 0:
            data = data[:int(rng.integers(0, len(data)))]
        if i % 11 == 0:
            data = b"junk" + data
        rows.append(data)
    data = np.frombuffer(b"".join(rows), np.uint8)
    bounds = np.cumsum([0] + [len(r) for r in rows])
    w, h = _scan_sizes(data, bounds[:-1], bounds[1:])
    expected = [_fast_size(memoryview(r)) or (-1, -1) for r in rows]
    assert list(zip(w.tolist(), h.tolist())) == expected
    assert sum(e == (-1, -1) for e in expected) >= 10  # the cut and junk rows are in there


def test_jpegs_cut_short_are_refused_from_the_header_and_only_those():
    """nvJPEG (and libjpeg, where the missing tail reads as scan data) decodes a JPEG cut short
    without an error, so every backend refuses it from the bytes: no end-of-image marker after
    the first scan. Kept: complete JPEGs (baseline and
    progressive), bytes after the marker, PNGs. Refused: a cut anywhere after the headers, also
    where an EXIF thumbnail (its own scan and end marker, inside APP1) precedes the cut scan."""
    from sparkfeed.encoded import _encoded
    from sparkfeed.headers import _check_headers

    whole, progressive = _encode(200, 150), _encode(64, 48)
    buf = io.BytesIO()
    Image.open(io.BytesIO(progressive)).save(buf, "JPEG", progressive=True)
    progressive = buf.getvalue()
    thumb = _encode(16, 12)
    app1 = b"Exif\x00\x00" + thumb
    with_thumb = whole[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + whole[2:]
    sos = whole.index(b"\xff\xda")
    keep = [whole, progressive, whole + b"\x00" * 7 + b"trailer", _encode(33, 44, fmt="PNG"), with_thumb]
    cut = [whole[:int(len(whole) * 0.8)], whole[:sos + 16], whole[:-1], progressive[:len(progressive) // 2],
           with_thumb[:len(with_thumb) - 300]]
    spec = ImageDecode(size=16, device="cpu")
    sizes, failures = _check_headers(_encoded(keep + cut), spec)
    assert [r for r, _ in failures] == list(range(len(keep), len(keep) + len(cut)))
    assert all("cut short" in why for _, why in failures)
    assert (sizes[:len(keep)] > 0).all()
    _, empty = _check_headers(_encoded([b"", b""]), spec)
    assert [(r, "empty" in why) for r, why in empty] == [(0, True), (1, True)]


@pytest.mark.parametrize("cuda, wheel", [(None, "nvidia-dali-cuda120"), ("12.4", "nvidia-dali-cuda120"),
                                         ("13.0", "nvidia-dali-cuda130")])
def test_the_dali_wheel_named_matches_torchs_cuda(monkeypatch, cuda, wheel):
    monkeypatch.setattr(torch.version, "cuda", cuda)
    assert dali_package() == wheel


def test_gpu_decoding_gives_dali_every_core_and_cpu_decoding_at_most_eight(monkeypatch):
    """On a GPU, nvJPEG's host stage (Huffman decoding) runs on DALI's threads: on a 16-core H100
    machine 8 threads gave 4,563-8,658 images/s after the first batch (224 px from 500x375), all
    16 gave 8,049-8,714 (docs/benchmark.md, GPU)."""
    from sparkfeed.decode import _default_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert (_default_threads("cuda"), _default_threads("cpu")) == (16, 8)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert (_default_threads("cuda"), _default_threads("cpu")) == (2, 2)


# -- one batch ahead: submit / collect / cancel ------------------------------------------------

def _batches(k: int, n: int = 6, size: int = 40) -> list[list[bytes]]:
    return [[_encode(size + 8 * (i % 3), size, shift=10 * b + i) for i in range(n)] for b in range(k)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_batches_submitted_ahead_decode_as_one_at_a_time(backend):
    """Submitting batch n+1 before collecting batch n (as the loader's prefetch thread does) gives
    the same pixels, in the same order, as decoding each batch alone."""
    batches = _batches(4)
    keys = [np.arange(6) + 100 * b for b in range(4)]
    alone = [_decoder(backend, size=24, crop="random", mirror=True).decode(b, keys=k).images
             for b, k in zip(batches, keys)]
    dec = _decoder(backend, size=24, crop="random", mirror=True)
    jobs = [dec.submit(batches[0], keys=keys[0])]
    got = []
    for b, k in zip(batches[1:], keys[1:]):
        jobs.append(dec.submit(b, keys=k))
        got.append(dec.collect(jobs.pop(0)).images)
    got.append(dec.collect(jobs.pop(0)).images)
    assert all(torch.equal(a, g) for a, g in zip(alone, got))


@pytest.mark.parametrize("runs", [2, 3])
def test_pipelines_hold_several_runs_and_start_one_per_batch(runs):
    """The pipelines are built with DALI's queue depth 2 by default, or `runs_in_flight` (a
    batch's host stage overlaps the runs before it), yet each `submit` starts one run of the
    batch it fed: four batches in flight (two iterators, each ahead) and a batch alone give the
    pixels of a depth-1 decoder."""
    batches = _batches(5)
    spec = ImageDecode(device="cpu", size=24, crop="random", mirror=True)
    dec = _decoder(size=24, crop="random", mirror=True) if runs == 2 \
        else ImageDecoder(spec, max_batch_size=16, runs_in_flight=runs)
    assert [p.prefetch_queue_depth for p in dec._backend.pipes.values()] == [runs]
    jobs = [dec.submit(b, keys=np.arange(6) + 10 * i) for i, b in enumerate(batches[:4])]
    got = [dec.collect(j).images for j in jobs] + [dec.decode(batches[4], keys=np.arange(6) + 40).images]
    one = ImageDecoder(spec, max_batch_size=16, runs_in_flight=1)
    assert [p.prefetch_queue_depth for p in one._backend.pipes.values()] == [1]
    want = [one.decode(b, keys=np.arange(6) + 10 * i).images for i, b in enumerate(batches)]
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_runs_in_flight_is_a_positive_integer():
    for bad in (0, -2, 1.5, "2"):
        with pytest.raises(ValueError, match=r"`runs_in_flight` should be a positive integer, but got runs_in_flight="):
            ImageDecoder(ImageDecode(device="cpu", size=24), max_batch_size=16, runs_in_flight=bad)


def test_a_dali_without_the_run_switch_is_built_with_depth_one(monkeypatch):
    """Where DALI's Pipeline lacks the flag that makes `schedule_run` start one run, the decoder
    builds its pipelines with depth 1 (no prefetch of batches never fed) and decodes the same."""
    import sparkfeed.dalidecode as decode

    class Bare:
        pass

    assert decode._one_run_per_batch(Bare()) is False
    monkeypatch.setattr(decode, "_one_run_per_batch", lambda pipe: False)
    batches = _batches(3)
    dec = _decoder(size=24)
    assert [p.prefetch_queue_depth for p in dec._backend.pipes.values()] == [1]
    jobs = [dec.submit(b) for b in batches]
    got = [dec.collect(j).images for j in jobs]
    monkeypatch.undo()
    assert all(torch.equal(g, _decoder(size=24).decode(b).images) for g, b in zip(got, batches))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_batch_in_chunks_decodes_as_the_joined_column(backend):
    """A batch cut across row groups arrives as `BinaryChunks` (each part in its own buffer):
    the same pixels, the same refused rows (numbered in the batch), the same header checks,
    the cut-JPEG check included, as the column joined into one buffer."""
    from sparkfeed.binarycols import BinaryChunks
    from sparkfeed.encoded import _encoded
    from sparkfeed.headers import _check_headers

    items = [_encode(40 + 8 * (i % 3), 40, shift=i) for i in range(10)]
    items[6], items[8] = b"not an image", _truncated()
    big = items[2]  # a comment segment that puts the frame header past the bytes scanned at once
    items[2] = big[:2] + b"\xff\xfe" + (6002).to_bytes(2, "big") + b"x" * 6000 + big[2:]
    cols = [_column(items[:3]), _column(items[3:4]), _column(items[4:])]  # a part smaller than the scan
    chunks, joined = BinaryChunks(tuple(cols)), _column(items)
    spec = ImageDecode(size=24, device="cpu")
    a, b = _check_headers(_encoded(chunks), spec), _check_headers(_encoded(joined), spec)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert sorted(r for r, _ in a[1]) == [6, 8]
    got = _decoder(backend, size=24, crop="random", mirror=True).decode(chunks, keys=np.arange(10))
    want = _decoder(backend, size=24, crop="random", mirror=True).decode(joined, keys=np.arange(10))
    assert got.ok_rows.tolist() == want.ok_rows.tolist() and 6 not in got.ok_rows.tolist()
    assert [r for r, _ in got.failures] == [r for r, _ in want.failures]
    assert torch.equal(got.images, want.images)


@pytest.mark.parametrize("bad_batch", [0, 1])
def test_a_bad_image_in_a_batch_in_flight_is_reported_with_its_own_batch(bad_batch):
    """DALI fails whole runs and drops the pipeline with every run queued behind it: the failing
    batch is bisected (its good rows still decoded) and the other batch, in flight on the same
    pipeline, is fed again: each batch reports exactly its own bad row."""
    batches = _batches(2)
    batches[bad_batch][3] = _undecodable()
    want = [_decoder(size=24).decode(b).images for b in _batches(2)]
    dec = _decoder(size=24)
    first, second = dec.submit(batches[0]), dec.submit(batches[1])
    results = [dec.collect(first), dec.collect(second)]
    for b, res in enumerate(results):
        rows = [r for r in range(6) if not (b == bad_batch and r == 3)]
        assert res.ok_rows.tolist() == rows
        assert [r for r, _ in res.failures] == ([3] if b == bad_batch else [])
        assert torch.equal(res.images, want[b][rows])
    assert "DALI could not decode" in results[bad_batch].failures[0][1]
    assert not any(dec._backend.inflight.values())


def test_a_cancelled_batch_leaves_nothing_in_the_pipeline():
    """A batch submitted and then cancelled (the loader closing mid-epoch) is waited for and
    dropped: the next batch collects its own images, not the cancelled one's."""
    a, b = _batches(2)
    dec = _decoder(size=24)
    dec.cancel(dec.submit(a))
    assert not any(dec._backend.inflight.values())
    assert torch.equal(dec.decode(b).images, _decoder(size=24).decode(b).images)
    dec.submit(a)
    dec.close()  # waits for the run in flight
    assert not any(dec._backend.inflight.values()) and not dec._backend.pipes


def test_batches_collected_out_of_order_get_their_own_images():
    """Two iterators of one loader may hold runs on the same pipeline: a batch collected before
    an older one gets its own images (the older run is kept for its own collect), and a batch
    collected twice is refused."""
    a, b = _batches(2)
    want = [_decoder(size=24).decode(x).images for x in (a, b)]
    dec = _decoder(size=24)
    first, second = dec.submit(a), dec.submit(b)
    assert torch.equal(dec.collect(second).images, want[1])
    assert torch.equal(dec.collect(first).images, want[0])
    with pytest.raises(RuntimeError, match="already collected or cancelled"):
        dec.collect(first)
    assert not dec._backend.done and not any(dec._backend.inflight.values())


def test_output_is_dalis_buffer_and_stays_valid_while_held():
    """On the CPU the tensor handed out is DALI's output buffer (DLPack, no copy); the dynamic
    executor never reuses a buffer still referenced, so later batches leave it untouched."""
    batches = _batches(6)
    dec = _decoder(size=24)
    held = [dec.decode(b).images for b in batches]
    copies = [dec.decode(b).images.clone() for b in batches]
    assert all(torch.equal(h, c) for h, c in zip(held, copies))
    assert len({h.data_ptr() for h in held}) == len(held)
    dec.close()  # the pipelines go; the tensors handed out keep their memory
    del dec
    gc.collect()
    other = _decoder(size=24)
    for b in _batches(6, size=56):
        other.decode(b)
    assert all(torch.equal(h, c) for h, c in zip(held, copies))


def test_without_the_dynamic_executor_outputs_are_copied_out():
    """A DALI whose executor recycles its outputs (older releases) gets a copy, the same pixels."""
    (batch,) = _batches(1)
    dec = _decoder(size=24)
    shared = dec.decode(batch).images
    dec._backend.shares_outputs = False  # as `_pipe` finds it on such a DALI
    copied = dec.decode(batch).images
    assert torch.equal(shared, copied) and copied.data_ptr() != shared.data_ptr()
    dec.decode(batch)
    assert torch.equal(shared, copied)


def test_the_hand_over_to_dali_copies_no_image_bytes():
    """The encoded images go to DALI as one TensorList over their own memory: for a batch in one
    buffer and for one in several (chunks), each sample where it lies, none copied; and the
    decoder's pixels are those of a batch handed over as a plain list of arrays."""
    import sparkfeed.dalidecode as decode
    from sparkfeed.encoded import _encoded

    items = [_encode(40, 32, shift=i) for i in range(6)]
    from sparkfeed.binarycols import BinaryChunks
    for images in (_column(items), BinaryChunks((_column(items[:2]), _column(items[2:])))):
        enc = _encoded(images)
        views = enc.views(np.arange(len(enc)))
        batch = decode._dali_batch(views)
        assert type(batch).__name__ == "TensorListCPU" and len(batch) == len(items)
        assert [batch[i].data_ptr() for i in range(len(items))] == [v.ctypes.data for v in views]
        assert [bytes(np.asarray(batch.at(i))) for i in range(len(items))] == items
    got = _decoder(size=24).decode(_column(items)).images
    original = decode._dali_batch
    decode._dali_batch = lambda views: views
    try:
        assert torch.equal(got, _decoder(size=24).decode(_column(items)).images)
    finally:
        decode._dali_batch = original


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_crop_offsets_are_equally_likely(backend):
    """Each of a crop's whole-pixel offsets comes up about equally often, as with torchvision's
    RandomCrop: the first and last came up half as often (a uniform position rounded)."""
    w, h, s = 26, 20, 16  # 11 x 5 offsets
    ramp = np.zeros((h, w, 3), np.uint8)
    ramp[..., 0] = np.arange(w, dtype=np.uint8)[None, :] * 9
    ramp[..., 1] = np.arange(h, dtype=np.uint8)[:, None] * 9
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "PNG")
    n = 2_200
    dec = _decoder(backend, size=s, crop="random", resize=None, seed=3, max_batch_size=n)
    out = dec.decode([buf.getvalue()] * n, keys=np.arange(n, dtype=np.int64)).images
    x0, y0 = out[:, 0, 0, 0].numpy() // 9, out[:, 1, 0, 0].numpy() // 9
    for offsets, count in ((x0, w - s + 1), (y0, h - s + 1)):
        seen = np.bincount(offsets.astype(np.int64), minlength=count)
        assert len(seen) == count and seen.min() > 0.7 * n / count and seen.max() < 1.3 * n / count, seen
