"""Arrow types of a dataset's columns: manifest type strings -> Arrow types, and the type a file's
column is delivered as, or two files' columns both read as."""

from __future__ import annotations

import re

import pyarrow as pa

__all__ = ["INT96_UNIT", "delivered_type", "common_type", "torch_dtype", "leaf_fields", "arrow_type"]

_TIMESTAMP = re.compile(r"timestamp\[(\w+)(?:, tz=(.+))?\]")
_LIST = re.compile(r"(large_list|list)<(\w+): (.+)>")
_FIXED_LIST = re.compile(r"fixed_size_list<(\w+): (.+)>\[(\d+)\]")
_DECIMAL = re.compile(r"decimal(32|64|128|256)\((\d+), (-?\d+)\)")
_ALIASES = {"float": pa.float32(), "double": pa.float64(), "bool": pa.bool_(),
            "date32[day]": pa.date32(), "date64[ms]": pa.date64(), "large_string": pa.large_string(),
            "large_binary": pa.large_binary()}


# Spark's default timestamp layout, INT96, read at microseconds (Spark's own precision): at
# pyarrow's default, nanoseconds, a date outside 1677-2262 (the 9999-12-31 "no end" of a
# warehouse table) wraps around without a word. Every ParquetFile sparkfeed opens passes it.
INT96_UNIT = {"coerce_int96_timestamp_unit": "us"}


def delivered_type(t: pa.DataType) -> pa.DataType:
    """The type a column is delivered (and recorded in the manifest) as: a dictionary column (a
    pandas categorical, a file keeping Arrow's dictionary type) as its values, fixed-size binary
    (UUIDs, digests) as binary, string and binary views (Arrow's newer layout, which pyarrow keeps
    in the files it writes from them) as string and binary; the reader casts them so (`read.parquet`). Parquet's statistics
    of such columns are of the values, so they hold for the delivered type."""
    if pa.types.is_dictionary(t):
        return delivered_type(t.value_type)
    if pa.types.is_fixed_size_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_string_view(t):
        return pa.string()
    return t


def common_type(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    """The type two files' columns of one name both read as without loss, or None: the same
    type; the other's where one is `null` (a column None in every row of a file); the 64-bit
    offset variant where one file holds string, binary or list and the other its `large_` form
    (Polars writes those); for lists, the common type of their elements, which may be null where
    either file's may (Spark's containsNull, merged as its `mergeSchema` does), and a list of
    `null` (every list in a file empty) takes the other's elements; a fixed-size list beside a
    list (or one of another size) is a list, as Spark reads both as an array. What
    `pyarrow.unify_schemas` would promote, and no more: numbers of two widths or kinds stay an
    error, as in Spark's `mergeSchema`."""
    if a.equals(b):
        return a
    if pa.types.is_null(a) or pa.types.is_null(b):
        return b if pa.types.is_null(a) else a
    fixed = pa.types.is_fixed_size_list
    if fixed(a) and fixed(b) and a.list_size == b.list_size:
        value = _common_value(a.value_field, b.value_field)
        return None if value is None else pa.list_(value, a.list_size)
    if (_is_list(a) or fixed(a)) and (_is_list(b) or fixed(b)):  # (a fixed size beside a list: a list, as Spark's array)
        value = _common_value(a.value_field, b.value_field)
        large = pa.types.is_large_list(a) or pa.types.is_large_list(b)
        return None if value is None else pa.large_list(value) if large else pa.list_(value)
    for small, large in ((a, b), (b, a)):
        if (pa.types.is_string(small) and pa.types.is_large_string(large)) or \
                (pa.types.is_binary(small) and pa.types.is_large_binary(large)):
            return large
    return None


def _common_value(a: pa.Field, b: pa.Field) -> pa.Field | None:
    """The element field two lists both read as: `a`'s name, nullable where either is."""
    if pa.types.is_null(a.type) or pa.types.is_null(b.type):
        return b if pa.types.is_null(a.type) else a
    value = common_type(a.type, b.type)
    return None if value is None else pa.field(a.name, value, nullable=a.nullable or b.nullable)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def torch_dtype(t: pa.DataType):
    """The tensor dtype of a numeric (or list of numeric) column; None for other columns."""
    import numpy as np
    import torch  # here: the footer reader (write.py) uses this module on Spark executors

    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        t = t.value_type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        return None
    return torch.from_numpy(np.empty(0, dtype=t.to_pandas_dtype())).dtype


def leaf_fields(schema: pa.Schema) -> list[pa.Field]:
    """The columns a dataset delivers: struct columns as their leaves, named by their path
    (`image.bytes`, `image.path`: a Hugging Face image), the others as they are. Parquet names
    the leaves' column chunks and statistics by the same paths."""
    out: list[pa.Field] = []
    for field in schema:
        if pa.types.is_struct(field.type):
            inner = leaf_fields(pa.schema(list(field.type)))
            out += [pa.field(f"{field.name}.{leaf.name}", leaf.type) for leaf in inner]
        else:
            out.append(field)
    return out


def arrow_type(type_string: str) -> pa.DataType | None:
    """The Arrow type for a manifest type string, or None for types we need not rebuild."""
    if type_string in _ALIASES:
        return _ALIASES[type_string]
    m = _TIMESTAMP.fullmatch(type_string)
    if m:
        return pa.timestamp(m.group(1), tz=m.group(2))
    m = _LIST.fullmatch(type_string)
    if m and (value := _value_field(m.group(2), m.group(3))) is not None:
        return (pa.large_list if m.group(1) == "large_list" else pa.list_)(value)
    m = _DECIMAL.fullmatch(type_string)
    if m:
        make = getattr(pa, f"decimal{m.group(1)}", None)  # decimal32/64: pyarrow 18 and later
        return make(int(m.group(2)), int(m.group(3))) if make else None
    m = _FIXED_LIST.fullmatch(type_string)
    if m and (value := _value_field(m.group(1), m.group(2))) is not None:
        return pa.list_(value, int(m.group(3)))
    try:
        return pa.type_for_alias(type_string)
    except (ValueError, KeyError):
        return None


def _value_field(name: str, type_string: str) -> pa.Field | None:
    """A list's value field from its type string; `float not null` is an element that cannot be
    null (Spark's arrays with containsNull=false, embeddings that other tools write)."""
    required = type_string.endswith(" not null")
    value = arrow_type(type_string.removesuffix(" not null"))
    return None if value is None else pa.field(name, value, nullable=not required)
