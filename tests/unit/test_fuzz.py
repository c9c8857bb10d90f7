"""Property-based fuzzing (hypothesis), bounded in time: the manifest parser and the tar reader
meet arbitrary input with a sparkfeed error or a correct answer, never another exception or a hang."""

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dsutil
import sparkfeed
from sparkfeed import SparkfeedError
from sparkfeed.manifest import parse_manifest

# Bounded in CI, and derandomized there (CI=true) so a run is repeatable; locally each run
# explores new inputs (FUZZ_EXAMPLES=2000 for a longer hunt).
BOUNDED = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 150)), deadline=None,
                   derandomize=bool(os.environ.get("CI")), suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20)

GOOD = {"sparkfeed_manifest": 1, "format": "parquet", "schema": [{"name": "a", "type": "int32"}],
        "num_samples": 3, "num_bytes": 10,
        "shards": [{"path": "p.parquet", "num_samples": 3, "num_bytes": 10,
                    "stats": {"a": {"min": 0, "max": 2, "null_count": 0}},
                    "row_groups": [{"num_samples": 3, "stats": {}}]}]}


@BOUNDED
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_manifest_parser_on_garbage(data):
    with pytest.raises(SparkfeedError, match="dataset 'fuzz'"):
        parse_manifest(data, dataset="fuzz")


def mutate(doc, path, value):
    doc = json.loads(json.dumps(doc))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


PATHS = [("sparkfeed_manifest",), ("format",), ("schema",), ("schema", 0, "name"), ("num_samples",),
         ("num_bytes",), ("shards",), ("shards", 0, "path"), ("shards", 0, "num_samples"),
         ("shards", 0, "stats"), ("shards", 0, "row_groups"), ("shards", 0, "row_groups", 0, "num_samples"),
         ("shards", 0, "members"), ("shards", 0, "stats", "a", "null_count")]


@BOUNDED
@given(st.sampled_from(PATHS), json_values)
def test_manifest_parser_on_mutated_documents(path, value):
    doc = mutate(GOOD, path, value)
    try:
        m = parse_manifest(json.dumps(doc), dataset="fuzz")
    except SparkfeedError:
        return
    # accepted: then it is self-consistent and its paths stay inside the dataset
    assert sum(s.num_samples for s in m.shards) == m.num_samples
    for s in m.shards:
        assert not s.path.startswith("/") and ".." not in s.path.split("/")


@pytest.fixture(scope="module")
def tar_bytes(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("fz") / "ds")
    dsutil.write_tar(root, dsutil.table(20, image_bytes=10), 20)
    return root, open(os.path.join(root, "shard-00000.tar"), "rb").read()


@BOUNDED
@given(data=st.data())
def test_tar_reader_on_corrupted_shards(tar_bytes, data):
    root, good = tar_bytes
    raw = bytearray(good)
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    path = os.path.join(root, "shard-00000.tar")
    with open(path, "wb") as f:
        f.write(bytes(raw))
    try:
        manifest = json.load(open(os.path.join(root, "_sparkfeed.json")))
        manifest["shards"][0]["num_bytes"] = manifest["num_bytes"] = len(raw)
        with open(os.path.join(root, "_sparkfeed.json"), "w") as f:
            json.dump(manifest, f)
        loader = sparkfeed.DataLoader(root, batch_size=7)
        try:
            ids = [i for b in loader for i in b["id"].tolist()]
        except SparkfeedError:
            return
        assert len(ids) == 20 and len(set(ids)) == 20
    finally:
        with open(path, "wb") as f:
            f.write(good)
