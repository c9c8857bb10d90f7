"""The filter's count pass fetches small Parquet files whole and holds their bytes
(`SharedReads.hold`, up to 16 MiB) for the first epoch. Thread lanes took them; worker
processes did not (each fetched every file again: 40 GETs more over 40 files of 7.7 KB) and the
parent held them to the loader's end. Forked workers now read the first epoch from their copy
(`Engine._first_shared`) and the parent lets go once they start; later epochs fetch anew, as a
file replaced between epochs must be read anew. Real HTTP server on 127.0.0.1."""

import collections
import http.server
import os
import threading

import dsutil
import sparkfeed
from sparkfeed.bench.remote import send_file_range


def test_forked_workers_read_the_first_epoch_from_the_count_pass_bytes(tmp_path):
    dsutil.write_parquet(str(tmp_path / "pq"), dsutil.table(40 * 100), 100, 25)
    gets = collections.Counter()

    class Files(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            gets[self.path] += 1
            send_file_range(self, os.path.join(str(tmp_path), self.path.lstrip("/")), body=True)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    files = lambda: sum(n for p, n in gets.items() if p.endswith(".parquet"))  # noqa: E731
    try:
        loader = sparkfeed.DataLoader(f"http://127.0.0.1:{server.server_address[1]}/pq", batch_size=50,
                                      num_workers=2, worker_type="process", multiprocessing_context="fork",
                                      filter=[("label", "==", 3)])
        assert len(loader) == 8  # planned: the count pass fetched every (small) file whole, once
        assert files() == 40 and loader._engine._counted.held() > 0
        epochs = []
        for _ in range(2):
            before = files()
            epochs.append(sorted(i for b in loader for i in b["id"].tolist()))
            epochs.append(files() - before)
            assert loader._engine._counted is None  # (before: held to the end)
    finally:
        server.shutdown()
        server.server_close()
    want = list(range(3, 4000, 10))
    assert epochs == [want, 0, want, 40]  # before: 40 GETs in the first epoch too
