"""Filters over float columns holding NaN against pyarrow's own: Parquet's min/max leave NaN out,
so a row group's range holds only for its rows that are not NaN. For every comparison operator,
`is_in`, `is_nan`, `is_finite`, `not`, `and` and `or` over float32 and float64 columns, in files
that hold NaN (one all NaN) and files that hold none, the loader delivers, with its pruning and
without it (the same files written without statistics), the ids that
`pyarrow.dataset(...).to_table(filter=...)` keeps over the files without statistics. (Over the
files with statistics pyarrow's own scan loses rows: `~(x < nan)`, true for every value that is
not null, drops the row groups whose range holds no NaN; pyarrow 26's simplifier, not the data.)"""

from __future__ import annotations

import random
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import sparkfeed

NAN, INF = float("nan"), float("inf")
VALUES = [0.0, -0.0, 1.5, -1.5, NAN, INF, -INF, 2.0, 3.0, None]
LITERALS = [0.0, -0.0, 1.5, 2.0, 2.5, NAN, INF, -INF, 2, 0, -1]
OPS = ["==", "!=", "<", "<=", ">", ">="]


def _write(root, statistics: bool) -> None:
    """Four files of four row groups of 3: `x` (float64) and `y` (float32) hold NaN in files 0
    and 2 (file 2's `x` only NaN), none in files 1 and 3; indexed."""
    rng = random.Random(7)
    for f in range(4):
        pool = VALUES if f % 2 == 0 else [v for v in VALUES if v == v]
        x = [NAN] * 12 if f == 2 else [rng.choice(pool) for _ in range(12)]
        y = sorted((rng.choice(pool) for _ in range(12)), key=lambda v: (v is None, v if v == v else 9))
        table = pa.table({"id": pa.array(range(12 * f, 12 * f + 12), pa.int64()),
                          "x": pa.array(x, pa.float64()), "y": pa.array(y, pa.float32())})
        pq.write_table(table, root / f"part-{f}.parquet", row_group_size=3, write_statistics=statistics)
    sparkfeed.index(str(root), progress=False)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """(with statistics, without): the same rows."""
    out = []
    for statistics in (True, False):
        root = tmp_path_factory.mktemp(f"nan-{statistics}")
        _write(root, statistics)
        out.append(str(root))
    return out


def _leaf(rng) -> pc.Expression:
    field = pc.field(rng.choice(["x", "y"]))
    k = rng.random()
    if k < .6:
        value = rng.choice(LITERALS)
        return {"==": field == value, "!=": field != value, "<": field < value, "<=": field <= value,
                ">": field > value, ">=": field >= value}[rng.choice(OPS)]
    if k < .8:
        return field.isin(rng.sample(LITERALS[:8], rng.randint(1, 3)))
    return rng.choice([pc.is_nan(field), pc.is_finite(field), pc.is_inf(field), field.is_null(),
                       field.is_null(nan_is_null=True), field.is_valid(), field == pc.field("x")])


def _expression(rng, depth: int = 0) -> pc.Expression:
    k = rng.random()
    if depth > 2 or k < .45:
        return _leaf(rng)
    if k < .6:
        return ~_expression(rng, depth + 1)
    a, b = _expression(rng, depth + 1), _expression(rng, depth + 1)
    return a & b if k < .8 else a | b


def _ids(root: str, expr, **kwargs) -> tuple[Counter, dict]:
    loader = sparkfeed.DataLoader(root, batch_size=5, columns=["id"], filter=expr, **kwargs)
    return Counter(i for b in loader for i in b["id"].tolist()), loader.stats()


def _expressions() -> list[pc.Expression]:
    """Every operator against every literal on both columns, alone and negated, then random trees."""
    out = []
    for name in ("x", "y"):
        field = pc.field(name)
        for value in LITERALS:
            for op in OPS:
                e = {"==": field == value, "!=": field != value, "<": field < value, "<=": field <= value,
                     ">": field > value, ">=": field >= value}[op]
                out += [e, ~e]
    rng = random.Random(11)
    return out + [_expression(rng) for _ in range(120)]


def test_nan_holding_floats_filter_as_arrow_does_with_and_without_pruning(roots):
    """Each filter: the same ids with statistics, without them, and from pyarrow."""
    pruned, unpruned = roots
    for expr in _expressions():
        want = Counter(ds.dataset(unpruned).to_table(filter=expr)["id"].to_pylist())
        got, stats = _ids(pruned, expr)
        assert got == want, (str(expr), sorted(got.elements()), sorted(want.elements()))
        assert _ids(unpruned, expr)[0] == want, str(expr)
        assert stats["row_groups_pruned"] <= 16


def test_nan_holding_floats_still_prune_where_nan_cannot_pass(roots):
    """`x > 2.5` cannot hold for NaN: the row groups whose range lies at or below 2.5 (NaN or not)
    are pruned; `x != 2.5` can hold for NaN, so only the all-null or nothing is pruned there."""
    pruned, unpruned = roots
    table = ds.dataset(unpruned).to_table()
    for expr in (pc.field("x") > 2.5, pc.field("y") <= -1.5, pc.field("x") == 3.0):
        got, stats = _ids(pruned, expr)
        assert got == Counter(table.filter(expr)["id"].to_pylist())
        assert stats["row_groups_pruned"] > 0, str(expr)
