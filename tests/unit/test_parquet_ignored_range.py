"""Parquet files over an HTTP server that ignores Range requests (every GET answered with the
whole file, 200; real server on 127.0.0.1): the first reader or read-ahead task that meets it
tells every lane and read-ahead task of the iteration at once (`SharedReads.ranges_ignored`).
Before, only the reader that met it turned to whole-file reads, on its own next read in place:
meanwhile its read-ahead went on asking for ranges, and every other lane's reader learnt it
again with range requests of its own (28 range GETs over 24 files with 4 lanes, against 12)."""

import collections
import http.server
import os
import threading

import dsutil
import sparkfeed
from sparkfeed.bench.remote import send_file_range


def _serve_ignoring_range(root: str, gets: dict):
    """A server over `root` that answers every GET with the whole file, counting GETs with and
    without a Range header."""

    class Whole(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            gets["ranged" if "Range" in self.headers else "whole"][self.path] += 1
            del self.headers["Range"]
            send_file_range(self, os.path.join(root, self.path.lstrip("/")), body=True)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Whole)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_what_the_count_pass_met_holds_for_every_lane_of_the_first_epoch(tmp_path, caplog):
    """A filter's count pass (planning) meets the server first; the first epoch's four thread
    lanes share what it learnt (`Engine._counted`), so none of them sends a range request (the
    server's answers come whole: each would move a file). Certain whatever the timing: the
    count pass's readers and their threads are done before the epoch starts."""
    dsutil.write_parquet(str(tmp_path / "pq"), dsutil.table(8 * 200, image_bytes=3000), 200, 20)
    gets = {"ranged": collections.Counter(), "whole": collections.Counter()}
    server = _serve_ignoring_range(str(tmp_path), gets)
    files = {f"/pq/part-{k:05d}.parquet" for k in range(8)}
    try:
        with caplog.at_level("WARNING", logger="sparkfeed"):
            loader = sparkfeed.DataLoader(f"http://127.0.0.1:{server.server_address[1]}/pq", batch_size=50,
                                          num_workers=4, filter=[("label", "==", 3)])
            assert len(loader) == 4  # planned: the count pass read every file
            planning = sum(n for p, n in gets["ranged"].items() if p in files)
            ids = [i for b in loader for i in b["id"].tolist()]
    finally:
        server.shutdown()
        server.server_close()
    assert sorted(ids) == list(range(3, 8 * 200, 10))
    assert "ignores Range requests; reading whole files, without read-ahead" in caplog.text
    assert planning >= 1  # what met it
    assert sum(n for p, n in gets["ranged"].items() if p in files) == planning, gets["ranged"]
