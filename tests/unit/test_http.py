"""Remote storage through fsspec: a real HTTP server on 127.0.0.1 serves a dataset."""

import contextlib
import functools
import http.server
import threading
import time

import pytest

import dsutil
import sparkfeed


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    dsutil.write_parquet(str(root / "pq"), dsutil.table(500, image_bytes=32), 200, 50, sort_by="label")
    dsutil.write_tar(str(root / "wds"), dsutil.table(300, image_bytes=32), 100)
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.parametrize("name,n", [("pq", 500), ("wds", 300)])
def test_http_dataset_reads_every_sample_once(served, name, n):
    url = f"{served}/{name}"
    assert sparkfeed.read_manifest(url).num_samples == n
    L = sparkfeed.DataLoader(url, batch_size=64, shuffle=True, num_workers=2, filter=[("label", "<", 5)])
    ids = [i for b in L for i in b["id"].tolist()]
    assert sorted(ids) == [i for i in range(n) if i % 10 < 5]


def test_http_missing_dataset_is_a_manifest_error(served):
    with pytest.raises(sparkfeed.ManifestError, match="sparkfeed.write"):
        sparkfeed.read_manifest(f"{served}/nothing-here")


@contextlib.contextmanager
def _stalling(root, suffix: str):
    """A latency server over `root` that holds every GET of a `suffix` file until released (or
    30 s pass): (its URL, the release event)."""
    from sparkfeed.bench.remote import LatencyServer

    release = threading.Event()

    def hold(method, path, range_header):
        if path.endswith(suffix) and method == "GET":
            release.wait(30)

    server = LatencyServer(str(root), latency_s=0.0, hold=hold)
    try:
        yield server.url, release
    finally:
        release.set()
        server.close()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_stalled_read_on_reading_threads_raises_after_timeout(tmp_path, num_workers):
    """torch's `timeout=` (seconds to wait for a batch from the workers) holds for thread lanes
    too: data requests held by the server end the iteration with torch's RuntimeError."""
    dsutil.write_parquet(str(tmp_path / "pq"), dsutil.table(200, image_bytes=16), 100, 50)
    with _stalling(tmp_path, ".parquet") as (url, release):
        loader = sparkfeed.DataLoader(f"{url}/pq", batch_size=50, num_workers=num_workers,
                                      worker_type="thread", timeout=0.5)
        with pytest.raises(RuntimeError, match=r"timed out after 0.5 seconds"):
            next(iter(loader))
        release.set()
        again = sparkfeed.DataLoader(f"{url}/pq", batch_size=50, num_workers=num_workers,
                                     worker_type="thread", timeout=60)
        assert sorted(i for b in again for i in b["id"].tolist()) == list(range(200))


@pytest.mark.parametrize("persistent", [False, True])
def test_a_stalled_read_in_worker_processes_raises_soon_after_timeout(tmp_path, persistent):
    """With worker processes, torch's timeout error came about 10 s after the timeout: its
    shutdown waited 5 s for each worker stuck in its read before terminating it. The stuck
    workers are stopped at once, so the error comes soon after `timeout`, and the next loader
    reads everything."""
    dsutil.write_tar(str(tmp_path / "wds"), dsutil.table(200, image_bytes=16), 50)
    with _stalling(tmp_path, ".tar") as (url, release):
        loader = sparkfeed.DataLoader(f"{url}/wds", batch_size=50, num_workers=2,
                                      worker_type="process", timeout=1, persistent_workers=persistent)
        start = time.monotonic()
        with pytest.raises(RuntimeError, match=r"timed out after 1 seconds"):
            next(iter(loader))
        took = time.monotonic() - start
        assert took < 6, f"the timeout's error came {took:.1f} s after the first next() (timeout=1)"
        release.set()
        again = sparkfeed.DataLoader(f"{url}/wds", batch_size=50, num_workers=2,
                                     worker_type="process", timeout=60)
        assert sorted(i for b in again for i in b["id"].tolist()) == list(range(200))
