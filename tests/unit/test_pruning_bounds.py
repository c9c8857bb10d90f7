"""Pruning that stays conservative and takes what statistics prove: row groups whose bounds are
infinite on one side, float32 columns under `is_in` with doubles, Delta's truncated strings. Each
case reads real files: the ids delivered equal `Table.filter` over every row (pruning lost no
row), and the row groups skipped are counted (`row_groups_pruned`)."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import sparkfeed


def _ids(path: str, filter, **kwargs) -> tuple[list[int], dict]:
    """The ids the loader delivers under `filter` (sorted, repeats kept) and its counters."""
    loader = sparkfeed.DataLoader(path, batch_size=4, columns=["id"], filter=filter, **kwargs)
    return sorted(i for b in loader for i in b["id"].tolist()), loader.stats()


def _written(tmp_path, table: pa.Table, row_group_size: int) -> str:
    pq.write_table(table, tmp_path / "part-0.parquet", row_group_size=row_group_size)
    sparkfeed.index(str(tmp_path), progress=False)
    return str(tmp_path)


INF = math.inf


@pytest.mark.parametrize("type_", [pa.float32(), pa.float64()], ids=str)
@pytest.mark.parametrize("expr,pruned", [
    (pc.field("x") > 15, 1), (pc.field("x") < 5, 2), (pc.field("x") >= 10, 1), (pc.field("x") <= 2, 2),
    (pc.field("x") == -INF, 2), (pc.field("x") == INF, 2), ((pc.field("x") > 3) & (pc.field("x") < 9), 3),
    (pc.field("x").is_null(), 0),
], ids=str)
def test_a_row_group_with_an_infinite_bound_prunes_on_its_finite_side(tmp_path, type_, expr, pruned):
    """A row group holding -inf (or +inf) had no range at all (infinities were left out of the
    statistics with the finite bound beside them), so `x > 15` read a row group of at most 2.
    Its finite bound is now kept alone: the row groups it rules out are skipped, and the ids are
    `Table.filter`'s."""
    x = [-INF, 1.0, 2.0, None, 10.0, 11.0, INF, None, 20.0, 30.0, 25.0, None]
    table = pa.table({"id": pa.array(range(12), pa.int64()), "x": pa.array(x, type_)})
    root = _written(tmp_path, table, 4)
    stats = sparkfeed.read_manifest(root).shards[0].row_groups[0].stats["x"]
    assert (stats.min, stats.max) == (None, 2.0)
    ids, counters = _ids(root, expr)
    assert ids == sorted(table.filter(expr)["id"].to_pylist())
    assert counters["row_groups_pruned"] == pruned


def test_infinite_bounds_on_both_sides_and_a_nan_prune_nothing_they_should_not(tmp_path):
    """A row group from -inf to +inf has no range; one holding NaN keeps its NaN rows for the
    filters they pass (`~(x < 5)`), and the finite row group is still pruned by `x > 100`."""
    x = [-INF, INF, 0.0, math.nan, 1.0, 2.0, 50.0, 60.0, 70.0]
    table = pa.table({"id": pa.array(range(9), pa.int64()), "x": pa.array(x)})
    root = _written(tmp_path, table, 3)
    for expr, pruned in [(pc.field("x") > 100, 2), (~(pc.field("x") < 5), 0), (pc.field("x") < -1, 2),
                         (pc.field("x") > 65, 1)]:
        ids, counters = _ids(root, expr)
        assert ids == sorted(table.filter(expr)["id"].to_pylist()), expr
        assert counters["row_groups_pruned"] == pruned, expr


def test_a_shard_with_an_infinite_bound_in_one_row_group_is_pruned_by_its_finite_side(tmp_path):
    """The shard's statistics fold its row groups' one-sided bounds: one file of -inf..2 and one
    of 10..30, `x > 5` skips the first file whole."""
    for f, x in enumerate([[-INF, 1.0, 2.0], [10.0, 30.0, 20.0]]):
        pq.write_table(pa.table({"id": pa.array([3 * f + i for i in range(3)], pa.int64()), "x": pa.array(x)}),
                       tmp_path / f"part-{f}.parquet")
    sparkfeed.index(str(tmp_path), progress=False)
    ids, counters = _ids(str(tmp_path), pc.field("x") > 5)
    assert ids == [3, 4, 5] and counters["shards_pruned"] == 1


@pytest.mark.parametrize("values,pruned", [([0.1], 2), ([7.0], 2), ([0.1, 1e30], 1), (pa.array([0.1]), 2),
                                           ([3], 2), ([16777216], 2), ([1e-50], 3)], ids=str)
