"""The one path rule (manifest paths and tar member names), run on tests/data/path_cases.json.

The JVM runs the same file in SafePathTest, so both languages accept and refuse the same paths
with the same reason.
"""

import io
import json
import os
import re
import tarfile

import pytest

import sparkfeed
from sparkfeed import storage
from sparkfeed.errors import PathEscapeError, ShardReadError
from sparkfeed.manifest import parse_manifest

import dsutil

CASES_FILE = os.path.join(os.path.dirname(__file__), os.pardir, "data", "path_cases.json")
CASES = json.load(open(CASES_FILE, encoding="utf-8"))["cases"]
OK = [c["path"] for c in CASES if c.get("ok")]
BAD = [(c["path"], c["error"]) for c in CASES if "error" in c]
DS = "/data/ds"


def test_the_shared_file_has_both_kinds_of_case():
    assert len(OK) >= 10 and len(BAD) >= 20 and len(OK) + len(BAD) == len(CASES)
    assert "a..b.jpg" in OK  # the JVM used to refuse this one


@pytest.mark.parametrize("path", OK, ids=ascii)
def test_safe_paths_pass(path):
    assert storage.path_problem(path) is None
    assert storage.check_relative(path, DS) == path


@pytest.mark.parametrize("path,reason", BAD, ids=ascii)
def test_unsafe_paths_are_refused_with_the_shared_reason(path, reason):
    assert storage.path_problem(path) == reason
    with pytest.raises(PathEscapeError, match=re.escape(f"could escape the dataset: it {reason}")) as info:
        storage.check_relative(path, DS)
    assert DS in str(info.value) and repr(path) in str(info.value)


def test_a_non_string_path_is_refused():
    with pytest.raises(PathEscapeError, match="is empty or not a string"):
        storage.check_relative(None, DS)


def _manifest_doc(path):
    return {"sparkfeed_manifest": 1, "format": "parquet", "created_by": {"sparkfeed": "test"},
            "schema": [{"name": "id", "type": "int64"}], "num_samples": 1, "num_bytes": 1,
            "shards": [{"path": path, "num_samples": 1, "num_bytes": 1}]}


@pytest.mark.parametrize("path,reason", BAD[::3], ids=ascii)
def test_the_manifest_reader_uses_the_rule(path, reason):
    with pytest.raises(PathEscapeError, match=re.escape(reason)):
        parse_manifest(_manifest_doc(path), dataset=DS)


def test_the_manifest_reader_accepts_dots_inside_a_name():
    assert parse_manifest(_manifest_doc("x/a..b.parquet"), dataset=DS).shards[0].path == "x/a..b.parquet"


def _rename_members(root, shard, rename):
    """Rewrite `shard` with every member renamed by `rename`, and fix the manifest's sizes."""
    path = os.path.join(root, shard)
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            info.name = rename(info.name)
            tar.addfile(info, io.BytesIO(data))
    doc = json.load(open(os.path.join(root, "_sparkfeed.json")))
    size = os.path.getsize(path)
    doc["num_bytes"] += size - doc["shards"][0]["num_bytes"]
    doc["shards"][0]["num_bytes"] = size
    json.dump(doc, open(os.path.join(root, "_sparkfeed.json"), "w"))


def test_tar_members_with_dots_inside_names_are_read(tmp_path):
    root = str(tmp_path / "ds")
    dsutil.write_tar(root, dsutil.table(6), 6)
    _rename_members(root, "shard-00000.tar", lambda name: "./v1..2/" + name)
    batches = list(sparkfeed.DataLoader(root, batch_size=3))
    assert sorted(i for b in batches for i in b["id"].tolist()) == list(range(6))
    assert all(k.startswith("./v1..2/s") for b in batches for k in b["key"])


@pytest.mark.parametrize("prefix,reason", [("../", "has a '..' part"), ("a//", "has an empty part"),
                                           ("/", "is absolute"), ("c:", "starts with a URL scheme")])
def test_tar_members_use_the_same_rule(tmp_path, prefix, reason):
    root = str(tmp_path / "ds")
    dsutil.write_tar(root, dsutil.table(4), 4)
    _rename_members(root, "shard-00000.tar", lambda name: prefix + name)
    with pytest.raises(ShardReadError, match=f"shard-00000.tar.*could escape the dataset: it {re.escape(reason)}"):
        list(sparkfeed.DataLoader(root, batch_size=2))
