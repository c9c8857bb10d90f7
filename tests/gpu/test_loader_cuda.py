"""Whole loaders that deliver to CUDA: an `NpyDecode` column (decoded on the host, copied on the
side stream) and image decoding on the GPU beside forked process workers. Skipped without CUDA."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import sparkfeed

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _jpeg(i: int) -> bytes:
    from PIL import Image

    y, x = np.mgrid[0:24, 0:32]
    a = np.stack([(x * 8 + i) % 256, y * 10, (x + y + i) % 256], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _write(tmp_path, n: int) -> str:
    root = tmp_path / "data"
    root.mkdir()
    table = pa.table({"id": np.arange(n), "emb": pa.array([_npy(np.full((2, 3), k, np.float32)) for k in range(n)]),
                      "image": pa.array([_jpeg(k) for k in range(n)])})
    pq.write_table(table, root / "a.parquet", row_group_size=40)  # batches of 32 span row groups
    return str(root)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_npy_column_reaches_cuda_with_the_host_values(tmp_path, workers):
    path = _write(tmp_path, 200)
    args = dict(batch_size=32, shuffle=True, seed=5, num_workers=workers, columns=["id", "emb"],
                decode={"emb": sparkfeed.NpyDecode()})
    host = list(sparkfeed.DataLoader(path, **args))
    cuda = list(sparkfeed.DataLoader(path, device="cuda", pin_memory=True, **args))
    assert len(host) == len(cuda) and all(b["emb"].is_cuda and b["id"].is_cuda for b in cuda)
    for h, c in zip(host, cuda):
        assert torch.equal(h["id"], c["id"].cpu()) and torch.equal(h["emb"], c["emb"].cpu())
    assert sorted(i for b in cuda for i in b["id"].tolist()) == list(range(200))


def test_process_workers_fork_beside_cuda_and_gpu_decoding(tmp_path):
    """CUDA and DALI's GPU pipeline live in the parent; forked process workers read and pack the
    bytes, the parent decodes on the GPU: every row once, the images on the device."""
    pytest.importorskip("nvidia.dali")
    path = _write(tmp_path, 200)
    warm = sparkfeed.DataLoader(path, batch_size=32, columns=["image"],
                                decode={"image": sparkfeed.ImageDecode(size=16, device="gpu")})
    assert all(b["image"].is_cuda for b in warm)
    del warm  # its pipeline may linger until a collection; forked children must not collect it
    loader = sparkfeed.DataLoader(path, batch_size=32, num_workers=2, worker_type="process",
                                  multiprocessing_context="fork", timeout=120, columns=["id", "image"],
                                  decode={"image": sparkfeed.ImageDecode(size=16, device="gpu")})
    ids = []
    for batch in loader:
        assert batch["image"].is_cuda and batch["image"].shape[1:] == (3, 16, 16)
        ids += batch["id"].tolist()
    assert sorted(ids) == list(range(200))
