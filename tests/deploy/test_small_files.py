"""Small Parquet files over HTTP (no larger than the 64 KiB a footer's fetch reads): each is
fetched once per iteration, in one request, its footer parsed and its row groups served from
those bytes to every read-ahead task and lane (`read.sharedreads.SharedReads.hold`), which drop them
after the file's last row group is read; no lane opens a file through fsspec when read-ahead
has what it reads. Before, each file cost a footer request and a row-group request (or more,
split over fetches and lanes), and a lane opened each file through fsspec."""

from __future__ import annotations

import collections
import http.server
import os
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dsutil
import sparkfeed
from faulty_http import FaultPlan, FaultyServer
from sparkfeed import remotefiles
from sparkfeed.bench.remote import LatencyServer
from sparkfeed.read import sharedreads
from test_read_ahead import _IgnoresRange

_ROWS, _PER_FILE, _PER_GROUP = 1_000, 100, 30  # 10 files of 4 row groups (30, 30, 30, 10)


def _small_files(tmp_path, name: str = "pq") -> tuple[str, dict, pa.Table]:
    """Files of random 200-byte images, each well under 64 KiB: (root, {served path: size}, data)."""
    rng = np.random.default_rng(5)
    data = dsutil.table(_ROWS).select(["id", "label"])
    data = data.append_column("image", pa.array([rng.bytes(200) for _ in range(_ROWS)]))
    root = str(tmp_path / name)
    m = dsutil.write_parquet(root, data, _PER_FILE, _PER_GROUP)
    sizes = {f"{name}/{s.path}": s.num_bytes for s in m.shards}
    assert len(sizes) == _ROWS // _PER_FILE and max(sizes.values()) < 64 << 10
    return root, sizes, data


def _loader(url: str, **kw) -> sparkfeed.DataLoader:
    return sparkfeed.DataLoader(url, batch_size=64, columns=["id", "image"], **kw)


def _read(loader) -> dict[int, bytes]:
    """id -> image of every delivered row; a row delivered twice fails."""
    got: dict[int, bytes] = {}
    for batch in loader:
        for i, image in zip(batch["id"].tolist(), batch["image"]):
            assert i not in got, f"row {i} delivered twice"
            got[i] = bytes(image)
    return got


def _file_gets(server: LatencyServer) -> dict[str, list[str]]:
    """{served path: [its Range headers]} of the GETs of Parquet files."""
    out: dict[str, list[str]] = collections.defaultdict(list)
    server.settled()  # (the last answers are counted a moment after the client has them)
    for _, _, method, what, _ in server.log:
        path, _, rng = what.partition(" ")
        if method == "GET" and path.endswith(".parquet"):
            out[path].append(rng)
    return dict(out)


def _footer_bytes(root: str) -> int:
    """What opening every file counts in `bytes_read`: its footer and the 8 bytes after it."""
    return sum(pq.read_metadata(os.path.join(root, n)).serialized_size + 8
               for n in os.listdir(root) if n.endswith(".parquet"))


@pytest.mark.parametrize("workers, shuffle, ahead", [(0, False, None), (3, False, None), (3, False, 20_000),
                                                     (2, True, None), (2, True, 20_000)])
def test_each_small_file_is_fetched_once_in_one_request(tmp_path, workers, shuffle, ahead):
    """Every file one GET, for all its bytes, whatever splits its row groups: thread lanes (3:
    lane boundaries inside files and row groups), shuffle blocks, and a read-ahead bound of
    about one file (a file's row groups told in several fetches). Every row once, its bytes
    intact; `bytes_read` as a local read counts it and all of it from read-ahead (a file
    fetched once counts once). Before: two requests per file at least, three for some."""
    root, sizes, data = _small_files(tmp_path)
    kw = dict(num_workers=workers, worker_type="thread", read_ahead_bytes=ahead,
              shuffle=shuffle, seed=3, shuffle_buffer=250 if shuffle else None)
    local = _loader(root, **kw)
    images = dict(zip(data["id"].to_pylist(), data["image"].to_pylist()))
    assert _read(local) == images
    server = LatencyServer(str(tmp_path), latency_s=0.0)
    try:
        loader = _loader(f"{server.url}/pq", **kw)
        got = _read(loader)
    finally:
        server.close()
    assert got == images
    assert _file_gets(server) == {path: [f"bytes=0-{size - 1}"] for path, size in sizes.items()}
    stats = loader.stats()
    assert stats["bytes_read"] == local.stats()["bytes_read"]
    assert stats["bytes_read_ahead"] == stats["bytes_read"] - _footer_bytes(root)


def _holds(monkeypatch) -> list:
    """The `SharedReads` that held small files' bytes, and the bytes each held after every hold."""
    seen, hold = [], sharedreads.SharedReads.hold

    def recorded(self, path, data, groups):
        hold(self, path, data, groups)
        seen.append((self, self.held()))
    monkeypatch.setattr(sharedreads.SharedReads, "hold", recorded)
    return seen


