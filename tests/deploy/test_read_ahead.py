"""Remote read-ahead: bounded bytes, one footer and one coalesced request per file, the same
samples as a local read. Over the project's Range-honouring HTTP test server (no faults)."""

import contextlib
import gc
import http.server
import io
import os
import threading

import aiohttp
import numpy as np
import pyarrow as pa
import pytest

import dsutil
import sparkfeed
from faulty_http import FaultPlan, FaultyServer
from sparkfeed import httpranges, readahead, remotefiles, storage
from sparkfeed.bench.remote import LatencyServer, send_file_range


@pytest.fixture(params=["direct", "fsspec"])
def http_client(request, monkeypatch):
    """Both clients of read-ahead ranges over HTTP: the standard library's (`httpranges`, the
    default) and fsspec's aiohttp session (`remotefiles._http_ranges`)."""
    monkeypatch.setattr(httpranges, "DIRECT", request.param == "direct")
    return request.param


def _gets(server: LatencyServer, suffix: str) -> dict[str, list[tuple[int, int]]]:
    """{file: [(first byte, last byte)]} of the range GETs the server answered for `suffix` files."""
    out: dict[str, list[tuple[int, int]]] = {}
    server.settled()  # (the last answers are counted a moment after the client has them)
    for _, _, method, what, _ in server.log:
        path, _, rng = what.partition(" ")
        if method == "GET" and path.endswith(suffix) and rng:
            a, b = (int(x) for x in rng.split("=")[1].split("-"))
            out.setdefault(path, []).append((a, b))
    return out


def test_read_ahead_holds_at_most_max_bytes():
    release = threading.Event()
    ra = readahead.ReadAhead(max_bytes=25, threads=2)
    try:
        ra.ahead([([k], 10, lambda k=k: release.wait(10) and k) for k in range(5)])
        assert [k in ra for k in range(5)] == [True, True, False, False, False]
        release.set()
        assert ra.take(0) == 0 and ra.take(0) is None  # handed over once
        ra.ahead([([k], 10, lambda k=k: k) for k in (1, 2, 3)])  # 0 taken: 2 fits now
        assert [k in ra for k in range(5)] == [False, True, True, False, False]
        ra.ahead([([k], 10, lambda k=k: k) for k in (3, 4)])  # 1 and 2 no longer ahead: dropped
        assert [k in ra for k in range(5)] == [False, False, False, True, True]
    finally:
        release.set()
        ra.close()


def test_a_failed_fetch_is_read_in_place():
    ra = readahead.ReadAhead(max_bytes=100)
    try:
        ra.ahead([(["x"], 1, lambda: 1 / 0)])
        assert ra.take("x") is None
    finally:
        ra.close()


def test_once_fetches_a_key_once_and_fetch_of_names_the_shared_fetch():
    calls = []
    ra = readahead.ReadAhead(max_bytes=100, threads=2)
    try:
        first = ra.once("footer", lambda: calls.append(1) or "metadata")
        assert ra.once("footer", lambda: calls.append(2) or "other") is first
        assert ra.once_result("footer") == "metadata" and calls == [1]
        assert ra.once_result("missing") is None
        ra.ahead([(["a", "b"], 10, lambda: "ab")])
        assert ra.fetch_of("a") is ra.fetch_of("b") and ra.fetch_of("c") is None
        assert ra.take("a") == "ab"
    finally:
        ra.close()
    assert readahead.ReadAhead(max_bytes=0).once("footer", lambda: 1) is None  # read-ahead off


def test_the_read_ahead_threads_take_the_earliest_units_task_first():
    """One thread, held on a first task: the tasks queued meanwhile run lowest priority first
    (a file's rank in the reader's order leads it), then in the order they were queued."""
    pool, release, ran = readahead._PriorityPool(1, "t-prio"), threading.Event(), []
    try:
        started = threading.Event()
        pool.submit((9,), lambda: started.set() or release.wait(10))
        assert started.wait(10)  # the one thread is busy: what follows queues
        done = [pool.submit(p, lambda p=p, n=n: ran.append((p, n))) for n, p in
                enumerate([(2, 0), (0, 2, 5), (1,), (0, 2, 5), (0, 0)])]
        release.set()
        for f in done:
            f.result(10)
    finally:
        pool.shutdown()
    assert ran == [((0, 0), 4), ((0, 2, 5), 1), ((0, 2, 5), 3), ((1,), 2), ((2, 0), 0)]
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        pool.submit((0,), lambda: None)


def test_a_task_after_another_holds_no_thread_while_it_waits():
    """With one thread, a task that needs an index not yet in (`After`) does not keep the
    thread from a task behind it; it runs once the index is in. Closed before its input
    arrives, it is cancelled, never run."""
    ra = readahead.ReadAhead(max_bytes=100, threads=1)
    index, ran = __import__("concurrent.futures").futures.Future(), []
    try:
        ranges = ra.once("ranges", readahead.After(index, lambda: ran.append("ranges") or index.result() + 1, (0, 1)))
        other = ra.once("other footer", lambda: ran.append("other") or "md", (1, 0))
        assert other.result(10) == "md" and ran == ["other"] and not ranges.done()
        index.set_result(41)
        assert ranges.result(10) == 42 and ran == ["other", "ranges"]
        late = __import__("concurrent.futures").futures.Future()
        never = ra.once("never", readahead.After(late, lambda: ran.append("never")))
    finally:
        ra.close()
    late.set_result(None)  # after close: nothing runs it
    assert never.cancelled() and "never" not in ran


def test_deferred_fetches_are_made_within_the_bytes_kept_ahead_and_prepared_past_them():
    """Five 10-byte units, 25 bytes kept ahead: the first two are made (their footers started,
    then fetched), the next two only prepared (their footers started: within the next 25
    bytes), the last neither."""
    made, prepared = [], []

    def item(k):
        return ([k], 10, readahead.Deferred(lambda: made.append(k) or (lambda: k), (k,),
                                          lambda: prepared.append(k)))
    ra = readahead.ReadAhead(max_bytes=25, threads=2)
    try:
        ra.ahead([item(k) for k in range(5)])
        assert made == [0, 1] and prepared == [2, 3]
        assert ra.take(0) == 0
        ra.ahead([item(k) for k in range(1, 5)])  # 0 taken: unit 2 is made now
        assert made == [0, 1, 2] and prepared == [2, 3, 3, 4]
    finally:
        ra.close()


@pytest.mark.parametrize("fmt", ["parquet", "webdataset"])
def test_many_small_files_get_their_first_data_request_before_the_footers_of_the_rest(tmp_path, fmt):
    """40 small files, 64 of whose units a reader is told of at once: what a file's fetch needs
    (its footer, or its tar index) is started only for the files whose bytes are kept ahead and
    as many again, and the earliest file's first, so the first data request goes out after a
    handful of metadata requests, not after one per file (before: 40 index requests first, and
    1.4 s to the first batch over 80 shards with 20 ms per request). Parquet files of random
    images, over the 64 KiB that a footer's fetch reads (a smaller file is fetched whole by it:
    tests/unit/test_small_files.py)."""
    data = dsutil.table(2_000, image_bytes=1_000)
    if fmt == "parquet":
        rng = np.random.default_rng(0)
        data = data.set_column(data.schema.get_field_index("image"), "image",
                               pa.array([rng.bytes(1_500) for _ in range(2_000)]))
    root = str(tmp_path / "ds")
    m = dsutil.write_parquet(root, data, 50, 50) if fmt == "parquet" else dsutil.write_tar(root, data, 50)
    per_file = max(s.num_bytes for s in m.shards)
    assert fmt != "parquet" or min(s.num_bytes for s in m.shards) > 64 << 10
    server = LatencyServer(str(tmp_path), latency_s=0.002)
    try:
        loader = sparkfeed.DataLoader(f"{server.url}/ds", batch_size=50, num_workers=0, columns=["id", "image"],
                                      read_ahead_bytes=2 * per_file)
        ids = [i for b in loader for i in b["id"].tolist()]
        gets = [what for _, _, method, what, _ in sorted(server.log)
                if method == "GET" and not what.startswith("ds/_sparkfeed")]
    finally:
        server.close()
    assert sorted(ids) == list(range(2_000))
    sizes = {f"ds/{s.path}": s.num_bytes for s in m.shards}
    meta = [_is_meta(what, sizes) for what in gets]
    first_data = meta.index(False)
    assert sum(meta[:first_data]) <= 6 and sum(meta) >= len(m.shards), gets[:first_data + 1]


