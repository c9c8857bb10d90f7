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


def test_a_batch_in_chunks_decodes_on_the_gpu_as_the_joined_column():
    """A batch cut across row groups (`BinaryChunks`, each part in its own buffer) decodes on the
    GPU to exactly what the joined column gives, with a batch of several submitted ahead (DALI's
    queue depth 2) and a cut JPEG in a later part refused at its own row."""
    from sparkfeed.binarycols import BinaryChunks, BinaryColumn

    def column(items):
        data = torch.from_numpy(np.frombuffer(b"".join(items), np.uint8).copy())
        return BinaryColumn(data, torch.tensor(np.cumsum([0] + [len(b) for b in items]), dtype=torch.int64))

    good = _encode(200, 150)
    items = IMAGES + [good[: int(len(good) * 0.8)], _encode(90, 60, shift=7)]
    chunks = BinaryChunks((column(items[:2]), column(items[2:3]), column(items[3:])))
    dec = ImageDecoder(ImageDecode(size=32, crop="random", mirror=True, device="gpu"), max_batch_size=16, seed=3)
    jobs = [dec.submit(chunks, keys=np.arange(len(items))), dec.submit(column(items), keys=np.arange(len(items)))]
    got, want = dec.collect(jobs[0]), dec.collect(jobs[1])
    assert got.images.is_cuda and torch.equal(got.images, want.images)
    assert got.ok_rows.tolist() == want.ok_rows.tolist() and 5 not in got.ok_rows.tolist()
    assert [r for r, _ in got.failures] == [5]


def test_the_tensorlist_hand_over_decodes_on_the_gpu_as_the_list(monkeypatch):
    """The hand-over as one TensorListCPU over the images' own memory (on by default on the CPU)
    gives the "mixed" decoders the same pixels as a list of arrays, for a batch in one buffer and
    one in chunks. When this passes on a GPU, `dalidecode._TENSORLIST_ON_GPU` can be turned on."""
    import sparkfeed.dalidecode as decode
    from sparkfeed.binarycols import BinaryChunks, BinaryColumn

    def column(items):
        data = torch.from_numpy(np.frombuffer(b"".join(items), np.uint8).copy())
        return BinaryColumn(data, torch.tensor(np.cumsum([0] + [len(b) for b in items]), dtype=torch.int64))

    items = IMAGES + [_encode(90, 60, shift=7), _encode(64, 64, shift=3)]
    batches = [column(items), BinaryChunks((column(items[:2]), column(items[2:])))]

    def decoded():
        dec = ImageDecoder(ImageDecode(size=32, crop="random", mirror=True, device="gpu"), max_batch_size=16, seed=3)
        return [dec.decode(b, keys=np.arange(len(items))).images for b in batches]

    as_list = decoded()
    monkeypatch.setattr(decode, "_TENSORLIST_ON_GPU", True)
    as_tensorlist = decoded()
    assert all(a.is_cuda and torch.equal(a, b) for a, b in zip(as_list, as_tensorlist))