@pytest.mark.parametrize("shuffle", [False, True])
def test_small_files_bytes_are_dropped_after_their_last_row_group(tmp_path, monkeypatch, shuffle):
    """Each file's bytes are held from its fetch until its last row group is read: none are left
    when the epoch ends (the iteration's `SharedReads` stays referenced meanwhile)."""
    _, sizes, data = _small_files(tmp_path)
    seen = _holds(monkeypatch)
    server = LatencyServer(str(tmp_path), latency_s=0.0)
    try:
        loader = _loader(f"{server.url}/pq", num_workers=2, worker_type="thread", shuffle=shuffle,
                         seed=1, shuffle_buffer=300 if shuffle else None)
        assert len(_read(loader)) == _ROWS
    finally:
        server.close()
    assert len(seen) == len(sizes)
    assert {id(shared) for shared, _ in seen} and all(shared.held() == 0 for shared, _ in seen)


def test_small_files_held_stay_within_the_bound(tmp_path, monkeypatch):
    """Past `WHOLE_HELD_BYTES` the least recently used file is dropped; its row groups not yet read
    are then fetched by range: every row once, bytes intact, and never more held than the bound
    (here two files' bytes, while the shuffled lanes need all ten at once)."""
    _, sizes, data = _small_files(tmp_path)
    bound = 2 * max(sizes.values())
    monkeypatch.setattr(sharedreads, "WHOLE_HELD_BYTES", bound)
    seen = _holds(monkeypatch)
    server = LatencyServer(str(tmp_path), latency_s=0.0)
    try:
        got = _read(_loader(f"{server.url}/pq", num_workers=2, worker_type="thread", shuffle=True,
                            seed=4, shuffle_buffer=1_000))
    finally:
        server.close()
    assert got == dict(zip(data["id"].to_pylist(), data["image"].to_pylist()))
    # the bound is met while more files than it holds were held (a file whose footer a lane
    # reads in place, read-ahead not having reached it, is never held: how many depends on timing)
    assert len(seen) >= 3 and max(held for _, held in seen) <= bound
    assert all(shared.held() == 0 for shared, _ in seen)


@pytest.mark.parametrize("small", [True, False])
def test_no_lane_opens_a_file_through_fsspec_when_read_ahead_has_it(tmp_path, monkeypatch, small):
    """A lane opens a file (fsspec's `open`) only for a read in place; one lane, whose read-ahead
    fetches every footer and row group, opens none, for small files and large (before: every
    file, on the lane, and every footer fetch through one more)."""
    if small:
        _small_files(tmp_path)
    else:
        rng = np.random.default_rng(6)
        data = dsutil.table(600).append_column("image", pa.array([rng.bytes(1_000) for _ in range(600)]))
        m = dsutil.write_parquet(str(tmp_path / "pq"), data, 200, 50)
        assert min(s.num_bytes for s in m.shards) > 64 << 10
    opened, open_remote = [], remotefiles.open_remote
    monkeypatch.setattr(remotefiles, "open_remote", lambda fs, path, size=None: opened.append(path)
                        or open_remote(fs, path, size))
    server = LatencyServer(str(tmp_path), latency_s=0.0)
    try:
        assert len(_read(_loader(f"{server.url}/pq", num_workers=0))) == (_ROWS if small else 600)
    finally:
        server.close()
    assert opened == []


def test_small_files_over_failing_storage_are_retried_and_fetched_once(tmp_path):
    """Every 4th request answered 503 and every 5th connection dropped: every row still arrives
    once, each file's one fetch retried until answered (requests: the manifest and one per file,
    plus one per fault)."""
    _, sizes, data = _small_files(tmp_path)
    plan = FaultPlan(error_every=4, drop_every=5, stall_every=0)
    with FaultyServer(str(tmp_path), plan) as url:
        got = _read(_loader(f"{url}/pq", num_workers=2, worker_type="thread"))
        requests = next(plan.counter) - 1
    assert got == dict(zip(data["id"].to_pylist(), data["image"].to_pylist()))
    faults = plan.injected["error"] + plan.injected["drop"]
    assert faults >= 2 and requests - faults <= 1 + len(sizes), (requests, plan.injected)


