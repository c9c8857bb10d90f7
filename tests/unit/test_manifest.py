"""The manifest contract, without Spark: round trips, every refusal, atomic writes."""

import dataclasses
import json
import os

import fsspec.implementations.local as fs_local
import pytest

from sparkfeed import ManifestError, PathEscapeError
from sparkfeed.manifest import MANIFEST_NAME, parse_manifest, read_manifest, write_manifest

DS = "memory-ds-under-test"


def _doc(**changes) -> dict:
    doc = {
        "sparkfeed_manifest": 1,
        "format": "parquet",
        "created_by": {"sparkfeed": "0.1.0", "spark": "4.3.0"},
        "schema": [{"name": "image", "type": "binary", "codec": "jpeg"},
                   {"name": "label", "type": "int32"}, {"name": "caption", "type": "string"},
                   {"name": "day", "type": "date32[day]"}],
        "num_samples": 5,
        "num_bytes": 300,
        "shards": [
            {"path": "part-00000.parquet", "num_samples": 3, "num_bytes": 100,
             "stats": {"label": {"min": 0, "max": 4, "null_count": 0},
                       "day": {"min": "2024-01-01", "max": "2024-02-01", "null_count": 1}},
             "row_groups": [{"num_samples": 2, "stats": {"label": {"min": 0, "max": 1, "null_count": 0}}},
                            {"num_samples": 1, "stats": {"label": {"min": 4, "max": 4, "null_count": 0}}}]},
            {"path": "sub/part-00001.parquet", "num_samples": 2, "num_bytes": 200,
             "stats": {"caption": {"min": None, "max": None, "null_count": 2}},
             "row_groups": [{"num_samples": 2, "stats": {}}]},
        ],
    }
    doc.update(changes)
    return doc


def _with_shard(i: int, **changes) -> dict:
    doc = _doc()
    doc["shards"][i].update(changes)
    return doc


# ---------------------------------------------------------------- round trips

def test_parse_to_dict_parse_round_trip():
    m = parse_manifest(_doc(), dataset=DS)
    assert m.to_dict() == _doc()
    assert parse_manifest(m.to_dict(), dataset=DS) == m
    assert parse_manifest(m.to_json(), dataset=DS) == m
    assert m.root == DS and m.column("image").codec == "jpeg"
    assert m.shards[0].row_groups[1].stats["label"].max == 4


def _many_shards(n: int) -> str:
    shards = [{"path": f"part-{i:05d}.parquet", "num_samples": 1, "num_bytes": 1,
               "stats": {"label": {"min": i, "max": i, "null_count": 0}},
               "row_groups": [{"num_samples": 1, "stats": {"label": {"min": i, "max": i, "null_count": 0}}}]}
              for i in range(n)]
    return json.dumps(_doc(num_samples=n, num_bytes=n, shards=shards))


def test_a_large_manifest_is_parsed_without_garbage_collections():
    """Python's cyclic collector stays off while a manifest becomes objects (none cyclic): for
    10,000 shards, the full collections they set off took more than the parse. It is on again
    after, also after an error, and stays off where the caller had turned it off."""
    import gc

    collections = []

    def note(phase, info):
        if phase == "start":
            collections.append(info["generation"])

    doc = _many_shards(3000)
    gc.callbacks.append(note)  # the collector's own list (a new one would not be seen)
    try:
        m = parse_manifest(doc, dataset=DS)
    finally:
        gc.callbacks.remove(note)
    # at most the young collection that turning it on again sets off (before: 60, 55 young, 5 older)
    assert (len(m.shards), collections[1:], gc.isenabled()) == (3000, [], True)
    with pytest.raises(ManifestError):
        parse_manifest(doc.replace('"num_samples": 3000', '"num_samples": 2999'), dataset=DS)
    assert gc.isenabled()
    gc.disable()
    try:
        parse_manifest(doc, dataset=DS)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_webdataset_shards_round_trip():
    doc = _doc(format="webdataset", num_samples=3, num_bytes=100,
               schema=[{"name": "jpg", "type": "binary", "codec": "jpeg", "member": "jpg"}],
               shards=[{"path": "shard-000000.tar", "num_samples": 3, "num_bytes": 100,
                        "stats": {}, "members": ["jpg", "cls"]}])
    m = parse_manifest(doc, dataset=DS)
    assert m.shards[0].members == ("jpg", "cls") and m.shards[0].row_groups is None
    assert m.to_dict() == doc


@pytest.mark.parametrize("as_url", [False, True])
def test_write_then_read_round_trip(tmp_path, as_url):
    m = parse_manifest(_doc(), dataset=DS)
    where = f"file://{tmp_path}" if as_url else str(tmp_path)
    write_manifest(m, where)
    back = read_manifest(where)
    assert back.to_dict() == m.to_dict()
    assert back.root == where
    assert json.loads((tmp_path / MANIFEST_NAME).read_text()) == _doc()


def test_unknown_extra_fields_are_tolerated():
    doc = _doc(future_field={"x": 1})
    doc["shards"][0]["future"] = 3
    assert parse_manifest(doc, dataset=DS).num_samples == 5


