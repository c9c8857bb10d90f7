"""Nulls where a tensor needs a value: which types need one, which rows lack it, and lists of
integers holding a null element made null lists (a sample without a value, which `on_error` covers)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..batch import lists_holding_nulls

__all__ = ["needs_value", "null_lists_holding_nulls", "is_list", "_null_inside", "_tensor_values_valid"]


def needs_value(t: pa.DataType) -> bool:
    """Whether a null of this type cannot be delivered: integer, boolean, date, timestamp and
    list columns become tensors; floats hold NaN, strings and bytes None."""
    return not (pa.types.is_floating(t) or pa.types.is_string(t) or pa.types.is_large_string(t)
                or pa.types.is_binary(t) or pa.types.is_large_binary(t))


def null_lists_holding_nulls(table: pa.Table, ragged: set[str] = frozenset()) -> pa.Table:
    """The table with each list of integers or booleans that holds a null element made a null
    list: a tensor cannot hold that element, and a null list is a sample without a value, which
    `on_error` covers (named by row and column, or skipped and counted). Left as they were, such
    lists failed the whole batch when it became tensors, even under on_error='skip', with advice
    (`is_valid()`) that does not reach inside a list. Lists of floats keep theirs (NaN); `ragged`
    columns are left alone (a null list is delivered there, as None: `_unit_rows`)."""
    for i, f in enumerate(table.schema):
        if f.name in ragged or not is_list(f.type) or pa.types.is_floating(f.type.value_type):
            continue
        col = table.column(i)
        if not any(c.values.null_count for c in col.chunks):  # the cheap test, before any copy
            continue
        arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        bad = _null_inside(arr)
        if bad is not None:
            table = table.set_column(i, f, pc.if_else(pa.array(bad), pa.scalar(None, f.type), arr))
    return table


def is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _null_inside(arr: pa.Array) -> np.ndarray | None:
    """Which rows of a list array of integers or booleans hold a null element (None: none, or a
    list of floats, where a null is NaN); the cheap test first, the whole values' null count."""
    if pa.types.is_floating(arr.type.value_type) or not arr.values.null_count:
        return None
    return lists_holding_nulls(arr)


def _tensor_values_valid(table: pa.Table) -> np.ndarray | None:
    """False for rows with a null where a tensor needs a value (`needs_value`); None when every
    row is fine. Once per unit."""
    valid = None
    for col in table.columns:
        if not col.null_count or not needs_value(col.type):
            continue
        v = pc.is_valid(col).to_numpy(zero_copy_only=False)
        valid = v if valid is None else valid & v
    return valid