def _is_meta(what: str, sizes: dict) -> bool:
    """A request for a file's metadata: a tar's index, or a Parquet file's tail (its footer;
    a small file's footer fetch is the whole file)."""
    path, _, rng = what.partition(" ")
    return path.endswith(".idx") or (path.endswith(".parquet") and rng.endswith(f"-{sizes[path] - 1}"))


@pytest.mark.parametrize("name", ["pq", "wds"])
def test_remote_reads_fetch_each_file_once(tmp_path, name):
    data = dsutil.table(400, image_bytes=256)
    if name == "pq":
        m = dsutil.write_parquet(str(tmp_path / name), data, 100, 10)
    else:
        m = dsutil.write_tar(str(tmp_path / name), data, 100)
    plan = FaultPlan(error_every=0, drop_every=0, stall_every=0)
    with FaultyServer(str(tmp_path), plan) as url:
        L = sparkfeed.DataLoader(f"{url}/{name}", batch_size=50, num_workers=0)
        ids = [i for b in L for i in b["id"].tolist()]
        requests = next(plan.counter) - 1
    assert sorted(ids) == list(range(400))
    # manifest + per file: footer and one merged request (Parquet), or the whole shard (tar)
    assert requests <= 1 + 2 * len(m.shards), requests


def test_parquet_footers_are_fetched_once_per_file_and_data_without_overlap(tmp_path):
    """Each file's footer is one request (shared by the fetches of its row groups), and no byte
    range of data is asked for twice (runs spanning two fetches are served from both)."""
    data = dsutil.table(800, image_bytes=4096)
    m = dsutil.write_parquet(str(tmp_path / "pq"), data, 400, 50)
    server = LatencyServer(str(tmp_path), latency_s=0.0)  # logs every request with its range
    try:
        L = sparkfeed.DataLoader(f"{server.url}/pq", batch_size=64, num_workers=0)
        ids = [i for b in L for i in b["id"].tolist()]
    finally:
        server.close()
    assert sorted(ids) == list(range(800))
    by_file = _gets(server, ".parquet")
    assert len(by_file) == len(m.shards)
    for path, ranges in by_file.items():
        size = os.path.getsize(os.path.join(str(tmp_path), path))
        tails = [r for r in ranges if r[1] == size - 1]
        assert len(tails) == 1, (path, ranges)  # the footer, once
        data_ranges = sorted(r for r in ranges if r not in tails)
        assert data_ranges and all(b1 < a2 for (_, b1), (a2, _) in zip(data_ranges, data_ranges[1:])), \
            (path, ranges)


def test_a_row_group_split_between_lanes_is_read_with_the_footer_fetched_ahead(tmp_path):
    """Two thread lanes; the lane boundary (row 150) falls inside row group [140, 180) of the
    middle file, which the lanes share (read in place by the first to get there, told to no
    read-ahead). Lane 1 starts with it, while lane 0's read-ahead is fetching that file's footer
    for its own row groups: lane 1 waits for that fetch (and sends one itself where none is
    under way: `Reader.open_ahead`) instead of reading the footer again. Each file's footer is
    one request (before: the middle file's, two)."""
    data = dsutil.table(300, image_bytes=2048)
    m = dsutil.write_parquet(str(tmp_path / "pq"), data, 100, 40)
    server = LatencyServer(str(tmp_path), latency_s=0.01)
    try:
        L = sparkfeed.DataLoader(f"{server.url}/pq", batch_size=50, num_workers=2, worker_type="thread")
        ids = [i for b in L for i in b["id"].tolist()]
    finally:
        server.close()
    assert sorted(ids) == list(range(300))
    tails = {path: sum(b == os.path.getsize(os.path.join(str(tmp_path), path)) - 1 for _, b in ranges)
             for path, ranges in _gets(server, ".parquet").items()}
    assert tails == {f"pq/{s.path}": 1 for s in m.shards}, tails


def test_a_tar_split_between_lanes_has_its_index_fetched_once(tmp_path):
    """Two thread lanes split the middle of three indexed tars: each lane reads its own samples
    of it and needs its index, which is fetched once for both (`SharedReads.fetching`)."""
    m = dsutil.write_tar(str(tmp_path / "wds"), dsutil.table(300, image_bytes=2048), 100)
    server = LatencyServer(str(tmp_path), latency_s=0.01)
    try:
        L = sparkfeed.DataLoader(f"{server.url}/wds", batch_size=50, num_workers=2, worker_type="thread",
                                 columns=["id"])
        ids = [i for b in L for i in b["id"].tolist()]
    finally:
        server.close()
    assert sorted(ids) == list(range(300))
    indexes = sorted(what.split()[0] for _, _, method, what, _ in server.log
                     if method == "GET" and what.split()[0].endswith(".idx"))
    assert indexes == sorted(f"wds/{s.index}" for s in m.shards), indexes


def test_a_shuffled_epoch_over_http_fetches_each_footer_once_per_lane_at_most(tmp_path):
    """The readers of one iteration (two thread lanes, and the helper threads that read each
    shuffle block's runs, a reader each) share the footers they read: each file's footer is
    asked for at most once per lane (two lanes may miss it at the same moment), not once per
    reader that opens the file. Every pass reads the footers anew."""
    data = dsutil.table(4_000, image_bytes=512)
    m = dsutil.write_parquet(str(tmp_path / "pq"), data, 1_000, 100, sort_by="label")
    server = LatencyServer(str(tmp_path), latency_s=0.0)
    try:
        L = sparkfeed.DataLoader(f"{server.url}/pq", batch_size=64, num_workers=2, worker_type="thread",
                                 shuffle=True, seed=1, shuffle_buffer=600, columns=["id", "image"])
        passes = 2
        for _ in range(passes):
            assert sorted(i for b in L for i in b["id"].tolist()) == list(range(4_000))
        assert L.stats()["shuffle_blocks"] >= passes * 6
    finally:
        server.close()
    tails = {path: sum(b == os.path.getsize(os.path.join(str(tmp_path), path)) - 1 for _, b in ranges)
             for path, ranges in _gets(server, ".parquet").items()}
    assert len(tails) == len(m.shards)
    assert all(passes <= n <= 2 * passes for n in tails.values()), tails


def test_a_shuffled_epoch_over_http_reads_its_blocks_ahead_and_no_data_twice(tmp_path):
    """Remote Parquet with shuffle: each lane tells read-ahead the runs of its blocks in the
    order it reads them (many requests at once; the next block's while the current one is
    delivered), so most bytes come from read-ahead (`bytes_read_ahead`); a block that two lanes
    share is read in place by both; no data range is asked for twice. (Random images: a row
    group must be larger than the gap read-ahead coalesces across, `remotefiles.COALESCE_GAP`, or
    a lane's fetch of row groups 4 and 6 of a file takes row group 5 along, which the other
    lane reads.)"""
    rng = np.random.default_rng(0)
    data = dsutil.table(4_000).append_column("image", pa.array([rng.bytes(512) for _ in range(4_000)]))
    dsutil.write_parquet(str(tmp_path / "pq"), data, 1_000, 100, sort_by="label")
    server = LatencyServer(str(tmp_path), latency_s=0.0)
    try:
        L = sparkfeed.DataLoader(f"{server.url}/pq", batch_size=64, num_workers=2, worker_type="thread",
                                 shuffle=True, seed=2, shuffle_buffer=600, columns=["id", "image"])
        ids = [i for b in L for i in b["id"].tolist()]
        stats = L.stats()
    finally:
        server.close()
    assert sorted(ids) == list(range(4_000))
    assert stats["shuffle_blocks"] >= 6
    assert stats["bytes_read_ahead"] >= 0.5 * stats["bytes_read"] > 0
    for path, ranges in _gets(server, ".parquet").items():
        size = os.path.getsize(os.path.join(str(tmp_path), path))
        ranges = sorted(r for r in ranges if r[1] != size - 1)  # not the footer
        assert all(b1 < a2 for (_, b1), (a2, _) in zip(ranges, ranges[1:])), (path, ranges)



