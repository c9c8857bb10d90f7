"""Arrow tables -> dicts of tensors, column-wise, no per-row Python; and the column-wise ops
(slice, split, concat, select) that batches are cut with.

Numbers become tensors (one copy out of Arrow's buffer), fixed-size lists 2-D tensors, binary
columns a `BinaryColumn` (two tensors) and strings a `TextColumn` (the same, UTF-8) that move,
slice and shuffle without one Python object per sample and become lists of `bytes` / `str` only
at the user's door (strings holding nulls stay lists of `str` and None).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from .binarycols import BinaryChunks, BinaryColumn, BinaryViews, TextColumn, binary_column, binary_kind, own_memory
from .tensorcopies import cat


# ---------------------------------------------------------------- Arrow -> tensors

def _numeric(arr: pa.Array, name: str) -> torch.Tensor:
    if arr.null_count and not pa.types.is_floating(arr.type):
        raise ValueError(f"column {name!r} has null values in this batch and type {arr.type}, which "
                         "a tensor cannot hold; filter them out (filter=pc.field(name).is_valid()) "
                         "or fill them when writing")
    if pa.types.is_boolean(arr.type):
        return torch.from_numpy(arr.to_numpy(zero_copy_only=False).astype(np.bool_))
    if pa.types.is_date(arr.type) or pa.types.is_timestamp(arr.type):
        arr = arr.cast(pa.int64()) if pa.types.is_timestamp(arr.type) or pa.types.is_date64(arr.type) \
            else arr.cast(pa.int32())
    return torch.from_numpy(np.array(arr.to_numpy(zero_copy_only=False)))


def _list(arr: pa.Array, name: str) -> torch.Tensor:
    """A list column of equal lengths as a 2-D tensor."""
    if arr.null_count:
        raise ValueError(f"column {name!r} has null lists in this batch; a tensor cannot hold them")
    if pa.types.is_fixed_size_list(arr.type):
        width = arr.type.list_size
    else:
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        width = int(lengths[0]) if len(lengths) else 0
        if len(lengths) and (lengths != width).any():
            raise ValueError(f"column {name!r} holds lists of different lengths "
                             f"({int(lengths.min())}..{int(lengths.max())}); only equal-length lists "
                             f"become 2-D tensors: pass ragged=[{name!r}] for a list of 1-D tensors "
                             "per batch, or pad them to one length when writing")
    values = _numeric(pc.list_flatten(arr), name)
    return values.reshape(len(arr), width)


def _plain(arr: pa.Array, name: str) -> torch.Tensor:
    """Integers and floats: one copy out of Arrow's buffer (nulls were handled by the reader)."""
    return torch.from_numpy(np.array(arr.to_numpy(zero_copy_only=False)))


def _plain_view(arr: pa.Array) -> torch.Tensor | None:
    """Integers and floats without nulls as a tensor over Arrow's own value buffer (no copy,
    `own_memory`), or None where it is not Arrow's own."""
    buffers = arr.buffers()
    if arr.null_count or len(buffers) != 2:
        return None
    dtype = np.dtype(arr.type.to_pandas_dtype())
    view = own_memory(buffers[1], dtype, len(arr), arr.offset * dtype.itemsize)
    return None if view is None else torch.from_numpy(view)


def _strings(arr: pa.Array, name: str) -> "TextColumn | list":
    """A string column as a TextColumn (its UTF-8 bytes, one copy); with nulls, a list of `str`
    and None (a TextColumn has no nulls)."""
    if arr.null_count:
        return arr.to_pylist()
    raw = arr.view(pa.large_binary() if pa.types.is_large_string(arr.type) else pa.binary())
    col = binary_column(raw)
    return TextColumn(col.data, col.offsets)


def _binary(arr: pa.Array, name: str) -> "BinaryColumn | list":
    """A binary column as a BinaryColumn; with nulls (a tar sample without this member, a
    null in Parquet), a list of `bytes` and None, as strings (a BinaryColumn has no nulls)."""
    return arr.to_pylist() if arr.null_count else binary_column(arr)


@functools.lru_cache(maxsize=256)
def _converter(t: pa.DataType):
    """The conversion for a column type, decided once per type (the per-batch path decides nothing)."""
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return _binary
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _strings
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _list
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return _plain
    return _numeric


def column_to_value(arr: pa.Array, name: str):
    """One Arrow column of a batch -> tensor, 2-D tensor, list of str, or BinaryColumn."""
    return _converter(arr.type)(arr, name)


