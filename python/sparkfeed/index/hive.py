"""Hive partition directories (`label=3/split=train/part.parquet`) -> typed partition values,
inferred as Spark infers them (`PartitioningUtils`): the values `discover` lists become columns."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import unquote

from ..errors import ManifestError

if TYPE_CHECKING:
    from .discover import DataFile

__all__ = ["HIVE_NULL", "hive_partition", "partition_types", "typed_partition"]

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
_INT32 = (-(2 ** 31), 2 ** 31 - 1)
_INT64 = (-(2 ** 63), 2 ** 63 - 1)
_INT = re.compile(r"[+-]?[0-9]+")  # what Java's parseInt/parseLong take (no `_`, no spaces)
_DOUBLE = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def hive_partition(rel: str) -> dict[str, str | None]:
    """`a=1/b=x/part.parquet` -> {"a": "1", "b": "x"} (URL-unescaped as Spark writes them)."""
    values: dict[str, str | None] = {}
    for part in rel.split("/")[:-1]:
        key, eq, value = part.partition("=")
        if eq and key:
            value = unquote(value)
            values[unquote(key)] = None if value == HIVE_NULL else value
    return values


def partition_types(files: Sequence[DataFile], dataset: str) -> dict[str, str]:
    """Arrow type of each partition key, inferred as Spark does (`_partition_type`).
    Every file must have the same keys (otherwise the layout is not a Hive table)."""
    if not files:
        return {}
    keys = list(files[0].partition)
    for f in files:
        if list(f.partition) != keys:
            raise ManifestError(f"partition directories disagree: {files[0].rel!r} has keys {keys} "
                                f"but {f.rel!r} has {list(f.partition)}", dataset=dataset)
    return {key: _partition_type([f.partition[key] for f in files if f.partition[key] is not None])
            for key in keys}


def _partition_type(values: list[str]) -> str:
    """Spark's inference for one key's values (`PartitioningUtils`): int if every value is one,
    bigint, then double (`0.5`, `1e-3`; integers among them widen, where a double holds them
    exactly: two directories past 2**53 or int64's range, `p=9223372036854775808` and
    `p=9223372036854775809`, became one value), else string. Dates stay
    strings here (ISO dates compare as strings; Spark would make them dates). A key whose
    every value is `__HIVE_DEFAULT_PARTITION__` is a string column of nulls, as Spark types it
    (an integer column could not deliver its nulls); a filter comparing it with a number is
    refused naming it (`filters._null_key_hint`)."""
    if not values:
        return "string"
    if all(_INT.fullmatch(v) for v in values):
        ints = [int(v) for v in values]
        if all(_INT64[0] <= i <= _INT64[1] for i in ints):
            return "int32" if all(_INT32[0] <= i <= _INT32[1] for i in ints) else "int64"
    if all(_INT.fullmatch(v) or _DOUBLE.fullmatch(v) for v in values):
        exact = all(float(int(v)) == int(v) for v in values if _INT.fullmatch(v))
        return "double" if exact and all(math.isfinite(float(v)) for v in values) else "string"
    return "string"


def typed_partition(f: DataFile, types: dict[str, str]) -> dict:
    """The file's partition values converted to their inferred types."""
    convert = {"string": str, "double": float, "int32": int, "int64": int}
    return {k: v if v is None else convert[types[k]](v) for k, v in f.partition.items()}
