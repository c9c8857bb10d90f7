"""Damaged tars, integer members and members in no sample, as `sparkfeed.index` and the reader
see them. A damaged member header is an error naming the shard and its tar offset, never the
archive's end with the rest of the shard silently lost; integer members are parsed as
webdataset parses them (`int`), and members webdataset puts in no sample are in none here."""

import io
import json
import logging
import os
import tarfile

import pyarrow as pa
import pytest

import sparkfeed
from sparkfeed.errors import CorruptSampleError, ShardReadError
from sparkfeed.read import tarindex
from sparkfeed.read.tarinfo import StrictTarInfo, TarHeaderError, split_name
from sparkfeed.read.tarnames import is_sample_member
from sparkfeed.read.tartable import _whole_column, parse_int


def _tar(members, fmt=tarfile.GNU_FORMAT) -> bytes:
    """A tar of (name, bytes) members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _samples(n: int = 6) -> list:
    return [(f"{k:05d}.{ext}", data) for k in range(n)
            for ext, data in (("cls", str(k).encode()), ("jpg", b"x" * 700))]


def _offsets(raw: bytes) -> list[int]:
    """Each member's header offset."""
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return [m.offset for m in tar.getmembers()]


def _dataset(tmp_path, raw: bytes, name: str = "s.tar") -> str:
    root = tmp_path / "ds"
    root.mkdir(exist_ok=True)
    (root / name).write_bytes(raw)
    return str(root)


def _spoil(raw: bytes, offset: int) -> bytes:
    """One bit of the name in the header at `offset` flipped: its checksum no longer matches."""
    out = bytearray(raw)
    out[offset + 2] ^= 0x01
    return bytes(out)


def _rename(raw: bytes, offset: int, old: bytes, new: bytes) -> bytes:
    """The name in the header at `offset` changed, its checksum made anew (a valid header)."""
    out = bytearray(raw)
    head = out[offset:offset + 512]
    head[:100] = head[:100].replace(old, new)
    head[148:156] = b" " * 8
    head[148:156] = b"%06o\0 " % sum(head)
    out[offset:offset + 512] = head
    return bytes(out)


def _labels(root: str, **kw) -> list:
    return [c for b in sparkfeed.DataLoader(root, batch_size=4, **kw) for c in b["cls"].tolist()]


# ------------------------------------------------------------------ damaged headers (tarfile)


@pytest.mark.parametrize("cut", [False, True], ids=["bad checksum", "cut inside a header"])
def test_a_damaged_header_past_byte_0_raises_naming_its_offset(cut):
    raw = _tar(_samples())
    at = _offsets(raw)[6]
    bad = raw[:at + 100] if cut else _spoil(raw, at)
    with pytest.raises(TarHeaderError) as info:
        with tarfile.open(fileobj=io.BytesIO(bad), mode="r|", tarinfo=StrictTarInfo) as tar:
            list(tar)
    assert info.value.offset == at and not isinstance(info.value, tarfile.HeaderError)


def test_the_archive_still_ends_at_zero_blocks_and_at_a_member_boundary():
    raw = _tar(_samples())
    at = _offsets(raw)[6]
    for data in (raw, raw[:at]):  # whole; cut where a header would start (as webdataset reads it)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|", tarinfo=StrictTarInfo) as tar:
            assert len(list(tar)) == (12 if data is raw else 6)
    with pytest.raises(tarfile.ReadError):  # byte 0 is no header: not a tar, as tarfile says
        tarfile.open(fileobj=io.BytesIO(_spoil(raw, 0)), mode="r|", tarinfo=StrictTarInfo)


@pytest.mark.parametrize("cut", [False, True], ids=["bad checksum", "cut inside a header"])
def test_index_refuses_a_damaged_header_naming_shard_and_offset(tmp_path, cut):
    raw = _tar(_samples())
    at = _offsets(raw)[6]
    root = _dataset(tmp_path, raw[:at + 100] if cut else _spoil(raw, at))
    with pytest.raises(ShardReadError) as info:
        sparkfeed.index(root, progress=False)
    assert (info.value.shard, info.value.offset) == ("s.tar", at)
    assert not os.path.exists(os.path.join(root, "_sparkfeed.json"))


