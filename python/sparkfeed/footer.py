"""A Parquet footer -> its manifest entry: counts, sizes and the column statistics filters prune
with. One code for every place that makes or checks an entry: the write's footer job (on
executors), `sparkfeed.index`, test datasets, and the reader's check that a file is the one its
manifest recorded (`read.parquet`). Statistics go into JSON as the JVM writer puts them: strings
cut to `STRING_STATS_MAX_CHARS` (a min as its prefix, a max rounded up), dates and timestamps as
ISO text, decimals exact as text, binary values as base64 under keys of their own (`binstats`);
NaN is left out, an infinite bound alone (the finite one kept: a one-sided range).
"""

from __future__ import annotations

import decimal
import json
import math
import re
from collections.abc import Mapping

import pyarrow as pa

from . import binstats
from .arrowtypes import delivered_type, leaf_fields
from .footercheck import check

__all__ = ["STRING_STATS_MAX_CHARS", "stat_type", "round_up", "binary_round_up", "json_value", "entry",
           "difference"]
binary_round_up = binstats.round_up

STRING_STATS_MAX_CHARS = 64  # the JVM writer's `ColumnStats.STRING_STATS_MAX_CHARS`


def stat_type(t) -> bool:
    """Whether a column of Arrow type `t` gets min/max statistics in a manifest."""
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_string(t)
            or pa.types.is_large_string(t) or pa.types.is_boolean(t) or pa.types.is_date(t)
            or pa.types.is_timestamp(t) or pa.types.is_decimal(t) or _is_binary(t))


def _is_binary(t) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _usable(value) -> bool:
    """A statistic we can compare and put in JSON (no NaN/inf, no undecodable bytes)."""
    if isinstance(value, float):
        return math.isfinite(value)
    return value is not None and not isinstance(value, (bytes, bytearray))


def _bounds(lo, hi) -> tuple:
    """(min, max) as the manifest keeps them: an infinite bound left out alone (-inf..2 is "at
    most 2", which still rules out `x > 5`), anything else unusable (NaN, bytes) leaves both out."""
    if isinstance(lo, float) and isinstance(hi, float) and not (math.isnan(lo) or math.isnan(hi)):
        return (lo if math.isfinite(lo) else None), (hi if math.isfinite(hi) else None)
    return (lo, hi) if _usable(lo) and _usable(hi) else (None, None)


def round_up(s: str) -> str | None:
    """The shortest prefix-based string >= every string starting with `s` (None if none)."""
    chars = list(s)
    while chars:
        code = ord(chars[-1]) + 1
        if 0xD800 <= code <= 0xDFFF:
            code = 0xE000
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


def json_value(value, is_max: bool):
    if isinstance(value, str) and len(value) > STRING_STATS_MAX_CHARS:
        prefix = value[:STRING_STATS_MAX_CHARS]
        return round_up(prefix) if is_max else prefix
    if hasattr(value, "isoformat"):  # date, datetime
        return value.isoformat()
    if isinstance(value, decimal.Decimal):  # exact as text; a float would round
        return str(value)
    return value


def _chunk_stats(chunk, num_rows: int, binary: bool = False) -> dict:
    """Raw (Python-typed) stats of one column chunk: min, max, null_count, all_null. `binary`:
    a binary column's, whose bounds are bytes (kept; any other column's bytes are dropped)."""
    st = chunk.statistics
    if st is None:
        return {"min": None, "max": None, "null_count": None, "all_null": False}
    nulls = st.null_count if st.has_null_count else None
    lo = hi = None
    if st.has_min_max:
        try:
            lo, hi = st.min, st.max
        except (OverflowError, ValueError):  # a date or time past Python's years 1-9999: no range
            lo = hi = None
    if not (binary and isinstance(lo, bytes) and isinstance(hi, bytes)) or _media(chunk):
        lo, hi = _bounds(lo, hi)  # (bytes: no range)
    return {"min": lo, "max": hi, "null_count": nulls, "all_null": nulls == num_rows and num_rows > 0}


_BINARY_MEAN_MAX = 512  # bytes per value, past which a binary chunk holds media, not keys


def _media(chunk) -> bool:
    """Whether a binary chunk's values average more than `_BINARY_MEAN_MAX` bytes (images,
    audio, arrays): their prefixes say nothing a filter asks, and would only fill the manifest
    (two base64 bounds per row group); keys, digests and UUIDs are far shorter."""
    return chunk.num_values > 0 and chunk.total_uncompressed_size > _BINARY_MEAN_MAX * chunk.num_values


def _pandas_unnamed_index(schema) -> set[str]:
    """The columns a pandas `to_parquet` stored for an unnamed index (`__index_level_0__`: a
    filtered frame's row labels), which pandas' metadata lists: an artifact of the writer, not
    data, present only in the files whose index was not a plain range. A named index is data
    and stays."""
    meta = (schema.metadata or {}).get(b"pandas")
    try:
        index = json.loads(meta)["index_columns"] if meta else []
    except (ValueError, KeyError, TypeError):
        return set()
    return {c for c in index if isinstance(c, str) and re.fullmatch(r"__index_level_\d+__", c)}


def _all_null(num_rows: int) -> dict:
    """Raw stats of a chunk of a `null`-typed column, which Parquet writers give none: every
    row is null (so a comparison filter prunes it)."""
    return {"min": None, "max": None, "null_count": num_rows, "all_null": num_rows > 0}


