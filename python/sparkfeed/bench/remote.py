"""The `remote` scenario: the same image dataset, Parquet and WebDataset, read from local disk
and over HTTP with a fixed latency added to every request (object storage's time to first
byte), to measure what read-ahead and coalesced range requests recover.

The server is a small threaded HTTP server on 127.0.0.1 with Range support (what object stores
and CDNs do), started once per bench run over the bench cache and left to the process's end.
Every request waits `LATENCY_S` before it is answered; requests and bytes sent are counted.
Peers over the same server: webdataset (whole-tar streaming through its `pipe:curl` opener) and
Mosaic Streaming (MDS shards downloaded to a local cache, through its S3 downloader). A row
of the Parquet files' bytes alone (`bytes_alone`: received, nothing parsed) is the ceiling any
loader meets over this server on this machine, so that a miss against the local read can be
told apart from what the transfer itself costs.
"""

from __future__ import annotations

import http.server
import os
import re
import threading
import time
from collections.abc import Callable, Iterator

LATENCY_S = 0.020  # added to every request: object storage's typical time to first byte

_servers: dict[str, "LatencyServer"] = {}


class LatencyServer:
    """Serves `root` read-only on 127.0.0.1 with Range support, `latency_s` added per request.
    `hold(method, path, range header)`, when given, is called before each request is answered
    and may block it (tests use it to hold requests until others have arrived). `etags=True`
    sends each file's ETag, as object stores do (`sparkfeed.index` then records it, and the
    loader checks it once per file and iteration)."""

    def __init__(self, root: str, latency_s: float = LATENCY_S,
                 hold: Callable[[str, str, str], None] | None = None, etags: bool = False):
        self.root, self.latency_s, self.hold = os.path.realpath(root), latency_s, hold
        self.etags = etags
        self.requests, self.bytes_sent, self._lock = 0, 0, threading.Lock()
        # CPU seconds of the handler threads (parsing and answering requests): it runs in the
        # bench's process, so the harness's CPU figure holds it; `measure` takes it out of the row
        self.cpu_s = 0.0
        self.answering = 0  # requests arrived and not yet counted
        # (arrived, answered, method, path and range, bytes), times on time.perf_counter: which
        # requests wait on which (the critical path of a read), for diagnosis
        self.log: list[tuple[float, float, str, str, int]] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True,
                         name="sparkfeed-bench-http").start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def count(self, nbytes: int, what: tuple = (), arrived: float = 0.0) -> None:
        with self._lock:
            self.log.append((arrived, time.perf_counter(), *what, nbytes))
            self.requests += 1
            self.bytes_sent += nbytes

    def settled(self, timeout_s: float = 10.0) -> None:
        """Wait (at most `timeout_s`) until every request that arrived is counted: a client has
        all of an answer's bytes a moment before the handler that sent them counts them, so
        counts read right after a run could miss its last answers."""
        deadline = time.monotonic() + timeout_s
        while self.answering and time.monotonic() < deadline:
            time.sleep(0.001)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def send_file_range(handler: http.server.BaseHTTPRequestHandler, path: str, body: bool,
                    etag: bool = False) -> int:
    """Answer a GET/HEAD for the file at `path` as object stores do: 206 with the bytes of a
    `Range: bytes=a-b` header, else 200 with the whole file; with `etag`, the file's ETag (of its
    size and mtime). Returns the body bytes sent (0 when the client hung up before the body went
    out). (Also the test servers' responder: tests/faulty_http.py.)"""
    size = os.path.getsize(path)
    start, end = 0, size - 1
    m = re.match(r"bytes=(\d+)-(\d*)", handler.headers.get("Range", ""))
    if m:
        start, end = int(m.group(1)), min(int(m.group(2) or size - 1), size - 1)
        handler.send_response(206)
        handler.send_header("Content-Range", f"bytes {start}-{end}/{size}")
    else:
        handler.send_response(200)
    handler.send_header("Content-Length", str(end - start + 1))
    handler.send_header("Accept-Ranges", "bytes")
    if etag:
        handler.send_header("ETag", f'"{size:x}-{os.stat(path).st_mtime_ns:x}"')
    handler.end_headers()
    if not body:
        return 0
    handler.wfile.flush()
    try:
        with open(path, "rb") as f:  # sendfile: the kernel copies (as nginx does), not this process
            return handler.connection.sendfile(f, start, end - start + 1)
    except (BrokenPipeError, ConnectionResetError):  # the client left mid-body (a reader closed early)
        handler.close_connection = True
        return 0


