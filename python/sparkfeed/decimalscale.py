"""Comparisons of a decimal column with a decimal of another scale (`price > Decimal("0.305")`
beside decimal(7, 2)), as pruning reads them. Arrow evaluates them exactly, but its simplifier
compares the column cast to a common type, which the statistics say nothing of: such a filter
pruned nothing by that column. Every value of the column lies on its scale's grid, so over the
column's values the comparison is the same as one with the literal put on that grid, rounded
the way that keeps it the same (`> 0.305` is `> 0.30`; `>= 0.305` is `>= 0.31`), which the
simplifier reasons about with the statistics. Equalities hold only with a literal on the grid."""

from __future__ import annotations

import decimal
from collections.abc import Mapping

import pyarrow as pa
import pyarrow.compute as pc

from . import exprcodec

__all__ = ["on_scale"]

# (call, literal after the field) -> rounding that keeps `field op literal` the same over the grid
_ROUNDING = {"greater": decimal.ROUND_FLOOR, "greater_equal": decimal.ROUND_CEILING,
             "less": decimal.ROUND_CEILING, "less_equal": decimal.ROUND_FLOOR,
             "equal": None, "not_equal": None}
_FLIPPED = {"greater": "less", "less": "greater", "greater_equal": "less_equal",
            "less_equal": "greater_equal", "equal": "equal", "not_equal": "not_equal"}


def on_scale(expr: pc.Expression, types: Mapping[str, pa.DataType]) -> pc.Expression:
    """`expr` with each comparison of a decimal column in `types` with a decimal literal of
    another type put on the column's type (as above); `expr` where there is none, or where
    Arrow's serialization cannot be read back exactly (`exprcodec`)."""
    if not any(pa.types.is_decimal(t) for t in types.values() if t is not None):
        return expr
    found = exprcodec.read(expr)
    if found is None:
        return expr
    pairs, table = found
    changed = False
    for k in range(len(pairs) - 3):
        (call, op), a, b, end = pairs[k:k + 4]
        if call != "call" or op not in _ROUNDING or end != ("end", op) or {a[0], b[0]} != {"field_ref", "literal"}:
            continue
        field, literal = (a, b) if a[0] == "field_ref" else (b, a)
        moved = _on_grid(table, int(literal[1]), types.get(field[1]), op if a is field else _FLIPPED[op])
        if moved is not None:
            table, changed = moved, True
    return exprcodec.written(pairs, table) if changed else expr


def _on_grid(table: pa.Table, at: int, type_: pa.DataType | None, op: str) -> pa.Table | None:
    """`table` with the decimal literal in column `at` put on `type_`'s grid for `field op
    literal`, or None: not a decimal column, the same type already, not a decimal literal, an
    (in)equality off the grid, or a rounded value the column's precision does not hold."""
    literal = table.column(at)
    if type_ is None or not pa.types.is_decimal(type_) or not pa.types.is_decimal(literal.type) \
            or literal.type == type_ or literal[0].as_py() is None:
        return None
    value = literal[0].as_py()
    step = decimal.Decimal(1).scaleb(-type_.scale)
    rounding = _ROUNDING[op]
    placed = value.quantize(step, rounding=rounding or decimal.ROUND_FLOOR,
                            context=decimal.Context(prec=80))
    if rounding is None and placed != value:
        return None
    try:
        cast = pa.array([placed], type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return None
    return table.set_column(at, pa.field(table.schema.field(at).name, type_), cast)