def test_is_in_a_float32_column_with_doubles_prunes_by_widened_bounds(tmp_path, values, pruned):
    """`f32.isin([0.1])` matches the float32 0.1 (Arrow casts the value set), which pyarrow's
    simplifier does not; the column's statistics were left out of pruning altogether, so every
    row group was read. Its bounds are now one float32 step wider, which holds every double that
    rounds into them: row groups far from the values are skipped, the matching rows kept. Python
    ints (`isin([3])`) were refused outright ("cannot be checked against the statistics":
    the simplifier cast the NaN it tried to an int64); they now filter as Arrow does."""
    table = pa.table({"id": pa.array(range(6), pa.int64()),
                      "f": pa.array([0.1, 0.1, 3.0, 7.0, 1e30, 16777216.0], pa.float32())})
    root = _written(tmp_path, table, 2)
    expr = pc.field("f").isin(values)
    ids, counters = _ids(root, expr)
    assert ids == sorted(table.filter(expr)["id"].to_pylist())
    assert counters["row_groups_pruned"] == pruned
    ids, counters = _ids(root, ~expr)
    assert ids == sorted(table.filter(~expr)["id"].to_pylist()) and counters["row_groups_pruned"] == 0


def test_delta_string_statistics_cut_by_the_writer_prune_as_prefix_bounds(tmp_path):
    """Delta writers cut string statistics at 32 characters (delta-rs raises the max's last
    character, Spark appends a tie-breaker), so a file whose strings ran to 31 characters or more
    had no range and was read by every filter on them. Its min's 31-character prefix and its
    max's prefix rounded up bound every value, cut or not: files of other prefixes are skipped,
    and the ids are `Table.filter`'s, long values equal to a bound's prefix included."""
    deltalake = pytest.importorskip("deltalake")
    root = str(tmp_path / "t")
    files = [["a" * 40 + "x", "a" * 31, "a" * 40 + "\U0001F600"], ["b" * 50, "é" * 45, "b" * 31 + "\U0010ffff"],
             ["c" * 31, "c" * 32, "c" * 30]]
    table = pa.table({"id": pa.array(range(9), pa.int64()), "s": pa.array([s for f in files for s in f])})
    for f in range(3):
        deltalake.write_deltalake(root, table.slice(3 * f, 3), mode="append")
    sparkfeed.index(root, progress=False)
    for expr, pruned in [(pc.field("s") < "b", 2), (pc.field("s") >= "c", 1), (pc.field("s") == "a" * 31, 2),
                         (pc.field("s") <= "a" * 29, 3), (pc.field("s") == "c" * 32, 1),
                         (pc.field("s").isin(["b" * 50, "zz"]), 2), (pc.field("s") != "q", 0)]:
        ids, counters = _ids(root, expr)
        assert ids == sorted(table.filter(expr)["id"].to_pylist()), expr
        assert counters["shards_pruned"] == pruned, expr


def test_a_file_without_a_column_is_pruned_as_all_null_there(tmp_path):
    """A file written before a column was added (read as nulls there, Spark's `mergeSchema`) had no
    statistics for it, so `x > 2` read its every row group; it is now recorded as null in every
    row there, so the file is skipped, and `x.is_null()` skips the row groups of the file that
    holds values."""
    pq.write_table(pa.table({"id": pa.array(range(4), pa.int64()), "x": pa.array([1, 2, 3, 4], pa.int64())}),
                   tmp_path / "part-0.parquet", row_group_size=2)
    pq.write_table(pa.table({"id": pa.array(range(4, 8), pa.int64())}), tmp_path / "part-1.parquet", row_group_size=2)
    sparkfeed.index(str(tmp_path), progress=False)
    table = pa.table({"id": pa.array(range(8), pa.int64()), "x": pa.array([1, 2, 3, 4, None, None, None, None])})
    for expr, shards, groups in [(pc.field("x") > 2, 1, 3), (pc.field("x").is_null(), 1, 2), (pc.field("x") == 9, 2, 4),
                                 (~pc.field("x").isin([1]), 0, 0), (pc.field("id") >= 0, 0, 0)]:
        ids, counters = _ids(str(tmp_path), expr)
        assert ids == sorted(table.filter(expr)["id"].to_pylist()), expr
        assert (counters["shards_pruned"], counters["row_groups_pruned"]) == (shards, groups), expr


def test_a_delta_file_written_before_a_column_was_added_is_pruned_as_all_null_there(tmp_path):
    """Delta's schema evolution (`schema_mode="merge"`): the files written before `x` existed hold
    no `x`, and the log no statistics of it, so `x > 2` read them; they are now null in every row
    there. A partition column, which no file holds, keeps its values."""
    deltalake = pytest.importorskip("deltalake")
    root = str(tmp_path / "t")
    first = pa.table({"id": pa.array([0, 1, 2], pa.int64()), "p": pa.array(["a"] * 3)})
    later = pa.table({"id": pa.array([3, 4, 5], pa.int64()), "p": pa.array(["a"] * 3), "x": pa.array([1, 2, 3], pa.int64())})
    deltalake.write_deltalake(root, first, partition_by=["p"])
    deltalake.write_deltalake(root, later, partition_by=["p"], mode="append", schema_mode="merge")
    sparkfeed.index(root, progress=False)
    table = pa.concat_tables([first, later], promote_options="permissive")
    for expr, shards in [(pc.field("x") > 2, 1), (pc.field("x").is_null(), 1), (pc.field("p") == "a", 0),
                         ((pc.field("p") == "a") & (pc.field("x") < 2), 1), (pc.field("x") == 9, 2)]:
        ids, counters = _ids(root, expr)
        assert ids == sorted(table.filter(expr)["id"].to_pylist()), expr
        assert counters["shards_pruned"] == shards, expr
