"""A server that answers 429 or 503 with `Retry-After` asks for a wait before the next request;
the retries took their own backoff instead (0.1-0.3 s for the first), so a throttling server was
asked again at once. Invariant: the next request of that file comes no sooner than asked (up to
`retries.MAX_RETRY_AFTER_S`), and the epoch still delivers every row. A real HTTP server on
127.0.0.1."""

import email.utils
import http.server
import os
import threading
import time

import aiohttp
import pytest

import dsutil
import sparkfeed
from sparkfeed import httpranges, retries
from sparkfeed.bench.remote import send_file_range

ASKED_S = 2


class _ThrottlingServer:
    """Serves `root`; the first request of each `.parquet` file is answered 429 with
    `Retry-After: ASKED_S`. `times[path]` holds each request's arrival time."""

    def __init__(self, root: str):
        self.times: dict[str, list[float]] = {}
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._serve(False)

            def do_GET(self):
                self._serve(True)

            def _serve(self, body: bool):
                path = self.path.split("?")[0]
                seen = owner.times.setdefault(path, [])
                seen.append(time.monotonic())
                local = os.path.join(root, path.lstrip("/"))
                if not os.path.isfile(local):
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif path.endswith(".parquet") and len(seen) == 1 and body:
                    self.send_response(429)
                    self.send_header("Retry-After", str(ASKED_S))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    send_file_range(self, local, body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def throttling(tmp_path):
    root = str(tmp_path / "ds")
    dsutil.write_parquet(root, dsutil.table(60), rows_per_shard=20, rows_per_group=10)
    server = _ThrottlingServer(str(tmp_path))
    yield server
    server.close()


def test_the_next_request_waits_as_long_as_the_server_asked(throttling):
    loader = sparkfeed.DataLoader(f"{throttling.url}/ds", batch_size=16, columns=["id"])
    assert sorted(i for b in loader for i in b["id"].tolist()) == list(range(60))
    shards = {p: t for p, t in throttling.times.items() if p.endswith(".parquet")}
    assert len(shards) == 3
    for path, times in shards.items():
        assert len(times) >= 2, f"{path} was not asked again after its 429"
        assert times[1] - times[0] >= ASKED_S - 0.05, f"{path} asked again {times[1] - times[0]:.2f}s after its 429"


def test_retry_after_is_read_from_every_client_and_in_both_forms():
    plain = httpranges.HTTPStatusError(429, "x: HTTP 429", "Too Many Requests", {"Retry-After": "7"})
    assert retries.retry_after(plain) == 7.0
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    client = aiohttp.ClientResponseError(None, (), status=503, headers={"Retry-After": later})
    assert 25 <= retries.retry_after(client) <= 31
    wrapped = OSError("storage kept failing")
    wrapped.__cause__ = plain
    assert retries.retry_after(wrapped) == 7.0  # (as `as_os_error` raises it: from the client's error)
    for value in ("soon", "", "-3", "Thu, 99 Foo 2026"):
        assert retries.retry_after(httpranges.HTTPStatusError(429, "x", "", {"Retry-After": value})) is None
    assert retries.retry_after(ConnectionError("reset")) is None


def test_a_wait_asked_for_is_capped(monkeypatch):
    """A server asking for an hour gets `MAX_RETRY_AFTER_S`, so a retry budget stays bounded."""
    slept = []
    monkeypatch.setattr(retries.time, "sleep", slept.append)
    calls = []

    def fails_once():
        calls.append(1)
        if len(calls) == 1:
            raise httpranges.HTTPStatusError(503, "x: HTTP 503", "Slow Down", {"Retry-After": "3600"})
        return "ok"

    assert retries.with_retries(fails_once, "x") == "ok"
    assert slept == [retries.MAX_RETRY_AFTER_S]
