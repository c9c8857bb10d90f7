"""A mix's sources: `Source`, its argument checks, and `resolve` (a mix checked when its loader is built)."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from . import checks, filters
from .manifest import Manifest
from .mixshares import _bounding, _check_enough, shares

__all__ = ["Source", "SOURCE_COLUMN", "resolve"]

SOURCE_COLUMN = "__source__"  # the column `with_source=True` adds
_SOURCE_SHIFT = 56  # a mixed row key is (source << 56) | (unit << 32) | row
_MAX_UNITS = 1 << (_SOURCE_SHIFT - 32)  # so a source's work units number at most 2^24
_MAX_SOURCES = 127


@dataclass(frozen=True)
class Source:
    """One dataset of a mix, with its own filter and its share of each epoch.

    `weight`: the source's proportion among the weighted sources (any positive numbers; they
    are normalised). `samples`: an exact count per epoch instead. Neither: every sample once
    per epoch. `repeat=True` lets the source cycle past its size (a weighted source with
    `repeat` does not limit the epoch length). `filter` applies to this source alone (AND the
    loader's `filter=`, if any). `manifest`: a `Manifest`, or the path/URL of a manifest file
    or of the directory holding `_sparkfeed.json`, when it is not at `path`.

    Example: `Source("cc12m/", weight=0.3, filter=[("lang", "==", "en")])`.
    """

    path: str
    weight: float | None = None
    samples: int | None = None
    repeat: bool = False
    filter: Any = None
    manifest: Any = None
    storage_options: dict | None = dataclasses.field(default=None, hash=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.path, str) and not hasattr(self.path, "__fspath__"):
            raise ValueError(f"`path` should be a dataset path/URL, but got path={self.path!r}")
        object.__setattr__(self, "path", os.fspath(self.path) if hasattr(self.path, "__fspath__") else self.path)
        for name in ("weight", "samples"):  # numpy's numbers (weights computed in an array) as Python's
            value = getattr(self, name)
            if isinstance(value, np.generic) and value.dtype.kind in "iuf":
                object.__setattr__(self, name, value.item())
        w = self.weight
        if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0):
            raise ValueError(f"`weight` should be a positive number or None, but got weight={w!r}")
        checks.positive_int("samples", self.samples, allow_none=True)
        if w is not None and self.samples is not None:
            raise ValueError(f"`weight` and `samples` should not both be given, but got weight={w!r} "
                             f"and samples={self.samples!r} (source {self.path!r}); choose one")
        if not isinstance(self.repeat, bool):
            raise ValueError(f"`repeat` should be True or False, but got repeat={self.repeat!r}")
        if self.storage_options is not None and not isinstance(self.storage_options, dict):
            raise ValueError("`storage_options` should be a dict or None, but got "
                             f"storage_options={self.storage_options!r}")
        filters.to_expression(self.filter)  # DNF checked now


def is_mix(path_or_sources) -> bool:
    """Whether a `Dataset`/`DataLoader` first argument is a list of `Source`s."""
    return isinstance(path_or_sources, (list, tuple))


# ---------------------------------------------------------------- checks when built

def _manifest(source: Source, storage_options: dict | None) -> tuple[Manifest, str]:
    """(manifest, data root) of a source, as for one dataset (`index.open_manifest`: a manifest
    kept apart, or Parquet/Delta data without one indexed in memory)."""
    from .index import open_manifest

    m, root = open_manifest(source.path, source.manifest, storage_options)
    return m, str(root)


def _check_units(i: int, source: Source, m: Manifest) -> None:
    """A mixed row key holds a work unit's index in 24 bits (`_SOURCE_SHIFT`): refuse a source
    with more units (row groups, or shards without row groups) than that, when the loader is
    built, rather than mix up row keys (which name a bad sample, and seed keyed augmentations)."""
    units = sum(len(s.row_groups) if s.row_groups is not None else 1 for s in m.shards)
    if units > _MAX_UNITS:
        raise ValueError(f"source {i} ({source.path!r}) has {units:,} work units (row groups, or shards "
                         f"without row groups), but a source of a mix can have at most {_MAX_UNITS:,}; "
                         "rewrite it with larger row groups, or split it into several sources")


def _kind(t: pa.DataType | None, type_string: str):
    """What a column becomes in a batch, coarsely: columns of one kind can share a batch."""
    if t is None:
        return ("other", type_string)
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "binary"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return ("list", _kind(t.value_type, str(t.value_type)))
    return ("other", str(t))


@dataclass(frozen=True)
class _Resolved:
    """A source checked and ready: its manifest, its filter (AND the loader's) and its engine."""

    source: Source
    path: str       # the data root
    manifest: Manifest
    expr: Any
    casts: dict  # column -> torch dtype where this source's differs from the mix's


def _column_types(resolved: list, columns: tuple[str, ...]) -> dict[str, list]:
    """Per column, each source's (kind, dtype, type string); ValueError naming a source that lacks
    the column or holds it with an incompatible type."""
    first = resolved[0]
    out = {}
    for name in columns:
        types = []
        for i, (src, m) in enumerate(resolved):
            if name not in m.column_names:
                raise ValueError(f"`columns` names {name!r}, which source {i} ({src.path!r}) does not "
                                 f"have (its columns are {m.column_names}); every column must exist "
                                 "in every source: pass columns= with the columns they share")
            ts = m.column(name).type
            t = filters.arrow_type(ts)
            types.append((_kind(t, ts), None if t is None else filters.torch_dtype(t), ts))
        for i, (kind, _, ts) in enumerate(types):
            if kind != types[0][0]:
                raise ValueError(f"column {name!r} is {ts} in source {i} ({resolved[i][0].path!r}) but "
                                 f"{types[0][2]} in source 0 ({first[0].path!r}); types must be "
                                 "compatible (integers with integers, floats with floats, strings, "
                                 "binary, lists of such): pass columns= without it, or rewrite one source")
        out[name] = types
    return out


def _casts(types: dict[str, list], sources: int) -> list[dict]:
    """Per source, the numeric columns to convert to the mix's dtype (torch's promotion)."""
    casts: list[dict] = [{} for _ in range(sources)]
    for name, per_source in types.items():
        dtypes = [d for _, d, _ in per_source]
        if dtypes[0] is None or len(set(dtypes)) == 1:
            continue
        target = dtypes[0]
        for d in dtypes[1:]:
            target = torch.promote_types(target, d)
        for i, d in enumerate(dtypes):
            if d != target:
                casts[i][name] = target
    return casts


def _files_hint(sources: list) -> str:
    """What to do instead when the list holds paths: files of one dataset are a glob, a
    directory or an index of their own, not a mix."""
    if not sources or not all(isinstance(s, (str, os.PathLike)) for s in sources):
        return ""
    return ("; for files of one dataset pass a glob or their directory as `path`, or index the "
            "list once: sparkfeed.index([...], manifest='m.json'), then "
            "DataLoader(manifest='m.json')")


def resolve(sources: Sequence, *, columns, filter, storage_options: dict | None,
            with_source: bool) -> tuple[list[_Resolved], tuple[str, ...]]:
    """Check a mix when the loader is built: the sources, each one's filter, the columns (present
    everywhere, compatible types), `with_source`. Returns the resolved sources and the columns."""
    sources = list(sources)
    if not sources or not all(isinstance(s, Source) for s in sources):
        raise ValueError("a mix should be a non-empty list of sparkfeed.Source, but got "
                         f"{[type(s).__name__ for s in sources]}" + _files_hint(sources))
    if len(sources) > _MAX_SOURCES:
        raise ValueError(f"a mix should have at most {_MAX_SOURCES} sources, but got {len(sources)}")
    filters.to_expression(filter)  # DNF checked now; typed by each source's schema below
    opened = [_manifest(s, s.storage_options or storage_options) for s in sources]
    pairs = [(s, m) for s, (m, _) in zip(sources, opened)]
    columns = checks.struct_leaves(columns, pairs[0][1].column_names)
    for i, (s, m) in enumerate(pairs):
        m.check_selectable(columns if isinstance(columns, (list, tuple)) else ())
        _check_units(i, s, m)
    columns = checks.check_columns(columns, pairs[0][1].column_names, sources[0].path)
    if with_source and SOURCE_COLUMN in columns:
        raise ValueError(f"`with_source=True` adds the column {SOURCE_COLUMN!r}, which the loaded "
                         f"columns already hold; rename that column or leave it out of columns=")
    casts = _casts(_column_types(pairs, columns), len(sources))
    out = []
    for i, (s, m) in enumerate(pairs):
        expr, common = filters.to_expression(s.filter, m.schema), filters.to_expression(filter, m.schema)
        expr = common if expr is None else expr if common is None else expr & common  # (DNF typed by each schema)
        if expr is not None:
            m.check_selectable(filters.unfilterable(filters.referenced_columns(expr, m.schema), m.schema), "filter")
            filters.check_filter(expr, m.schema, f"{s.path} (source {i})", m.shards)
        else:  # its size is the manifest's: checked now, not at the first batch
            _check_enough(i, s, m.num_samples)
        out.append(_Resolved(s, opened[i][1], m, expr, casts[i]))
    _bounding(sources)  # an argument error, found now rather than when the epoch is first planned
    if all(r.expr is None for r in out):  # every size is the manifest's: the shares too
        shares([r.manifest.num_samples for r in out], sources)
    return out, columns
