"""Delta tables as other tools leave them: the deletion-vectors feature on but no file carrying a
vector (Databricks' default for new tables), a real vector (refused, naming the version and the
file), a log without per-file statistics (counts from the footers), and a table's files named by
a glob, a list, a partition directory or `format="parquet"` (refused: the table's directories
also hold the files it removed). Expected rows come from deltalake's own DataFusion reader
(`QueryBuilder`, which honours deletion vectors; `to_pyarrow_table()` refuses the feature)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import sparkfeed
from sparkfeed.errors import ManifestError

deltalake = pytest.importorskip("deltalake")

_DV = {"delta.enableDeletionVectors": "true"}
_Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"


def _rows(lo, hi):
    ids = np.arange(lo, hi, dtype=np.int64)
    return pa.table({"id": ids, "split": np.where(ids % 4 == 0, "val", "train")})


def _ids(loader) -> list[int]:
    return [i for batch in loader for i in batch["id"].tolist()]


def _live_ids(root) -> list[int]:
    """The table's rows as deltalake's DataFusion reader gives them (deletion vectors applied)."""
    table = deltalake.DeltaTable(str(root))
    reader = deltalake.QueryBuilder().register("t", table).execute("select id from t")
    return sorted(reader.read_all()["id"].to_pylist())


def _log(root, version) -> list[dict]:
    return [json.loads(line) for line in (root / "_delta_log" / f"{version:020d}.json").read_text().splitlines()]


def _commit(root, version, actions) -> None:
    (root / "_delta_log" / f"{version:020d}.json").write_text("".join(json.dumps(a) + "\n" for a in actions))


def _z85(data: bytes) -> str:
    """Z85 (ZeroMQ's base 85), as Delta stores an inline deletion vector; zero-padded to 4."""
    data += b"\0" * (-len(data) % 4)
    out = []
    for (word,) in struct.iter_unpack(">I", data):
        digits = []
        for _ in range(5):
            word, r = divmod(word, 85)
            digits.append(_Z85[r])
        out += reversed(digits)
    return "".join(out)


def _deletion_vector(rows: list[int]) -> dict:
    """An inline deletion vector (`storageType: "i"`) deleting `rows` (< 65536) of a file: Delta's
    magic, a RoaringTreemap of one 32-bit bitmap (portable format, one array container)."""
    rows = sorted(rows)
    bitmap = struct.pack("<IIHHI", 12346, 1, 0, len(rows) - 1, 16) + struct.pack(f"<{len(rows)}H", *rows)
    raw = struct.pack("<IqI", 1681511377, 1, 0) + bitmap
    return {"storageType": "i", "pathOrInlineDv": _z85(raw), "offset": None,
            "sizeInBytes": len(raw), "cardinality": len(rows)}


def _with_a_deletion_vector(root, version, rows) -> str:
    """Commit `version`: the first file of version 0 again, now with a deletion vector of `rows`
    (as Spark writes a DELETE on such a table: remove the file, add it back with its vector)."""
    add = next(a["add"] for a in _log(root, 0) if "add" in a)
    remove = {"path": add["path"], "dataChange": True, "deletionTimestamp": 1,
              "extendedFileMetadata": True, "partitionValues": add["partitionValues"], "size": add["size"]}
    _commit(root, version, [{"remove": remove}, {"add": {**add, "deletionVector": _deletion_vector(rows)}}])
    return add["path"]


# ---------------------------------------------------------------- deletion vectors


def test_a_table_with_the_deletion_vectors_feature_but_no_vectors_reads_every_row_once(tmp_path):
    """The feature alone (reader feature `deletionVectors`, as Databricks enables it on new
    tables) is no obstacle: no live file carries a vector, so the files hold exactly the table's
    rows. delta-rs' DELETE rewrites files, so the removed ones stay on disk beside them."""
    root = tmp_path / "dv_feature"
    deltalake.write_deltalake(str(root), _rows(0, 40), partition_by=["split"], configuration=_DV)
    deltalake.write_deltalake(str(root), _rows(40, 60), mode="append")
    deltalake.DeltaTable(str(root)).delete("id < 10")
    assert "deletionVectors" in deltalake.DeltaTable(str(root)).protocol().reader_features
    expected = _live_ids(root)
    assert expected == list(range(10, 60))
    m = sparkfeed.index(str(root), progress=False)
    assert m.num_samples == len(expected)
    assert sorted(_ids(sparkfeed.DataLoader(str(root), batch_size=7))) == expected
    val = _ids(sparkfeed.DataLoader(str(root), batch_size=7, filter=[("split", "==", "val")]))
    assert sorted(val) == [i for i in expected if i % 4 == 0]


def test_a_live_file_with_a_deletion_vector_is_refused_naming_the_version_and_the_file(tmp_path):
    """A file carrying a vector still holds the rows the vector deletes: refused at the version
    that has it, naming the file and the way out; the version before it indexes normally."""
    root = tmp_path / "dv"
    deltalake.write_deltalake(str(root), _rows(0, 20), configuration=_DV)        # version 0
    path = _with_a_deletion_vector(root, 1, [1, 3, 4])                            # version 1
    assert _live_ids(root) == [i for i in range(20) if i not in (1, 3, 4)]       # a valid vector
    for read in (lambda: sparkfeed.index(str(root), progress=False),
                 lambda: sparkfeed.DataLoader(str(root), batch_size=4)):
        with pytest.raises(ManifestError, match=r"at version 1 has rows deleted by deletion vectors "
                           rf"in 1 file\(s\) \('{path}'\).*REORG TABLE .* APPLY \(PURGE\)") as err:
            read()
        assert str(root) in str(err.value)
    m = sparkfeed.index(str(root), version=0, manifest=str(tmp_path / "v0.json"), progress=False)
    assert m.num_samples == 20


# ---------------------------------------------------------------- logs without statistics


def _without_stats(root) -> None:
    """Every add action's `stats` taken out, as `CONVERT TO DELTA ... NO STATISTICS` leaves them."""
    for commit in sorted((root / "_delta_log").glob("*.json")):
        actions = [json.loads(line) for line in commit.read_text().splitlines()]
        for a in actions:
            if "add" in a:
                a["add"].pop("stats", None)
        commit.write_text("".join(json.dumps(a) + "\n" for a in actions))


def test_a_delta_log_without_statistics_takes_its_counts_from_the_footers(tmp_path):
    """No record counts in the log: each file's count comes from its footer (read anyway for its
    row groups), every row is read once, and the footers' statistics still prune files."""
    root = tmp_path / "no_stats"
    deltalake.write_deltalake(str(root), _rows(0, 30), partition_by=["split"])
    deltalake.write_deltalake(str(root), _rows(100, 130), mode="append")
    deltalake.write_deltalake(str(root), _rows(200, 210), mode="overwrite")
    deltalake.write_deltalake(str(root), _rows(300, 320), mode="append")
    _without_stats(root)
    table = deltalake.DeltaTable(str(root))
    assert set(pa.table(table.get_add_actions(flatten=True))["num_records"].to_pylist()) == {None}
    expected = sorted(table.to_pyarrow_table()["id"].to_pylist())
    assert expected == list(range(200, 210)) + list(range(300, 320))
    m = sparkfeed.index(str(root), progress=False)
    assert [s.num_samples for s in m.shards] == [pq.ParquetFile(root / s.path).metadata.num_rows
                                                 for s in m.shards]
    assert m.num_samples == len(expected)
    assert sorted(_ids(sparkfeed.DataLoader(str(root), batch_size=7))) == expected
    loader = sparkfeed.DataLoader(str(root), batch_size=7, filter=[("id", ">=", 300), ("split", "==", "val")])
    assert sorted(_ids(loader)) == [i for i in expected if i >= 300 and i % 4 == 0]
    assert loader.stats()["shards_pruned"] == 3


# ---------------------------------------------------------------- a table's files read as plain Parquet


@pytest.fixture
def overwritten(tmp_path):
    """A partitioned table whose directories hold 16 rows' files, 4 of them live: written,
    overwritten, then deleted from (delta-rs rewrites the file, leaving the old one)."""
    root = tmp_path / "d2"
    deltalake.write_deltalake(str(root), _rows(0, 10), partition_by=["split"])
    deltalake.write_deltalake(str(root), _rows(100, 105), mode="overwrite")
    deltalake.DeltaTable(str(root)).delete("id = 100")
    held = sum(pq.ParquetFile(p).metadata.num_rows for p in root.rglob("*.parquet"))
    assert (_live_ids(root), held) == ([101, 102, 103, 104], 16)
    return root


def _named_inside(root):
    return rf"lies inside the Delta table '{root}' \(it has _delta_log/\).*removed.*sparkfeed index {root}"


def test_a_glob_of_a_delta_tables_files_is_refused_naming_its_root(overwritten, tmp_path):
    root = overwritten
    for pattern in (f"{root}/*/*.parquet", f"{root}/split=*/*.parquet", f"{root}/**/*.parquet",
                    f"{root}/split=train/*.parquet"):
        with pytest.raises(ManifestError, match=_named_inside(root)):
            sparkfeed.DataLoader(pattern, batch_size=4)
        with pytest.raises(ManifestError, match=_named_inside(root)):
            sparkfeed.index(pattern, manifest=str(tmp_path / "m.json"), progress=False)
    assert sorted(_ids(sparkfeed.DataLoader(str(root), batch_size=4))) == [101, 102, 103, 104]


def test_a_list_a_file_or_a_partition_directory_of_a_delta_table_is_refused(overwritten, tmp_path):
    root = overwritten
    files = sorted(str(p) for p in root.rglob("*.parquet"))
    for path in (files, files[0], str(root / "split=train")):
        with pytest.raises(ManifestError, match=_named_inside(root)):
            sparkfeed.index(path, manifest=str(tmp_path / "m.json"), progress=False)
    for path in (files[0], str(root / "split=train")):  # a loader takes a list as a mix
        with pytest.raises(ManifestError, match=_named_inside(root)):
            sparkfeed.DataLoader(path, batch_size=4)


def test_a_directory_holding_a_delta_table_below_it_is_refused_naming_the_table(overwritten):
    with pytest.raises(ManifestError, match=rf"holds the Delta table '{overwritten}'.*removed"):
        sparkfeed.index(str(overwritten.parent), "parquet", progress=False)


def test_format_parquet_on_a_delta_table_says_it_is_one(overwritten, capsys):
    from sparkfeed.cli import main

    with pytest.raises(ManifestError, match=r"is a Delta table \(it has _delta_log/\), not plain "
                       r"parquet data.*would deliver removed rows"):
        sparkfeed.index(str(overwritten), "parquet", progress=False)
    assert main(["index", str(overwritten), "--format", "parquet", "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "is a Delta table" in err and "holds no parquet files" not in err


def test_plain_parquet_beside_a_delta_table_is_read_by_glob_and_list(overwritten, tmp_path):
    """Only files inside a table are refused: a glob of plain Hive partitions next to one (a
    `_delta_log/` in a sibling) reads as before."""
    plain = tmp_path / "plain"
    pq.write_to_dataset(_rows(0, 12), str(plain), partition_cols=["split"])
    got = _ids(sparkfeed.DataLoader(f"{plain}/split=*/*.parquet", batch_size=5))
    assert sorted(got) == list(range(12))
    files = sorted(str(p) for p in plain.rglob("*.parquet"))
    sparkfeed.index(files, manifest=str(tmp_path / "m.json"), progress=False)
    assert sorted(_ids(sparkfeed.DataLoader(manifest=str(tmp_path / "m.json"), batch_size=5))) == list(range(12))
    assert sorted(_ids(sparkfeed.DataLoader(str(plain / "split=val"), batch_size=5))) == [0, 4, 8]
