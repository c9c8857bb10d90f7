"""GPU ("mixed") DALI decoding: CUDA tensors that match CPU DALI output. Skipped without CUDA."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from sparkfeed.decode import ImageDecode, ImageDecoder

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _encode(w: int, h: int, mode: str = "RGB", fmt: str = "JPEG", shift: int = 0) -> bytes:
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([(x * 255 // w + shift) % 256, y * 255 // h, (x + y) * 255 // (w + h)], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).convert(mode).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


IMAGES = [_encode(64, 48), _encode(50, 70, "L"), _encode(40, 40, "CMYK"), _encode(33, 44, fmt="PNG"),
          _encode(300, 200, shift=40)]


def _pair(**kw):
    gpu = ImageDecoder(ImageDecode(device="gpu", **kw), max_batch_size=16, seed=3)
    cpu = ImageDecoder(ImageDecode(device="cpu", **kw), max_batch_size=16, seed=3)
    return gpu, cpu


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_gpu_matches_cpu(layout):
    gpu, cpu = _pair(size=32, layout=layout)
    g, c = gpu.decode(IMAGES), cpu.decode(IMAGES)
    assert g.images.is_cuda and g.images.device.index == torch.cuda.current_device()
    assert g.images.shape == c.images.shape and g.images.dtype == torch.uint8
    assert (g.images.cpu().float() - c.images.float()).abs().mean() < 3.0  # nvJPEG vs libjpeg-turbo


def test_gpu_normalised_and_random_augment_match_cpu():
    kw = dict(size=24, crop="random", mirror=True, mean=(120.0,) * 3, std=(60.0,) * 3)
    gpu, cpu = _pair(**kw)
    gpu.set_epoch(2, rank=1)
    cpu.set_epoch(2, rank=1)
    g, c = gpu.decode(IMAGES).images, cpu.decode(IMAGES).images
    assert g.is_cuda and g.dtype == torch.float32
    assert (g.cpu() - c).abs().mean() < 0.05
    gpu.set_epoch(2, rank=1)
    assert torch.equal(gpu.decode(IMAGES).images, g)


def test_gpu_reports_bad_rows():
    good = _encode(200, 150)
    res = ImageDecoder(ImageDecode(size=16, device="gpu"), max_batch_size=8).decode(
        [good, good[: int(len(good) * 0.8)], b"", good])
    assert res.images.is_cuda and res.ok_rows.tolist() == [0, 3]
    assert [r for r, _ in res.failures] == [1, 2]


def test_auto_picks_gpu():
    res = ImageDecoder(ImageDecode(size=16), max_batch_size=4).decode(IMAGES[:2])
    assert res.images.is_cuda
