"""Which rows of a Parquet table hold string bytes that are not UTF-8.

Parquet's reader takes a string column's bytes as they are stored; invalid UTF-8 there (damaged
pages of an uncompressed file, or a writer that stored bytes as strings: Spark does not check)
would raise UnicodeDecodeError when a batch becomes Python strings, far from the read and naming
no shard. Arrow's full validation checks the UTF-8 of a whole chunk at once (about 1.5 GB/s);
only a chunk that fails it is looked at value by value, to find its bad rows, so that
on_error="skip" skips those rows alone and the rest of the row group is delivered.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["bad_text_rows", "null_rows"]


def _has_text(t: pa.DataType) -> bool:
    """Whether values of type `t` hold strings (itself, or inside a list, struct or map)."""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return True
    if pa.types.is_struct(t):
        return any(_has_text(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_map(t):
        return _has_text(t.key_type) or _has_text(t.item_type)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _has_text(t.value_type)
    return False


def _valid(arr: pa.Array) -> bool:
    try:
        arr.validate(full=True)
        return True
    except pa.ArrowInvalid:
        return False


def _bad_strings(arr: pa.Array) -> np.ndarray:
    """Which values of a string array are not UTF-8 (a null is fine): value by value, only for a
    chunk that failed the whole-chunk check."""
    raw = arr.view(pa.large_binary() if pa.types.is_large_string(arr.type) else pa.binary())
    out = np.zeros(len(arr), bool)
    for i, b in enumerate(raw.to_pylist()):
        if b is not None:
            try:
                b.decode("utf-8")
            except UnicodeDecodeError:
                out[i] = True
    return out


def _bad_values(arr: pa.Array) -> np.ndarray:
    """Which values (rows) of `arr` hold a string that is not UTF-8, at any depth."""
    t = arr.type
    if not _has_text(t) or _valid(arr):
        return np.zeros(len(arr), bool)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _bad_strings(arr)
    if pa.types.is_struct(t):
        out = np.zeros(len(arr), bool)
        for child in arr.flatten():
            out |= _bad_values(child)
        return out
    if pa.types.is_map(t):
        arr = pa.ListArray.from_arrays(arr.offsets, pa.StructArray.from_arrays(
            [arr.keys, arr.items], ["key", "value"]), mask=arr.is_null())
    inner = _bad_values(pc.list_flatten(arr))
    out = np.zeros(len(arr), bool)
    if inner.any():
        parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)
        out[parents[inner]] = True
    return out


def bad_text_rows(table: pa.Table) -> tuple[np.ndarray | None, str | None]:
    """(which rows hold string bytes that are not UTF-8, the first bad column's name), or
    (None, None) when every string is text. Chunks that pass Arrow's full validation, the usual
    case, cost one check each."""
    bad, first = None, None
    for name, col in zip(table.column_names, table.columns):
        if not _has_text(col.type):
            continue
        if col.num_chunks and all(_valid(c) for c in col.chunks):
            continue
        here = np.concatenate([_bad_values(c) for c in col.chunks]) if col.num_chunks else np.zeros(0, bool)
        if here.any():
            bad = here if bad is None else bad | here
            first = first or name
    return bad, first


def null_rows(table: pa.Table, bad: np.ndarray) -> pa.Table:
    """`table` with every value of the `bad` rows made null: a skipped sample leaves no bytes
    behind that a later conversion could trip over."""
    mask = pa.array(bad)
    return pa.table({n: pc.if_else(mask, pa.scalar(None, c.type), c) for n, c in
                     zip(table.column_names, table.columns)})
