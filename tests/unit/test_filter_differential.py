"""Filters against pyarrow's own: what the loader delivers under a filter (pruned by shard and
row-group statistics and Hive partition values, then filtered by rows) is, as a multiset of ids,
what `Table.filter` keeps over every row of the same files. A seeded hunt over small datasets of
every type the statistics describe (NaN, signed zeros, infinities, nulls, uint64 past 2**63,
long and unicode strings, decimals, dates, timestamps of three units with and without a zone,
dictionary columns, typed Hive partitions with nulls) and random filters in every form the
loader takes, then the regressions it found, each alone."""

from __future__ import annotations

import datetime as dt
import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import sparkfeed

UTC = dt.timezone.utc
BIG = 2**63


def _ids(path: str, filter, **kwargs) -> tuple[list[int], dict]:
    """The ids the loader delivers under `filter` (sorted, repeats kept) and its counters."""
    loader = sparkfeed.DataLoader(path, batch_size=4, columns=["id"], filter=filter, **kwargs)
    return sorted(i for b in loader for i in b["id"].tolist()), loader.stats()


# ------------------------------------------------------------------ regressions, each alone

@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Two files of two row groups of 3: a sorted `srt`, uint64 values past 2**63, a bool, a
    zoned nanosecond timestamp and a date."""
    root = str(tmp_path_factory.mktemp("mixed"))
    n = 12
    table = pa.table({
        "id": pa.array(range(n), pa.int64()),
        "srt": pa.array([10 * i for i in range(n)], pa.int32()),
        "u64": pa.array([BIG + 7 if i % 3 == 0 else i for i in range(n)], pa.uint64()),
        "flag": pa.array([i % 2 == 0 for i in range(n)]),
        "t": pa.array([1_700_000_000_000_000_000 + i for i in range(n)], pa.timestamp("ns", "Asia/Tokyo")),
        "d": pa.array([dt.date(2024, 1, 1 + i % 4) for i in range(n)]),
    })
    for f in range(2):
        pq.write_table(table.slice(6 * f, 6), os.path.join(root, f"part-{f}.parquet"), row_group_size=3)
    sparkfeed.index(root, progress=False)
    return table, root


@pytest.mark.parametrize("expr", [
    pc.field("u64").isin([1, 5]),
    ~pc.field("u64").isin([1, BIG - 1]),
    pc.field("t").isin([dt.datetime.fromtimestamp(1_700_000_000, UTC)]),
    pc.field("flag").isin([1]),
    pc.field("d").isin(["2024-01-02"]),
], ids=str)
def test_is_in_with_a_value_set_of_another_type_filters_as_arrow_does(mixed, expr):
    """Arrow's `is_in` casts its value set to the column's type, but pyarrow's simplifier compared
    it with the statistics' bounds as it was: Python ints beside a uint64 column holding values
    past 2**63, datetimes of another zone, ints beside a bool, ISO text beside a date. Each was refused at the first batch ("cannot be checked against the
    statistics", with a hint about time zones for datetimes that had one) though
    `Table.filter` takes it; such a column's statistics are now left out of pruning."""
    table, root = mixed
    want = sorted(table.filter(expr)["id"].to_pylist())
    assert want
    assert _ids(root, expr)[0] == want
    assert _ids(root, expr, shuffle=True, num_workers=2)[0] == want


def test_a_column_the_simplifier_cannot_reason_about_leaves_the_others_pruning(mixed):
    """The fallback drops only the failing column's statistics: `srt` (sorted) still prunes
    three of the four row groups."""
    table, root = mixed
    expr = (pc.field("srt") < 25) & pc.field("u64").isin([1, 2, 3])
    ids, stats = _ids(root, expr)
    assert ids == sorted(table.filter(expr)["id"].to_pylist()) == [1, 2]
    assert (stats["row_groups_pruned"], stats["shards_pruned"]) == (3, 1)


def test_a_filter_that_fails_over_the_recorded_values_is_still_refused_naming_the_dataset(mixed):
    """`u64 < 10` (an int64 literal) casts the column to int64, which its values past 2**63 do
    not fit: `Table.filter` fails too, so the loader says so before reading."""
    _, root = mixed
    with pytest.raises(ValueError, match=rf"cannot be checked against the statistics of dataset '{root}'"):
        _ids(root, pc.field("u64") < 10)


def test_dates_and_times_past_pythons_years_index_and_filter_exactly(tmp_path):
    """A date 1,000,000 days before 1970 and timestamps of +-2**62 (other tools write them; Arrow
    holds them): pyarrow's statistics cannot become Python dates, and `sparkfeed.index` crashed
    with a bare OverflowError naming no file. Such a chunk now has no range (its rows are read
    and filtered); the chunks of ordinary values still prune."""
    table = pa.table({"id": pa.array(range(6), pa.int64()),
                      "d": pa.array([-1_000_000, 0, 1, 3_000_000, 5, 6], pa.int32()).cast(pa.date32()),
                      "ts": pa.array([-(2**62), 0, 1, 2**62, 5, 6], pa.int64()).cast(pa.timestamp("us")),
                      "tz": pa.array([-(2**62), 0, 1, 2**62, 5, 6], pa.int64()).cast(pa.timestamp("us", "UTC"))})
    pq.write_table(table, tmp_path / "part-0.parquet", row_group_size=2)
    sparkfeed.index(str(tmp_path), progress=False)
    for expr, pruned in [(pc.field("d") < dt.date(1970, 1, 1), 1), (pc.field("d") > dt.date(2000, 1, 1), 1),
                         (pc.field("ts") > pa.scalar(2, pa.timestamp("us")), 0),
                         (pc.field("tz") < dt.datetime(1970, 1, 1, tzinfo=UTC), 1)]:
        ids, stats = _ids(str(tmp_path), expr)
        assert ids == sorted(table.filter(expr)["id"].to_pylist()) != [], expr
        assert stats["row_groups_pruned"] == pruned, expr


@pytest.mark.parametrize("zone", [None, "UTC"])
def test_millisecond_timestamps_prune_row_groups(tmp_path, zone):
    """A timestamp[ms] column (Java tools' TIMESTAMP_MILLIS) of values with milliseconds: its
    statistics are ISO text with six digits (`.005000`, Python's), which Arrow refused to parse
    at milliseconds, so no row group of such a column was ever pruned (the rows were right, the
    reads all). Now a selective filter on the sorted column skips the row groups it rules out."""
    start = dt.datetime(2024, 1, 1, tzinfo=None if zone is None else UTC)
    times = [start + dt.timedelta(milliseconds=7 * i + 5) for i in range(12)]
    table = pa.table({"id": pa.array(range(12), pa.int64()), "t": pa.array(times, pa.timestamp("ms", zone))})
    pq.write_table(table, tmp_path / "part-0.parquet", row_group_size=3)
    sparkfeed.index(str(tmp_path), progress=False)
    for expr, pruned in [(pc.field("t") < times[2], 3), (pc.field("t") >= times[7], 2),
                         (pc.field("t") == times[4], 3)]:
        ids, stats = _ids(str(tmp_path), expr)
        assert ids == sorted(table.filter(expr)["id"].to_pylist()) != [], expr
        assert stats["row_groups_pruned"] == pruned, expr


@pytest.fixture(scope="module")
def nullable_sorted(tmp_path_factory):
    """Four row groups of 4 rows, `v` sorted 0..15 with a null in every row group; and Hive
    partition directories `part=a` and `part=b`, one file each."""
    root = tmp_path_factory.mktemp("nullable")
    v = [None if i % 4 == 3 else i for i in range(16)]
    table = pa.table({"id": pa.array(range(16), pa.int64()), "v": pa.array(v, pa.int32())})
    for part, piece in (("a", table.slice(0, 8)), ("b", table.slice(8, 8))):
        (root / f"part={part}").mkdir()
        pq.write_table(piece, root / f"part={part}" / "data.parquet", row_group_size=4)
    sparkfeed.index(str(root), progress=False)
    return table.append_column("part", pa.array(["a"] * 8 + ["b"] * 8)), str(root)


@pytest.mark.parametrize("expr,pruned", [
    (pc.field("v") >= 13, 3), (pc.field("v") < 2, 3), (pc.field("v") == 5, 3),
    ((pc.field("v") > 4) & (pc.field("v") <= 6), 3), (pc.field("v").isin([0, 9]), 2),
], ids=str)
def test_a_null_in_a_row_group_does_not_keep_it_from_pruning(nullable_sorted, expr, pruned):
    """Statistics with nulls said `(lo <= v <= hi) or is_null(v)`, which pyarrow's simplifier
    cannot use, so a single null in a row group kept it from every comparison's pruning (a
    selective filter on a sorted column with a few nulls read everything). Each bound now says
    "or null" alone, a form the simplifier reads."""
    table, root = nullable_sorted
    ids, stats = _ids(root, expr)
    assert ids == sorted(table.filter(expr)["id"].to_pylist()) != []
    assert stats["row_groups_pruned"] == pruned


@pytest.mark.parametrize("expr", [pc.field("part") != "a", ~(pc.field("part") == "a"),
                                  ~pc.field("part").isin(["a"])], ids=str)
def test_a_hive_partition_is_pruned_by_not_equal(nullable_sorted, expr):
    """A partition value is min = max, which the guarantee said as a range that pyarrow's
    simplifier cannot turn into an equality, so `part != "a"` read every file; it is pruned now."""
    table, root = nullable_sorted
    ids, stats = _ids(root, expr)
    assert ids == sorted(table.filter(expr)["id"].to_pylist()) == list(range(8, 16))
    assert (stats["shards_pruned"], stats["row_groups_pruned"]) == (1, 2)


def test_signed_zeros_of_one_row_group_are_not_taken_for_one_value():
    """Float statistics of min = max = 0.0 may hold -0.0 (Parquet's rule for readers; older
    writers wrote +0.0 for both), so they never become an equality the simplifier substitutes:
    `1 / f < 0` (-inf for -0.0) keeps the row group. Other types' min = max is an equality."""
    from sparkfeed.filters import select_may_match
    from sparkfeed.manifest import Column, ColumnStats

    expr = pc.divide(pc.scalar(1.0), pc.field("f")) < 0
    assert select_may_match(expr, [({"f": ColumnStats(0.0, 0.0, 0)}, 2)], [Column("f", "double")]) == [0]
    assert select_may_match(pc.field("i") != 3, [({"i": ColumnStats(3, 3, 0)}, 2)], [Column("i", "int64")]) == []


@pytest.mark.parametrize("values", [[0.1], [1e30, 7.0], pa.array([0.1])], ids=str)
def test_is_in_a_float32_column_with_doubles_keeps_the_rows_arrow_matches(tmp_path, values):
    """`is_in` casts its value set to the column's type, so `f32.isin([0.1])` matches the float32
    0.1 (0.100000001); pyarrow's simplifier compared the double 0.1 with the row group's float32
    bounds, found it outside, and the row group was pruned: the row was silently lost."""
    table = pa.table({"id": pa.array(range(6), pa.int64()),
                      "f": pa.array([1e30, 1e30, 0.1, 3.0, 7.0, 9.0], pa.float32())})
    pq.write_table(table, tmp_path / "part-0.parquet", row_group_size=2)
    sparkfeed.index(str(tmp_path), progress=False)
    expr = pc.field("f").isin(values)
    want = sorted(table.filter(expr)["id"].to_pylist())
    assert want
    assert _ids(str(tmp_path), expr)[0] == want
    assert _ids(str(tmp_path), expr | (pc.field("id") < 0), shuffle=True)[0] == want
