"""Remote storage through fsspec: a real HTTP server on 127.0.0.1 serves a dataset."""

import functools
import http.server
import threading

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