def test_a_row_group_that_thread_lanes_split_is_fetched_once(tmp_path):
    """Unshuffled, four thread lanes split the files' row groups (one each) between them
    (`blocks.SharedUnits`): the lane that asks first reads the group in place, the other takes
    it when it gets there, and no lane fetches it ahead, so each file's data is served once
    (before: once per lane; with a fetch ahead beside the read in place, twice in one CI run)."""
    got, images, server = _images_over_http(tmp_path, 2_000, 256, 1_000, 1_000, batch_size=64, workers=4, seed=3)
    assert sorted(i for i, _ in got) == list(range(2_000))
    assert all(img == images[i] for i, img in got)
    for path, ranges in _gets(server, ".parquet").items():
        size = os.path.getsize(os.path.join(str(tmp_path), path))
        data_ranges = sorted(r for r in ranges if r[1] != size - 1)  # not the footer
        assert data_ranges and all(b1 < a2 for (_, b1), (a2, _) in zip(data_ranges, data_ranges[1:])), \
            (path, ranges)
        assert sum(b - a + 1 for a, b in data_ranges) < size, (path, ranges)

@pytest.mark.parametrize("fmt", ["parquet", "webdataset"])
def test_batches_kept_across_epochs_keep_their_bytes_while_later_ranges_reuse_buffers(tmp_path, http_client, fmt):
    """Ranges of 256 KiB or more are received into reused buffers (`recvbuffers`): three epochs
    over HTTP with two thread lanes, every batch kept until the end, and every image delivered
    is still the one written, while later epochs' ranges did land in reused buffers. A buffer
    taken again while anything made from it lived would show as other bytes, or (where the
    Parquet or tar checks catch the damage) as data read a second time in place: so each
    epoch's data ranges must not overlap either."""
    from sparkfeed import recvbuffers

    rng = np.random.default_rng(5)
    data = dsutil.table(1_200).append_column("image", pa.array([rng.bytes(4_096) for _ in range(1_200)]))
    if fmt == "parquet":
        dsutil.write_parquet(str(tmp_path / "ds"), data, 400, 100)
    else:
        dsutil.write_tar(str(tmp_path / "ds"), data, 400)
    reused = recvbuffers._BUFFERS.reused
    server = LatencyServer(str(tmp_path), latency_s=0.0)
    kept, logs = [], []
    try:
        for epoch in range(3):
            L = sparkfeed.DataLoader(f"{server.url}/ds", batch_size=100, num_workers=2, worker_type="thread",
                                     columns=["id", "image"])
            kept += list(L)
            gc.collect()
            logs.append(server.log[:])
            server.log.clear()
    finally:
        server.close()
    assert recvbuffers._BUFFERS.reused > reused
    for log in logs:
        server.log[:] = log
        for path, ranges in _gets(server, ".tar" if fmt == "webdataset" else ".parquet").items():
            size = os.path.getsize(os.path.join(str(tmp_path), path))
            data_ranges = sorted(r for r in ranges if fmt == "webdataset" or r[1] != size - 1)  # not the footer
            assert all(b1 < a2 for (_, b1), (a2, _) in zip(data_ranges, data_ranges[1:])), (path, ranges)
    images = data.column("image").to_pylist()
    got = [(i, bytes(img)) for b in kept for i, img in zip(b["id"].tolist(), b["image"])]
    assert sorted(i for i, _ in got) == sorted(list(range(1_200)) * 3)
    assert all(img == images[i] for i, img in got)


def test_known_ranges_serve_reads_across_adjacent_fetches_without_the_file():
    opened = []
    parts = {(0, 4): b"abcd", (4, 8): b"efgh", (10, 12): b"kl"}
    f = remotefiles.KnownRanges(parts, 12, lambda: opened.append(1) or io.BytesIO(b"abcdefghijkl"))
    f.seek(2)
    assert bytes(f.read(4)) == b"cdef" and bytes(f.read(2)) == b"gh"  # spans two fetches
    assert not opened
    f.seek(7)
    assert bytes(f.read(4)) == b"hijk" and opened == [1]  # a gap: the real file


def test_a_forked_worker_leaves_the_parents_http_connections_alone(tmp_path):
    """A forked worker (torch's worker processes) must not close the parent's pooled HTTP
    connections: closing one in the child unregisters its socket from the epoll set the child
    shares with the parent's event loop, and the parent's next request on that connection then
    waits for the read time-out. Here the child drops the inherited filesystem as a worker does
    (fsspec empties its cache in a new process) and collects garbage."""
    (tmp_path / "x.bin").write_bytes(b"sparkfeed" * 100)
    plan = FaultPlan(error_every=0, drop_every=0, stall_every=0)
    opts = {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, sock_read=10, sock_connect=10)}}
    with FaultyServer(str(tmp_path), plan) as url:
        fs, _ = storage.resolve(url, opts)
        assert fs.cat_file(f"{url}/x.bin") == b"sparkfeed" * 100  # pools a keep-alive connection
        pid = os.fork()
        if pid == 0:  # the child: forget the parent's filesystem, as a worker process does
            type(fs).clear_instance_cache()
            del fs
            gc.collect()
            os._exit(0)
        os.waitpid(pid, 0)
        # on the pooled connection; before the fix: FSTimeoutError after sock_read
        assert fs.cat_file(f"{url}/x.bin", start=0, end=9) == b"sparkfeed"


class _Gate:
    """For a test server's `hold`: each request passed to `wait` is held until requests for `n`
    distinct paths have arrived; a path whose wait gave up (after `timeout_s`, only when the
    others never come) is recorded in `gave_up`."""

    def __init__(self, n: int, timeout_s: float):
        self.n, self.timeout_s = n, timeout_s
        self.arrived, self.gave_up, self.all_in, self._lock = set(), [], threading.Event(), threading.Lock()

    def wait(self, rel: str) -> None:
        with self._lock:
            self.arrived.add(rel)
            if len(self.arrived) >= self.n:
                self.all_in.set()
        if not self.all_in.wait(self.timeout_s):
            self.gave_up.append(rel)


def test_every_lane_sends_its_first_data_request_before_any_lane_gets_data(tmp_path):
    """Two thread lanes served by one reading thread (2 cores: `lanes.reading_threads`), one
    Parquet file each. The server holds every data request (not the footers) until both files'
    first data requests have arrived: every lane's first fetch must be in flight before lane 0's
    first segment is converted. Before, lane 1 sent its requests only after lane 0's first
    segment was read, that is never while lane 0's data was held (the hold gave up after 30 s).
    Random images: files over the 64 KiB a footer's fetch reads, which would bring a smaller
    file whole (no data request of its own)."""
    rng = np.random.default_rng(4)
    data = dsutil.table(800).append_column("image", pa.array([rng.bytes(1024) for _ in range(800)]))
    m = dsutil.write_parquet(str(tmp_path / "pq"), data, 400, 100)
    assert min(s.num_bytes for s in m.shards) > 64 << 10
    gate = _Gate(2, 30)

    def hold(method: str, rel: str, rng: str) -> None:
        if method != "GET" or not rel.endswith(".parquet") or not rng:
            return
        end = int(rng.split("-")[1])
        if end >= os.path.getsize(tmp_path / rel) - 1:
            return  # a footer: answered at once
        gate.wait(rel)

    server = LatencyServer(str(tmp_path), latency_s=0.0, hold=hold)
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, sorted(cpus)[:2])  # this thread and the lanes': one reading thread
    try:
        L = sparkfeed.DataLoader(f"{server.url}/pq", batch_size=100, num_workers=2)
        ids = [i for b in L for i in b["id"].tolist()]
    finally:
        os.sched_setaffinity(0, cpus)
        server.close()
    assert sorted(ids) == list(range(800))
    assert gate.all_in.is_set() and not gate.gave_up, (sorted(gate.arrived), gate.gave_up)


