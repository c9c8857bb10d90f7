"""A tar shard replaced after the manifest was written by a longer or shorter file, on a store
read through fsspec's `cat_ranges` (S3, GCS; here fsspec's memory filesystem, the same code
path): the read refuses it before delivering any of its samples, naming the dataset, the shard
and both sizes. Before, a shard read in pieces had its size checked only by the piece that ends
where the manifest says the file ends: the samples of the pieces before it were delivered from
the changed file first (over HTTP every answer carries the size, and it was refused at once)."""

import os

import pytest

import dsutil
import sparkfeed
from sparkfeed import ShardReadError
from sparkfeed.read import tar


@pytest.fixture
def small_pieces(monkeypatch):
    """Shards read in pieces of a few samples (the first one alone: `TarReader.chunks`)."""
    monkeypatch.setattr(tar, "FIRST_CHUNK_BYTES", 64 << 10)
    monkeypatch.setattr(tar, "CHUNK_BYTES", 128 << 10)
    monkeypatch.setattr(tar, "MIN_CHUNK_ROWS", 4)


@pytest.mark.parametrize("change", ["longer", "shorter"])
def test_a_replaced_tar_is_refused_before_its_first_piece_is_delivered(tmp_path, small_pieces, change):
    import fsspec

    dsutil.write_tar(str(tmp_path / "wds"), dsutil.table(300, image_bytes=3000), 100)
    memory, root = fsspec.filesystem("memory"), f"/tar-size-{os.getpid()}-{change}/wds"
    for name in os.listdir(tmp_path / "wds"):
        data = (tmp_path / "wds" / name).read_bytes()
        if name == "shard-00001.tar":
            written = len(data)
            data = data + bytes(10240) if change == "longer" else data[:-4096]
        memory.pipe_file(f"{root}/{name}", data)
    delivered = []
    try:
        with pytest.raises(ShardReadError) as info:
            for batch in sparkfeed.DataLoader(f"memory://{root}", batch_size=50):
                delivered += batch["id"].tolist()
    finally:
        memory.rm(os.path.dirname(root), recursive=True)
    now = written + 10240 if change == "longer" else written - 4096
    assert str(info.value).startswith(f"dataset 'memory://{root}', shard 'shard-00001.tar'"), info.value
    assert f"the file is {now} bytes but the manifest says {written}" in str(info.value)
    assert delivered == list(range(100))  # shard 0 only: none of the changed shard's samples


def test_a_replaced_tar_is_skipped_under_on_error_skip(tmp_path, small_pieces):
    """on_error="skip": the changed shard's samples are skipped and counted, the others
    delivered (the size check of its first piece left the loader as an error before)."""
    import fsspec

    dsutil.write_tar(str(tmp_path / "wds"), dsutil.table(300, image_bytes=3000), 100)
    memory, root = fsspec.filesystem("memory"), f"/tar-size-{os.getpid()}-skip/wds"
    for name in os.listdir(tmp_path / "wds"):
        data = (tmp_path / "wds" / name).read_bytes()
        memory.pipe_file(f"{root}/{name}", data + bytes(10240) if name == "shard-00001.tar" else data)
    try:
        loader = sparkfeed.DataLoader(f"memory://{root}", batch_size=50, on_error="skip")
        ids = [i for b in loader for i in b["id"].tolist()]
    finally:
        memory.rm(os.path.dirname(root), recursive=True)
    assert sorted(ids) == list(range(100)) + list(range(200, 300))
    assert loader.stats()["samples_skipped"] == 100
