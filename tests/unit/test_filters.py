"""Pruning by statistics never drops a row the filter keeps: what the loader delivers equals
`table.filter(expr)` over every row, for the values statistics describe least well (NaN, which
Parquet writers leave out of min and max; timestamps finer than Python's microsecond; decimals,
which a float would round). Columns that cannot become tensors can still be filtered on."""

from __future__ import annotations

from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sparkfeed
from sparkfeed.arrowtypes import arrow_type
from sparkfeed.manifest import read_manifest

NAN = float("nan")
x = pc.field("x")


def write(root, table: pa.Table, rows_per_group: int) -> str:
    """`table` as one Parquet file written by pyarrow (as other tools write them), indexed."""
    root.mkdir(exist_ok=True)
    pq.write_table(table, root / "part-0.parquet", row_group_size=rows_per_group)
    sparkfeed.index(str(root), progress=False)
    return str(root)


def delivered(path: str, expr, **kwargs) -> tuple[list[int], dict]:
    loader = sparkfeed.DataLoader(path, batch_size=4, filter=expr, columns=["id"], **kwargs)
    return sorted(i for b in loader for i in b["id"].tolist()), loader.stats()


def wanted(table: pa.Table, expr) -> list[int]:
    return sorted(table.filter(expr)["id"].to_pylist())


@pytest.fixture(scope="module")
def with_nan(tmp_path_factory):
    """Two row groups whose statistics say x in [1, 5] and [2, 3]: each also holds a NaN."""
    table = pa.table({"id": pa.array(range(6), pa.int64()),
                      "x": pa.array([1.0, NAN, 5.0, 2.0, NAN, 3.0]),
                      "y": pa.array([1.0, 2.0, NAN, 4.0, 5.0, 6.0], pa.float32())})
    return table, write(tmp_path_factory.mktemp("nan"), table, 3)


@pytest.mark.parametrize("expr", [
    ~(x <= 5), x.is_null(nan_is_null=True), pc.is_nan(x), ~pc.is_finite(x), x != 2,
    (x > 4) | pc.is_nan(pc.field("y")), ~((x < 10) & (pc.field("y") < 10)),
], ids=str)
def test_rows_whose_float_is_nan_pass_filters_that_keep_nan(with_nan, expr):
    table, path = with_nan
    assert delivered(path, expr)[0] == wanted(table, expr) != []


@pytest.mark.parametrize("expr,pruned", [(x > 4, 1), (x == 7, 2), ((x > 4) & (pc.field("y") < 0), 2)],
                         ids=str)
def test_ranges_still_prune_float_columns_that_may_hold_nan(with_nan, expr, pruned):
    table, path = with_nan
    ids, stats = delivered(path, expr)
    assert ids == wanted(table, expr)
    assert stats["row_groups_pruned"] == pruned


def test_nanosecond_timestamps_at_the_edge_of_a_row_group_are_kept(tmp_path):
    base = 1_700_000_000_000_000_000
    for tz in (None, "UTC"):
        ts = pa.array([base + 123, base + 999_999_999, base + 5, base + 1], pa.timestamp("ns", tz))
        table = pa.table({"id": pa.array(range(4), pa.int64()), "x": ts})
        path = write(tmp_path / str(tz), table, 2)
        for expr in (x >= ts[1], x > ts[2], x.isin(ts.take([0, 3])), x == ts[1], x < ts[0]):
            assert delivered(path, expr)[0] == wanted(table, expr) != [], expr


_floats = st.one_of(st.just(NAN), st.sampled_from([0.0, -0.0, 1.0, NAN]), st.floats(-5, 5, width=32),
                    st.none())
_ops = st.sampled_from(["==", "!=", "<", "<=", ">", ">=", "not <=", "not >", "is_nan", "nan_is_null"])


def _expr(op: str, value: float):
    if op == "is_nan":
        return pc.is_nan(x)
    if op == "nan_is_null":
        return x.is_null(nan_is_null=True)
    negate, op = op.startswith("not "), op.removeprefix("not ")
    compare = {"==": pc.equal, "!=": pc.not_equal, "<": pc.less, "<=": pc.less_equal,
               ">": pc.greater, ">=": pc.greater_equal}[op](x, pa.scalar(value))
    return ~compare if negate else compare


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(values=st.lists(_floats, min_size=1, max_size=8), group=st.integers(1, 3), op=_ops,
       value=st.floats(-5, 5, width=32), workers=st.sampled_from([0, 2]))