def test_small_files_on_a_server_that_ignores_range_are_each_one_whole_get(tmp_path):
    """A whole-file fetch is what such a server answers anyway: each small file is one GET,
    read ahead as on any server, every row once (before: the footer's range read failed, and
    the reader fell back to whole-file reads without read-ahead, a GET per file and reader)."""
    _, sizes, data = _small_files(tmp_path)
    gets: collections.Counter = collections.Counter()
    handler = type("Counting", (_IgnoresRange,), {"root": str(tmp_path), "do_GET": lambda self: (
        gets.update([self.path.lstrip("/")]), _IgnoresRange.do_GET(self))})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        loader = _loader(f"http://127.0.0.1:{server.server_address[1]}/pq", num_workers=2, worker_type="thread")
        got = _read(loader)
    finally:
        server.shutdown()
        server.server_close()
    assert got == dict(zip(data["id"].to_pylist(), data["image"].to_pylist()))
    assert {p: n for p, n in gets.items() if p.endswith(".parquet")} == {p: 1 for p in sizes}
    assert loader.stats()["bytes_read_ahead"] > 0


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_a_corrupt_row_group_of_a_small_file_is_named_or_counted(tmp_path, on_error):
    """A page header of garbage in row group 1 of a small file, whose bytes came whole with its
    footer: the error names the dataset, the shard and the row group at once (no retries: the
    read made no request), or under on_error="skip" its rows are skipped and counted; the file
    is still fetched once (before: a footer request, then its row groups')."""
    root, sizes, _ = _small_files(tmp_path)
    path = os.path.join(root, "part-00002.parquet")
    md = pq.ParquetFile(path).metadata
    names = [md.schema.column(j).name for j in range(md.num_columns)]
    with open(path, "r+b") as f:  # rows 230-259
        f.seek(md.row_group(1).column(names.index("image")).data_page_offset)
        f.write(b"\xff" * 64)
    server = LatencyServer(str(tmp_path), latency_s=0.0)
    try:
        loader = _loader(f"{server.url}/pq", num_workers=2, worker_type="thread", on_error=on_error)
        if on_error == "raise":
            with pytest.raises(sparkfeed.ShardReadError, match=r"pq.*part-00002\.parquet.*row group 1"):
                list(loader)
        else:
            ids = sorted(i for b in loader for i in b["id"].tolist())
    finally:
        server.close()
    assert _file_gets(server)["pq/part-00002.parquet"] == [f"bytes=0-{sizes['pq/part-00002.parquet'] - 1}"]
    if on_error == "skip":
        assert ids == [i for i in range(_ROWS) if not 230 <= i < 260]
        assert loader.stats()["samples_skipped"] == 30


def test_the_filters_count_pass_fetches_each_small_file_whole_in_one_request(tmp_path):
    """The count pass of a filter reads in place (no read-ahead): a small file is fetched whole
    there too, in one request, not its footer and then its row groups, and its bytes are held
    (bounded, `SharedReads.hold`) for the first epoch's readers, which fetch nothing again. So
    each file is one GET of its whole bytes; before, two (the count pass, then the epoch's
    read-ahead: 1,001 requests for 500 files), and before that three. Every matching row once."""
    root, sizes, data = _small_files(tmp_path)
    server = LatencyServer(str(tmp_path), latency_s=0.0)
    try:
        got = _read(_loader(f"{server.url}/pq", num_workers=2, filter=[("label", "<", 5)]))
    finally:
        server.close()
    want = {i: bytes(im) for i, im, lab in zip(data["id"].to_pylist(), data["image"].to_pylist(),
                                                 data["label"].to_pylist()) if lab < 5}
    assert got == want
    assert _file_gets(server) == {path: [f"bytes=0-{size - 1}"] for path, size in sizes.items()}


def test_the_filters_count_pass_over_remote_storage_has_many_requests_in_flight(tmp_path):
    """Counting a filter's rows over remote storage is waiting (a request per small file): the
    pass has up to 32 files in flight at once (`engine.REMOTE_COUNT_THREADS`), not the 8 that
    suit pyarrow's work on local files. The server holds each GET until 20 are waiting at once
    (or 5 s pass): before, at most 8 were, and each wave of 8 waited the whole 5 s."""
    rng = np.random.default_rng(6)
    rows = 40 * _PER_FILE
    data = dsutil.table(rows).select(["id", "label"])
    data = data.append_column("image", pa.array([rng.bytes(64) for _ in range(rows)]))
    dsutil.write_parquet(str(tmp_path / "pq"), data, _PER_FILE, _PER_FILE)  # 40 small files
    lock, waiting, most, full = threading.Condition(), [0], [0], threading.Event()

    def hold(method, path, range_header):
        if method != "GET" or not path.endswith(".parquet"):
            return
        with lock:
            waiting[0] += 1
            most[0] = max(most[0], waiting[0])
            if waiting[0] >= 20:
                full.set()  # from now on nothing is held
            lock.notify_all()
            lock.wait_for(full.is_set, timeout=5)
            waiting[0] -= 1

    server = LatencyServer(str(tmp_path), latency_s=0.0, hold=hold)
    try:
        loader = _loader(f"{server.url}/pq", num_workers=2, filter=[("label", "<", 5)])
        plan = loader.dataset.plan()
    finally:
        server.close()
    assert plan.counted and sum(plan.counts) == rows // 2
    assert most[0] >= 20, f"at most {most[0]} count requests were in flight at once"
