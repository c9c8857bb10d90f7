"""A real HTTP server on 127.0.0.1 that misbehaves on purpose, for storage fault tests.

Requests are numbered; by a fixed pattern some answer 503, some drop the connection without an
answer, some stall longer than the client's read time-out. Paths matching `always_fail` answer
`status` (500 unless told: a permanent outage; 403, 404 for a refused or missing file; 429
with `retry_after` as its Retry-After header; None: the connection dropped without an answer)
every time
(or the first `fail_times`; with `unranged=True` only requests without a Range header: HEADs and
whole-file GETs, what fsspec's `info` sends). `FaultyServer(..., etags=True)` sends ETags
and answers a request whose If-Match is not the file's ETag with 412. Range requests are honoured, and paths %-decoded, as object stores do.
"""

from __future__ import annotations

import http.server
import itertools
import os
import re
import threading
import time
import urllib.parse

from sparkfeed.bench.remote import send_file_range  # the one Range responder


class FaultPlan:
    """Which request numbers fail and how; counts what it injected."""

    def __init__(self, error_every=4, drop_every=5, stall_every=11, stall_s=2.0, always_fail=None,
                 status=500, fail_times=None, unranged=False, retry_after=None):
        self.error_every, self.drop_every, self.stall_every = error_every, drop_every, stall_every
        self.stall_s, self.always_fail, self.status = stall_s, always_fail, status
        self.fail_times, self.unranged, self.retry_after = fail_times, unranged, retry_after
        self.counter = itertools.count(1)
        self.injected = {"error": 0, "drop": 0, "stall": 0, "permanent": 0}
        self.answered: list[tuple[float, str, str | None]] = []  # (monotonic time, path, fault)
        self.lock = threading.Lock()
        # (path pattern, change()): change() is called once, right after the first HEAD of a
        # matching path is answered (a file replaced between a reader's version check and its
        # reads), requests answered one at a time while it is set
        self.after_head = None
        self.serving = threading.Lock()

    def decide(self, path: str, ranged: bool = False) -> str | None:
        with self.lock:
            k = next(self.counter)
            if (self.always_fail and re.search(self.always_fail, path) and not (self.unranged and ranged)
                    and (self.fail_times is None or self.injected["permanent"] < self.fail_times)):
                kind = "permanent"
            elif self.error_every and k % self.error_every == 1:
                kind = "error"
            elif self.drop_every and k % self.drop_every == 2:
                kind = "drop"
            elif self.stall_every and k % self.stall_every == 3:
                kind = "stall"
            else:
                self.answered.append((time.monotonic(), path, None))
                return None
            self.injected[kind] += 1
            self.answered.append((time.monotonic(), path, kind))
            return kind


def make_handler(root: str, plan: FaultPlan, etags: bool = False):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _file(self):  # the request's path %-decoded, as static servers and object stores do
            rel = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
            path = os.path.normpath(os.path.join(root, rel))
            return path if path.startswith(root) and os.path.isfile(path) else None

        def _fault(self) -> bool:
            kind = plan.decide(self.path, "Range" in self.headers)
            if kind == "permanent" and plan.status is None:
                kind = "drop"
            if kind in ("error", "permanent"):
                self.send_response(503 if kind == "error" else plan.status)
                if kind == "permanent" and plan.retry_after is not None:
                    self.send_header("Retry-After", plan.retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return True
            if kind == "drop":
                self.close_connection = True
                self.connection.shutdown(2)
                return True
            if kind == "stall":
                time.sleep(plan.stall_s)
            return False

        def do_HEAD(self):
            self._serve(body=False)

        def do_GET(self):
            self._serve(body=True)

        def _serve(self, body: bool):
            if plan.after_head is None:
                return self._serve_now(body)
            with plan.serving:  # (no request is answered between a HEAD and the change after it)
                self._serve_now(body)
                pattern, change = plan.after_head
                if not body and re.search(pattern, self.path):
                    self.wfile.flush()
                    plan.after_head = None
                    change()

        def _serve_now(self, body: bool):
            if self._fault():
                return
            path = self._file()
            if path is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if etags and self.headers.get("If-Match") not in (None, _etag(path)):
                self.send_response(412)  # (as object stores and nginx answer a file replaced since)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            send_file_range(self, path, body, etags)

    return Handler


def _etag(path: str) -> str:
    st = os.stat(path)
    return f'"{st.st_size:x}-{st.st_mtime_ns:x}"'  # (as `send_file_range` makes it)


class FaultyServer:
    """`with FaultyServer(root, plan) as url:` serves `root` at `url` until the block ends."""

    def __init__(self, root: str, plan: FaultPlan, etags: bool = False):
        handler = make_handler(os.path.realpath(root), plan, etags)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