def test_floats_with_nan_and_null_deliver_what_the_filter_keeps(tmp_path_factory, values, group, op,
                                                                value, workers):
    table = pa.table({"id": pa.array(range(len(values)), pa.int64()), "x": pa.array(values, pa.float64())})
    path = write(tmp_path_factory.mktemp("prop"), table, group)
    expr = _expr(op, value)
    assert delivered(path, expr, num_workers=workers)[0] == wanted(table, expr)


@pytest.fixture(scope="module")
def untensored(tmp_path_factory):
    """Decimal prices and lists of strings (neither becomes a tensor) in two row groups."""
    prices = [Decimal(p) if p else None for p in ["1.25", "2.50", "3.00", "10.10", "-4.00", None]]
    table = pa.table({"id": pa.array(range(6), pa.int64()), "price": pa.array(prices, pa.decimal128(10, 2)),
                      "tags": pa.array([["a"], [], ["b", "c"], None, ["a", "b"], ["z"]]),
                      "kv": pa.array([[("k", 1)]] * 6, pa.map_(pa.string(), pa.int64()))})
    return table, write(tmp_path_factory.mktemp("untensored"), table, 3)


@pytest.mark.parametrize("filter_,pruned", [
    ([("price", ">", Decimal("3"))], 1), ([("price", ">=", Decimal("10.10"))], 1),
    (pc.field("price") < pc.scalar(Decimal("0")), 1), ([("price", "in", [Decimal("1.25"), Decimal("3")])], 0),
    ([("price", ">", 3.0)], 0), (pc.list_value_length(pc.field("tags")) > 1, 0),
], ids=str)
@pytest.mark.parametrize("workers", [0, 2])
def test_decimal_and_list_columns_filter_rows_and_stay_out_of_batches(untensored, filter_, pruned, workers):
    table, path = untensored
    loader = sparkfeed.DataLoader(path, batch_size=2, filter=filter_, num_workers=workers)
    batches = list(loader)
    expr = sparkfeed.filters.to_expression(filter_)
    assert sorted(i for b in batches for i in b["id"].tolist()) == wanted(table, expr) != []
    assert all(set(b) == {"id"} for b in batches)
    assert loader.stats()["row_groups_pruned"] == pruned  # decimal statistics prune, exactly


def test_decimal_statistics_are_recorded_exactly(untensored):
    _, path = untensored
    groups = read_manifest(path).shards[0].row_groups
    assert [(g.stats["price"].min, g.stats["price"].max) for g in groups] == [("1.25", "3.00"), ("-4.00", "10.10")]
    assert arrow_type("decimal128(10, 2)") == pa.decimal128(10, 2)


def test_an_integer_beside_a_decimal_and_a_map_column_are_refused_with_the_way_out(untensored):
    _, path = untensored
    with pytest.raises(ValueError, match=r"price > 3.*compare a decimal column with decimal.Decimal"):
        sparkfeed.DataLoader(path, filter=[("price", ">", 3)])
    with pytest.raises(ValueError, match=r"`filter` names 'kv'.*a map column"):
        sparkfeed.DataLoader(path, filter=pc.field("kv").is_null())


def test_a_naive_datetime_beside_a_utc_column_is_refused_when_built_with_the_way_out(tmp_path):
    import datetime as dt

    ts = pa.array([0, 10**6], pa.timestamp("us", "UTC"))  # Spark's timestamps are UTC
    path = write(tmp_path / "tz", pa.table({"id": pa.array([0, 1], pa.int64()), "ts": ts}), 1)
    with pytest.raises(ValueError, match=r"cannot apply to dataset .*timezone.*tzinfo=datetime.timezone.utc"):
        sparkfeed.DataLoader(path, filter=[("ts", ">=", dt.datetime(1970, 1, 1, 0, 0, 1))])
    aware = dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=dt.timezone.utc)
    assert delivered(path, [("ts", ">=", aware)])[0] == [1]


def test_inspect_shows_decimal_statistics_as_numbers_ordered_as_numbers(tmp_path, capsys):
    from sparkfeed.cli import main

    root = tmp_path / "prices"
    root.mkdir()
    for f, prices in enumerate((["9.50", "9.75"], ["10.25", "11.00"])):  # as text, "10.25" < "9.50"
        pq.write_table(pa.table({"id": pa.array([2 * f, 2 * f + 1], pa.int64()),
                                 "price": pa.array([Decimal(p) for p in prices], pa.decimal128(6, 2))}),
                       root / f"part-{f}.parquet")
    sparkfeed.index(str(root), progress=False)
    assert main(["inspect", str(root), "--shards", "2"]) == 0
    out = capsys.readouterr().out
    stats = out.split("statistics (whole dataset)")[1]
    assert [line.split()[1:3] for line in stats.splitlines() if line.strip().startswith("price ")][0] == ["9.50", "11.00"]
    assert "price=9.50..9.75" in out and "price=10.25..11.00" in out


