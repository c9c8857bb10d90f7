"""A filter evaluated over a unit's rows: the rows that pass, with their row numbers in the unit."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import filters

if TYPE_CHECKING:
    from .base import ReadContext

__all__ = ["free_name", "apply_filter"]


def free_name(taken, base: str) -> str:
    """`base`, or `base` with underscores before it, whichever no column in `taken` has: the
    helper columns a filter is evaluated with never meet a user's column of that name."""
    name = base
    while name in taken:
        name = "_" + name
    return name


def apply_filter(ctx: ReadContext, table: pa.Table, ok: np.ndarray | None = None,
                 unit=None) -> tuple[pa.Table, np.ndarray]:
    """Rows passing the filter and their row numbers in the unit (all rows when no filter, or
    when `unit`'s statistics prove that every row passes: `ReadContext.filtered`).

    Rows whose `ok` is False (samples skipped under on_error="skip") are kept whatever the
    filter says: their values are unknown, and they must still be counted.
    """
    if ctx.expr is None or (unit is not None and not ctx.filtered(unit)):
        return table, np.arange(table.num_rows)
    row = free_name(table.column_names, "__i__")
    indexed = table.append_column(row, pa.array(np.arange(table.num_rows, dtype=np.int64)))
    expr, helpers = ctx.expr, [row]
    if ok is not None:
        flag = free_name(indexed.column_names, "__ok_in__")
        indexed, helpers = indexed.append_column(flag, pa.array(ok, pa.bool_())), [row, flag]
        expr = pc.coalesce(expr, pc.scalar(False)) | ~pc.field(flag)
    widened = filters.widened_for_filter(indexed)  # (float16 columns: Arrow filters their float32 values)
    kept = indexed.filter(expr) if widened is None else indexed.take(widened.filter(expr).column(row))
    rows = kept.column(row).to_numpy()
    return kept.drop_columns(helpers), rows