def _handler(owner: LatencyServer):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # TCP_NODELAY, as object stores and nginx (`tcp_nodelay on`) answer: else a body sent
        # after its headers waits for the client's delayed ACK of them (Nagle), 20-40 ms more
        # per small response than the `latency_s` the scenario means to add
        disable_nagle_algorithm = True

        def log_message(self, *args):
            pass

        def handle_one_request(self):
            cpu = time.thread_time()
            try:
                super().handle_one_request()
            finally:
                spent = time.thread_time() - cpu
                with owner._lock:
                    owner.cpu_s += spent

        def do_HEAD(self):
            self._serve(body=False)

        def do_GET(self):
            self._serve(body=True)

        def _serve(self, body: bool):
            with owner._lock:
                owner.answering += 1
            try:
                self._answer(body)
            finally:
                with owner._lock:
                    owner.answering -= 1

        def _answer(self, body: bool):
            arrived = time.perf_counter()
            time.sleep(owner.latency_s)
            rel = self.path.split("?")[0].lstrip("/")
            if owner.hold is not None:
                owner.hold(self.command, rel, self.headers.get("Range", ""))
            path = os.path.realpath(os.path.join(owner.root, rel))
            if not path.startswith(owner.root + os.sep) or not os.path.isfile(path):
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                owner.count(0, (self.command, self.path), arrived)
                return
            sent = send_file_range(self, path, body, owner.etags)
            owner.count(sent, (self.command, f"{rel} {self.headers.get('Range', '')}"), arrived)

    return Handler


def server_for(root: str) -> LatencyServer:
    """The run's server over `root` (started on first use)."""
    if root not in _servers:
        _servers[root] = LatencyServer(root)
    return _servers[root]


def _url_of(path: str) -> str:
    """`path` (inside the bench cache) as a URL on the latency server over its parent."""
    parent, name = os.path.split(os.path.realpath(path))
    return f"{server_for(parent).url}/{name}"


def sparkfeed_remote(ctx, fmt: str = "parquet", remote: bool = True, shuffle: bool = False) -> Iterator[int]:
    """sparkfeed's DataLoader over the image dataset (`fmt`: parquet or webdataset), undecoded
    (id, label, image bytes): local files, or over the latency server; in stored order, or
    shuffled (each lane's blocks read whole, over HTTP through read-ahead)."""
    import sparkfeed

    path = ctx.data.images if fmt == "parquet" else ctx.data.webdataset
    if path is None:
        raise NotImplementedError(ctx.data.webdataset_note)
    server = server_for(os.path.dirname(os.path.realpath(path))) if remote else None
    before = _counts(server) if server else (0, 0, 0.0)
    loader = sparkfeed.DataLoader(_url_of(path) if remote else path, batch_size=ctx.batch_size,
                                  columns=["id", "label", "image"], num_workers=ctx.workers,
                                  shuffle=shuffle, seed=1)
    yield from (len(batch["id"]) for batch in loader)
    ctx.extra["bytes_read"] = int(loader.stats()["bytes_read"])
    if server:
        _served(ctx, server, before)


def _counts(server: LatencyServer) -> tuple[int, int, float]:
    """The server's requests, bytes sent and handler CPU seconds so far."""
    return server.requests, server.bytes_sent, server.cpu_s


def _served(ctx, server: LatencyServer, before: tuple[int, int, float]) -> None:
    """Requests and bytes the server answered since `before` (its `_counts` then), into the row;
    and its handlers' CPU seconds (`server_cpu_s`), which `measure` takes out of the loader's
    CPU: the server stands in for object storage, not for work of the loader (before, the rows
    of loaders in this process carried it and the Mosaic row, measured in its own process, not)."""
    server.settled()
    ctx.extra["requests"] = server.requests - before[0]
    ctx.extra["bytes_served"] = server.bytes_sent - before[1]
    ctx.extra["server_cpu_s"] = server.cpu_s - before[2]


def webdataset_remote(ctx) -> Iterator[int]:
    """webdataset's own pipeline streaming the same tars over the latency server (curl)."""
    import torch
    import webdataset as wds

    from . import datasets

    if ctx.data.webdataset is None:
        raise NotImplementedError(ctx.data.webdataset_note)
    base = _url_of(ctx.data.webdataset)
    server = server_for(os.path.dirname(os.path.realpath(ctx.data.webdataset)))
    before = _counts(server)
    urls = [f"pipe:curl -s {base}/{os.path.basename(p)}"
            for p in datasets.files(ctx.data.webdataset, ".tar")]
    pipeline = (wds.WebDataset(urls, shardshuffle=False, empty_check=False, nodesplitter=None,
                               workersplitter=wds.split_by_worker)
                .to_tuple("jpg", "cls").batched(ctx.batch_size, partial=True))
    loader = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=ctx.workers)
    yield from (len(images) for images, _labels in loader)
    _served(ctx, server, before)


