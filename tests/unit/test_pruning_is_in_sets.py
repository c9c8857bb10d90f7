"""`is_in` over more values than pyarrow's simplifier reasons about (50) pruned nothing: every row
group and every partition directory was counted and read. Such sets now prune from the statistics
(`isinsets`): a row group or directory whose [min, max] holds none of the values is skipped. Each
case reads real files: the ids equal `Table.filter` over every row (no matching row is lost), and
the row groups skipped are exactly those the statistics rule out, counted here from the manifest."""

from __future__ import annotations

import datetime as dt
import math
import random

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import sparkfeed

N = 1_000  # values in each set: twenty times what pyarrow's simplifier takes


def _ids(path: str, filter) -> tuple[list[int], dict]:
    """The ids the loader delivers under `filter` (sorted, repeats kept) and its counters."""
    loader = sparkfeed.DataLoader(path, batch_size=64, columns=["id"], filter=filter)
    return sorted(i for b in loader for i in b["id"].tolist()), loader.stats()


def _implied(path: str, column: str, values: list, nulls_pass: bool) -> int:
    """Row groups whose statistics hold no value of `values` in [min, max] (and no null row that
    would pass): what pruning by the statistics alone must skip."""
    pruned = 0
    for shard in sparkfeed.read_manifest(path).shards:
        for rg in shard.row_groups:
            s = rg.stats[column]
            if nulls_pass and s.null_count != 0:
                continue
            if s.min is None or s.max is None:
                pruned += s.null_count == rg.num_samples
                continue
            as_stats = [v.isoformat() if isinstance(v, dt.date) else v for v in values if v is not None]
            pruned += not any(s.min <= v <= s.max for v in as_stats)  # (a date's statistics: ISO text)
    return pruned


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """40 row groups of 250 rows: ids 0..9999, and columns of other types beside them."""
    root = tmp_path_factory.mktemp("wide")
    n = 10_000
    ids = pa.array(range(n), pa.int64())
    table = pa.table({
        "id": ids,
        "s": pa.array([f"k{i:06d}" for i in range(n)]),
        "x": pa.array([math.nan if i % 997 == 0 else i / 4 for i in range(n)]),
        "n": pa.array([None if 5000 <= i < 5500 else i for i in range(n)], pa.int64()),
        "d": pa.array([dt.date(2000, 1, 1) + dt.timedelta(days=i) for i in range(n)]),
    })
    pq.write_table(table, root / "part-0.parquet", row_group_size=250)
    sparkfeed.index(str(root), progress=False)
    return table, str(root)


CASES = {
    "ints": ("id", [7 * i for i in range(N)]),                      # 0..6993: 28 row groups hold some
    "ints far apart": ("id", [i * 10_007 % 20_000 for i in range(N)]),
    "strings": ("s", [f"k{9 * i:06d}" for i in range(N)]),
    "floats": ("x", [i * 2.25 for i in range(N)]),
    "nulls and ints": ("n", [None] + [5100 + i for i in range(N - 1)]),
    "ints beside nulls": ("n", [5100 + i for i in range(N)]),
    "dates": ("d", [dt.date(2010, 1, 1) + dt.timedelta(days=i) for i in range(N)]),
}


@pytest.mark.parametrize("case", CASES)
def test_a_large_is_in_prunes_the_row_groups_its_values_miss(wide, case):
    """The ids are `Table.filter`'s, and the row groups pruned are those whose range holds no value
    (a null row passes only where the set holds None)."""
    table, root = wide
    column, values = CASES[case]
    expr = pc.field(column).isin(values)
    ids, counters = _ids(root, expr)
    assert ids == sorted(table.filter(expr)["id"].to_pylist())
    implied = _implied(root, column, values, nulls_pass=None in values)
    assert counters["row_groups_pruned"] == implied > 0


