"""Hostile manifests, members and Parquet pages found by a second bug hunt: each is a clear error
naming the dataset and shard (and the row group or sample where known), a counted skip under
on_error="skip", or statistics ignored where pruning on them would drop rows without a word."""

import io
import json
import os
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dsutil
import sparkfeed
from sparkfeed import ManifestError, filters, pruning
from sparkfeed.errors import CorruptSampleError, ShardReadError
from sparkfeed.manifest import ColumnStats, Column, parse_manifest

DS = "hostile-ds"


def _doc(**changes) -> dict:
    """A small valid manifest of two Parquet shards; `changes` replace top-level fields."""
    shards = [{"path": f"part-{i}.parquet", "num_samples": 2, "num_bytes": 10, "stats": {},
               "row_groups": [{"num_samples": 2, "stats": {}}]} for i in range(2)]
    doc = {"sparkfeed_manifest": 1, "format": "parquet", "created_by": {"sparkfeed": "test"},
           "schema": [{"name": "id", "type": "int64"}], "num_samples": 4, "num_bytes": 20,
           "shards": shards}
    doc.update(changes)
    return doc


# ---------------------------------------------------------------- manifests


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000])
def test_a_manifest_nested_too_deeply_is_a_manifest_error(text):
    """Python's JSON parser recurses: RecursionError escaped parse_manifest."""
    with pytest.raises(ManifestError, match="nests arrays or objects too deeply") as info:
        parse_manifest(text, dataset=DS)
    assert info.value.dataset == DS


@pytest.mark.parametrize("created_by", [[1, 2], "x", 3])
def test_created_by_that_is_not_an_object_is_a_manifest_error(created_by):
    """dict(created_by) raised TypeError or ValueError."""
    with pytest.raises(ManifestError, match="created_by should be an object"):
        parse_manifest(_doc(created_by=created_by), dataset=DS)


@pytest.mark.parametrize("version", [True, 1.0, "1"])
def test_a_version_that_only_equals_1_in_python_is_refused(version):
    """`true == 1` and `1.0 == 1` in Python: such a manifest was read as version 1."""
    with pytest.raises(ManifestError, match=f"unknown manifest version {version!r}"):
        parse_manifest(_doc(sparkfeed_manifest=version), dataset=DS)


def _counts(n: int, field: str) -> dict:
    doc = _doc(num_samples=n + 2, num_bytes=20)
    doc["shards"][0][field] = n
    if field == "num_samples":
        doc["shards"][0]["row_groups"][0]["num_samples"] = n
    else:
        doc["num_samples"], doc["num_bytes"] = 4, n + 10
    return doc


@pytest.mark.parametrize("field", ["num_samples", "num_bytes"])
def test_counts_past_int64_are_a_manifest_error(field):
    """2**70 samples that added up were accepted, and the loader then failed in numpy
    ("Python int too large to convert to C long") naming nothing."""
    with pytest.raises(ManifestError, match=f"shard 'part-0.parquet': {field} should be a non-negative "
                                            "integer below 2\\*\\*63, but got 1180591620717411303424"):
        parse_manifest(_counts(2**70, field), dataset=DS)
    assert parse_manifest(_counts(2**62, field), dataset=DS).shards[0].path == "part-0.parquet"


def test_a_huge_count_is_cut_short_in_the_message():
    doc = json.dumps(_doc()).replace('"num_samples": 4', '"num_samples": ' + "9" * 4000)
    with pytest.raises(ManifestError, match=r"99\.\.\. \(4000 characters\)") as info:
        parse_manifest(doc, dataset=DS)
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("second, shown", [
    ("./part-0.parquet", "'part-0.parquet' (as 'part-0.parquet' and './part-0.parquet')"),
    ("sub/../part-0.parquet", None),
    ("part-0.parquet/.", "'part-0.parquet' (as 'part-0.parquet' and 'part-0.parquet/.')"),
    ("./part-0.parquet/", None)])
def test_a_shard_listed_twice_under_another_spelling_is_refused(second, shown):
    """`./x` beside `x` was accepted, and the loader delivered that file's rows twice an epoch."""
    doc = _doc()
    doc["shards"][1]["path"] = second
    with pytest.raises(sparkfeed.SparkfeedError) as info:
        parse_manifest(doc, dataset=DS)
    if shown is not None:
        assert isinstance(info.value, ManifestError) and f"a shard path appears twice: {shown}" in str(info.value)


