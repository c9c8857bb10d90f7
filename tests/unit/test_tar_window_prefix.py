"""A window of an indexed shard read past sample 0 (a lane, a rank that starts inside a shard)
is read as `tarfile` reads the shard: a global pax header (`g`) before the window, whose `path`
record `tarfile` gives every later member with an extended header of its own, with an index
written by hand that ignores it, gave the window's members their header names (ranks 1 of 2:
s0005..s0009) where `tarfile` names them all `s0000.cls`. The headers before the window are now
checked against the index first (`tarprefix`), as a whole shard's are; where they do not
match, the shard is read whole, as `tarfile` reads it. Local shards only: over remote storage the
headers before a window are not fetched (`tarprefix`'s note says what they would cost), and a
window over HTTP is read apart as before. Real tars, real HTTP on 127.0.0.1."""

import io
import os
import tarfile

import pytest

import sparkfeed
from faulty_http import FaultPlan, FaultyServer
from sparkfeed.errors import ShardReadError


def _record(key: str, value: str) -> bytes:
    """One pax record, its length field counting itself."""
    body = f" {key}={value}\n"
    n = len(body) + len(str(len(body) + 2))
    return f"{n}{body}".encode()


def _tar(global_data: bytes) -> bytes:
    """10 samples (.cls, .txt), each member with an extended header (a fractional mtime, as
    webdataset's TarWriter writes), and a global pax header holding `global_data` before sample 3."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for k in range(10):
            if k == 3:
                g = tarfile.TarInfo("pax_global_header")
                g.type, g.size = tarfile.XGLTYPE, len(global_data)
                tar.addfile(g, io.BytesIO(global_data))
            for ext, data in (("cls", str(k).encode()), ("txt", f"text {k}".encode())):
                info = tarfile.TarInfo(f"s{k:04d}.{ext}")
                info.size, info.mtime = len(data), 1.5
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _dataset(tmp_path, harmful: bool, url: str | None = None) -> str:
    """A shard indexed by `sparkfeed index` (over HTTP at `url`, ETags recorded, the manifest
    kept apart) with a harmless global header (a comment); with `harmful`, that header's records
    then replaced by a `path` of the same length, the file's size and time kept (its ETag too):
    the index now lies about how `tarfile` reads the shard. Returns what to load."""
    root = str(tmp_path / "ds")
    os.makedirs(root)
    path = os.path.join(root, "s.tar")
    bad = _record("path", "s0000.cls")
    good = _record("comment", "x" * (len(bad) - len(_record("comment", ""))))
    assert len(good) == len(bad)
    open(path, "wb").write(_tar(good))
    if url is None:
        sparkfeed.index(root, progress=False)
    else:
        root = str(tmp_path / "manifest")
        sparkfeed.index([f"{url}/ds/s.tar"], manifest=root, progress=False)
    if harmful:
        st = os.stat(path)
        open(path, "wb").write(_tar(bad))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return root


def _read(root: str, rank: int, world_size: int = 2):
    """(labels, None) that rank reads, or (None, the error)."""
    try:
        return [c for b in sparkfeed.DataLoader(manifest=root, batch_size=4, rank=rank, world_size=world_size)
                for c in b["cls"].tolist()], None
    except ShardReadError as exc:
        return None, str(exc)


def test_tarfile_reads_the_crafted_shard_otherwise(tmp_path):
    """The premise: `tarfile` gives the global `path` to every member after it."""
    root = _dataset(tmp_path, harmful=True)
    with tarfile.open(os.path.join(root, "s.tar")) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
    assert names[:6] == ["s0000.cls", "s0000.txt", "s0001.cls", "s0001.txt", "s0002.cls", "s0002.txt"]
    assert set(names[6:]) == {"s0000.cls"}


@pytest.fixture(params=[False, True], ids=["local", "http"])
def url(request, tmp_path):
    """None (local files), or the URL of `tmp_path` served over HTTP with ETags."""
    if not request.param:
        yield None
        return
    with FaultyServer(str(tmp_path), FaultPlan(error_every=0, drop_every=0, stall_every=0), etags=True) as served:
        yield served


def test_a_window_past_a_global_header_is_read_as_tarfile_reads_the_shard(tmp_path):
    root = _dataset(tmp_path, True)
    whole = _read(root, 0, 1)
    assert whole[0] is None and "'s.tar'" in whole[1]  # the whole shard, streamed: refused
    got = _read(root, 1)
    assert got[0] is None, got  # before: [5, 6, 7, 8, 9], the members' header names
    assert got[1].split("shard ")[1] == whole[1].split("shard ")[1]  # the same error, same offset


def test_a_window_past_a_harmless_global_header_is_read_apart(tmp_path, url):
    root = _dataset(tmp_path, False, url)
    assert _read(root, 0) == ([0, 1, 2, 3, 4], None)
    assert _read(root, 1) == ([5, 6, 7, 8, 9], None)