def _first_file_reads(tmp_path, hold=None) -> tuple[list, list, LatencyServer]:
    """One thread lane over 2 Parquet files of 400 rows (100-row groups, random 8 KiB images:
    3.3 MB a file, over the 2 MiB of a first fetch and two footers' fetches, under which a file
    gets no head): the (id, image) delivered, the written images, and the server (its log)."""
    got, images, server = _images_over_http(tmp_path, 800, 8192, 400, 100, batch_size=100, workers=1,
                                            seed=6, hold=hold)
    assert min(os.path.getsize(p) for p in (tmp_path / "pq").glob("*.parquet")) > (2 << 20) + (128 << 10)
    return got, images, server


def _images_over_http(tmp_path, n: int, image_bytes: int, per_file: int, per_group: int, *, batch_size: int,
                      workers: int, seed: int, hold=None) -> tuple[list, list, LatencyServer]:
    """`n` rows with random images of `image_bytes` written as Parquet under `pq/`, read over a
    latency-free `LatencyServer` by `workers` thread lanes: the (id, image) delivered, the
    written images, and the server (its log)."""
    rng = np.random.default_rng(seed)
    data = dsutil.table(n).append_column("image", pa.array([rng.bytes(image_bytes) for _ in range(n)]))
    dsutil.write_parquet(str(tmp_path / "pq"), data, per_file, per_group)
    server = LatencyServer(str(tmp_path), latency_s=0.0, hold=hold)
    try:
        L = sparkfeed.DataLoader(f"{server.url}/pq", batch_size=batch_size, num_workers=workers,
                                 worker_type="thread", columns=["id", "image"])
        got = [(i, bytes(img)) for b in L for i, img in zip(b["id"].tolist(), b["image"])]
    finally:
        server.close()
    return got, data.column("image").to_pylist(), server


def test_the_first_fetch_goes_out_beside_the_footer_as_the_files_head(tmp_path):
    """The reader's first fetch starts at the first file's first row group, whose footer is not
    known yet: the file's head (from byte 4) is fetched beside the footer, so the first batch
    waits one round trip instead of two. The server holds the footer until the head request has
    arrived: before, the first data request went out only after the footer's answer (the hold
    gave up after 10 s). The head then serves the first fetch: no other request reads its bytes."""
    first = "pq/part-00000.parquet"
    gate = _Gate(2, 10)

    def hold(method: str, rel: str, rng: str) -> None:
        if method == "GET" and rel == first and rng:
            a, b = (int(x) for x in rng.split("=")[1].split("-"))
            if a == 4:
                gate.wait("head")
            elif b >= os.path.getsize(tmp_path / rel) - 1:
                gate.wait("footer")

    got, images, server = _first_file_reads(tmp_path, hold)
    assert sorted(i for i, _ in got) == list(range(800)) and all(img == images[i] for i, img in got)
    assert gate.all_in.is_set() and not gate.gave_up, (sorted(gate.arrived), gate.gave_up)
    ranges = _gets(server, ".parquet")[first]
    size = os.path.getsize(tmp_path / first)
    data_ranges = sorted(r for r in ranges if r[1] != size - 1)
    assert data_ranges[0][0] == 4 and all(b1 < a2 for (_, b1), (a2, _) in zip(data_ranges, data_ranges[1:])), ranges


def test_a_head_too_short_for_the_first_fetch_is_left_and_the_ranges_fetched(tmp_path, monkeypatch):
    """A head that does not hold every range of the first fetch (here cut to the footer's 64 KiB,
    under one row group) serves what it holds; the rest of the ranges is fetched from where it
    ends, and every sample arrives with its own bytes."""
    from sparkfeed.read import parquetahead

    monkeypatch.setattr(parquetahead, "_HEAD_SLACK", 0.0)
    got, images, server = _first_file_reads(tmp_path)
    assert sorted(i for i, _ in got) == list(range(800)) and all(img == images[i] for i, img in got)
    first = "pq/part-00000.parquet"
    ranges = sorted(_gets(server, ".parquet")[first])
    size = os.path.getsize(tmp_path / first)
    data_ranges = [r for r in ranges if r[1] != size - 1]
    assert data_ranges[0] == (4, 4 + (64 << 10) - 1), ranges  # the head: the slack's floor alone
    assert data_ranges[1][0] == 4 + (64 << 10), ranges  # the first fetch's rest, from where it ends
    assert all(b1 < a2 for (_, b1), (a2, _) in zip(data_ranges, data_ranges[1:])), ranges


def test_a_fetch_takes_what_the_head_holds_and_fetches_only_the_rest():
    from concurrent.futures import Future

    from sparkfeed.read.parquetfetch import _from_head

    failed, done, pending = Future(), Future(), Future()
    failed.set_exception(ConnectionError("cut"))
    head = {(4, 1000): b"x" * 996}
    done.set_result(head)
    span = (4, 1000)
    assert _from_head((span, failed), [(4, 100)]) == ({}, [(4, 100)])  # a failed head: fetched as without it
    assert _from_head(None, [(4, 100)]) == ({}, [(4, 100)])
    assert _from_head((span, done), [(4, 100), (100, 1000)]) == (head, [])
    assert _from_head((span, done), [(4, 100), (900, 1200)]) == (head, [(1000, 1200)])
    assert _from_head((span, done), [(0, 2000)]) == (head, [(0, 4), (1000, 2000)])
    # ranges past the head do not wait for it (`pending` never completes)
    assert _from_head((span, pending), [(1000, 1200), (1500, 1600)]) == ({}, [(1000, 1200), (1500, 1600)])


def _indexed_with_etags(tmp_path, server: LatencyServer, fmt: str = "parquet", files: int = 3) -> str:
    """`files` Parquet files (or tars) of 100 rows under `pq/` indexed over `server` (which sends
    ETags): the manifest records each file's ETag, so the loader checks each file's version once
    per iteration."""
    data = dsutil.table(100 * files, image_bytes=256)
    if fmt == "parquet":
        dsutil.write_parquet(str(tmp_path / "pq"), data, 100, 100)  # one row group per file
    else:
        dsutil.write_tar(str(tmp_path / "pq"), data, 100)
    names = sorted(n for n in os.listdir(tmp_path / "pq") if n.endswith((".parquet", ".tar")))
    manifest = str(tmp_path / "m.json")
    m = sparkfeed.index([f"{server.url}/pq/{n}" for n in names], manifest=manifest, format=fmt,
                        progress=False)
    assert len(m.shards) == files and all(s.etag for s in m.shards)
    server.log.clear()
    return manifest


@pytest.mark.parametrize("fmt", ["parquet", "webdataset"])
@pytest.mark.parametrize("workers", [0, 2])
def test_indexed_files_are_checked_ahead_all_at_once(tmp_path, fmt, workers, monkeypatch):
    """An indexed file's version (its ETag: one HEAD) is checked once per file and iteration on
    the read-ahead threads, the checks of the files a lane reads next sent together, beside their
    footers. The server holds every HEAD until all three files' have arrived. Before, the lane
    sent each file's HEAD just before reading it, so the first one was held until the hold gave up
    (and each check cost the lane a round trip: 0.262 s per epoch against 0.187 s over 5 files
    with 20 ms per request). With 2 thread lanes the middle file is split between them, read in
    place by the first that gets there (no read-ahead fetches it): its check goes ahead too, and
    once."""
    loading, gate = threading.Event(), _Gate(3, 10)

    def hold(method: str, rel: str, rng: str) -> None:
        if method == "HEAD" and loading.is_set():
            gate.wait(rel)

    from sparkfeed.read import base

    check, threads = base.Reader._check_now, []
    monkeypatch.setattr(base.Reader, "_check_now",
                        lambda self, *a: threads.append(threading.current_thread().name) or check(self, *a))
    server = LatencyServer(str(tmp_path), latency_s=0.0, hold=hold, etags=True)
    try:
        manifest = _indexed_with_etags(tmp_path, server, fmt)
        loading.set()
        column = "id" if fmt == "parquet" else "key"  # an indexed tar's columns are its members
        loader = sparkfeed.DataLoader(f"{server.url}/pq", manifest=manifest, batch_size=50, num_workers=workers,
                                      worker_type="thread", columns=[column])
        ids = [int(i if fmt == "parquet" else i[1:]) for b in loader for i in list(b[column])]
        heads = sorted(what.split()[0] for _, _, method, what, _ in server.log if method == "HEAD")
    finally:
        server.close()
    assert sorted(ids) == list(range(300))
    assert gate.all_in.is_set() and not gate.gave_up, (sorted(gate.arrived), gate.gave_up)
    assert heads == sorted(f"pq/{n}" for n in os.listdir(tmp_path / "pq") if n.endswith((".parquet", ".tar")))
    assert len(threads) == 3 and all(t.startswith("sparkfeed-ahead") for t in threads), threads  # none on a lane


