"""The PIL backend resamples as DALI's antialiased linear resize does, to within one level."""

import io

import numpy as np
import pytest
from PIL import Image

from sparkfeed import ImageDecode
from sparkfeed.decode import ImageDecoder


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def _both(images, **kw):
    """The two backends' outputs of the same batch and draws, as int tensors (NHWC)."""
    keys = np.arange(len(images), dtype=np.int64) * 7919 + 11
    out = []
    for backend in ("dali", "pil"):
        spec = ImageDecode(device="cpu", backend=backend, layout="NHWC", **kw)
        res = ImageDecoder(spec, max_batch_size=len(images), seed=5).decode(images, keys=keys)
        assert res.failures == (), (backend, res.failures)
        out.append(res.images.int())
    return out


def _noise(sizes, seed=0):
    rs = np.random.RandomState(seed)
    return [_png(rs.randint(0, 256, (h, w, 3), np.uint8)) for w, h in sizes]


# stored sizes (w, h): downscales by whole and fractional factors, upscales, strips, 1x1
SIZES = [(500, 375), (80, 37), (37, 80), (99, 99), (96, 96), (300, 200), (20, 20), (1, 1), (1, 9), (9, 2),
         (33, 64), (250, 251)]


@pytest.mark.parametrize("kw", [dict(size=32), dict(size=33), dict(size=24, crop="random", resize=40, mirror=True),
                                dict(size=16, crop="random_resized", mirror=True),
                                dict(size=48, crop="random_resized", scale=(0.9, 1.0))],
                         ids=["centre-32", "centre-33", "random-resize40", "random_resized-16", "random_resized-48"])
def test_pil_and_dali_resample_noise_within_one_level(kw):
    """Noise (the hardest case for a filter) of each size under every geometry that resizes: the
    same shape, and no pixel more than one level apart. Plain `Image.resize(BILINEAR)` was up to
    38 levels off: Pillow narrows its filter at the image's edge where DALI repeats the edge pixel,
    and it maps the whole image onto the rounded size where DALI keeps the exact scale (a
    500x375 image to 224 is 298.67 px wide in DALI, stretched to 299 in Pillow)."""
    dali, pil = _both(_noise(SIZES), **kw)
    assert dali.shape == pil.shape
    assert int((dali - pil).abs().max()) <= 1


def test_a_checkerboard_shrunk_three_times_is_the_same_in_both_backends():
    """A one-pixel checkerboard (every level a filter can swing) shrunk 3x and 3.09x, on both axes
    and on one (a 297x99 strip): DALI and PIL within one level (32 levels apart before)."""
    y, x = np.mgrid[:297, :297]
    board = np.repeat((((x + y) % 2) * 255).astype(np.uint8)[..., None], 3, 2)
    images = [_png(board[:96, :96]), _png(board[:99, :99]), _png(np.ascontiguousarray(board[:99, :297])),
              _png(np.ascontiguousarray(board[:100, :100]))]
    for size in (32, 33):
        dali, pil = _both(images, size=size)
        assert int((dali - pil).abs().max()) <= 1, size
