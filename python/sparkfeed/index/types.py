"""Which Arrow types can become tensors, and why the others cannot.

Columns of data that sparkfeed did not write may hold structs, maps, decimals, dictionaries or
lists of strings. They stay in the manifest, marked `unsupported` with the kind named here, so
`sparkfeed inspect` shows them and selecting one is an error that names it.
"""

from __future__ import annotations

import pyarrow as pa

from ..arrowtypes import arrow_type

__all__ = ["unsupported_kind"]


def _scalar_ok(t: pa.DataType) -> bool:
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
            or pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t) or pa.types.is_date(t) or pa.types.is_timestamp(t))


def _kind(t: pa.DataType) -> str:
    if pa.types.is_struct(t):
        return "struct"
    if pa.types.is_map(t):
        return "map"
    if pa.types.is_decimal(t):
        return "decimal"
    if pa.types.is_dictionary(t):
        return "dictionary (categorical)"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return "nested list"
    return str(t)


def unsupported_kind(type_string: str) -> str | None:
    """None when a column of this Arrow type string can become a tensor (numbers, booleans,
    strings, binary, dates, timestamps, lists of numbers or booleans), else what it is."""
    t = arrow_type(type_string)
    if t is None:
        for prefix in ("struct", "map", "decimal", "dictionary"):
            if type_string.startswith(prefix):
                return _kind_name(prefix)
        return type_string
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        v = t.value_type
        ok = pa.types.is_integer(v) or pa.types.is_floating(v) or pa.types.is_boolean(v)
        return None if ok else "nested list"
    return None if _scalar_ok(t) else _kind(t)


def _kind_name(prefix: str) -> str:
    return "dictionary (categorical)" if prefix == "dictionary" else prefix