def test_index_warns_of_a_tar_without_end_blocks_or_with_bytes_after_them(tmp_path, caplog):
    raw = _tar(_samples())
    at = _offsets(raw)[6]
    caplog.set_level(logging.WARNING, "sparkfeed.index.tar")
    root = _dataset(tmp_path, raw[:at])
    assert sparkfeed.index(root, progress=False).num_samples == 3
    assert "without the end-of-archive blocks" in caplog.text
    caplog.clear()
    zeroed = raw[:at] + b"\0" * 512 + raw[at + 512:]  # a header zeroed: tarfile's end of archive
    (tmp_path / "ds" / "s.tar").write_bytes(zeroed)
    assert sparkfeed.index(root, progress=False, mode="overwrite").num_samples == 3
    assert f"tar offset {at}" in caplog.text


@pytest.mark.parametrize("damaged", [False, True])
def test_index_read_as_one_stream_warns_of_bytes_after_the_end_block_too(tmp_path, caplog, damaged):
    """Over a server that ignores Range requests the tar is scanned as one stream (`tar.py`'s
    `stream=True`): a zeroed header there was the end of the shard without a word."""
    import fsspec

    from sparkfeed.index.tar import _Scan, _scan_members

    raw = _tar(_samples())
    at = _offsets(raw)[6]
    path = tmp_path / "s.tar"
    path.write_bytes(raw[:at] + b"\0" * 512 + raw[at + 512:] if damaged else raw)
    caplog.set_level(logging.WARNING, "sparkfeed.index.tar")
    scan = _Scan("ds", "s.tar")
    _scan_members(scan, fsspec.filesystem("file"), str(path), stream=True)
    assert len(scan.keys) == (3 if damaged else 6)
    assert (f"end-of-archive block at tar offset {at}" in caplog.text) == damaged
    assert ("bytes that are not zero" in caplog.text) == damaged


def test_reader_refuses_a_header_damaged_after_indexing(tmp_path):
    """The damage spoils the index's check, the shard is streamed, and the stream names it;
    under on_error="skip" the shard's samples are skipped and counted."""
    raw = _tar(_samples())
    last = _offsets(raw)[-1]  # the last member's header: sample 5's .jpg
    root = _dataset(tmp_path, raw)
    sparkfeed.index(root, progress=False)
    path = os.path.join(root, "s.tar")
    st = os.stat(path)
    open(path, "wb").write(_spoil(raw, last))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ShardReadError) as info:
        _labels(root, columns=["cls", "jpg"])
    assert (info.value.shard, info.value.offset) == ("s.tar", last)
    loader = sparkfeed.DataLoader(root, batch_size=4, columns=["cls", "jpg"], on_error="skip")
    assert [c for b in loader for c in b["cls"].tolist()] == []
    assert loader.stats()["samples_skipped"] == 6