def test_a_shard_path_naming_the_dataset_directory_is_refused():
    doc = _doc()
    doc["shards"][1]["path"] = "."
    with pytest.raises(ManifestError, match="shard path '.' names the dataset's directory"):
        parse_manifest(doc, dataset=DS)


def test_dotted_paths_that_name_distinct_files_are_kept():
    doc = _doc()
    doc["shards"][0]["path"], doc["shards"][1]["path"] = "a.b/part.0.parquet", "./a.b/part.1.parquet"
    assert [s.path for s in parse_manifest(doc, dataset=DS).shards] == ["a.b/part.0.parquet",
                                                                          "./a.b/part.1.parquet"]


# ---------------------------------------------------------------- statistics that promise no row

_SCHEMA = [Column("id", "int64"), Column("score", "double"), Column("name", "string"),
           Column("day", "date32[day]")]


@pytest.mark.parametrize("column, low, high, expr", [
    ("id", 19, 0, ("id", "<", 5)),
    ("score", float("nan"), 1.0, ("score", "<", 0.5)),
    ("score", 0.0, float("nan"), ("score", ">", 0.5)),
    ("name", "z", "a", ("name", "==", "m")),
    ("day", "2024-02-01", "2024-01-01", ("day", "<", __import__("datetime").date(2024, 1, 15))),
])
def test_a_range_with_min_above_max_or_nan_is_ignored_not_pruned_on(column, low, high, expr):
    """min > max promises no value at all, and pyarrow's simplifier then pruned the shard for
    any filter on the column (every row dropped without a word); a NaN bound compared false
    the same way. Such a range is ignored: the item is read, and a sound range still prunes."""
    e = filters.to_expression([expr], _SCHEMA)
    bad = {column: ColumnStats(low, high, 0)}
    assert pruning.select_may_match(e, [(bad, 10)], _SCHEMA) == [0]
    assert pruning.select_all_match(e, [(bad, 10)], _SCHEMA) == []
    sound = {"id": ColumnStats(10, 19, 0), "score": ColumnStats(0.9, 1.0, 0) if expr[1] == "<" else
             ColumnStats(0.0, 0.1, 0), "name": ColumnStats("a", "b", 0),
             "day": ColumnStats("2024-02-01", "2024-03-01", 0)}
    assert pruning.select_may_match(e, [({column: sound[column]}, 10)], _SCHEMA) == []


def test_a_loader_reads_a_shard_whose_stats_have_min_above_max(tmp_path):
    root = str(tmp_path / "ds")
    dsutil.write_parquet(root, dsutil.table(40), rows_per_shard=20, rows_per_group=10)
    path = os.path.join(root, "_sparkfeed.json")
    doc = json.load(open(path))
    doc["shards"][0]["stats"]["id"] = {"min": 19, "max": 0, "null_count": 0}
    with open(path, "w") as f:
        json.dump(doc, f)
    ids = [i for b in sparkfeed.DataLoader(root, batch_size=4, columns=["id"], filter=[("id", "<", 5)])
           for i in b["id"].tolist()]
    assert sorted(ids) == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------- tar members


def _tar(tmp_path, json_member: bytes) -> str:
    """A streamed (unindexed) 3-sample shard whose sample 1 has `json_member` as its .json."""
    root = tmp_path / "tar"
    dsutil.write_tar(str(root), dsutil.table(3), rows_per_shard=3, index=False)
    shard = root / "shard-00000.tar"
    out = io.BytesIO()
    with tarfile.open(shard) as src, tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as dst:
        for info in src.getmembers():
            data = json_member if info.name == "s00000001.json" else src.extractfile(info).read()
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    shard.write_bytes(out.getvalue())
    doc = json.loads((root / "_sparkfeed.json").read_text())
    doc["shards"][0]["num_bytes"] = doc["num_bytes"] = len(out.getvalue())
    (root / "_sparkfeed.json").write_text(json.dumps(doc))
    return str(root)