def test_a_large_is_in_holding_nan_keeps_every_row_group_of_a_float_column(wide):
    """Statistics leave NaN out, so any row group may hold one: a set holding NaN prunes none by
    that column, and its NaN rows come back."""
    table, root = wide
    expr = pc.field("x").isin([math.nan] + [i * 2.25 for i in range(N - 1)])
    ids, counters = _ids(root, expr)
    assert ids == sorted(table.filter(expr)["id"].to_pylist())
    assert {i % 997 for i in ids} >= {0} and counters["row_groups_pruned"] == 0


def test_dnf_sets_and_negations_prune_what_they_may_and_lose_nothing(wide):
    """DNF `in` of a set, `not in`, `~`, and an `or` beside another column: the rows are
    `Table.filter`'s; `in` prunes as the Expression does, `not in` of 1,000 values nothing here."""
    table, root = wide
    values = [7 * i for i in range(N)]
    for filter, pruned in [([("id", "in", set(values))], 12), ([("id", "not in", set(values))], 0),
                           (~pc.field("id").isin(values), 0),
                           (pc.field("id").isin(values) | (pc.field("s") >= "k009750"), 11),
                           (pc.field("id").isin(values) & (pc.field("x") < 100), 38)]:
        reference = filter if isinstance(filter, pc.Expression) else pq.filters_to_expression(filter)
        ids, counters = _ids(root, filter)
        assert ids == sorted(table.filter(reference)["id"].to_pylist()), filter
        assert counters["row_groups_pruned"] == pruned, filter


def test_a_large_is_in_of_another_type_prunes_only_where_its_values_fit(wide):
    """Floats that are whole numbers beside an int64 column become its ints (pruned as ints); a
    set holding 0.5 cannot (Arrow's kernel matches no row with it), and prunes nothing, wrongly
    never."""
    table, root = wide
    whole = [float(7 * i) for i in range(N)]
    ids, counters = _ids(root, pc.field("id").isin(whole))
    assert ids == sorted(table.filter(pc.field("id").isin(whole))["id"].to_pylist()) != []
    assert counters["row_groups_pruned"] == 12
    halves = [0.5] + whole[1:]
    ids, counters = _ids(root, pc.field("id").isin(halves))
    assert ids == sorted(table.filter(pc.field("id").isin(halves))["id"].to_pylist())


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """100 Hive directories k=0..99, each one file of two row groups."""
    root = tmp_path_factory.mktemp("keyed")
    for k in range(100):
        (root / f"k={k}").mkdir()
        pq.write_table(pa.table({"id": pa.array(range(10 * k, 10 * k + 10), pa.int64())}),
                       root / f"k={k}" / "part-0.parquet", row_group_size=5)
    sparkfeed.index(str(root), progress=False)
    return str(root)


def test_a_large_is_in_of_a_partition_key_prunes_the_directories_it_misses(keyed):
    """`k in` 1,000 values of which five are keys: the other 95 directories are pruned, and the rows
    are those pyarrow's own dataset reading gives."""
    values = [3, 17, 42, 77, 99] + [1_000 + i for i in range(N - 5)]
    expr = pc.field("k").isin(values)
    table = ds.dataset(keyed, partitioning="hive").to_table()
    ids, counters = _ids(keyed, expr)
    assert ids == sorted(table.filter(expr)["id"].to_pylist())
    assert counters["shards_pruned"] == 95


def test_nulls_decide_as_is_in_decides_and_one_value_is_proven():
    """Over statistics alone: a row group of nulls is kept only where a null passes (the set holds
    None and nulls match: not with skip_nulls); a single value in the set proves every row passes
    unless a null may fail; a range written backwards (min > max) rules nothing out."""
    from sparkfeed.manifest import Column, ColumnStats
    from sparkfeed.pruning import select_all_match, select_may_match

    schema = [Column("i", "int64")]
    items = [({"i": ColumnStats(None, None, 10)}, 10), ({"i": ColumnStats(5, 5, 0)}, 10),
             ({"i": ColumnStats(5, 5, 2)}, 10), ({"i": ColumnStats(5, 5, None)}, 10),
             ({"i": ColumnStats(9_000, 9_500, 0)}, 10), ({"i": ColumnStats(9_500, 9_000, 0)}, 10)]
    plain, with_null = list(range(N)), [None, *range(N)]
    skipping = pc.Expression._call("is_in", [pc.field("i")], pc.SetLookupOptions(pa.array(with_null), skip_nulls=True))
    assert select_may_match(pc.field("i").isin(plain), items, schema) == [1, 2, 3, 5]
    assert select_may_match(pc.field("i").isin(with_null), items, schema) == [0, 1, 2, 3, 5]
    assert select_may_match(skipping, items, schema) == [1, 2, 3, 5]
    assert select_all_match(pc.field("i").isin(plain), items, schema) == [1]
    assert select_all_match(pc.field("i").isin(with_null), items, schema) == [0, 1, 2, 3]
    assert select_all_match(~pc.field("i").isin(plain), items, schema) == [0, 4]  # (a null is not in it)