# Values at the edges of what statistics hold: extremes, long strings (truncated past 64
# characters in the manifest), nanoseconds, decimals, NaN; None everywhere.
_COLUMNS = {
    "i": (pa.int64(), st.sampled_from([-2**63, 2**63 - 1, 0, -1, 7])),
    "s": (pa.string(), st.sampled_from(["", "a", "é", "z" * 70, "z" * 64 + "a", "\U0010ffff", "b"])),
    "t": (pa.timestamp("ns", "UTC"), st.sampled_from([0, 1, 1_700_000_000_999_999_999, -5])),
    "d": (pa.decimal128(10, 2), st.sampled_from([Decimal("0"), Decimal("-1.5"), Decimal("99999999.99")])),
    "f": (pa.float32(), st.sampled_from([NAN, 0.0, -0.0, 1.5, float("inf")])),
    "b": (pa.bool_(), st.booleans()),
}


def _comparison(name: str, op: str, literal: pa.Scalar) -> pc.Expression:
    field = pc.field(name)
    if op == "is_null" or not literal.is_valid:
        return field.is_null()
    negate, op = op.startswith("not "), op.removeprefix("not ")
    expr = {"==": field == literal, "!=": field != literal, "<": field < literal,
            "<=": field <= literal, ">": field > literal, ">=": field >= literal}[op]
    return ~expr if negate else expr


@st.composite
def _table_and_filters(draw):
    """A table of every column above, and one comparison per column with a literal it holds."""
    n = draw(st.integers(1, 14))
    data = {"id": pa.array(range(n), pa.int64())}
    for name, (type_, values) in _COLUMNS.items():
        data[name] = pa.array([draw(st.none() | values) for _ in range(n)], type_)
    table = pa.table(data)
    if draw(st.booleans()):
        table = table.sort_by([(draw(st.sampled_from(["i", "s", "t", "d", "f"])), "ascending")])
    exprs = []
    for name, (type_, _) in _COLUMNS.items():
        present = [v for v in table[name].to_pylist() if v is not None]
        literal = pa.scalar(draw(st.sampled_from(present)) if present else None, type_)
        op = draw(st.sampled_from(["==", "!=", "<", "<=", ">", ">=", "not <", "not >=", "is_null"]))
        exprs.append(_comparison(name, op, literal))
    return table, exprs, draw(st.integers(1, 4))


