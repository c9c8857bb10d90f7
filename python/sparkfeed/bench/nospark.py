"""The bench data without Spark: pyarrow writes the Parquet, `tarfile` the tars, and
`sparkfeed.index` writes their manifests (and the tars' DALI indexes), as for data a user
already has. Used where no Spark session can start (no pyspark or no Java: a GPU machine set up
for training), so `sparkfeed bench` measures the loaders there too; the rows are the same as
the Spark writer's: same columns, types, ids, labels and JPEG bytes."""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)


def _shards(n: int, shard: int):
    """(index, first row, rows) of each shard of `shard` rows."""
    return [(k, lo, min(shard, n - lo)) for k, lo in enumerate(range(0, n, shard))]


def _index(path: str, fmt: str) -> None:
    import sparkfeed

    sparkfeed.index(path, format=fmt, mode="overwrite", progress=False)


def write_tabular(path: str, n: int, shard: int, group: int, labels: int, floats: int) -> None:
    """id, label (clustered: id * labels / n), f0..f<floats-1> (uniform float32), caption."""
    os.makedirs(path, exist_ok=True)
    for k, lo, rows in _shards(n, shard):
        ids = np.arange(lo, lo + rows, dtype=np.int64)
        rng = np.random.default_rng(k)
        cols = {"id": ids, "label": (ids * labels // n).astype(np.int32)}
        cols.update({f"f{i}": rng.random(rows, dtype=np.float32) for i in range(floats)})
        cols["caption"] = pa.array([f"a synthetic caption for row {i}" for i in ids.tolist()])
        pq.write_table(pa.table(cols), os.path.join(path, f"part-{k:05d}.parquet"), row_group_size=group)
    _index(path, "parquet")


def _encode(args) -> list[bytes]:
    from .datasets import jpeg

    ids, width, height = args
    return [jpeg(int(i), width, height) for i in ids]


def write_images(path: str, n: int, shape: tuple[int, int], shard: int, group: int, labels: int) -> None:
    """id, label (clustered), caption, image (JPEG bytes of `shape`), as Parquet shards; the
    JPEGs encoded on every core (PIL holds the GIL while it encodes), one pool for all shards."""
    os.makedirs(path, exist_ok=True)
    with multiprocessing.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        for k, lo, rows in _shards(n, shard):
            ids = np.arange(lo, lo + rows, dtype=np.int64)
            chunks = [(c, *shape) for c in np.array_split(ids, max(1, rows // 64))]
            images = [b for part in pool.map(_encode, chunks) for b in part]
            table = pa.table({"id": ids, "label": (ids * labels // n).astype(np.int32),
                              "caption": pa.array([f"image {i}" for i in ids.tolist()]),
                              "image": pa.array(images, pa.binary())})
            pq.write_table(table, os.path.join(path, f"part-{k:05d}.parquet"), row_group_size=group)
    _index(path, "parquet")


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_webdataset(images: str, path: str, shard: int) -> None:
    """The image rows as WebDataset tars of at most `shard` samples (`<key>.jpg`, `.cls`,
    `.txt`), as the JVM writer lays them out, then indexed (which writes each tar's DALI index).
    One batch of rows in memory at a time."""
    import pyarrow.dataset as pads

    dataset = pads.dataset(images, format="parquet", exclude_invalid_files=True)
    os.makedirs(path, exist_ok=True)
    batches = dataset.to_batches(columns=["id", "label", "caption", "image"], batch_size=shard)
    for k, part in enumerate(b.to_pydict() for b in batches if b.num_rows):
        with tarfile.open(os.path.join(path, f"part-{k:05d}.tar"), "w", format=tarfile.USTAR_FORMAT) as tar:
            for rid, label, caption, image in zip(part["id"], part["label"], part["caption"], part["image"]):
                key = f"s{rid:09d}"
                _member(tar, f"{key}.cls", str(label).encode())
                _member(tar, f"{key}.txt", caption.encode())
                _member(tar, f"{key}.jpg", image)
    _index(path, "webdataset")
