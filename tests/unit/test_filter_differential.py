"""Filters against pyarrow's own: what the loader delivers under a filter (pruned by shard and
row-group statistics and Hive partition values, then filtered by rows) is, as a multiset of ids,
what `Table.filter` keeps over every row of the same files. A seeded hunt over small datasets of
every type the statistics describe (NaN, signed zeros, infinities, nulls, uint64 past 2**63,
long and unicode strings, decimals, dates, timestamps of three units with and without a zone,
dictionary columns, typed Hive partitions with nulls) and random filters in every form the
loader takes, then the regressions it found, each alone."""

from __future__ import annotations

import datetime as dt
import glob
import os
import random
import zoneinfo
from collections import Counter
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import sparkfeed
from sparkfeed.index.hive import HIVE_NULL

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
    from sparkfeed.pruning import select_may_match
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


# ------------------------------------------------------------------ the seeded differential

FLOATS = [0.0, -0.0, 1.5, -1.5, float("nan"), float("inf"), -float("inf"), 2.0, 1e30, 0.1]
STRINGS = ["", "a", "ab", "é", "日本", "z" * 70, "z" * 64, "Z", "\U0001F600", "\U0010ffff"]
NS0 = 1_700_000_000_000_000_000
T0 = dt.datetime(2024, 1, 1)
# column -> (type, draw(rng) of one value, literals of another but comparable type)
COLUMNS = {
    "i8": (pa.int8(), lambda r: r.randint(-128, 127), [2.5, 127.0]),
    "i16": (pa.int16(), lambda r: r.randint(-5, 5), [0.5, 1.0]),
    "i64": (pa.int64(), lambda r: r.choice([-2**63, 2**63 - 1, r.randint(-5, 5)]), [2.0]),
    "u64": (pa.uint64(), lambda r: r.choice([0, 1, 5, BIG, BIG + 7, 2**64 - 1]), [pa.scalar(BIG, pa.uint64())]),
    "f32": (pa.float32(), lambda r: r.choice(FLOATS), [2, 0, pa.scalar(0.1, pa.float32())]),
    "f64": (pa.float64(), lambda r: r.choice(FLOATS), [2, 0]),
    "s": (pa.string(), lambda r: r.choice(STRINGS), ["zzzz"]),
    "ls": (pa.large_string(), lambda r: r.choice(STRINGS), ["z" * 80]),
    "b": (pa.binary(), lambda r: r.choice(STRINGS).encode(), []),
    "bo": (pa.bool_(), lambda r: r.random() < .5, []),
    "dec": (pa.decimal128(7, 2), lambda r: Decimal(r.randint(-999, 999)) / 100, [Decimal("1.5")]),
    "d": (pa.date32(), lambda r: dt.date(2024, 1, 1) + dt.timedelta(days=r.randint(-3, 3)),
          ["2024-01-02", dt.datetime(2024, 1, 2)]),
    "ts": (pa.timestamp("us"), lambda r: T0 + dt.timedelta(microseconds=r.randint(-3, 3)), [dt.date(2024, 1, 1)]),
    "tss": (pa.timestamp("s"), lambda r: T0 + dt.timedelta(seconds=r.randint(-3, 3)),
            [T0 + dt.timedelta(microseconds=1), pa.scalar(NS0, pa.timestamp("ns"))]),
    "tsz": (pa.timestamp("ms", "UTC"), lambda r: T0.replace(tzinfo=UTC) + dt.timedelta(milliseconds=r.randint(-3, 3)),
            [T0.replace(tzinfo=zoneinfo.ZoneInfo("Asia/Tokyo")), T0]),
    "tsn": (pa.timestamp("ns", "Asia/Tokyo"), lambda r: NS0 + r.randint(-3, 3), [dt.datetime.fromtimestamp(NS0 // 10**9, UTC)]),
    "cat": (pa.string(), lambda r: r.choice(["x", "y", "é", ""]), []),  # written dictionary-encoded
}


def _dataset(root, rng) -> pa.Table:
    """2-4 files under Hive directories p=<int or null>/tag=<str or null>, 1-30 rows each, row
    groups of 1-30 rows, nulls from none to all, some columns sorted, some files without
    statistics; indexed. Returns every row as pyarrow.dataset reads the files."""
    first = 0
    for f in range(rng.randint(2, 4)):
        p, tag = rng.choice([1, 2, -7, None]), rng.choice(["a", "b c", None])
        folder = root / f"p={HIVE_NULL if p is None else p}" / f"tag={HIVE_NULL if tag is None else tag}"
        folder.mkdir(parents=True, exist_ok=True)
        ids = range(first, first + rng.randint(1, 30))
        first = ids.stop
        cols = {"id": pa.array(ids, pa.int64()), "srt": pa.array([3 * i for i in ids], pa.int32())}
        nulls = rng.choice([0, .15, .5, 1.0])
        for name, (type_, draw, _) in COLUMNS.items():
            values = [None if rng.random() < nulls else draw(rng) for _ in ids]
            if rng.random() < .3:
                values.sort(key=lambda v: (v is None, v if v == v else 0))
            cols[name] = pa.array(values, type_)
        cols["cat"] = cols["cat"].dictionary_encode()
        pq.write_table(pa.table(cols), folder / f"part-{f}.parquet", row_group_size=rng.choice([1, 3, 5, 30]),
                       use_dictionary=rng.random() < .5, write_statistics=rng.random() < .9)
    sparkfeed.index(str(root), progress=False)
    p_type = {c.name: c.type for c in sparkfeed.read_manifest(str(root)).schema}["p"]  # string if all null
    partitioning = ds.partitioning(pa.schema([("p", pa.int32() if p_type == "int32" else pa.string()),
                                              ("tag", pa.string())]), flavor="hive")
    table = ds.dataset(str(root), format="parquet", partitioning=partitioning).to_table()
    return table.set_column(table.schema.get_field_index("cat"), "cat", table["cat"].cast(pa.string()))


def _literal(rng, table: pa.Table, name: str):
    """A value the column holds, one from its pool, or one of another but comparable type."""
    present = [v for v in table[name].to_pylist() if v is not None]
    pool = {"srt": [0, 30, 31, 200, 29.5], "p": [1, 2, -7, 0], "tag": ["a", "b c", "b"]}.get(name)
    other = COLUMNS[name][2] if name in COLUMNS else []
    k = rng.random()
    if k < .45 and present:
        return rng.choice(present)
    if k < .85 or not other:
        return rng.choice(pool) if pool else COLUMNS[name][1](rng)
    return rng.choice(other)


def _leaf(rng, table: pa.Table, names: list[str]) -> tuple[pc.Expression, list | None]:
    """One predicate, and the same as DNF (a list of AND-lists of tuples) where it has one."""
    name = rng.choice(names)
    field, k = pc.field(name), rng.random()
    if k < .55:
        op, value = rng.choice(["==", "!=", "<", "<=", ">", ">="]), _literal(rng, table, name)
        return _compare(field, op, value), [[(name, op, value)]]
    if k < .7:
        values = [_literal(rng, table, name) for _ in range(rng.randint(1, 3))]
        return field.isin(values), [[(name, "in", values)]]
    if k < .8:
        return rng.choice([field.is_null(), field.is_valid()]), None
    if k < .9:
        lo, hi = sorted([_literal(rng, table, name) for _ in range(2)], key=str)
        return (field >= lo) & (field < hi), [[(name, ">=", lo), (name, "<", hi)]]
    if pa.types.is_floating(table[name].type):
        return rng.choice([pc.is_nan(field), field.is_null(nan_is_null=True), pc.is_finite(field)]), None
    other = rng.choice([n for n in names if table[n].type == table[name].type])
    return _compare(field, rng.choice(["==", "<", ">="]), pc.field(other)), None


def _compare(field, op: str, value) -> pc.Expression:
    return {"==": field == value, "!=": field != value, "<": field < value, "<=": field <= value,
            ">": field > value, ">=": field >= value}[op]


def _expression(rng, table: pa.Table, names: list[str], depth: int = 0):
    """A random tree of predicates under not, and, or; with its DNF where every leaf has one."""
    k = rng.random()
    if depth > 2 or k < .5:
        while True:
            try:
                return _leaf(rng, table, names)
            except (pa.ArrowException, TypeError, ValueError, OverflowError):
                continue  # (a literal Arrow cannot make beside that column: draw again)
    if k < .62:
        return ~_expression(rng, table, names, depth + 1)[0], None
    (a, da), (b, db) = _expression(rng, table, names, depth + 1), _expression(rng, table, names, depth + 1)
    if k < .82:
        return a & b, [x + y for x in da for y in db] if da and db else None
    return a | b, da + db if da and db else None


def _typed(dnf: list, table: pa.Table) -> pc.Expression:
    """The DNF as the documented semantics read it (the reference's own typing): integers beside
    a uint64 column as uint64, datetimes with a zone beside a zoned column in its zone."""
    def one(value, type_):
        if type_ == pa.uint64() and type(value) is int and 0 <= value < 2**64:
            return pa.scalar(value, type_)
        if pa.types.is_timestamp(type_) and type_.tz and isinstance(value, dt.datetime) and value.tzinfo:
            return pa.scalar(value, pa.timestamp("us", type_.tz))
        return value
    return pq.filters_to_expression([[(n, op, [one(v, table[n].type) for v in value] if isinstance(value, list)
                                       else one(value, table[n].type)) for n, op, value in conj] for conj in dnf])


def _reference(table: pa.Table, expr: pc.Expression, dnf: list | None) -> Counter | None:
    """The ids `Table.filter` keeps over every row (no statistics), or None where it fails."""
    for each in [expr] + ([] if dnf is None else [lambda: _typed(dnf, table)]):
        try:
            return Counter(table.filter(each if isinstance(each, pc.Expression) else each())["id"].to_pylist())
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            continue
    return None


@pytest.mark.parametrize("seed", range(6))
def test_the_loader_delivers_what_arrow_filters_over_every_row(tmp_path, seed):
    """40 random filters per dataset, as Expressions or as DNF tuples, read in order or shuffled:
    the ids delivered are, as a multiset, those `Table.filter` keeps over every row. Where Arrow
    itself fails on the filter, the loader's refusal is a ValueError naming the dataset (or the
    rows were pruned before any was evaluated). A range on the sorted `srt` column prunes every
    row group whose statistics lie outside it."""
    rng = random.Random(seed)
    table = _dataset(tmp_path, rng)
    root = str(tmp_path)
    names = ["srt", "p", "tag"] + list(COLUMNS)
    for case in range(40):
        expr, dnf = _expression(rng, table, names)
        as_dnf = dnf is not None and rng.random() < .5
        filter = (dnf[0] if len(dnf) == 1 else dnf) if as_dnf else expr
        want = _reference(table, expr, dnf if as_dnf else None)
        shuffle = rng.random() < .5
        try:
            loader = sparkfeed.DataLoader(root, batch_size=5, columns=["id"], filter=filter, shuffle=shuffle, seed=case)
            got = Counter(i for b in loader for i in b["id"].tolist())
        except ValueError as exc:
            assert want is None and root in str(exc), (seed, case, filter, exc)
            continue
        assert want is None or got == want, (seed, case, filter, sorted(got.elements()), sorted(want.elements()))
    lo = rng.randrange(0, 3 * table.num_rows)
    loader = sparkfeed.DataLoader(root, batch_size=5, columns=["id"],
                                  filter=(pc.field("srt") >= lo) & (pc.field("srt") < lo + 6))
    assert sorted(i for b in loader for i in b["id"].tolist()) == [i for i in range(table.num_rows) if lo <= 3 * i < lo + 6]
    assert loader.stats()["row_groups_pruned"] == _outside(root, lo, lo + 6)


def _outside(root: str, lo: int, hi: int) -> int:
    """Row groups whose footer statistics put all of `srt` outside [lo, hi); those of files written
    without statistics cannot be pruned."""
    n = 0
    for path in sorted(glob.glob(f"{root}/**/*.parquet", recursive=True)):
        md = pq.ParquetFile(path).metadata
        for g in range(md.num_row_groups):
            st = md.row_group(g).column(1).statistics
            n += st is not None and st.has_min_max and (st.max < lo or st.min >= hi)
    return n


def test_a_filter_arrow_cannot_evaluate_over_the_rows_is_an_error_naming_the_row_group(tmp_path):
    """`i64 > 2.0` casts the column to a float, which -2**63 does not fit exactly: Arrow refuses,
    over the rows as over `Table.filter`. Without statistics to refuse it from, the count pass
    raised Arrow's bare ArrowInvalid, naming no dataset, shard or row group."""
    table = pa.table({"id": pa.array(range(4), pa.int64()), "i": pa.array([1, 5, -2**63, 3], pa.int64())})
    pq.write_table(table, tmp_path / "part-0.parquet", row_group_size=2, write_statistics=False)
    sparkfeed.index(str(tmp_path), progress=False)
    for kwargs in ({}, {"shuffle": True, "num_workers": 2}):
        with pytest.raises(ValueError, match=rf"cannot be evaluated over the rows of dataset '{tmp_path}', "
                                             r"shard 'part-0.parquet', row group 1: .*compare it with an integer"):
            _ids(str(tmp_path), pc.field("i") > 2.0, **kwargs)


def test_a_loaders_dnf_filter_over_a_mix_is_typed_by_each_sources_columns(tmp_path):
    """DNF integers beside a uint64 column are typed uint64 (`filters._typed_literals`), but a
    mix's loader-wide `filter=` was converted without a schema: `[("u", "<", 4)]` was refused
    ("compare it with pa.scalar(value, pa.uint64()) (DNF tuples are typed so)") where each
    Source's own filter of the same tuples worked."""
    for name, first in (("a", 0), ("b", 10)):
        (tmp_path / name).mkdir()
        table = pa.table({"id": pa.array(range(first, first + 4), pa.int64()),
                          "u": pa.array([1, 5, BIG + 1, 3], pa.uint64())})
        pq.write_table(table, tmp_path / name / "part-0.parquet", row_group_size=2)
        sparkfeed.index(str(tmp_path / name), progress=False)
    sources = [sparkfeed.Source(str(tmp_path / name), weight=1) for name in "ab"]
    loader = sparkfeed.DataLoader(sources, batch_size=4, columns=["id"], filter=[("u", "<", 4)])
    assert sorted(i for b in loader for i in b["id"].tolist()) == [0, 3, 10, 13]


@pytest.mark.parametrize("values", [[0.105], [0.1, 7.0]], ids=str)
def test_is_in_a_decimal_column_with_floats_keeps_the_rows_arrow_matches(tmp_path, values):
    """Unlike float32's, a decimal column's pruning agrees with Arrow's cast: `price.isin([0.105])`
    beside a decimal(7, 2) matches the 0.10 Arrow casts 0.105 to, and the row group of bounds
    [0.10, 0.10] is kept."""
    table = pa.table({"id": pa.array(range(4), pa.int64()),
                      "price": pa.array([Decimal("0.10"), Decimal("0.10"), Decimal("0.11"), Decimal("7")],
                                        pa.decimal128(7, 2))})
    pq.write_table(table, tmp_path / "part-0.parquet", row_group_size=2)
    sparkfeed.index(str(tmp_path), progress=False)
    expr = pc.field("price").isin(values)
    want = sorted(table.filter(expr)["id"].to_pylist())
    assert want
    assert _ids(str(tmp_path), expr)[0] == want


def test_is_in_with_python_ints_beside_an_integer_column_still_prunes(nullable_sorted):
    """The exact case keeps its pruning: Python's ints (int64) beside an int32 column."""
    table, root = nullable_sorted
    ids, stats = _ids(root, pc.field("v").isin([1, 2]))
    assert ids == [1, 2] and stats["row_groups_pruned"] == 3


@pytest.mark.parametrize("expr", [pc.field("d") > "2024-01-02", pc.field("ts") > "2024-01-02",
                                  [("d", ">", "2024-01-02")], pc.field("s") > 1], ids=str)
def test_text_beside_a_date_or_a_number_is_refused_when_built_with_the_way_out(tmp_path, expr):
    """Arrow has no comparison of a date, timestamp or number with text (is_in casts its value set;
    a comparison does not): refused when the loader is built, as `Table.filter` refuses it, with
    the way out; a timestamp beside text was given the hint about time zones."""
    table = pa.table({"id": [1], "d": pa.array([dt.date(2024, 1, 1)]), "ts": pa.array([dt.datetime(2024, 1, 1)]),
                      "s": ["a"]})
    pq.write_table(table, tmp_path / "part-0.parquet")
    sparkfeed.index(str(tmp_path), progress=False)
    with pytest.raises(ValueError, match=r"cannot apply to dataset .*Arrow compares text with text only") as info:
        sparkfeed.DataLoader(str(tmp_path), batch_size=1, filter=expr)
    assert "time zone" not in str(info.value)
