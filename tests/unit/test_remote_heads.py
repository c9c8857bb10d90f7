"""A remote Parquet reader's first fetch takes the head of its first file (most of its first
8 MiB) beside the footer, so the first batch waits one round trip, not two. Before, that head
stayed held (the reader's `_heads`, the read-ahead's `once` results) until the iteration ended:
megabytes per lane that no fetch needed once the reader had left the file. Real Parquet files
on the bench's HTTP server on 127.0.0.1."""

import os
import threading

import pyarrow as pa
import pytest

import dsutil
import sparkfeed
from sparkfeed import storage
from sparkfeed.bench.remote import LatencyServer
from sparkfeed.read import ReadContext, make_reader
from sparkfeed.stream import StreamReader

ROWS, PER_FILE = 300, 100


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """3 files of 100 rows of 30 KB of random bytes (3 MB each: big enough for a head)."""
    where = str(tmp_path_factory.mktemp("heads") / "ds")
    data = pa.table({"id": pa.array(range(ROWS), pa.int64()),
                     "image": pa.array([os.urandom(30000) for _ in range(ROWS)], pa.binary())})
    dsutil.write_parquet(where, data, PER_FILE, 20)
    return where


def test_a_files_head_is_let_go_once_the_reader_has_left_the_file(root):
    first_size = os.path.getsize(os.path.join(root, "part-00000.parquet"))
    head_asked = threading.Event()

    def hold(method, rel, ranged):
        """The first file's footer waits (at most 10 s) for its head's request, so the reader
        asks for the head (it does while the footer is not in yet)."""
        if rel.endswith("part-00000.parquet") and ranged.startswith("bytes=4-"):
            head_asked.set()
        elif rel.endswith("part-00000.parquet") and ranged.endswith(f"-{first_size - 1}"):
            head_asked.wait(10)

    server = LatencyServer(os.path.dirname(root), latency_s=0.0, hold=hold)
    url = server.url + "/ds"
    try:
        ds = sparkfeed.Dataset(url, columns=["id", "image"])
        fs, froot = storage.resolve(url)
        ctx = ReadContext(fs=fs, root=froot, dataset=url, schema=ds.manifest.schema, columns=("id", "image"),
                          filter_columns=(), expr=None,
                          manifest_bytes={s.path: s.num_bytes for s in ds.manifest.shards})
        reader = StreamReader(ds.stream(), make_reader("parquet", ctx))
        ids, heads = [], {}
        for seg in reader.segments([(0, ROWS)]):
            first = seg.columns["id"].tolist()[0]
            ids += seg.columns["id"].tolist()
            held = set(reader.reader._heads) | {k[1] for k in reader.reader._ahead._once if k[0] == "head"}
            heads[first // PER_FILE] = heads.get(first // PER_FILE, set()) | held
        reader.close()
    finally:
        server.close()
    assert ids == list(range(ROWS))
    assert heads[0] == {"part-00000.parquet"}  # the head was taken (what the test is about)
    assert heads[1] == set() and heads[2] == set()  # and let go once the reader left its file
