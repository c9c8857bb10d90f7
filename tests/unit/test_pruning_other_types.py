"""Filters that read and filtered right but pruned nothing by their column, because pyarrow's
simplifier did not reason about a literal of another type than the column's: `is_in` of Python
ints beside a uint64 column holding values past 2**63, of text beside a date or timestamp column,
and comparisons of a decimal column with a decimal of another scale. Each now prunes. Every case
reads real files: the ids equal `Table.filter` over every row (what an unpruned read gives), and
the row groups pruned are exactly those holding no matching row (the data is dense, so the
statistics rule out all of those and only those)."""

from __future__ import annotations

import datetime as dt
import operator
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import sparkfeed

BIG = 2**63
GROUP = 10


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """40 rows in 4 row groups: a uint64 past 2**63 from row 20, dates and hours in order, and
    a decimal(7, 2) of every hundredth from 0.00 to 0.39."""
    root = tmp_path_factory.mktemp("types")
    n = 40
    table = pa.table({
        "id": pa.array(range(n), pa.int64()),
        "u": pa.array([BIG + i if i >= 20 else i for i in range(n)], pa.uint64()),
        "d": pa.array([dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(n)]),
        "ts": pa.array([dt.datetime(2024, 1, 1) + dt.timedelta(hours=i) for i in range(n)], pa.timestamp("us")),
        "dec": pa.array([Decimal(i) / 100 for i in range(n)], pa.decimal128(7, 2)),
    })
    pq.write_table(table, root / "part-0.parquet", row_group_size=GROUP)
    sparkfeed.index(str(root), progress=False)
    return table, str(root)


def _check(data, expr, exact: bool = True) -> int:
    """The ids equal `Table.filter`'s and (`exact`) the row groups pruned are those holding no
    matching row; returns how many were pruned."""
    table, root = data
    loader = sparkfeed.DataLoader(root, batch_size=8, columns=["id"], filter=expr)
    ids = sorted(i for b in loader for i in b["id"].tolist())
    want = sorted(table.filter(expr)["id"].to_pylist())
    assert ids == want, expr
    empty = table.num_rows // GROUP - len({i // GROUP for i in want})
    assert loader.stats()["row_groups_pruned"] == empty or not exact, expr
    return loader.stats()["row_groups_pruned"]


@pytest.mark.parametrize("expr", [
    pc.field("u").isin([3, 5]), pc.field("u").isin([25]), pc.field("u").isin([3, 12]) | (pc.field("id") == 39),
    pc.field("d").isin(["2024-01-02", "2024-01-15"]), pc.field("ts").isin(["2024-01-01 03:00:00"]),
    ~pc.field("d").isin(["2024-01-02"]),
], ids=str)
def test_an_is_in_of_another_type_prunes_where_its_values_cast_to_the_columns(data, expr):
    """Arrow's kernel casts the values to the column's type; the statistics are compared with
    them cast so."""
    assert _check(data, expr) > 0 or "invert" in str(expr)


def test_an_is_in_whose_values_do_not_all_become_the_columns_type_prunes_nothing_by_it(data):
    """A negative int beside uint64 cannot become uint64: Arrow's kernel refuses it over the rows
    holding values past 2**63, and the loader says so, naming the dataset, as before."""
    with pytest.raises(ValueError, match="cannot be checked against the statistics of dataset|cannot be evaluated"):
        _check(data, pc.field("u").isin([-1, 3]))


OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne}
LITERALS = [Decimal("0.095"), Decimal("0.100"), Decimal("0.1"), Decimal("0.2999"), Decimal("0.30"),
            Decimal("0.305"), Decimal("-0.005"), Decimal("0.395"), Decimal("1234567.891")]


@pytest.mark.parametrize("op", OPS)
def test_a_decimal_of_another_scale_prunes_as_its_value_on_the_columns_scale(data, op):
    """`dec > 0.305` beside decimal(7, 2) is `dec > 0.30` over the column's values (and `>=` is
    `>= 0.31`); an equality off the grid matches no row and prunes as before. Field first or
    literal first, negated or not: the rows are Arrow's, and every row group without a match is
    pruned where the literal rounds onto the column's scale."""
    pruned = 0
    for value in LITERALS:
        literal = pc.scalar(value)
        for expr in (OPS[op](pc.field("dec"), literal), OPS[op](literal, pc.field("dec")),
                     ~OPS[op](pc.field("dec"), literal)):
            # off the grid an equality is left as it is (no row is equal), and 1234567.89 is past
            # decimal(7, 2): both keep the rows, pruning nothing they should not
            on_grid = value == value.quantize(Decimal("0.01")) or op not in ("==", "!=")
            pruned += _check(data, expr, exact=on_grid and value < 1000)
    assert pruned > 0
