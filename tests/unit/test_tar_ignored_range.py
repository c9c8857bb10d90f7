"""Indexed tar shards over an HTTP server that ignores Range requests (every GET answered with
the whole file, 200; real server on 127.0.0.1): the reader sees it on the first piece, says so
once, and reads every later shard whole, in one GET, without read-ahead. Before, every piece of
every shard was asked for ahead and in place (15 GETs of a 680 KB shard, each answered with the
whole file), as the Parquet reader already avoided (`ParquetReader._no_ranges`). Read-ahead
tasks queued behind the first that met it send no request: under load (CI, 2 cores) the
read-ahead threads once asked for every piece of every shard before the reader saw the first
answer (15, 14, 14, 14 GETs). Each shard's index is fetched once: one read ahead before the
server was met is taken by the reader (it was fetched again in place, the reader's read-ahead
being closed)."""

import collections
import http.server
import os
import threading

import dsutil
import sparkfeed
from sparkfeed import readahead
from sparkfeed.bench.remote import send_file_range
from sparkfeed.read import tar


def test_a_server_that_ignores_range_has_later_shards_read_whole_in_one_get(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(tar, "FIRST_CHUNK_BYTES", 64 << 10)  # shards read in pieces of a few samples
    monkeypatch.setattr(tar, "CHUNK_BYTES", 128 << 10)
    monkeypatch.setattr(tar, "MIN_CHUNK_ROWS", 4)
    dsutil.write_tar(str(tmp_path / "wds"), dsutil.table(800, image_bytes=3000), 200)
    gets = collections.Counter()

    class Whole(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            gets[self.path] += 1
            del self.headers["Range"]
            send_file_range(self, os.path.join(str(tmp_path), self.path.lstrip("/")), body=True)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Whole)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with caplog.at_level("WARNING", logger="sparkfeed"):
            ids = [i for b in sparkfeed.DataLoader(f"http://127.0.0.1:{server.server_address[1]}/wds", batch_size=50)
                   for i in b["id"].tolist()]
    finally:
        server.shutdown()
        server.server_close()
    assert sorted(ids) == list(range(800))
    assert "ignores Range requests; reading whole shards, without read-ahead" in caplog.text
    tars = {p: n for p, n in gets.items() if p.endswith(".tar")}
    first = tars.pop("/wds/shard-00000.tar")
    assert first <= readahead.READ_AHEAD_THREADS + 1, first  # those in flight when it was met, then whole
    assert tars == {f"/wds/shard-0000{i}.tar": 1 for i in (1, 2, 3)}, tars  # before: 14 GETs a shard
    indexes = {p: n for p, n in gets.items() if p.endswith(".idx")}
    # each index once: one read ahead before the server was met is taken, not fetched again in
    # place (before, `shard-0000N.tar.idx: 2` for the shards read ahead)
    assert indexes == {f"/wds/shard-0000{i}.tar.idx": 1 for i in range(4)}, indexes
