"""An indexed Parquet file replaced over HTTP while an epoch reads it (same size, one byte of
its data changed, new ETag; real server on 127.0.0.1 that honours If-Match as object stores
and nginx do): its version is checked once per file and iteration, so the rows read after the
change would come from the new file under the old footer. Every range request is now
conditional on the ETag the file was indexed with (`If-Match`), and the server's 412 is an
error naming the dataset and shard. Before, the epoch ran on and delivered the changed byte."""

import http.server
import os
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import sparkfeed
from sparkfeed.bench.remote import send_file_range
from sparkfeed.errors import ShardReadError

N, BLOB = 2_000, 4_000


def _etag(path: str) -> str:
    st = os.stat(path)
    return f'"{st.st_size:x}-{st.st_mtime_ns:x}"'  # (as `send_file_range` makes it)


class _Conditional(http.server.BaseHTTPRequestHandler):
    """Ranges and ETags; a request whose If-Match is not the file's ETag now gets 412."""

    protocol_version = "HTTP/1.1"
    root = ""

    def log_message(self, *args):
        pass

    def _answer(self, body: bool):
        path = os.path.join(self.root, self.path.lstrip("/"))
        asked = self.headers.get("If-Match")
        if not os.path.isfile(path) or (asked is not None and asked != _etag(path)):
            self.send_response(412 if os.path.isfile(path) else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        send_file_range(self, path, body=body, etag=True)

    def do_GET(self):
        self._answer(True)

    def do_HEAD(self):
        self._answer(False)


@pytest.fixture
def served(tmp_path):
    (tmp_path / "pq").mkdir()
    rng = np.random.default_rng(0)
    pq.write_table(pa.table({"id": np.arange(N), "blob": [rng.bytes(BLOB) for _ in range(N)]}),
                   tmp_path / "pq" / "a.parquet", row_group_size=100, compression="none")
    handler = type("Handler", (_Conditional,), {"root": str(tmp_path)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path / "pq" / "a.parquet"
    server.shutdown()
    server.server_close()


def _replace(path) -> None:
    """The file rewritten in place: same size, one byte of a blob of its last row group changed."""
    data = bytearray(path.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little")
    data[len(data) - 8 - footer - 1_000] ^= 0xFF  # (in the last row group's blobs)
    st = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # (a new ETag whatever the clock)


def test_a_file_replaced_during_an_epoch_is_an_error_naming_it_not_mixed_rows(served, tmp_path):
    url, path = served
    m = sparkfeed.index([f"{url}/pq/a.parquet"], manifest=str(tmp_path / "m.json"), progress=False)
    assert m.shards[0].etag
    loader = sparkfeed.DataLoader(f"{url}/pq", manifest=str(tmp_path / "m.json"), batch_size=100,
                                  num_workers=0, prefetch=0, read_ahead_bytes=1 << 20)
    it = iter(loader)
    first = next(it)
    assert first["id"].tolist() == list(range(100))
    _replace(path)
    with pytest.raises(ShardReadError, match=r"a\.parquet.*HTTP 412, the file was replaced during the read") as info:
        for _ in it:
            pass
    assert info.value.shard == "a.parquet" and "127.0.0.1" in str(info.value)


def test_an_unchanged_file_is_read_whole_with_conditional_requests(served, tmp_path):
    """The same server and reads, no change: every sample, so the If-Match sent matches."""
    url, _ = served
    sparkfeed.index([f"{url}/pq/a.parquet"], manifest=str(tmp_path / "m.json"), progress=False)
    loader = sparkfeed.DataLoader(f"{url}/pq", manifest=str(tmp_path / "m.json"), batch_size=100,
                                  num_workers=0, read_ahead_bytes=1 << 20)
    assert sorted(i for b in loader for i in b["id"].tolist()) == list(range(N))