def mosaic_remote(ctx) -> Iterator[int]:
    """Mosaic Streaming downloading an MDS copy of the image dataset from the latency server into
    a fresh local cache, in its own venv (`peer_scripts/streaming_remote.py`: through its S3
    downloader, as it has no http(s) one)."""
    from . import runners

    path = ctx.data.images
    server = server_for(os.path.dirname(os.path.realpath(path)))
    before = _counts(server)
    yield from runners.peer(ctx, "streaming", "streaming_remote.py", path=os.path.realpath(path),
                            endpoint=server.url)
    _served(ctx, server, before)


BYTES_ALONE_RANGE = 8 << 20  # bytes per request of the `bytes_alone` row (the loader's fetch size)
BYTES_ALONE_IN_FLIGHT = 8  # its requests at once


def bytes_alone(ctx) -> Iterator[int]:
    """The Parquet dataset's files received over the latency server and nothing else done:
    `BYTES_ALONE_RANGE` ranges, `BYTES_ALONE_IN_FLIGHT` at once, each on a keep-alive connection
    of the standard library's client into one reused buffer per thread (no parsing, no page
    faults): what moving these bytes over this server costs on this machine, the ceiling of any
    loader of these files here. A file's samples are counted when its last range is in."""
    import http.client
    import json
    import urllib.parse
    from concurrent.futures import ThreadPoolExecutor, as_completed

    path = os.path.realpath(ctx.data.images)
    with open(os.path.join(path, "_sparkfeed.json"), encoding="utf-8") as f:
        shards = json.load(f)["shards"]
    server = server_for(os.path.dirname(path))
    before = _counts(server)
    base = urllib.parse.urlsplit(_url_of(path))
    local = threading.local()

    def receive(rel: str, start: int, end: int) -> str:
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection(base.hostname, base.port, timeout=60)
            local.buf = memoryview(bytearray(BYTES_ALONE_RANGE))
        local.conn.request("GET", f"{base.path}/{rel}", headers={"Range": f"bytes={start}-{end - 1}"})
        response, at = local.conn.getresponse(), 0
        while at < end - start:
            n = response.readinto(local.buf[at:end - start])
            if not n:
                break
            at += n
        if response.status != 206 or at != end - start:
            raise ConnectionError(f"{rel}: HTTP {response.status}, {at} of {end - start} bytes "
                                  f"for range {start}-{end - 1}")
        return rel

    left = {s["path"]: 0 for s in shards}
    with ThreadPoolExecutor(BYTES_ALONE_IN_FLIGHT, thread_name_prefix="bytes-alone") as pool:
        futures = []
        for s in shards:
            for a in range(0, s["num_bytes"], BYTES_ALONE_RANGE):
                futures.append(pool.submit(receive, s["path"], a, min(a + BYTES_ALONE_RANGE, s["num_bytes"])))
                left[s["path"]] += 1
        samples = {s["path"]: s["num_samples"] for s in shards}
        for future in as_completed(futures):
            rel = future.result()
            left[rel] -= 1
            if not left[rel]:
                yield samples[rel]
    _served(ctx, server, before)


def remote_cases(p) -> list:
    """Local and remote rows for both formats; `ratio_vs_baseline` is against local Parquet."""
    from .timing import Case

    n, lat = p.images, f"HTTP +{int(LATENCY_S * 1000)} ms/request"
    return [
        Case("sparkfeed parquet, local", "sparkfeed-remote", n, baseline=True,
             options={"fmt": "parquet", "remote": False}),
        Case(f"sparkfeed parquet, {lat}", "sparkfeed-remote", n,
             options={"fmt": "parquet", "remote": True}),
        Case("sparkfeed parquet shuffle=True, local", "sparkfeed-remote", n,
             options={"fmt": "parquet", "remote": False, "shuffle": True}),
        Case(f"sparkfeed parquet shuffle=True, {lat}", "sparkfeed-remote", n,
             options={"fmt": "parquet", "remote": True, "shuffle": True},
             note="shuffle blocks' runs fetched by read-ahead, as unshuffled reads are"),
        Case("sparkfeed webdataset, local", "sparkfeed-remote", n,
             options={"fmt": "webdataset", "remote": False}),
        Case(f"sparkfeed webdataset, {lat}", "sparkfeed-remote", n,
             options={"fmt": "webdataset", "remote": True}),
        Case(f"bytes alone (the Parquet files), {lat}", "bytes-alone-remote", n,
             note=f"{BYTES_ALONE_IN_FLIGHT} ranges of {BYTES_ALONE_RANGE >> 20} MiB at once into reused "
                  "buffers, nothing parsed: the ceiling of any loader of these files over this server here"),
        Case(f"webdataset, {lat}", "webdataset-remote", n,
             note="webdataset's pipe:curl whole-tar streaming, undecoded"),
        Case(f"mosaic-streaming, {lat}", "mosaic-streaming-remote", n,
             note="MDS shards downloaded to a fresh local cache through streaming's S3 "
                  "downloader (it has no http(s) one); undecoded"),
    ]