def table_to_batch(table: pa.Table, copy: bool = True, views: bool = False) -> dict:
    """A whole Arrow table -> dict of column name -> value, column-wise.

    `copy=False`: integer and float columns become tensors over Arrow's buffers where Arrow
    allocated them (`_plain_view`), for tables whose rows are copied again before anyone sees
    them (a shuffle block's runs are joined, a mix puts its sources' rows in order): the
    conversion's copy would be one copy too many. `views=True` (rows only ever gathered: a
    shuffle block's runs): a binary column read in several chunks stays in them (`BinaryViews`)
    instead of being joined into fresh memory."""
    out = {}
    for name in table.column_names:
        col = table.column(name)
        if views and col.num_chunks > 1 and (joined := _joined_views(col, name)) is not None:
            out[name] = joined
            continue
        arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        view = None if copy or _converter(arr.type) is not _plain else _plain_view(arr)
        out[name] = column_to_value(arr, name) if view is None else view
    return out


def _joined_views(col: pa.ChunkedArray, name: str) -> "BinaryViews | None":
    """A chunked binary column as `BinaryViews` over its chunks; None where a chunk does not
    become a `BinaryColumn` (not binary, strings with nulls) or views are not to be had."""
    kinds = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_string, pa.types.is_large_string)
    if not any(is_kind(col.type) for is_kind in kinds):
        return None
    parts = [column_to_value(chunk, name) for chunk in col.chunks]
    kind = binary_kind(parts[0])
    if kind is None or any(type(p) is not kind for p in parts):
        return None
    joined = BinaryViews.join(parts)
    return joined if isinstance(joined, BinaryViews) else None


