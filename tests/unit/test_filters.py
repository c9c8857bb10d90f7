"""Pruning by statistics never drops a row the filter keeps: what the loader delivers equals
`table.filter(expr)` over every row, for the values statistics describe least well (NaN, which
Parquet writers leave out of min and max; timestamps finer than Python's microsecond)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sparkfeed

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
