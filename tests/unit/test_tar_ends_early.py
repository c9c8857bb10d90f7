"""A tar shard that ends before the samples its manifest counts: a zero block (tarfile's
end-of-archive mark) in the middle of the shard, a file cut short inside a member, bytes added
after the end-of-archive blocks. Each is an error naming the dataset, the shard and the tar
offset where the archive ended (and the samples expected and seen), or under on_error="skip" the
shard's samples skipped and counted exactly, never samples silently lost."""

import io
import json
import logging
import os
import tarfile

import pytest

import sparkfeed
from dsutil import table, write_tar
from sparkfeed.errors import ShardReadError
from sparkfeed.read import tarindex
from sparkfeed.read.tarinfo import StrictTarInfo, TarHeaderError, split_name

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
    assert f"skipping 10 sample(s), 0-9 of the shard's 10: dataset {root!r}, shard {SHARD!r}, tar offset {offsets[12]}" in caplog.text


@pytest.mark.parametrize("index", [False, True], ids=["unindexed", "index no longer matching"])
def test_a_shorter_tar_padded_to_the_same_size_is_not_called_a_zeroed_header(tmp_path, index):
    """A shard replaced by one of 9 samples, zeros after its end to the same size (tar pads its
    end to whole records; another blocking factor pads more): the archive ends at its own
    end-of-archive blocks. The error said "a member header zeroed?" of bytes all zeros."""
    root, raw, offsets = _dataset(tmp_path, index)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        kept = [(m, tar.extractfile(m).read()) for m in tar.getmembers()][:-3]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for m, data in kept:
            tar.addfile(m, io.BytesIO(data))
    short = out.getvalue()
    assert len(short) < len(raw)
    _replace(root, short + b"\0" * (len(raw) - len(short)))
    with pytest.raises(ShardReadError) as info:
        _ids(root)
    end = offsets[-3]  # where the tenth sample's first header was: its end-of-archive blocks now
    assert (info.value.shard, info.value.offset) == (SHARD, end)
    assert (f"at its end-of-archive blocks (the {len(raw) - end} bytes past them are zeros: the tar's own "
            "end), after 9 samples where the manifest counts 10") in str(info.value)
    assert "zeroed" not in str(info.value)


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


def _three_samples() -> tuple[bytes, int, str]:
    """A tar of three samples without its end-of-archive blocks, where its last member ends, and
    its DALI index."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for k in range(3):
            for ext, data in (("cls", str(k).encode()), ("jpg", b"x" * 700)):
                info = tarfile.TarInfo(f"{k:05d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        end = tar.offset
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tar:
        members = tar.getmembers()
    lines = [" ".join(f"{m.name[6:]} {m.offset_data} {m.size} {m.name}" for m in members[k:k + 2]) for k in (0, 2, 4)]
    return buf.getvalue()[:end], end, "v1.2 3\n" + "\n".join(lines) + "\n"


def _streamed(raw: bytes):
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r|", tarinfo=StrictTarInfo) as tar:
            return [(m.name, tar.extractfile(m).read()) for m in tar if m.name.endswith(".cls")]
    except TarHeaderError as exc:
        return exc


@pytest.mark.parametrize("tail", [b"\0" * 100, b"\0" * 512 + b"a second tar joined on", b"\0" * 1024],
                         ids=["an end block cut short", "bytes after the end block", "end blocks"])
def test_what_follows_the_last_member_is_read_alike_through_the_index_and_streamed(tail):
    """`tarfile` (and webdataset) end the archive at a zero block, or at a block of zeros the
    file cuts short; the streamed read refused the latter as a header cut short (the index path
    took it), and the index path refused bytes after an end block (streamed: read as tarfile
    reads it, at 7x the CPU)."""
    raw, _, text = _three_samples()
    got = tarindex.members(raw + tail, text, {"cls"}, split_name, 1 << 30)
    assert got is not None and got.values["cls"].to_pylist() == [b"0", b"1", b"2"]
    assert _streamed(raw + tail) == [(f"{k:05d}.cls", str(k).encode()) for k in range(3)]


def test_a_header_cut_short_after_the_last_member_is_still_refused():
    raw, end, text = _three_samples()
    cut = raw + _tar_header_bytes()[:100]
    assert tarindex.members(cut, text, {"cls"}, split_name, 1 << 30) is None
    assert isinstance(_streamed(cut), TarHeaderError) and _streamed(cut).offset == end


def _tar_header_bytes() -> bytes:
    info = tarfile.TarInfo("00003.cls")
    info.size = 1
    return info.tobuf(tarfile.USTAR_FORMAT)


def test_a_shard_with_a_tar_joined_after_its_end_block_is_read_through_its_index(tmp_path, caplog):
    root = str(tmp_path / "ds")
    os.makedirs(root)
    raw, _, _ = _three_samples()
    with open(os.path.join(root, "s.tar"), "wb") as f:
        f.write(raw + b"\0" * 1024 + raw + b"\0" * 1024)  # `cat a.tar b.tar`: tarfile reads a.tar
    caplog.set_level(logging.INFO, logger="sparkfeed")
    assert sparkfeed.index(root, progress=False).num_samples == 3
    assert "bytes that are not zero follow its end-of-archive block" in caplog.text
    got = [c for b in sparkfeed.DataLoader(root, batch_size=4, columns=["cls"], shuffle=False) for c in b["cls"].tolist()]
    assert got == [0, 1, 2] and "streaming the tar" not in caplog.text