def test_reader_refuses_a_member_renamed_after_indexing(tmp_path):
    """A renamed member with a valid checksum: tarfile reads it, the sample count still matches,
    and only the manifest's count of .jpg members shows sample 5's is gone."""
    raw = _tar(_samples())
    last = _offsets(raw)[-1]
    root = _dataset(tmp_path, raw)
    sparkfeed.index(root, progress=False)
    path = os.path.join(root, "s.tar")
    st = os.stat(path)
    open(path, "wb").write(_rename(raw, last, b"00005.jpg", b"00005.jpx"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ShardReadError, match=r"5 \.jpg member\(s\) where its manifest counts 6") as info:
        _labels(root, columns=["cls", "jpg"])
    assert info.value.offset == last


# ------------------------------------------------------------------ integer members


PLAIN = [b"0", b"7", b"-12", b"007", b" 42\n", b"010"]
OTHER = [b"+5", b"1_000", b"\t+0\x0b"]


def test_integer_members_are_what_int_makes_of_them_in_index_and_reader(tmp_path):
    values = PLAIN + OTHER
    root = _dataset(tmp_path, _tar([(f"k{i:02d}.cls", v) for i, v in enumerate(values)]))
    sparkfeed.index(root, progress=False)
    want = [int(v) for v in values]
    assert _labels(root) == want
    stats = json.load(open(os.path.join(root, "_sparkfeed.json")))["shards"][0]["stats"]["cls"]
    assert (stats["min"], stats["max"]) == (min(want), max(want))


@pytest.mark.parametrize("values", [PLAIN, PLAIN + OTHER, OTHER], ids=["plain", "mixed", "other"])
def test_whole_integer_column_is_the_per_value_parse(values):
    got = _whole_column(pa.array(values, pa.binary()), pa.int64())
    assert got.to_pylist() == [parse_int(v) for v in values]


@pytest.mark.parametrize("bad", [b"7a", b"1.0", b"\xd9\xa3", b"1__0"])
def test_an_integer_int_refuses_is_still_refused_by_index_and_reader(tmp_path, bad):
    with pytest.raises(ValueError):
        int(bad)
    assert _whole_column(pa.array([b"1", bad], pa.binary()), pa.int64()) is None
    root = _dataset(tmp_path, _tar([("a.cls", b"1"), ("b.cls", bad)]))
    with pytest.raises(ShardReadError, match="'b'"):
        sparkfeed.index(root, progress=False)
    good = b"9" * len(bad)  # indexed, then spoiled in place (same size and mtime)
    raw = _tar([("a.cls", b"1"), ("b.cls", good)])
    open(os.path.join(root, "s.tar"), "wb").write(raw)
    sparkfeed.index(root, progress=False)
    path = os.path.join(root, "s.tar")
    st = os.stat(path)
    at = raw.index(good + b"\0")
    open(path, "wb").write(raw[:at] + bad + raw[at + len(bad):])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(CorruptSampleError, match="'b'"):
        _labels(root)
    loader = sparkfeed.DataLoader(root, batch_size=4, on_error="skip")
    assert [c for b in loader for c in b["cls"].tolist()] == [1]
    assert loader.stats()["samples_skipped"] == 1


# ------------------------------------------------------------------ members in no sample

NAMES = ["a.txt", "README", ".txt", "a.", "dir/b.jpg", "dir/.txt", "x.y/.txt", "x.y/z",
         "a.b.c", "a.b/c.d", ".hidden.txt", "dir/README"]


def test_sample_members_are_webdatasets():
    tariterators = pytest.importorskip("webdataset.tariterators")
    for name in NAMES:
        key, ext = tariterators.base_plus_ext(name)
        assert is_sample_member(name) == (key is not None and ext != ""), name


def test_members_in_no_sample_are_skipped_by_index_and_reader(tmp_path, caplog):
    members = [("a.txt", b"hello"), ("README", b"not a sample"), (".txt", b"empty key"),
               ("b.", b"empty ext"), ("b.txt", b"world"), ("dir/README", b"x")]
    root = _dataset(tmp_path, _tar(members))
    caplog.set_level(logging.INFO, "sparkfeed.index.tar")
    manifest = sparkfeed.index(root, progress=False)
    assert "4 member(s) in no sample" in caplog.text
    assert [c.name for c in manifest.schema] == ["key", "txt"] and manifest.num_samples == 2
    index = open(os.path.join(root, manifest.shards[0].index)).read()
    assert "README" not in index and " .txt" not in index and "b. " not in index
    got = [(k, t) for b in sparkfeed.DataLoader(root, batch_size=4) for k, t in zip(b["key"], b["txt"])]
    assert got == [("a", "hello"), ("b", "world")]
    os.remove(os.path.join(root, manifest.shards[0].index))  # the streamed read says the same
    assert [k for b in sparkfeed.DataLoader(root, batch_size=4) for k in b["key"]] == ["a", "b"]


def test_an_index_naming_a_member_in_no_sample_is_not_used():
    raw = _tar([(".txt", b"1")], fmt=tarfile.USTAR_FORMAT)
    at = raw.index(b"1" + b"\0" * 511)
    assert tarindex.Index.parse(f"v1.2 1\ntxt {at} 1 .txt\n", lambda n: ("", "txt"), 1 << 30) is None
    raw = _tar([("ab/.txt", b"1")], fmt=tarfile.USTAR_FORMAT)  # webdataset's key "ab/"
    at = raw.index(b"1" + b"\0" * 511)
    for text in (f"v1.2 1\ntxt {at} 1 ab/.txt\n", f"v1.2 1\ntxt  {at} 1 ab/.txt\n"):  # both parses
        index = tarindex.Index.parse(text, split_name, 1 << 30)
        assert index is not None and index.keys == ["ab/"]