@settings(max_examples=50, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(case=_table_and_filters())
def test_pushdown_equals_filtering_every_row(tmp_path_factory, case):
    """Whatever the type and literal, pruning by shard and row-group statistics keeps every row
    that `table.filter` keeps (the manifest's statistics are JSON: rounded, truncated, parsed)."""
    table, exprs, group = case
    path = write(tmp_path_factory.mktemp("edges"), table, group)
    for expr in exprs:
        assert delivered(path, expr)[0] == wanted(table, expr), expr


def test_a_wide_dataset_filters_on_the_columns_the_filter_names(tmp_path):
    """1,000 feature columns: the filter binds against the columns its text names, and reads
    and prunes by those alone (at 1,500 columns a loader was built in 9.6 s when every binding
    built every column; 0.02 s now, on the 2-core machine)."""
    import numpy as np

    data = {f"f{i}": pa.array(np.arange(100, dtype=np.float32) + i) for i in range(1000)}
    table = pa.table({"id": pa.array(range(100), pa.int64()), **data})
    path = write(tmp_path / "wide", table, 25)
    schema = read_manifest(path).schema
    expr = (pc.field("f7") > 60) | (pc.field("f70") < 71)
    assert sparkfeed.filters.referenced_columns(expr, schema) == ["f7", "f70"]
    ids, stats = delivered(path, expr)
    assert ids == wanted(table, expr) and stats["row_groups_pruned"] == 1


def test_a_column_by_position_is_refused_not_read_as_another(tmp_path):
    """`pc.field(0)` names no column: a read holds only some columns, so a position would point
    at whichever came first (it once matched nothing, silently)."""
    path = write(tmp_path / "pos", pa.table({"id": pa.array(range(10), pa.int64())}), 5)
    with pytest.raises(ValueError, match=r"name columns \(pc.field\('label'\)\), not positions"):
        sparkfeed.DataLoader(path, filter=pc.field(0) > 5)


def test_inspect_names_the_columns_no_shard_has_statistics_for(tmp_path, capsys):
    """parquet-mr leaves out the statistics of a column whose values pass 4 KiB; pyarrow's
    `write_statistics` can do the same by name. inspect says which columns filters cannot prune."""
    from sparkfeed.cli import main

    root = tmp_path / "long"
    root.mkdir()
    pq.write_table(pa.table({"id": pa.array([0, 1], pa.int64()), "s": ["x" * 5000, "y"],
                             "image": pa.array([b"\xff\xd8", b"\xff\xd8"], pa.binary())}),
                   root / "part-0.parquet", write_statistics=["id"])
    sparkfeed.index(str(root), progress=False)
    assert main(["inspect", str(root)]) == 0
    out = capsys.readouterr().out
    # binary columns (images) have none on purpose, as sparkfeed.write keeps none: not listed
    assert "no statistics in any shard (a filter on them prunes nothing): s\n" in out
    assert [line.split()[0] for line in out.split("statistics (whole dataset)")[1].splitlines()[3:4]] == ["id"]


@pytest.fixture(scope="module")
def four_groups(tmp_path_factory):
    """Four row groups of 10 rows: v is 0, 1, 2, 3 in them; n has a null in the last; f floats."""
    table = pa.table({"id": pa.array(range(40), pa.int64()),
                      "v": pa.array([i // 10 for i in range(40)], pa.int32()),
                      "n": pa.array([None if i == 35 else i for i in range(40)], pa.int64()),
                      "f": pa.array([float(i) for i in range(40)])})
    return table, write(tmp_path_factory.mktemp("proven"), table, 10)


@pytest.mark.parametrize("expr,proven", [
    (pc.field("v") <= 1, {0, 1}),                       # 2 and 3 pruned
    (pc.field("v") >= 1, {1, 2, 3}),
    (pc.field("v") != 1, {0, 2, 3}),                    # (1 is counted: no row passes)
    ((pc.field("v") == 1) | (pc.field("v") == 2), {1, 2}),  # min = max: an equality (2 and 3 pruned)
    (pc.field("n") >= 0, {0, 1, 2}),                    # the last holds a null: the filter drops it
    (pc.field("n").is_null(), set()),                   # one null row in the last: read and filtered
    (pc.field("f") < 100.0, set()),                     # a float may be NaN, which min and max leave out
    ((pc.field("v") <= 2) & (pc.field("id") >= 5), {1, 2}),
], ids=str)
def test_row_groups_whose_statistics_prove_every_row_passes_are_not_counted_or_filtered(four_groups, expr, proven):
    """A row group whose min, max and null count prove that every row passes the filter takes
    its row count from the manifest (the count pass reads nothing of it) and is read as without
    a filter; one where a row may fail (a null, a NaN, a value outside) is counted and filtered.
    The rows delivered are the filter's over every row either way, in order and shuffled."""
    from sparkfeed.plan import make_plan

    table, path = four_groups
    planned = make_plan(read_manifest(path), expr, ["id"])  # before the count pass
    assert {planned.units[i].row_group for i in planned.proven} == proven
    for kwargs in ({}, {"shuffle": True, "num_workers": 2}):
        loader = sparkfeed.DataLoader(path, batch_size=4, filter=expr, columns=["id"], **kwargs)
        assert sorted(i for b in loader for i in b["id"].tolist()) == wanted(table, expr) != []
        plan = loader.dataset.plan()
        assert {plan.units[i].row_group for i in plan.proven} == proven
        read = loader._engine.planning_stats()["counted"].get("bytes_read", 0)
        assert (read == 0) == (len(planned.proven) == len(planned.units)), read


def test_the_count_pass_skips_proven_units_and_readers_evaluate_no_filter_over_them(four_groups, monkeypatch):
    """Counted: only the row groups whose statistics leave a doubt; filtered while read: the same."""
    from sparkfeed.read import base

    table, path = four_groups
    evaluated = []
    real = base.apply_filter

    def spy(ctx, t, ok=None, unit=None):
        out = real(ctx, t, ok, unit)
        if unit is None or ctx.filtered(unit):
            evaluated.append(t.num_rows)
        return out

    monkeypatch.setattr(base, "apply_filter", spy)
    from sparkfeed.read import parquet
    monkeypatch.setattr(parquet, "apply_filter", spy)
    expr = pc.field("n") >= 0  # row groups 0-2 proven, 3 (a null) not
    loader = sparkfeed.DataLoader(path, batch_size=4, filter=expr, columns=["id"])
    assert sorted(i for b in loader for i in b["id"].tolist()) == wanted(table, expr)
    assert evaluated == [10, 10]  # row group 3: once in the count pass, once read


def test_small_files_are_counted_many_at_once_each_exactly(tmp_path, monkeypatch):
    """The count pass over local small files evaluates the filter once for many files
    (`engine.COUNT_TASK_ROWS` rows a task): the same counts as a file at a time, and the rows
    delivered are the filter's; a corrupt file among them is still named."""
    from sparkfeed import engine

    root = tmp_path / "small"
    root.mkdir()
    for k in range(30):
        ids = list(range(k * 10, k * 10 + 10))
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "label": pa.array([(i * 3) % 7 for i in ids], pa.int32())}),
                       root / f"part-{k:05d}.parquet")
    sparkfeed.index(str(root), progress=False)
    table = pa.table({"id": pa.array(range(300), pa.int64()), "label": pa.array([(i * 3) % 7 for i in range(300)])})
    expr = pc.field("label").isin([1, 3])  # the statistics (0-6 in every file) decide nothing
    tasks = []
    real = engine._count_units
    monkeypatch.setattr(engine, "_count_units", lambda fmt, ctx, units: tasks.append(len(units)) or real(fmt, ctx, units))
    found = {}
    for rows in (engine.COUNT_TASK_ROWS, 0):  # many files a task; a file a task (as remote)
        monkeypatch.setattr(engine, "COUNT_TASK_ROWS", rows)
        tasks.clear()
        loader = sparkfeed.DataLoader(str(root), batch_size=8, filter=expr, columns=["id"])
        assert sorted(i for b in loader for i in b["id"].tolist()) == wanted(table, expr)
        found[rows > 0] = (loader.dataset.plan().counts, sorted(tasks))
    assert found[True][1] == [30] and found[False][1] == [1] * 30
    assert found[True][0] == found[False][0] and sum(found[True][0]) == len(wanted(table, expr))
    (root / "part-00007.parquet").write_bytes(b"PAR1 not parquet")
    with pytest.raises(sparkfeed.ShardReadError, match="part-00007"):
        sparkfeed.DataLoader(str(root), batch_size=8, filter=expr).dataset.plan()