def test_a_file_changed_after_indexing_is_an_error_when_checked_ahead(tmp_path):
    """The check made ahead raises where the file is read, naming the shard."""
    server = LatencyServer(str(tmp_path), latency_s=0.0, etags=True)
    try:
        manifest = _indexed_with_etags(tmp_path, server)
        changed = tmp_path / "pq" / "part-00001.parquet"
        stat = changed.stat()
        os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a new ETag
        loader = sparkfeed.DataLoader(f"{server.url}/pq", manifest=manifest, batch_size=50, num_workers=0)
        with pytest.raises(sparkfeed.ShardReadError, match=r"part-00001\.parquet.*changed after it was indexed"):
            list(loader)
    finally:
        server.close()


def test_a_file_gone_after_indexing_is_an_error_when_checked_ahead(tmp_path):
    """A file the manifest names and storage no longer has: the check made ahead fails, the file
    is checked again where it is read, and the error names the shard."""
    server = LatencyServer(str(tmp_path), latency_s=0.0, etags=True)
    try:
        manifest = _indexed_with_etags(tmp_path, server)
        os.remove(tmp_path / "pq" / "part-00002.parquet")
        loader = sparkfeed.DataLoader(f"{server.url}/pq", manifest=manifest, batch_size=50, num_workers=0)
        with pytest.raises(sparkfeed.ShardReadError, match=r"part-00002\.parquet.*file missing"):
            list(loader)
    finally:
        server.close()


def test_a_version_check_that_failed_ahead_is_made_again_in_place(tmp_path, monkeypatch):
    """A check that fails on a read-ahead thread (here: a dropped connection, once) is not the
    file's verdict: the reader checks it again where it opens it, with its retries."""
    from sparkfeed.read import base

    check, calls, lock = base.Reader._check_now, [], threading.Lock()

    def flaky(self, unit, full):
        with lock:
            calls.append((unit.path, threading.current_thread().name.startswith("sparkfeed-ahead")))
            first = calls.count(("part-00001.parquet", True)) == 1 and calls[-1] == ("part-00001.parquet", True)
        if first:
            raise ConnectionResetError("dropped on purpose")
        return check(self, unit, full)

    server = LatencyServer(str(tmp_path), latency_s=0.0, etags=True)
    try:
        manifest = _indexed_with_etags(tmp_path, server)
        monkeypatch.setattr(base.Reader, "_check_now", flaky)
        loader = sparkfeed.DataLoader(f"{server.url}/pq", manifest=manifest, batch_size=50, num_workers=0)
        ids = [i for b in loader for i in b["id"].tolist()]
    finally:
        server.close()
    assert sorted(ids) == list(range(300))
    assert sorted(calls) == [("part-00000.parquet", True), ("part-00001.parquet", False),
                             ("part-00001.parquet", True), ("part-00002.parquet", True)]


