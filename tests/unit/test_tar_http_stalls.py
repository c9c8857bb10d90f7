"""A tar server over HTTP that stalls mid-body (headers and half the bytes sent, then silence).
The stall is seen when the socket is silent for the client's read time-out; a read-ahead fetch
that timed out is not retried ahead: the reader reads the shard in place with its own retries,
so a server that stays stalled costs one retry budget (before: the read-ahead's 8 time-outs,
then 8 more in place, and as many for the shard's index), and one that stalls once costs one
time-out. Real server on 127.0.0.1."""

import http.server
import os
import re
import threading

import aiohttp
import pytest

import dsutil
import sparkfeed
from sparkfeed import ShardReadError, httpranges, retries
from sparkfeed.bench.remote import send_file_range

FAST = {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, sock_read=0.3, sock_connect=2)}}


class _StallingServer:
    """Serves `root`; the first `stalls` GETs of each file named with one of `stalling` send half
    their body, then nothing until the test ends. `gets` counts each such file's GETs."""

    def __init__(self, root: str, stalls: int, stalling=(".tar",)):
        self.gets: dict[str, int] = {}
        self.release = threading.Event()
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
                path = os.path.join(root, self.path.lstrip("/"))
                if body and path.endswith(tuple(stalling)):
                    owner.gets[self.path] = owner.gets.get(self.path, 0) + 1
                    if owner.gets[self.path] <= stalls and os.path.isfile(path):
                        return self._stall(path)
                if not os.path.isfile(path):
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                send_file_range(self, path, body)

            def _stall(self, path: str):
                data = open(path, "rb").read()
                m = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                a, b = (int(m.group(1)), int(m.group(2) or len(data) - 1)) if m else (0, len(data) - 1)
                self.send_response(206 if m else 200)
                if m:
                    self.send_header("Content-Range", f"bytes {a}-{b}/{len(data)}")
                self.send_header("Content-Length", str(b - a + 1))
                self.end_headers()
                self.wfile.write(data[a:a + (b - a + 1) // 2])
                self.wfile.flush()
                owner.release.wait(60)
                self.close_connection = True

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def quick_retries(monkeypatch):
    """Retry waits of 10-20 ms (the number of attempts unchanged): the test counts requests."""
    monkeypatch.setitem(retries.with_retries.__kwdefaults__, "base_delay", 0.01)
    monkeypatch.setitem(retries.with_retries.__kwdefaults__, "max_delay", 0.02)


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("index", [False, True])
def test_a_server_that_stays_stalled_costs_one_retry_budget(tmp_path, monkeypatch, quick_retries, direct, index):
    monkeypatch.setattr(httpranges, "DIRECT", direct)
    dsutil.write_tar(str(tmp_path / "wds"), dsutil.table(200, image_bytes=64), 100, index=index)
    server = _StallingServer(str(tmp_path), stalls=10**6, stalling=(".tar", ".idx"))
    try:
        loader = sparkfeed.DataLoader(f"{server.url}/wds", batch_size=50, storage_options=FAST)
        with pytest.raises(ShardReadError, match="storage kept failing") as info:
            list(loader)
        shard = info.value.shard
        # the read-ahead's one request, then the reader's 8 attempts (before: 8 ahead, then 8 more)
        assert server.gets[f"/wds/{shard}"] <= 9, server.gets
        # a stalled index: asked once, then the tar streamed (before: 8 ahead, 8 more in place)
        assert all(n == 1 for p, n in server.gets.items() if p.endswith(".idx")), server.gets
    finally:
        server.close()


@pytest.mark.parametrize("index", [False, True])
def test_a_server_that_stalls_once_per_shard_delivers_every_sample(tmp_path, quick_retries, index, caplog):
    dsutil.write_tar(str(tmp_path / "wds"), dsutil.table(200, image_bytes=64), 100, index=index)
    server = _StallingServer(str(tmp_path), stalls=1)
    try:
        with caplog.at_level("WARNING", logger="sparkfeed"):
            loader = sparkfeed.DataLoader(f"{server.url}/wds", batch_size=50, storage_options=FAST)
            ids = sorted(i for b in loader for i in b["id"].tolist())
        assert ids == list(range(200))
        assert all(n == 2 for n in server.gets.values()), server.gets  # the stalled one, then in place
        said = [r.getMessage() for r in caplog.records if "reading ahead" in r.getMessage()]
        assert said and all("the reader reads it in place" in m for m in said), said
    finally:
        server.close()


def test_the_time_outs_storage_clients_raise_are_stalls():
    """botocore's time-outs (s3fs raises them) are no `TimeoutError`; they, and an error raised
    from one (fsspec's FileNotFoundError from a failed `info`), are time-outs all the same."""
    from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError

    from sparkfeed.read.tarahead import is_timeout

    read = ReadTimeoutError(endpoint_url="http://127.0.0.1:1/b/k")
    assert not isinstance(read, TimeoutError)
    assert is_timeout(read) and is_timeout(ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"))
    assert is_timeout(aiohttp.ServerTimeoutError("read")) and is_timeout(TimeoutError())
    missing = FileNotFoundError("b/k")
    missing.__cause__ = read
    assert is_timeout(missing)
    assert not is_timeout(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert not is_timeout(ConnectionResetError()) and not is_timeout(FileNotFoundError("b/k"))