def _or_of_equalities(rng: random.Random, column: str, values: list) -> pc.Expression:
    """`column == v` for each of `values`, field or literal first, joined by `|` in a random shape."""
    terms = [pc.field(column) == v if rng.random() < .5 else pc.scalar(v) == pc.field(column) for v in values]
    while len(terms) > 1:
        k = rng.randrange(len(terms) - 1)
        terms[k:k + 2] = [terms[k] | terms[k + 1]]
    return terms[0]


@pytest.mark.parametrize("seed", range(3))
def test_an_or_of_many_equalities_prunes_as_is_in_does_with_the_rows_arrow_keeps(wide, seed, monkeypatch):
    """`x == 1 | x == 5 | ...` (more than ten terms of one column) cost pyarrow's simplifier time
    quadratic in its terms (7.8 s for 200 row groups under 1,000 terms); it is now decided like an
    `is_in` of those values, a null row deciding nothing (the `or` is null there, not false).
    Negated, beside other columns, over nulls, NaN and text: the rows are `Table.filter`'s; alone
    on `id`, the row groups pruned are those its values miss."""
    from sparkfeed import pruning

    reasoned, real = [], pruning._kept
    monkeypatch.setattr(pruning, "_kept", lambda fragments, expr, *a: reasoned.append((len(fragments), str(expr)))
                        or real(fragments, expr, *a))
    table, root = wide
    rng = random.Random(seed)
    for column, pool in [("id", range(0, 20_000, 7)), ("n", range(4_000, 7_000)), ("x", [i / 4 for i in range(0, 9_000, 5)]),
                         ("s", [f"k{i:06d}" for i in range(0, 12_000, 9)])]:
        values = rng.sample(list(pool), rng.randint(11, 60))
        tree = _or_of_equalities(rng, column, values)
        for expr in (tree, ~tree, tree & (pc.field("id") < 5_000), ~tree | (pc.field("id") > 9_000)):
            ids, counters = _ids(root, expr)
            assert ids == sorted(table.filter(expr)["id"].to_pylist()), (seed, column, expr)
            if column == "id" and expr is tree:
                assert counters["row_groups_pruned"] == _implied(root, "id", values, nulls_pass=False) > 0
        # what pyarrow's simplifier reasons about over the row groups holds none of the equalities
        # (each costs it time; `nan_columns` asks once, over one guarantee, with the filter whole)
        assert reasoned and all(text.count(" == ") <= 4 for n, text in reasoned if n > 1), reasoned
        reasoned.clear()


def test_a_plan_reads_a_large_set_once(wide, monkeypatch):
    """A plan asks for the stand-ins three times (shards, row groups, proofs); reading and sorting a
    set of 1,000,000 values takes a second, so it is read once per expression."""
    from sparkfeed import isinsets

    table, root = wide
    calls, real = [], isinsets._stand_ins
    monkeypatch.setattr(isinsets, "_stand_ins", lambda *a: calls.append(1) or real(*a))
    expr = pc.field("id").isin([7 * i for i in range(N)])
    ids, counters = _ids(root, expr)
    assert ids == sorted(table.filter(expr)["id"].to_pylist()) and counters["row_groups_pruned"] == 12
    assert len(calls) == 1