# ---------------------------------------------------------------- refusals name the dataset

@pytest.mark.parametrize("doc, message", [
    (_doc(sparkfeed_manifest=2), "unknown manifest version 2"),
    (_doc(sparkfeed_manifest=None), "unknown manifest version None"),
    ({"not": "ours"}, r"_sparkfeed.json is not a sparkfeed manifest \(it has no 'sparkfeed_manifest' "
                      r"version; its keys: \['not'\]\): write the data with sparkfeed.write, or index it"),
    ("{not json", "is not valid JSON"),
    (b"\xff\xfe garbage", "is not valid JSON"),
    ("[1, 2, 3]", "should hold a JSON object"),
    ('"a string"', "should hold a JSON object"),
    (_doc(format="csv"), "format should be one of"),
    (_doc(num_samples=6), "shards hold 5 samples but num_samples=6"),
    (_doc(num_bytes=1), "shards hold 300 bytes but num_bytes=1"),
    (_with_shard(0, num_samples=4), "row groups hold 3 samples but the shard says num_samples=4"),
    (_with_shard(0, num_samples=-1), "num_samples should be a non-negative integer"),
    (_with_shard(1, path="part-00000.parquet"), "a shard path appears twice"),
    (_with_shard(0, stats={"nope": {"min": 1, "max": 2, "null_count": 0}}), r"stats for unknown columns \['nope'\]"),
    (_with_shard(0, stats={"label": {"null_count": -3}}), "null_count of 'label'"),
    (_doc(schema=[]), "schema should be a non-empty list"),
    (_doc(schema=[{"name": "a", "type": "int32"}, {"name": "a", "type": "int64"}]), "duplicate column names"),
])
def test_bad_manifests_raise_manifest_error_naming_the_dataset(doc, message):
    if isinstance(doc, dict):
        doc = json.dumps(doc)
    with pytest.raises(ManifestError, match=message) as info:
        parse_manifest(doc, dataset=DS)
    assert DS in str(info.value) and info.value.dataset == DS


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.parquet", "a/../b.parquet",
                                  "s3://bucket/x.parquet", "file:///x.parquet", "c:/x.parquet",
                                  "a\\b.parquet", "", "a//b.parquet"])
def test_paths_that_escape_the_dataset_are_refused(path):
    with pytest.raises(PathEscapeError, match=DS) as info:
        parse_manifest(_with_shard(0, path=path), dataset=DS)
    assert repr(path) in str(info.value)


def test_index_paths_cannot_escape_either():
    with pytest.raises(PathEscapeError, match=DS):
        parse_manifest(_with_shard(0, index="../idx"), dataset=DS)


def test_a_missing_manifest_says_how_datasets_are_made(tmp_path):
    (tmp_path / "part-00000.parquet").write_bytes(b"PAR1")
    with pytest.raises(ManifestError, match="sparkfeed.write") as info:
        read_manifest(str(tmp_path))
    assert str(tmp_path) in str(info.value) and "not a sparkfeed dataset" in str(info.value)


def test_a_corrupt_manifest_file_names_the_dataset(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text('{"sparkfeed_manifest": 1, "format": "parq')
    with pytest.raises(ManifestError, match="not valid JSON") as info:
        read_manifest(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_write_manifest_refuses_what_it_could_not_read(tmp_path):
    m = parse_manifest(_doc(), dataset=DS)
    bad = dataclasses.replace(m, num_samples=99)
    with pytest.raises(ManifestError, match="num_samples=99"):
        write_manifest(bad, str(tmp_path))
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- atomic writes

def test_write_manifest_leaves_no_temp_file(tmp_path):
    m = parse_manifest(_doc(), dataset=DS)
    write_manifest(m, str(tmp_path))
    write_manifest(m, str(tmp_path))  # and again, over an existing manifest
    assert os.listdir(tmp_path) == [MANIFEST_NAME]


def test_a_reader_never_sees_a_partial_manifest(tmp_path, monkeypatch):
    old = parse_manifest(_doc(), dataset=DS)
    write_manifest(old, str(tmp_path))
    new_doc = _doc(created_by={"sparkfeed": "9.9.9"})
    seen = []
    real_open = fs_local.LocalFileSystem._open

    def spying_open(self, path, mode="rb", *args, **kwargs):
        if "w" in mode:
            # The bytes go to a temporary name; the manifest a reader opens is still the old,
            # complete one while they are written.
            seen.append(os.path.basename(path))
            assert os.path.basename(path) != MANIFEST_NAME
            assert read_manifest(str(tmp_path)).to_dict() == old.to_dict()
        return real_open(self, path, mode, *args, **kwargs)

    monkeypatch.setattr(fs_local.LocalFileSystem, "_open", spying_open)
    write_manifest(parse_manifest(new_doc, dataset=DS), str(tmp_path))
    assert len(seen) == 1 and seen[0].startswith(MANIFEST_NAME + ".tmp-")
    assert read_manifest(str(tmp_path)).created_by == {"sparkfeed": "9.9.9"}
    assert os.listdir(tmp_path) == [MANIFEST_NAME]