def test_a_batched_count_that_cannot_join_its_files_counts_each_alone(four_groups, monkeypatch):
    """Where the filter columns of a task's files cannot be joined into one table, each unit's
    filter is evaluated alone: the same counts."""
    from sparkfeed.read import base

    table, path = four_groups
    expr = pc.field("id").isin(list(range(0, 40, 3)))  # in every row group: counted
    want = sparkfeed.DataLoader(path, batch_size=4, filter=expr, columns=["id"]).dataset.plan().counts

    def cannot(tables, *args, **kwargs):
        raise pa.ArrowInvalid("schemas differ")

    monkeypatch.setattr(base.pa, "concat_tables", cannot)
    loader = sparkfeed.DataLoader(path, batch_size=4, filter=expr, columns=["id"])
    assert loader.dataset.plan().counts == want
    assert sorted(i for b in loader for i in b["id"].tolist()) == wanted(table, expr)


def test_a_nested_field_reference_is_refused_with_the_leafs_name_to_use(tmp_path):
    """`pc.field("s", "a")` (Arrow's nested reference) names no column here, where a struct is
    its leaves (`s.a`): the refusal said only "No match"; it now says how to name the leaf, and
    `pc.field("s.a")` filters."""
    table = pa.table({"id": pa.array(range(4), pa.int64()), "s": pa.array([{"a": i} for i in range(4)])})
    pq.write_table(table, tmp_path / "part-0.parquet")
    sparkfeed.index(str(tmp_path), progress=False)
    with pytest.raises(ValueError, match=r"No match for FieldRef\.Nested.*named by their path as one name"):
        sparkfeed.DataLoader(str(tmp_path), batch_size=2, filter=pc.field("s", "a") > 1, columns=["id"])
    loader = sparkfeed.DataLoader(str(tmp_path), batch_size=2, filter=pc.field("s.a") > 1, columns=["id"])
    assert sorted(i for b in loader for i in b["id"].tolist()) == [2, 3]