def _ids(root: str, columns, **kw) -> tuple[list, dict]:
    loader = sparkfeed.DataLoader(root, batch_size=2, columns=columns, **kw)
    ids = [i for b in loader for i in b["id"].tolist()]
    return ids, loader.stats()


DEEP = b'{"id": 1, "score": 0.5, "feature": [' + b"[" * 50_000 + b"]" * 50_000 + b"]}"


def test_a_json_member_nested_too_deeply_is_a_corrupt_sample(tmp_path):
    """RecursionError from Python's JSON parser escaped the reader, past on_error."""
    root = _tar(tmp_path, DEEP)
    with pytest.raises(CorruptSampleError, match="sample 's00000001': member .json cannot be parsed "
                                                 r"\(arrays or objects nested too deeply\)") as info:
        _ids(root, ["id", "feature"])
    assert info.value.shard == "shard-00000.tar"
    ids, stats = _ids(root, ["id", "feature"], on_error="skip")
    assert (ids, stats["samples_skipped"]) == ([0, 2], 1)


@pytest.mark.parametrize("member, column", [(b'{"id": 1.5, "score": 0.5, "feature": [1.0]}', "id"),
                                            (b'{"id": 1, "score": 0.5, "feature": [1.0]}', None),
                                            (b'{"id": 1.0, "score": 0.5, "feature": [1.0]}', None)])
def test_a_fractional_json_number_for_an_integer_column_is_a_corrupt_sample(tmp_path, member, column):
    """pa.array([1.5], pa.int64()) truncates: `{"id": 1.5}` was delivered as id 1."""
    root = _tar(tmp_path, member)
    if column is None:
        assert _ids(root, ["id", "score"])[0] == [0, 1, 2]
        return
    with pytest.raises(CorruptSampleError, match="column 'id': value 1.5 is not a whole number, as int64"):
        _ids(root, ["id", "score"])
    ids, stats = _ids(root, ["id", "score"], on_error="skip")
    assert (ids, stats["samples_skipped"]) == ([0, 2], 1)


# ---------------------------------------------------------------- Parquet text that is not UTF-8


def test_a_string_column_holding_invalid_utf8_is_an_error_naming_the_row_group(tmp_path):
    """Parquet's reader does not check a string column's UTF-8 (damaged pages of an uncompressed
    file; Spark stores what it is given), and UnicodeDecodeError escaped when the batch became
    Python strings, naming no dataset or shard."""
    root = str(tmp_path / "ds")
    dsutil.write_parquet(root, dsutil.table(40), rows_per_shard=20, rows_per_group=10)
    path = os.path.join(root, "part-00001.parquet")
    table = pq.read_table(path)
    captions = table.column("caption").to_pylist()
    captions[13] = b"bad \xff\xfe text"
    raw = pa.array([c if isinstance(c, bytes) else c.encode() for c in captions], pa.binary())
    table = table.set_column(table.column_names.index("caption"), "caption", raw.view(pa.string()))
    pq.write_table(table, path, row_group_size=10, compression="none", write_statistics=False)
    doc = json.load(open(os.path.join(root, "_sparkfeed.json")))
    doc["num_bytes"] += os.path.getsize(path) - doc["shards"][1]["num_bytes"]
    doc["shards"][1]["num_bytes"] = os.path.getsize(path)
    for part in [doc["shards"][1], *doc["shards"][1]["row_groups"]]:
        part["stats"] = {}
    with open(os.path.join(root, "_sparkfeed.json"), "w") as f:
        json.dump(doc, f)
    with pytest.raises(ShardReadError, match="column 'caption' holds bytes that are not UTF-8") as info:
        [b for b in sparkfeed.DataLoader(root, batch_size=4, columns=["id", "caption"])]
    assert (info.value.shard, info.value.row_group) == ("part-00001.parquet", 1)
    loader = sparkfeed.DataLoader(root, batch_size=4, columns=["id", "caption"], on_error="skip")
    ids = [i for b in loader for i in b["id"].tolist()]
    # only the bad row is skipped (tests/unit/test_parquet_text_rows.py), not its row group
    assert sorted(ids) == [i for i in range(40) if i != 33] and loader.stats()["samples_skipped"] == 1
