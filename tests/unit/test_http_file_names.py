"""Shard names over HTTP that hold characters a URL gives a meaning to: "%" (Spark's own escapes in
a partition directory, `ts=2024-01-01 10%3A00%3A00`), "#", "?", spaces. A static server (nginx, S3,
Python's http.server) decodes the request path, so the reader must escape the names it joins to
the dataset's URL. Before: each such shard read as missing, or as another file. Real servers on
127.0.0.1 that decode their paths as those do (tests/faulty_http.py, Python's own)."""

import http.server
import json
import os
import threading
import urllib.parse

import pytest

import dsutil
import sparkfeed
from sparkfeed import storage
from faulty_http import FaultPlan, FaultyServer

NAMES = ["plain.parquet", "ts=2024-01-01 10%3A00%3A00/part-0.parquet", "a#b.parquet", "q?x.parquet",
         "pct%41.parquet", "pctA.parquet"]


class _Recorded(FaultPlan):
    """No faults; records each request's path as the server reads it (%-decoded)."""

    def __init__(self):
        super().__init__(error_every=0, drop_every=0, stall_every=0)
        self.paths = []

    def decide(self, path: str, ranged: bool = False):
        self.paths.append(urllib.parse.unquote(urllib.parse.urlsplit(path).path).lstrip("/"))
        return None


@pytest.fixture(scope="module")
def named(tmp_path_factory):
    """A Parquet dataset of 10 rows per shard whose shards are renamed to NAMES (the manifest too)."""
    root = str(tmp_path_factory.mktemp("names") / "ds")
    dsutil.write_parquet(root, dsutil.table(10 * len(NAMES)), 10, 5)
    manifest = os.path.join(root, "_sparkfeed.json")
    with open(manifest) as f:
        doc = json.load(f)
    for shard, name in zip(doc["shards"], NAMES):
        os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
        os.rename(os.path.join(root, shard["path"]), os.path.join(root, name))
        shard["path"] = name
    with open(manifest, "w") as f:
        json.dump(doc, f)
    plan = _Recorded()
    with FaultyServer(os.path.dirname(root), plan) as url:
        yield url, plan


@pytest.mark.parametrize("num_workers", [0, 2])
def test_shards_whose_names_hold_url_characters_are_each_read_once_over_http(named, num_workers):
    url, plan = named
    ids = []
    for batch in sparkfeed.DataLoader(url + "/ds", batch_size=7, num_workers=num_workers):
        ids += batch["id"].tolist()
    assert sorted(ids) == list(range(10 * len(NAMES)))
    asked = {p.removeprefix("ds/") for p in plan.paths}
    assert set(NAMES) <= asked  # each shard was asked for by its own name
    assert asked <= set(NAMES) | {"_sparkfeed.json"}  # and nothing else (no "a", no "q", no "pctA" for "pct%41")


def test_join_escapes_a_name_under_an_http_root_only_and_relative_undoes_it():
    for name in NAMES:
        url = storage.join("http://h/ds", name, "ds")
        assert "#" not in url and "?" not in url and " " not in url
        assert urllib.parse.unquote(url) == "http://h/ds/" + name
        assert storage.relative("http://h/ds", url) == name
        assert storage.join("/data/ds", name, "ds") == "/data/ds/" + name
        assert storage.relative("/data/ds", "/data/ds/" + name) == name


@pytest.fixture
def listed(tmp_path):
    """Python's own static server (directory listings, paths decoded, no Range) over a dataset
    with no manifest, in partition directories as Spark escapes them ("%3A" for ":", "%25" for
    "%"), its files named with "%", "#", "?" and spaces."""
    import functools

    import pyarrow as pa
    import pyarrow.parquet as pq

    names = ["ts=2024-01-01 10%3A00%3A00/plain.parquet", "ts=2024-01-01 10%3A00%3A00/pct%41.parquet",
             "ts=2024-01-01 10%3A00%3A00/a#b c.parquet", "ts=50%25/q?x.parquet"]
    for i, name in enumerate(names):
        os.makedirs(os.path.dirname(str(tmp_path / "ds" / name)), exist_ok=True)
        pq.write_table(pa.table({"id": list(range(10 * i, 10 * i + 10))}), str(tmp_path / "ds" / name))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ds", len(names)
    server.shutdown()
    server.server_close()


def test_a_listed_http_dataset_records_each_files_own_name_and_reads_it(listed):
    """Indexed from an HTTP listing (hrefs are %-escaped URLs): the manifest records each file's
    own name, which the reader escapes once (before: escaped twice, 'pct%41.parquet' missing),
    and a partition directory's value is Spark's, unescaped once."""
    url, n = listed
    ids, stamps = [], set()
    for batch in sparkfeed.DataLoader(url, batch_size=7):
        ids += batch["id"].tolist()
        stamps.update(batch["ts"])
    assert sorted(ids) == list(range(10 * n))
    assert stamps == {"2024-01-01 10:00:00", "50%"}