class _IgnoresRange(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the whole file (200), whatever the Range header asks for."""

    protocol_version = "HTTP/1.1"
    root = ""

    def log_message(self, *args):
        pass

    def do_GET(self):
        del self.headers["Range"]
        path = os.path.join(self.root, self.path.lstrip("/"))
        if not os.path.isfile(path):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        send_file_range(self, path, body=True)


@contextlib.contextmanager
def _ignoring_range(root):
    """The URL of an `_IgnoresRange` server over `root` (it answers HEAD too, which listing-free
    indexing of a list of URLs sends for sizes)."""
    handler = type("Handler", (_IgnoresRange,), {"root": str(root)})
    handler.do_HEAD = lambda self: send_file_range(self, os.path.join(self.root, self.path.lstrip("/")), body=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_that_ignores_range_is_read_whole_never_wrong(tmp_path, http_client):
    """fsspec's HTTP cat does not check that a range was honoured; the read-ahead fetch does
    (a range not at the start, or at the start of a longer file), and the loader falls back to
    whole-file reads: every sample once."""
    data = dsutil.table(300, image_bytes=512)
    dsutil.write_parquet(str(tmp_path / "pq"), data, 150, 50)
    handler = type("Handler", (_IgnoresRange,), {"root": str(tmp_path)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        fs, _ = storage.resolve(url)
        part = f"{url}/pq/part-00000.parquet"
        for rng in [(100, 200), (0, 10)]:
            with pytest.raises(ValueError, match="part-00000.parquet: asked for bytes .* does not "
                                                 "appear to support range requests"):
                remotefiles.fetch_ranges(fs, part, [rng])
        L = sparkfeed.DataLoader(f"{url}/pq", batch_size=64, num_workers=0)
        ids = [i for b in L for i in b["id"].tolist()]
    finally:
        server.shutdown()
        server.server_close()
    assert sorted(ids) == list(range(300))


def test_a_file_larger_than_fsspecs_block_on_a_server_that_ignores_range_is_indexed_and_read(tmp_path, caplog):
    """fsspec reads a file under its 5 MiB block from byte 0 and so passed the test above; a
    larger file needs a read from elsewhere, which such a server answers with the whole file.
    Both the index (its footer) and the loader then read the file whole, in one GET."""
    import pyarrow.parquet as pq

    root = tmp_path / "big"
    root.mkdir()
    n = 3_000
    rng = np.random.default_rng(0)
    pq.write_table(pa.table({"id": np.arange(n), "blob": [rng.bytes(2_400) for _ in range(n)]}),
                   root / "a.parquet", row_group_size=1_000, compression="none")
    assert (root / "a.parquet").stat().st_size > 6 << 20
    with _ignoring_range(tmp_path) as url, caplog.at_level("WARNING", logger="sparkfeed.storage"):
        m = sparkfeed.index([f"{url}/big/a.parquet"], manifest=str(tmp_path / "m.json"), progress=False)
        assert m.num_samples == n and len(m.shards[0].row_groups) == 3
        loader = sparkfeed.DataLoader(f"{url}/big", manifest=str(tmp_path / "m.json"), batch_size=250,
                                      num_workers=2, shuffle=True, filter=[("id", ">=", 1_500)])
        got = {i: bytes(b) for batch in loader for i, b in zip(batch["id"].tolist(), batch["blob"])}
    table = pq.read_table(root / "a.parquet")
    assert got == {i: b for i, b in zip(table["id"].to_pylist(), table["blob"].to_pylist()) if i >= 1_500}
    assert loader.stats()["row_groups_pruned"] == 1
    logged = [r.getMessage() for r in caplog.records if "ignores Range" in r.getMessage()]
    assert [m.split("; ")[1] for m in logged] == ["reading each file whole for its footer",
                                                   "reading whole files, without read-ahead"]


def test_a_tar_on_a_server_that_ignores_range_is_scanned_as_one_stream(tmp_path):
    """The index scans such a tar in one GET (tarfile's stream mode) instead of seeking past
    member data; the loader then reads every sample once, bytes intact."""
    import io
    import tarfile

    (tmp_path / "wds").mkdir()
    rng, blobs = np.random.default_rng(1), {}
    with tarfile.open(tmp_path / "wds" / "a.tar", "w") as tar:
        for i in range(2_400):
            blobs[i] = rng.bytes(2_500)
            for ext, data in (("cls", str(i).encode()), ("bin", blobs[i])):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    assert (tmp_path / "wds" / "a.tar").stat().st_size > 6 << 20
    with _ignoring_range(tmp_path) as url:
        m = sparkfeed.index([f"{url}/wds/a.tar"], manifest=str(tmp_path / "m.json"), format="webdataset",
                            progress=False)
        loader = sparkfeed.DataLoader(f"{url}/wds", manifest=str(tmp_path / "m.json"), batch_size=300,
                                      num_workers=2, shuffle=True, columns=["cls", "bin"])
        got = {i: bytes(b) for batch in loader for i, b in zip(batch["cls"].tolist(), batch["bin"])}
    assert m.num_samples == 2_400 and got == blobs


def test_a_list_of_http_urls_is_indexed_with_its_url_as_the_root(tmp_path):
    """fsspec names HTTP files by URL: the common root of a list (or a glob) of them keeps its
    `//`, so `DataLoader(manifest=...)` alone finds the data where the manifest says."""
    import pyarrow.parquet as pq

    (tmp_path / "ds" / "sub").mkdir(parents=True)
    pq.write_table(pa.table({"id": np.arange(10)}), tmp_path / "ds" / "a.parquet")
    pq.write_table(pa.table({"id": np.arange(10, 25)}), tmp_path / "ds" / "sub" / "b.parquet")
    server = LatencyServer(str(tmp_path), latency_s=0.0)
    try:
        m = sparkfeed.index([f"{server.url}/ds/a.parquet", f"{server.url}/ds/sub/b.parquet"],
                            manifest=str(tmp_path / "m.json"), progress=False)
        ids = [i for b in sparkfeed.DataLoader(manifest=str(tmp_path / "m.json"), batch_size=8) for i in b["id"].tolist()]
    finally:
        server.close()
    assert m.data_root == f"{server.url}/ds" and [s.path for s in m.shards] == ["a.parquet", "sub/b.parquet"]
    assert sorted(ids) == list(range(25))


def test_http_ranges_arrive_whole_and_exact(tmp_path, http_client):
    """Over HTTP the ranges are read into pooled buffers: the bytes are the file's, for ranges
    merged into one request and for separate ones, and a missing file is FileNotFoundError."""
    blob = os.urandom(300_000)
    (tmp_path / "x.bin").write_bytes(blob)
    server = LatencyServer(str(tmp_path), latency_s=0.0)
    try:
        fs, _ = storage.resolve(server.url)
        got = remotefiles.fetch_ranges(fs, f"{server.url}/x.bin", [(0, 10), (12, 100), (150_000, 300_000)])
        with pytest.raises(FileNotFoundError, match="missing.bin"):
            remotefiles.fetch_ranges(fs, f"{server.url}/missing.bin", [(0, 10)])
    finally:
        server.close()
    assert {k: bytes(v) for k, v in got.items()} == {(0, 100): blob[:100],
                                                    (150_000, 300_000): blob[150_000:]}


def test_a_shard_grown_after_the_write_is_an_error_not_a_prefix(tmp_path, http_client):
    """Read-ahead fetches a tar as the manifest's byte count; a shard replaced by a longer one
    must not pass as its first bytes: the server's size fails the fetch, and the in-place read
    names the shard and the sizes."""
    data = dsutil.table(200, image_bytes=256)
    m = dsutil.write_tar(str(tmp_path / "wds"), data, 100)
    shard = sorted(s.path for s in m.shards)[1]
    with open(tmp_path / "wds" / shard, "ab") as f:
        f.write(b"\0" * 1024)  # still a valid tar: two more end blocks
    server = LatencyServer(str(tmp_path), latency_s=0.0)
    try:
        fs, _ = storage.resolve(server.url)
        size = os.path.getsize(tmp_path / "wds" / shard) - 1024
        with pytest.raises(ValueError, match=f"{shard}: the file is {size + 1024} bytes, not {size}"):
            remotefiles.fetch_ranges(fs, f"{server.url}/wds/{shard}", [(0, size)], size)
        L = sparkfeed.DataLoader(f"{server.url}/wds", batch_size=50, num_workers=0)
        with pytest.raises(sparkfeed.errors.SparkfeedError,
                           match=f"{shard}.*the file is {size + 1024} bytes but the manifest says {size}"):
            list(L)
    finally:
        server.close()


@pytest.mark.slow
def test_remote_epochs_cli_reads_every_sample_over_a_server_in_its_own_process(tmp_path, capsys):
    from sparkfeed.bench import remote_epochs

    data = dsutil.table(300, image_bytes=256)
    dsutil.write_parquet(str(tmp_path / "pq"), data, 150, 50)
    assert remote_epochs.main([str(tmp_path / "pq"), "--epochs", "2", "--latency-ms", "0",
                               "--batch-size", "64"]) == 0
    out = capsys.readouterr().out
    assert out.count("'samples': 300,") == 2 and "median page_faults:" in out, out
    assert "median cpu_user_s:" in out and "median cpu_system_s:" in out, out
    served = [float(line.split(":")[1]) for line in out.splitlines() if line.startswith("median server_cpu_s:")]
    assert served and served[0] >= 0.0, out  # the server process's CPU, read from /proc
    assert remote_epochs.main([str(tmp_path / "pq"), "--epochs", "1", "--local", "--batch-size", "64"]) == 0
    local = capsys.readouterr().out
    assert "'samples': 300," in local and "server_cpu_s" not in local, local  # no server to measure


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_a_tar_that_a_lane_boundary_splits_is_fetched_in_parts(tmp_path, worker_type):
    """Two lanes split shard 1 (rows 0-91 to lane 0, 92-99 to lane 1): each lane fetches the
    byte range of its own samples through the shard's index, so every tar byte is served once,
    and the samples are delivered exactly once, as a local read delivers them."""
    data = dsutil.table(400, image_bytes=2048)
    m = dsutil.write_tar(str(tmp_path / "wds"), data, 100)
    server = LatencyServer(str(tmp_path), latency_s=0.0)
    try:
        L = sparkfeed.DataLoader(f"{server.url}/wds", batch_size=48, num_workers=2,
                                 worker_type=worker_type, columns=["id", "image"])
        got = [(i, bytes(img)) for b in L for i, img in zip(b["id"].tolist(), b["image"])]
    finally:
        server.close()
    assert sorted(i for i, _ in got) == list(range(400))  # once each
    images = data.column("image").to_pylist()
    assert all(img == images[i] for i, img in got)
    served = {}
    for _, _, method, what, nbytes in server.log:
        path = what.partition(" ")[0]
        if method == "GET" and path.endswith(".tar"):
            served[path] = served.get(path, 0) + nbytes
    assert served == {f"wds/{s.path}": s.num_bytes for s in m.shards}, served
    local = sparkfeed.DataLoader(str(tmp_path / "wds"), batch_size=48, num_workers=2,
                                 worker_type=worker_type, columns=["id"])
    assert sorted(i for b in local for i in b["id"].tolist()) == list(range(400))
    member_bytes = sum(s.num_bytes for s in m.shards)
    assert local.stats()["bytes_read"] < member_bytes  # shard 1's members counted once, not twice


def test_an_indexed_shard_is_fetched_in_pieces_each_byte_once(tmp_path, monkeypatch):
    """Over HTTP, an indexed shard read in pieces (`TarReader.chunks`) is several range requests
    that together serve the file once: the first batch waits for one piece, not the shard."""
    from sparkfeed.read import tar as tar_reader

    monkeypatch.setattr(tar_reader, "CHUNK_BYTES", 64 << 10)
    monkeypatch.setattr(tar_reader, "FIRST_CHUNK_BYTES", 16 << 10)
    data = dsutil.table(600, image_bytes=2048)
    m = dsutil.write_tar(str(tmp_path / "wds"), data, 300)
    server = LatencyServer(str(tmp_path), latency_s=0.0)
    try:
        L = sparkfeed.DataLoader(f"{server.url}/wds", batch_size=32, columns=["id"])
        assert [i for b in L for i in b["id"].tolist()] == list(range(600))
    finally:
        server.close()
    ranges: dict[str, list] = {}
    for _, _, method, what, nbytes in server.log:
        path, _, rng = what.partition(" ")
        if method == "GET" and path.endswith(".tar"):
            ranges.setdefault(path, []).append(nbytes)
    assert {p: sum(n) for p, n in ranges.items()} == {f"wds/{s.path}": s.num_bytes for s in m.shards}
    assert all(len(n) > 3 for n in ranges.values()), ranges


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_a_corrupt_row_group_in_a_shuffled_remote_read_is_named_or_counted(tmp_path, on_error):
    """A row group whose page header is garbage, fetched ahead in a shuffled epoch over HTTP:
    the error names the dataset, the shard and the row group, or under on_error="skip" its
    rows are counted as skipped and every other sample comes once."""
    import pyarrow.parquet as pq

    rng = np.random.default_rng(2)
    data = dsutil.table(4_000).append_column("image", pa.array([rng.bytes(512) for _ in range(4_000)]))
    dsutil.write_parquet(str(tmp_path / "pq"), data, 1_000, 100)
    path = str(tmp_path / "pq" / "part-00001.parquet")
    md = pq.ParquetFile(path).metadata
    names = [md.schema.column(j).name for j in range(md.num_columns)]
    with open(path, "r+b") as f:  # the image chunk's first page header of row group 2 (rows 1200-1299)
        f.seek(md.row_group(2).column(names.index("image")).data_page_offset)
        f.write(b"\xff" * 64)
    server = LatencyServer(str(tmp_path), latency_s=0.0)
    try:
        L = sparkfeed.DataLoader(f"{server.url}/pq", batch_size=64, shuffle=True, seed=1, num_workers=2,
                                 worker_type="thread", shuffle_buffer=600, columns=["id", "image"],
                                 on_error=on_error)
        if on_error == "raise":
            with pytest.raises(sparkfeed.ShardReadError, match=r"part-00001\.parquet.*row group 2"):
                list(L)
            return
        ids = [i for b in L for i in b["id"].tolist()]
    finally:
        server.close()
    assert sorted(ids) == [i for i in range(4_000) if not 1_200 <= i < 1_300]
    assert L.stats()["samples_skipped"] == 100


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_a_shuffled_mix_of_remote_sources_reads_ahead_each_sample_once(tmp_path, worker_type):
    """Each source of a mix is read as one dataset is (its blocks' runs through read-ahead, the
    blocks its lanes share offered between them): every sample of both sources once, per
    epoch, most bytes from read-ahead."""
    rng = np.random.default_rng(1)
    for name, n, first in (("a", 3_000, 0), ("b", 2_000, 3_000)):
        t = dsutil.table(n).set_column(0, "id", pa.array(np.arange(first, first + n)))
        t = t.append_column("image", pa.array([rng.bytes(256) for _ in range(n)]))
        dsutil.write_parquet(str(tmp_path / name), t, 500, 100, sort_by="label")
    server = LatencyServer(str(tmp_path), latency_s=0.0)
    try:
        L = sparkfeed.DataLoader([sparkfeed.Source(f"{server.url}/a"), sparkfeed.Source(f"{server.url}/b")],
                                 batch_size=64, shuffle=True, seed=1, num_workers=2, worker_type=worker_type,
                                 shuffle_buffer=700, columns=["id", "image"])
        for epoch in range(2):
            L.set_epoch(epoch)
            assert sorted(i for b in L for i in b["id"].tolist()) == list(range(5_000))
        stats = L.stats()
    finally:
        server.close()
    assert stats["bytes_read_ahead"] >= 0.5 * stats["bytes_read"] > 0


def test_shuffled_indexed_tars_over_http_are_read_ahead_in_pieces_each_byte_once(tmp_path, monkeypatch):
    """Shuffled, an indexed shard is read in pieces as unshuffled (`Reader.runs_ahead`), which
    read-ahead fetches: nine shards in blocks of two, one block shared by the two thread lanes
    (its pieces fetched by the lane that reaches it first and offered to the other); every byte
    of every tar is sent once, and most bytes come from read-ahead."""
    from sparkfeed.read import tar as tar_reader

    monkeypatch.setattr(tar_reader, "CHUNK_BYTES", 64 << 10)
    monkeypatch.setattr(tar_reader, "FIRST_CHUNK_BYTES", 16 << 10)
    m = dsutil.write_tar(str(tmp_path / "wds"), dsutil.table(2_700, image_bytes=2048), 300)
    server = LatencyServer(str(tmp_path), latency_s=0.0)
    try:
        L = sparkfeed.DataLoader(f"{server.url}/wds", batch_size=32, columns=["id", "image"], shuffle=True,
                                 seed=3, shuffle_buffer=600, num_workers=2, worker_type="thread")
        assert sorted(i for b in L for i in b["id"].tolist()) == list(range(2_700))
        stats = L.stats()
    finally:
        server.close()
    assert stats["shuffle_blocks"] >= 5
    assert stats["bytes_read_ahead"] >= 0.5 * stats["bytes_read"] > 0
    sent: dict[str, int] = {}
    for _, _, method, what, nbytes in server.log:
        path = what.partition(" ")[0]
        if method == "GET" and path.endswith(".tar"):
            sent[path] = sent.get(path, 0) + nbytes
    assert sent == {f"wds/{s.path}": s.num_bytes for s in m.shards}


def test_an_indexed_tar_read_ahead_in_pieces_is_still_checked_against_its_index_version(tmp_path, monkeypatch):
    """`sparkfeed.index` records each file's modification time; a server that reports none (as
    this one) cannot show a change, so the file is refused rather than trusted: the pieces
    fetched ahead are not used, and the error names the shard, as a whole read's does."""
    from sparkfeed.read import tar as tar_reader

    monkeypatch.setattr(tar_reader, "CHUNK_BYTES", 16 << 10)
    monkeypatch.setattr(tar_reader, "FIRST_CHUNK_BYTES", 16 << 10)
    dsutil.write_tar(str(tmp_path / "wds"), dsutil.table(200, image_bytes=512), 100, index=False)
    os.remove(str(tmp_path / "wds" / "_sparkfeed.json"))
    sparkfeed.index(str(tmp_path / "wds"), progress=False)
    assert len([k for b in sparkfeed.DataLoader(str(tmp_path / "wds"), batch_size=16, columns=["key"])
                for k in b["key"]]) == 200
    server = LatencyServer(str(tmp_path), latency_s=0.0)
    try:
        with pytest.raises(sparkfeed.ShardReadError, match=r"shard-0000\d.tar.*cannot be checked against its index.*plain HTTP"):
            list(sparkfeed.DataLoader(f"{server.url}/wds", batch_size=16, columns=["key"]))
    finally:
        server.close()


def test_parquet_indexed_over_an_http_directory_listing_loads(tmp_path):
    """A plain web server's directory listing (links in a page) gives no sizes: `index` asks for
    each file's (HEAD), and the loader reads the indexed files (whole: this server ignores Range)."""
    import functools
    import pyarrow.parquet as pq

    data = tmp_path / "plain"
    data.mkdir()
    for k in range(3):
        pq.write_table(pa.table({"id": np.arange(k * 40, k * 40 + 40), "x": np.full(40, k, np.float32)}),
                       data / f"part-{k}.parquet", row_group_size=16)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/plain"
    try:
        m = sparkfeed.index(url, manifest=str(tmp_path / "m.json"), progress=False)
        assert [(s.path, s.num_bytes) for s in m.shards] == [
            (f"part-{k}.parquet", os.path.getsize(data / f"part-{k}.parquet")) for k in range(3)]
        loader = sparkfeed.DataLoader(url, manifest=str(tmp_path / "m.json"), batch_size=16,
                                      filter=[("x", ">=", 1)], num_workers=2)
        assert sorted(i for b in loader for i in b["id"].tolist()) == list(range(40, 120))
    finally:
        server.shutdown()
        server.server_close()


def test_read_ahead_bytes_bounds_or_turns_off_read_ahead_per_loader(tmp_path):
    """`read_ahead_bytes=` is the loader's own bound (the environment variable's default
    otherwise): 0 turns read-ahead off, so every byte is read by the lane itself; a bound of one
    row group's bytes still reads ahead. The samples are the same either way."""
    rng = np.random.default_rng(1)
    data = dsutil.table(2_000).append_column("image", pa.array([rng.bytes(512) for _ in range(2_000)]))
    dsutil.write_parquet(str(tmp_path / "pq"), data, 1_000, 100)
    server = LatencyServer(str(tmp_path), latency_s=0.0)
    try:
        def epoch(**kw):
            L = sparkfeed.DataLoader(f"{server.url}/pq", batch_size=64, num_workers=2,
                                     columns=["id", "image"], **kw)
            return [i for b in L for i in b["id"].tolist()], L.stats()
        off_ids, off = epoch(read_ahead_bytes=0)
        small_ids, small = epoch(read_ahead_bytes=64 << 10)
        default_ids, default = epoch()
    finally:
        server.close()
    assert off_ids == small_ids == default_ids and sorted(off_ids) == list(range(2_000))
    assert off.get("bytes_read_ahead", 0) == 0 and off["bytes_read"] > 0
    assert small["bytes_read_ahead"] > 0 and default["bytes_read_ahead"] >= small["bytes_read_ahead"]
    with pytest.raises(ValueError, match="`read_ahead_bytes` should be a non-negative integer, but got read_ahead_bytes=-1"):
        sparkfeed.DataLoader(str(tmp_path / "pq"), batch_size=8, read_ahead_bytes=-1)


@pytest.mark.parametrize("fmt, worker_type", [("parquet", "thread"), ("parquet", "process"),
                                              ("webdataset", "auto")])
def test_kept_workers_fetch_the_next_epoch_before_it_is_asked_for(tmp_path, fmt, worker_type):
    """`persistent_workers=True`: once an epoch is read, its lanes (thread lanes, or kept worker
    processes, as for tars without an index) fetch the next epoch's data. Before the next
    iteration starts the server has answered more data requests than the same epoch makes
    without it, and that iteration takes those reads and delivers the batches of a fresh loader."""
    data = dsutil.table(400, image_bytes=512)
    if fmt == "parquet":
        dsutil.write_parquet(str(tmp_path / "ds"), data, 100, 50)
    else:
        dsutil.write_tar(str(tmp_path / "ds"), data, 100, index=False)
    suffix = ".parquet" if fmt == "parquet" else ".tar"
    server = LatencyServer(str(tmp_path), latency_s=0.0)
    kw = dict(batch_size=50, num_workers=2, shuffle=True, seed=2, worker_type=worker_type, columns=["id"])
    data_gets = lambda: sum(len(r) for r in _gets(server, suffix).values())  # noqa: E731
    try:
        epochs = {}
        for persistent in (False, True):
            loader = sparkfeed.DataLoader(f"{server.url}/ds", persistent_workers=persistent, **kw)
            before = data_gets()
            loader.set_epoch(0)
            assert sorted(i for b in loader for i in b["id"].tolist()) == list(range(400))
            if not persistent:
                one_epoch = data_gets() - before
            else:
                dsutil.wait_until(lambda: data_gets() - before > one_epoch, "the next epoch's requests")
            loader.set_epoch(1)
            epochs[persistent] = [b["id"].tolist() for b in loader]
    finally:
        server.close()
    assert epochs[True] == epochs[False] and loader.stats()["epochs_read_ahead"] == 1


@pytest.mark.parametrize("remote, image_bytes, threads", [(False, 256, 1), (True, 256, 4), (False, 8192, 4)])
def test_thread_lanes_each_get_a_reading_thread_where_reading_waits_or_copies(tmp_path, monkeypatch, remote,
                                                                               image_bytes, threads):
    """Local small rows: the lanes share the reading threads the cores allow (here 2 cores: one,
    beside the consuming thread). Over remote storage, where a lane mostly waits for its fetches,
    and for large samples (copies outside the GIL), each lane gets its own, so one lane's wait
    never holds another's bytes. The samples are the same."""
    from sparkfeed import lanes, loader as loader_module, threads as threads_module

    started = []

    class Counted(lanes.LaneReader):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(len(self._threads))

    monkeypatch.setattr(threads_module, "cores", lambda: 2)
    monkeypatch.setattr(loader_module, "LaneReader", Counted)
    data = dsutil.table(400)
    data = data.append_column("image", pa.array([os.urandom(image_bytes) for _ in range(400)]))  # stored as is
    dsutil.write_parquet(str(tmp_path / "ds"), data, 100, 50)
    server = LatencyServer(str(tmp_path), latency_s=0.0)
    try:
        source = f"{server.url}/ds" if remote else str(tmp_path / "ds")
        ids = [i for b in sparkfeed.DataLoader(source, batch_size=50, num_workers=4, columns=["id"])
               for i in b["id"].tolist()]
    finally:
        server.close()
    assert sorted(ids) == list(range(400))
    assert started == [threads]


def _split_tars_over_http(tmp_path):
    """(manifest, ids delivered) of 4 indexed tars of 100 samples read over HTTP by two thread
    lanes, batch 48: lane 0 has rows 0-191, so the lane boundary splits shard 1."""
    m = dsutil.write_tar(str(tmp_path / "wds"), dsutil.table(400, image_bytes=2048), 100)
    server = LatencyServer(str(tmp_path), latency_s=0.0)
    try:
        loader = sparkfeed.DataLoader(f"{server.url}/wds", batch_size=48, num_workers=2, columns=["id"])
        return m, [i for b in loader for i in b["id"].tolist()]
    finally:
        server.close()


def test_a_tar_that_a_lane_boundary_splits_is_fetched_ahead_by_both_lanes(tmp_path, monkeypatch):
    """Shard 1 is split between two thread lanes (rows 100-191 to lane 0, 192-199 to lane 1).
    Each lane reads only its own rows of it, in pieces, so each lane's read-ahead fetches them:
    every tar range is fetched on a read-ahead thread, none in place on a lane's thread (where
    each piece would wait its round trip), and every byte once."""
    fetched = []
    original = remotefiles.fetch_ranges

    def recorded(fs, path, ranges, size=None, **options):
        if path.endswith(".tar"):
            fetched.append((threading.current_thread().name, path.rsplit("/", 1)[-1], list(ranges)))
        return original(fs, path, ranges, size, **options)

    monkeypatch.setattr(remotefiles, "fetch_ranges", recorded)
    m, ids = _split_tars_over_http(tmp_path)
    assert sorted(ids) == list(range(400))
    assert fetched and all(name.startswith("sparkfeed-ahead") for name, _, _ in fetched), fetched
    split = sorted(r for _, path, ranges in fetched if path == m.shards[1].path for r in ranges)
    assert len(split) >= 2 and all(b1 <= a2 for (_, b1), (a2, _) in zip(split, split[1:]))  # both lanes', once


def test_tar_indexes_are_parsed_ahead_once_for_the_lanes(tmp_path, monkeypatch):
    """Over remote storage each shard's index is parsed on a read-ahead thread once its text is
    in (while the shard's first pieces are fetched), once for the two lanes even where they
    split the shard; the samples are those of a local read."""
    from sparkfeed.read import tarindex

    parses = []
    original = tarindex.Index.parse

    def recorded(text, split_name, max_member):
        parses.append(threading.current_thread().name)
        return original(text, split_name, max_member)

    monkeypatch.setattr(tarindex.Index, "parse", staticmethod(recorded))
    m, ids = _split_tars_over_http(tmp_path)
    assert sorted(ids) == list(range(400))
    assert len(parses) == len(m.shards) and all(name.startswith("sparkfeed-ahead") for name in parses), parses