def index_rows(value: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`value.index_select(0, rows)`, for every dtype a column can have."""
    twin = _SIGNED_TWIN.get(value.dtype)
    if twin is None:
        return value.index_select(0, rows)
    return value.view(twin).index_select(0, rows).view(value.dtype)


def batch_len(batch: dict) -> int:
    """Number of samples in a batch (from any column)."""
    for value in batch.values():
        if isinstance(value, (torch.Tensor, BinaryColumn, list)):
            return len(value)
    return 0


# torch's 16- to 64-bit unsigned dtypes have few kernels (no index_select): rows are picked
# through the signed dtype of the same width, which moves the same bits
_SIGNED_TWIN = {getattr(torch, u): getattr(torch, s) for u, s in
                (("uint16", "int16"), ("uint32", "int32"), ("uint64", "int64")) if hasattr(torch, u)}


def select_rows(batch: dict, rows: torch.Tensor) -> dict:
    """The batch restricted to `rows` (int64 indices), every column alike."""
    out, idx = {}, None
    for name, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            out[name] = index_rows(value, rows.to(value.device))
        elif isinstance(value, (BinaryColumn, BinaryViews, BinaryChunks)):
            out[name] = value.select(rows)
        elif isinstance(value, list):
            idx = rows.tolist() if idx is None else idx
            out[name] = [value[i] for i in idx]
        else:
            out[name] = value
    return out


def slice_rows(batch: dict, start: int, stop: int) -> dict:
    """Rows [start, stop) of a batch: views of tensors and binary buffers, no copy."""
    return {name: value.slice(start, stop) if binary_kind(value) else value[start:stop]
            for name, value in batch.items()}


def split_rows(value, sizes: list[int]) -> list:
    """One column cut into consecutive pieces of `sizes` rows: views, one torch call for tensors."""
    if isinstance(value, torch.Tensor):
        return value.split_with_sizes(sizes)
    bounds = [0]
    for n in sizes:
        bounds.append(bounds[-1] + n)
    return [value.slice(a, b) if binary_kind(value) else value[a:b]
            for a, b in zip(bounds[:-1], bounds[1:])]


def concat_rows(batches: list[dict], views: bool = False, chunks: bool = False) -> dict:
    """The rows of `batches` one after another, column by column (one copy per column);
    `views=True`: binary columns not copied but joined as `BinaryViews`, for rows that are only
    ever gathered (`select_rows`), a shuffle block's; `chunks=True`: binary columns left in
    their parts (`BinaryChunks`), for a delivered batch."""
    if len(batches) == 1:
        return batches[0]
    out = {}
    for name, first in batches[0].items():
        values = [b[name] for b in batches]
        kind = binary_kind(first)
        alike = kind is not None and all(binary_kind(v) is kind for v in values)
        if isinstance(first, torch.Tensor):
            out[name] = cat(values)
        elif views and alike:
            out[name] = BinaryViews.join(values)
        elif chunks and alike and not any(isinstance(v, BinaryViews) for v in values):
            out[name] = BinaryChunks.join(values)
        elif alike and not any(isinstance(v, BinaryViews) for v in values):
            out[name] = BinaryColumn.concat([v.joined() if isinstance(v, BinaryChunks) else v for v in values])
        elif alike:  # some parts gathered into views, some not
            out[name] = BinaryViews.join(values)
        else:  # lists, or strings with nulls in some parts (lists) and not in others
            out[name] = [x for v in values for x in (v.to_list() if binary_kind(v) else v)]
    return out


def user_facing(batch: dict, ragged: Mapping[str, torch.dtype] | None = None) -> dict:
    """What users see: every column, BinaryColumn (or its chunks) -> list of bytes; the
    `ragged` list columns (carried as their values' bytes, `ragged_as_binary`) -> a list of
    1-D tensors of their dtype."""
    ragged = ragged or {}
    return {k: (_ragged_tensors(v, ragged[k]) if k in ragged else v.to_list() if binary_kind(v) else v)
            for k, v in batch.items()}


def _list_starts(arr: pa.Array) -> np.ndarray:
    """Where each row of a list array starts in its (whole) values array, and where the last
    ends: len(arr) + 1 positions, the slice's offset taken into account."""
    if pa.types.is_fixed_size_list(arr.type):
        return (np.arange(len(arr) + 1, dtype=np.int64) + arr.offset) * arr.type.list_size
    return arr.offsets.to_numpy().astype(np.int64)


def lists_holding_nulls(arr: pa.Array) -> np.ndarray | None:
    """Which rows of a list array are lists (not null) holding a null element, as a bool array;
    None when no row does. Vectorised: nulls counted between each row's offsets (Arrow's
    `list_parent_indices` counts the values under a null list where `list_flatten` skips them)."""
    if not arr.values.null_count:
        return None
    starts = _list_starts(arr)
    nulls = np.concatenate([[0], np.cumsum(pc.is_null(arr.values).to_numpy(zero_copy_only=False))])
    bad = nulls[starts[1:]] > nulls[starts[:-1]]
    if arr.null_count:
        bad &= pc.is_valid(arr).to_numpy(zero_copy_only=False)
    return bad if bad.any() else None


def ragged_as_binary(arr: pa.Array, name: str) -> pa.Array:
    """A list column of numbers or booleans as a binary column of each row's values, raw (no
    copy where the values are Arrow's numbers): lists of any lengths then travel as binary
    columns do (batches, shuffles, other processes) and become tensors at the end.

    A null element is NaN in a list of floats (as in a float column); in other lists it is a
    ValueError (the reader turns such lists into null lists first, which `on_error` covers:
    `read.base.null_lists_holding_nulls`); values under a null list are never delivered, so their nulls
    are filled with zeros (the row is null in the binary column)."""
    starts = _list_starts(arr)  # the type was checked when the loader was built
    values = arr.values.slice(int(starts[0]), int(starts[-1] - starts[0]))
    if values.null_count and not pa.types.is_floating(values.type):
        if lists_holding_nulls(arr) is not None:
            raise ValueError(f"column {name!r} holds null values inside its lists; a tensor of "
                             f"{values.type} cannot hold them")
        values = pc.fill_null(values, pa.scalar(False if pa.types.is_boolean(values.type) else 0, values.type))
    raw = np.ascontiguousarray(values.to_numpy(zero_copy_only=False))
    offsets = (starts - starts[0]) * raw.itemsize
    valid = None if not arr.null_count else pc.is_valid(arr).buffers()[1]
    return pa.Array.from_buffers(pa.large_binary(), len(arr), [valid, pa.py_buffer(offsets), pa.py_buffer(raw)],
                                 null_count=arr.null_count)


def _ragged_tensors(value, dtype: torch.dtype) -> list:
    """A ragged column's rows as 1-D tensors: views of one copy of the batch's values (copied
    so that they are aligned and the user's), None for a null list."""
    if isinstance(value, list):  # nulls: bytes or None per row
        return [None if b is None else torch.frombuffer(bytearray(b), dtype=dtype) if b else
                torch.empty(0, dtype=dtype) for b in value]
    if isinstance(value, (BinaryChunks, BinaryViews)):
        value = value.joined()
    size = torch.empty(0, dtype=dtype).element_size()
    values = value.data.clone().view(dtype) if value.data.numel() else torch.empty(0, dtype=dtype)
    return list(torch.split(values, (torch.diff(value.offsets) // size).tolist()))


def rows(batch: dict, ragged: Mapping[str, torch.dtype] | None = None):
    """Yield one dict per sample (the `Dataset(batch_size=None)` path)."""
    batch = user_facing(batch, ragged)
    for i in range(batch_len(batch)):
        yield {k: v[i] for k, v in batch.items()}