def _fold(parts: list[dict]) -> dict:
    """Shard stats from row-group stats; all-null row groups do not hide the others' range."""
    nulls = None if any(p["null_count"] is None for p in parts) else sum(p["null_count"] for p in parts)
    valued = [p for p in parts if not p["all_null"]]
    lo = min(p["min"] for p in valued) if valued and all(p["min"] is not None for p in valued) else None
    hi = max(p["max"] for p in valued) if valued and all(p["max"] is not None for p in valued) else None
    return {"min": lo, "max": hi, "null_count": nulls, "all_null": bool(parts) and not valued}


def _to_json_stats(raw: Mapping[str, dict]) -> dict:
    out = {}
    for name, s in raw.items():
        if s["min"] is None and s["max"] is None and s["null_count"] is None:
            continue
        if isinstance(s["min"], bytes) or isinstance(s["max"], bytes):
            out[name] = {"min": None, "max": None, "null_count": s["null_count"],
                         **binstats.bounds_to_json(s["min"], s["max"])}
            continue
        out[name] = {"min": json_value(s["min"], False), "max": json_value(s["max"], True),
                     "null_count": s["null_count"]}  # (a max that cannot be rounded up: one-sided)
    return out


def entry(md, schema: pa.Schema, rel: str, size: int) -> dict:
    """The manifest entry (before JSON) of the Parquet file at `rel`, `size` bytes, from its parsed
    footer (`md`, `schema`: a `ParquetFile`'s metadata and Arrow schema, read with
    `arrowtypes.INT96_UNIT`). ValueError for a footer that would crash pyarrow (`check`)."""
    check(md)
    fields, stat_cols, null_cols = _stat_columns(md, schema)
    groups, per_col = [], {name: [] for name in [c[0] for c in stat_cols] + null_cols}
    for i in range(md.num_row_groups):
        raw = _group_stats(md.row_group(i), stat_cols, null_cols)
        for name, s in raw.items():
            per_col[name].append(s)
        groups.append({"num_samples": md.row_group(i).num_rows, "stats": _to_json_stats(raw)})
    return {"path": rel, "num_samples": md.num_rows, "num_bytes": size,
            "stats": _to_json_stats({name: _fold(parts) for name, parts in per_col.items()}),
            "row_groups": groups,
            "schema": [[f.name, str(t)] for f, t in fields]}


def _stat_columns(md, schema: pa.Schema) -> tuple[list, list[tuple[str, int, bool]], list[str]]:
    """(each leaf field with its delivered type, (name, column chunk, binary?) of the columns with
    statistics, the null-typed columns): structs as their leaves, categoricals as their values,
    a pandas unnamed index left out."""
    unnamed_index = _pandas_unnamed_index(schema)
    fields = [(f, delivered_type(f.type)) for f in leaf_fields(schema) if f.name not in unnamed_index]
    index = {md.schema.column(j).path: j for j in range(md.num_columns)}
    stat_cols = [(f.name, index[f.name], _is_binary(t)) for f, t in fields if stat_type(t) and f.name in index]
    null_cols = [f.name for f, t in fields if str(t) == "null"]  # None in every row: no stats
    return fields, stat_cols, null_cols


def _group_stats(rg, stat_cols: list[tuple[str, int, bool]], null_cols: list[str]) -> dict:
    """Raw stats of one row group's columns (`_stat_columns`)."""
    raw = {name: _chunk_stats(rg.column(j), rg.num_rows, binary) for name, j, binary in stat_cols}
    raw.update({name: _all_null(rg.num_rows) for name in null_cols})
    return raw


def difference(md, schema: pa.Schema, shard) -> tuple[int | None, str] | None:
    """Where the parsed footer of a file differs from the manifest's entry for it (`shard`), as
    (row group or None, what differs), or None where it does not. A file copied over another of
    the same size has other row counts or other statistics here; comparing them costs no I/O,
    the footer being parsed anyway. Compared: the row groups' number and sizes where the manifest
    lists them (else the file's rows), null counts, and min/max where both sides have one and a
    string bound is not cut (older writers cut long strings otherwise: not compared, not refused)."""
    if shard.row_groups is None:  # a Delta log's entry: counts per file only
        if md.num_rows != shard.num_samples:
            return None, f"the file holds {md.num_rows} rows where its manifest entry counts {shard.num_samples}"
        return None
    if md.num_row_groups != len(shard.row_groups):
        return None, (f"the file holds {md.num_row_groups} row group(s) where its manifest entry "
                      f"lists {len(shard.row_groups)}")
    _, stat_cols, null_cols = _stat_columns(md, schema)
    for i, want in enumerate(shard.row_groups):
        rg = md.row_group(i)
        if rg.num_rows != want.num_samples:
            return i, f"it holds {rg.num_rows} rows where the manifest counts {want.num_samples}"
        # the stats as JSON would hold them (JSON keeps these scalars as they are)
        for name, stats in _to_json_stats(_group_stats(rg, stat_cols, null_cols)).items():
            recorded = want.stats.get(name)
            differs = recorded is not None and _stat_differs(stats, recorded)
            if differs:
                return i, (f"column {name!r} has {differs[0]} {differs[1]!r} where the manifest "
                           f"records {differs[2]!r}")
    return None


def _stat_differs(now: dict, recorded) -> tuple[str, object, object] | None:
    """(which, now, recorded) for the first of null_count, min, max that both sides have and
    that differ; None when none does."""
    pairs = (("null count", now.get("null_count"), recorded.null_count),
             ("min", now.get("min"), recorded.min), ("max", now.get("max"), recorded.max))
    for which, a, b in pairs:
        if a is None or b is None or a == b:
            continue
        if isinstance(a, str) and isinstance(b, str) and max(len(a), len(b)) >= STRING_STATS_MAX_CHARS:
            continue
        return which, a, b
    return None
