"""A tar shard that ends before the samples its manifest counts: a zero block (tarfile's
end-of-archive mark) in the middle of the shard, a file cut short inside a member, bytes added
after the end-of-archive blocks. Each is an error naming the dataset, the shard and the tar
offset where the archive ended (and the samples expected and seen), or under on_error="skip" the
shard's samples skipped and counted exactly, never samples silently lost."""

import json
import os
import tarfile

import pytest

import sparkfeed
from dsutil import table, write_tar
from sparkfeed.errors import ShardReadError

SHARD = "shard-00000.tar"


def _dataset(tmp_path, index: bool) -> tuple[str, bytes, list[int]]:
    """Two shards of 10 samples (ids 0-19, 3 members each); the first's bytes and header offsets."""
    root = str(tmp_path / "ds")
    write_tar(root, table(20), 10, index=index)
    path = os.path.join(root, SHARD)
    with tarfile.open(path) as tar:
        offsets = [m.offset for m in tar.getmembers()]
    return root, open(path, "rb").read(), offsets


def _replace(root: str, data: bytes) -> None:
    """The first shard's bytes replaced, its modification time kept (an unnoticed change)."""
    path = os.path.join(root, SHARD)
    st = os.stat(path)
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _ids(root: str, **kw) -> tuple[list[int], dict]:
    loader = sparkfeed.DataLoader(root, batch_size=4, columns=["id"], shuffle=False, **kw)
    return [i for b in loader for i in b["id"].tolist()], loader.stats()


def _zeroed(raw: bytes, at: int) -> bytes:
    return raw[:at] + b"\0" * 512 + raw[at + 512:]


@pytest.mark.parametrize("index", [False, True], ids=["unindexed", "index no longer matching"])
@pytest.mark.parametrize("sample", [4, 0])
def test_a_zero_block_inside_a_shard_names_its_offset_and_the_samples_lost(tmp_path, index, sample):
    root, raw, offsets = _dataset(tmp_path, index)
    at = offsets[3 * sample]  # the sample's first header
    _replace(root, _zeroed(raw, at))
    with pytest.raises(ShardReadError) as info:
        _ids(root)
    err = info.value
    assert (err.dataset, err.shard, err.offset) == (root, SHARD, at)
    assert f"after {sample} samples where the manifest counts 10" in str(err)
    assert f"{len(raw) - at} more bytes in the file past it" in str(err)


def test_a_zero_block_inside_a_shard_under_skip_skips_the_whole_shard_counted(tmp_path, caplog):
    root, raw, offsets = _dataset(tmp_path, False)
    _replace(root, _zeroed(raw, offsets[12]))
    ids, stats = _ids(root, on_error="skip")
    assert ids == list(range(10, 20))  # the other shard whole, nothing of this one half-read
    assert stats["samples_skipped"] == 10
    assert f"skipping 10 samples: dataset {root!r}, shard {SHARD!r}, tar offset {offsets[12]}" in caplog.text


def test_a_zero_block_with_a_filter_is_the_same_error(tmp_path):
    root, raw, offsets = _dataset(tmp_path, False)
    _replace(root, _zeroed(raw, offsets[12]))
    with pytest.raises(ShardReadError) as info:
        _ids(root, filter=[("score", ">=", 0.0)])
    assert (info.value.shard, info.value.offset) == (SHARD, offsets[12])
    ids, stats = _ids(root, filter=[("score", ">=", 0.0)], on_error="skip")
    assert (ids, stats["samples_skipped"]) == (list(range(10, 20)), 10)


@pytest.mark.parametrize("index", [False, True], ids=["unindexed", "indexed"])
@pytest.mark.parametrize("how", ["cut inside a member", "bytes after the end blocks"])
def test_a_cut_or_extended_shard_names_the_offset_and_skips_counted(tmp_path, index, how):
    root, raw, offsets = _dataset(tmp_path, index)
    bad = raw[:offsets[12] + 700] if how.startswith("cut") else raw + b"garbage!" * 64
    _replace(root, bad)
    with pytest.raises(ShardReadError) as info:
        _ids(root)
    assert (info.value.shard, info.value.offset) == (SHARD, min(len(bad), len(raw)))
    assert f"the file is {len(bad)} bytes but the manifest says {len(raw)}" in str(info.value)
    ids, stats = _ids(root, on_error="skip")
    assert (ids, stats["samples_skipped"]) == (list(range(10, 20)), 10)


def test_a_shard_whole_but_for_zero_blocks_past_its_end_reads_whole(tmp_path):
    """Zero bytes after the end-of-archive blocks are no damage (tar pads to its record size)."""
    root, raw, _ = _dataset(tmp_path, False)
    padded = raw + b"\0" * 10240
    manifest = os.path.join(root, "_sparkfeed.json")
    doc = json.load(open(manifest))
    doc["shards"][0]["num_bytes"] = len(padded)
    doc["num_bytes"] = sum(s["num_bytes"] for s in doc["shards"])
    json.dump(doc, open(manifest, "w"))
    _replace(root, padded)
    assert _ids(root)[0] == list(range(20))
