"""Mixing several datasets into one epoch stream: `Source`, the interleaving, `MixedEngine`.

    loader = sparkfeed.DataLoader([sparkfeed.Source("laion/", weight=0.7, filter=[("aesthetic", ">", 5)]),
                                   sparkfeed.Source("cc12m/", weight=0.3)], batch_size=256, shuffle=True)

The mixed epoch is still positions `0..N-1`, so partitioning, lanes, resume and elastic world
sizes (`partition.py`, `progress.py`) work on it unchanged. What a position holds is a pure
function of `(seed, epoch, counts)`, in three steps:

1. **Shares.** Source i supplies `n_i` samples this epoch (`shares`): `samples=` fixes it;
   weighted sources share `T = min(size_j / w_j)` over the weighted sources without `repeat`
   (weights normalised among the weighted sources), `n_i = floor(T * w_i)`; a source with neither
   supplies every sample once. `N = sum(n_i)`.
2. **Interleaving.** The stream is cut into `G = ceil(N / block)` blocks (`block_size`: about
   16 MiB of stored rows, at least `shuffle_buffer` and at most 65,536 positions). Source i's share index
   j sits at "time" `(j + 1/2) / n_i`; block g holds the share indices whose time falls in
   `[g/G, (g+1)/G)` (`block_counts`, exact integer arithmetic), so every block holds each
   source in its proportion to within one sample. Inside a block the sources' samples are in
   time order (`shuffle=False`) or permuted by `(seed, epoch, g)` (`block_labels`).
3. **Share -> source position.** Share index j of source i reads position `(off_i + j) mod
   size_i` of that source's own epoch stream (its own units order and shuffle chunks), where
   `off_i` is drawn from `(seed, epoch, i)` (0 when the share is the whole source): a source larger than its share contributes a
   window of its shuffled stream that moves every epoch (a different subset each epoch; each
   sample at most once), and `repeat=True` cycles past the size (`share_spans`).

Reading (`MixedEngine.segments`): per block piece, each source's share range is read with that
source's own `StreamReader` (its filter, pushdown and caches; numbers left in Arrow's buffers,
`views=True`, since they are copied into mixed order anyway); shuffled sources hand out their
blocks ungathered (`stream.Shuffled`). The rows taken from each source are laid one after another
and gathered into mixed order, column by column (`_mixed`; a piece that holds one source is
copied once, `_owned`): a few tensor ops per piece, never per-sample Python (lists of strings
aside, as everywhere). No per-row source column travels with the rows: a batch's per-source
counts and `__source__` come from its mixed positions and the grid's labels (`_Delivered`: the
counts at every batch bound of a window taken at once), the labels being computed once per block
and process (`_Grid`).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from . import batch as batching
from . import checks, filters
from .engine import Engine, ReadConfig
from .manifest import Manifest
from .read import make_reader
from .shuffle import key_words
from .stats import Stats
from .stream import ROW_KEYS, Block, Shuffled, StreamReader

__all__ = ["Source", "SOURCE_COLUMN", "MixPlan", "MixedEngine", "shares", "block_counts",
           "block_labels", "share_spans", "resolve"]

SOURCE_COLUMN = "__source__"  # the column `with_source=True` adds
SOURCE_STATS = ("samples", "bytes_read", "rows_filtered", "samples_skipped", "shards_planned",
                "shards_pruned", "row_groups_planned", "row_groups_pruned", "shards_emptied",
                "row_groups_emptied")
_SOURCE_SHIFT = 56  # a mixed row key is (source << 56) | (unit << 32) | row
_MAX_UNITS = 1 << (_SOURCE_SHIFT - 32)  # so a source's work units number at most 2^24
_MAX_SOURCES = 127
_BLOCK_BYTES = 16 << 20  # a block holds about this many stored bytes of rows ...
_MAX_BLOCK = 65_536      # ... and at most this many positions (at least shuffle_buffer)
_MIN_BLOCK = 2048         # without a shuffle_buffer
_PIECE = 65_536           # positions put in order at once (a segment), at most: a whole block of
                          # the grid at most (so bounded like a block); fewer per-piece costs than
                          # 32,768 or 16,384 (docs/benchmark-studies.md, mixing)
_CACHED_BLOCKS = 16       # block labels a grid keeps (uint8, at most 64 KiB each)


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


# ---------------------------------------------------------------- pure functions

def _check_enough(i: int, s: Source, size: int) -> None:
    """A source asked for more `samples` than it has (after its filter) must cycle (`repeat`)."""
    if s.samples is not None and s.samples > size and not s.repeat:
        raise ValueError(f"source {i} ({s.path!r}) has {size} samples (after its filter) "
                         f"but `samples={s.samples}`; pass repeat=True to cycle past its size")


def shares(sizes: Sequence[int], sources: Sequence[Source]) -> list[int]:
    """Each source's sample count per epoch (see the module note, step 1)."""
    counts = [0] * len(sources)
    weighted = [i for i, s in enumerate(sources) if s.weight is not None]
    for i, s in enumerate(sources):
        if s.samples is not None:
            _check_enough(i, s, sizes[i])
            counts[i] = s.samples
        elif s.weight is None:
            counts[i] = sizes[i]
    if weighted:
        w = {i: _as_written(sources[i].weight) for i in weighted}
        limits = _bounding(sources)
        for i in limits:
            if not sizes[i]:
                raise ValueError(f"source {i} ({sources[i].path!r}) has no samples (after its filter), so "
                                 "its weight leaves no room for the others: the epoch would be empty")
        # exact: in floats, T * w_i of the bounding source fell below its size from ~6 million on
        length = min(sizes[i] / w[i] for i in limits)  # T / (sum of the weights)
        for i in weighted:
            counts[i] = math.floor(length * w[i])
    for i, s in enumerate(sources):
        if counts[i] and not sizes[i]:
            raise ValueError(f"source {i} ({s.path!r}) has no samples (after its filter) to repeat")
    return counts


def _as_written(weight: float) -> Fraction:
    """A weight as an exact fraction, as the user wrote it: a float's shortest decimal (0.7 is 7/10,
    not the binary value below it), or the simple fraction it rounds (1/3) where one with a
    denominator up to 10^9 is as close as the float can tell."""
    if not isinstance(weight, float):
        return Fraction(int(weight))
    exact = Fraction(repr(float(weight)))
    simple = exact.limit_denominator(10 ** 9)
    return simple if simple and abs(simple - exact) <= exact * Fraction(1, 2 ** 52) else exact


def _bounding(sources: Sequence[Source]) -> list[int]:
    """The weighted sources without `repeat`, whose sizes bound the epoch's length; a ValueError
    where there are weighted sources but none of them (nothing would end the epoch)."""
    weighted = [i for i, s in enumerate(sources) if s.weight is not None]
    limits = [i for i in weighted if not sources[i].repeat]
    if weighted and not limits:
        raise ValueError("every weighted source has repeat=True, so nothing bounds the epoch; give "
                         "one weighted source repeat=False, or give the sources samples=")
    return limits


def block_counts(counts: np.ndarray, blocks: int, g) -> np.ndarray:
    """How many of each source's share fall before block `g` (an int or an array of them):
    `#{j : (j + 1/2) / n_i < g / blocks}`, in exact integers. Shape `g.shape + (sources,)`."""
    n = np.asarray(counts, dtype=np.int64)
    g = np.asarray(g, dtype=np.int64)
    if 2 * blocks * int(n.max(initial=0)) >= 2 ** 62:  # 2 g n past int64: in Python's integers
        n, g = n.astype(object), g.astype(object)
    c = -((blocks - 2 * np.multiply.outer(g, n)) // (2 * blocks))  # ceil((2 g n - G) / 2G)
    return np.clip(c, 0, n).astype(np.int64)


def block_labels(counts: np.ndarray, blocks: int, g: int, *, seed: int, epoch: int,
                 shuffle: bool) -> np.ndarray:
    """The source index of each position of block `g` (uint8): in time order, or permuted by
    `(seed, epoch, g)` when shuffling."""
    lo, hi = block_counts(counts, blocks, g), block_counts(counts, blocks, g + 1)
    if shuffle:  # permutation(n) draws as permutation(labels) does, and numpy's int path is faster
        labels = np.repeat(np.arange(len(lo), dtype=np.uint8), hi - lo)
        return labels[_rng(seed, epoch, g, 3).permutation(len(labels))]
    return _time_order(np.asarray(counts, dtype=np.int64), lo, hi)


def _time_order(n: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The labels of share indices `[lo_i, hi_i)` merged by time `(j + 1/2) / n_i` (ties: lower
    source first), without sorting: item j of source i comes after j of its own and, of source l,
    `#{m >= 0 : (2m + 1) n_i < (2j + 1) n_l}` (`<=` for l < i), in exact integers; for j < n_i
    that count never exceeds n_l. Its numerator `(2j + 1) n_l - n_i` grows by `2 n_l` per item,
    so it is one `arange`, divided as quotient and remainder of the first numerator and of the
    step (the numerators themselves pass int64 where two shares exceed about 2 billion each).
    The source with the most items in the block is not placed: it fills the positions the
    others leave."""
    taken = hi - lo
    fill = int(np.argmax(taken)) if len(taken) else 0
    labels = np.full(int(taken.sum()), fill, dtype=np.uint8)
    start = int(lo.sum())
    steps = np.arange(int(taken.max(initial=0)), dtype=np.int64)
    for i in np.flatnonzero(taken):
        if i == fill:
            continue
        ni, first, count = int(n[i]), int(lo[i]), int(taken[i])
        pos = np.arange(first - start, first - start + count, dtype=np.int64)
        for other in np.flatnonzero(n):
            if other != i:
                nl, d = int(n[other]), 2 * ni
                num0 = (2 * first + 1) * nl - ni
                # ceil(num / d) for a later source, floor(num / d) + 1 for an earlier one
                shift = d - 1 if other > i else d
                (q0, r0), (q1, r1) = divmod(num0 + shift, d), divmod(2 * nl, d)
                pos += q0 + steps[:count] * q1 + (r0 + steps[:count] * r1) // d
        labels[pos] = i
    return labels


def share_spans(offset: int, size: int, start: int, count: int) -> list[tuple[int, int]]:
    """Source stream positions of share indices `[start, start + count)`: `(offset + j) mod size`,
    as spans in share order (more than one where the window wraps around)."""
    out, pos, left = [], (offset + start) % size, count
    while left:
        n = min(left, size - pos)
        out.append((pos, pos + n))
        left -= n
        pos = 0
    return out


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(key_words(key) + [0x6D6978])


def _source_seed(seed: int, i: int) -> int:
    """Each source's own stream seed: sources of the same layout do not shuffle in lockstep."""
    return int(_rng(seed, i).integers(2 ** 31))


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
            filters.check_filter(expr, m.schema, f"{s.path} (source {i})")
        else:  # its size is the manifest's: checked now, not at the first batch
            _check_enough(i, s, m.num_samples)
        out.append(_Resolved(s, opened[i][1], m, expr, casts[i]))
    _bounding(sources)  # an argument error, found now rather than when the epoch is first planned
    if all(r.expr is None for r in out):  # every size is the manifest's: the shares too
        shares([r.manifest.num_samples for r in out], sources)
    return out, columns


# ---------------------------------------------------------------- the plan and the engine

@dataclass(frozen=True)
class MixPlan:
    """Each source's plan, size (after its filter) and count this epoch; the block grid."""

    plans: tuple
    sizes: tuple[int, ...]
    counts: tuple[int, ...]
    blocks: int
    starts: np.ndarray  # mixed position where each block starts (length blocks + 1)

    @property
    def num_samples(self) -> int:
        return int(sum(self.counts))


class MixedEngine(Engine):
    """The read engine of a mix: the same interface as `Engine` (plan, rank_spans, lanes,
    segments, deliveries), over the mixed positions `0..N-1`. Each source keeps its own `Engine`
    (its manifest, filter, pruning and counts); this one only decides which source's sample
    each position holds and puts the rows in that order."""

    def __init__(self, resolved: Sequence[_Resolved], config: ReadConfig, with_source: bool = False):
        self.config = config  # the mix-wide settings (shuffle, seed, shuffle_buffer, on_error)
        self.sources = tuple(r.source for r in resolved)
        self.casts = tuple(r.casts for r in resolved)
        self.with_source = with_source
        self.engines = tuple(Engine(dataclasses.replace(
            config, path=r.path, manifest=r.manifest, expr=r.expr,
            seed=_source_seed(config.seed, i), storage_options=r.source.storage_options or config.storage_options))
            for i, r in enumerate(resolved))
        self._plan: MixPlan | None = None
        self._grids: dict = {}  # epoch (None without shuffle) -> _Grid, see `_grid`
        self._sample_keys = [f"source.{i}.samples" for i in range(len(resolved))]

    @property
    def format(self) -> str:
        """"parquet" when every source is Parquet (threads read it), else "webdataset"."""
        return "parquet" if all(e.format == "parquet" for e in self.engines) else "webdataset"

    @property
    def reads_in_c(self) -> bool:
        """True when every source's reading runs outside the GIL (`Engine.reads_in_c`)."""
        return all(e.reads_in_c for e in self.engines)

    @property
    def remote(self) -> bool:
        """True when a source is on remote storage (`Engine.remote`)."""
        return any(e.remote for e in self.engines)

    @property
    def thread_per_lane(self) -> bool:
        """True when a source's lanes would each get a reading thread (`Engine.thread_per_lane`)."""
        return any(e.thread_per_lane for e in self.engines)

    @property
    def lanes_start_in_turn(self) -> bool:
        """True when a source's thread lanes would start in turn (`Engine.lanes_start_in_turn`)."""
        return any(e.lanes_start_in_turn for e in self.engines)

    def identity(self) -> str:
        return "mix(" + ";".join(f"{s.path}|{e.identity()}|{s.weight}|{s.samples}|{s.repeat}"
                                 for s, e in zip(self.sources, self.engines)) + ")"

    @property
    def runs_capped(self) -> bool:
        """A source's default shuffle block is cut by its run cap (`Engine.runs_capped`)."""
        return any(e.runs_capped for e in self.engines)

    @property
    def data_digest(self) -> str:
        """Every source's `Engine.data_digest`, in the sources' order."""
        return "+".join(e.data_digest for e in self.engines)

    def plan(self) -> MixPlan:
        """Every source's plan (pruning, the filter's count pass), the shares and the block grid."""
        if self._plan is None:
            plans = tuple(e.plan() for e in self.engines)
            sizes = tuple(p.num_samples for p in plans)
            counts = tuple(shares(sizes, self.sources))
            n = sum(counts)
            blocks = max(1, -(-n // self.block_size()))
            per_block = block_counts(np.array(counts), blocks, np.arange(blocks + 1))
            self._plan = MixPlan(plans, sizes, counts, blocks, per_block.sum(axis=1))
        return self._plan

    def block_size(self) -> int:
        """Positions per block of the grid: about `_BLOCK_BYTES` of the widest source's stored rows
        (each block costs a few tensor ops per column, so wide blocks keep that per row small;
        images give small ones), at least `shuffle_buffer`, at most `_MAX_BLOCK`."""
        per_row = max(e.config.manifest.num_bytes / max(1, e.config.manifest.num_samples) for e in self.engines)
        return int(min(_MAX_BLOCK, max(self.config.shuffle_buffer or _MIN_BLOCK, _BLOCK_BYTES // max(1.0, per_row))))

    def planning_stats(self) -> dict:
        """Totals over the sources, and each source's `SOURCE_STATS` under `source.<i>.<name>`:
        every source has every one of them (0 until counted), whether or not it has a filter."""
        out: dict = {"pruning": {}, "counted": {}}
        for i, e in enumerate(self.engines):
            planning = e.planning_stats()
            for part, values in planning.items():
                for k, v in values.items():
                    out[part][k] = out[part].get(k, 0) + v
                    if k in SOURCE_STATS:
                        out[part][f"source.{i}.{k}"] = out[part].get(f"source.{i}.{k}", 0) + v
            for k in SOURCE_STATS:
                if k not in planning["pruning"]:
                    out["counted"].setdefault(f"source.{i}.{k}", 0)
        return out

    def offsets(self, epoch: int) -> list[int]:
        """Where each source's share starts in its own stream this epoch (see step 3)."""
        plan, out = self.plan(), []
        for i, (size, n) in enumerate(zip(plan.sizes, plan.counts)):
            # a full share needs no window (the source's own stream already changes each epoch)
            out.append(int(_rng(self.config.seed, epoch, i, 4).integers(size)) if n < size else 0)
        return out

    def locate(self, key: int):
        i = key >> _SOURCE_SHIFT
        return self.engines[i].locate(key & ((1 << _SOURCE_SHIFT) - 1))

    def stream(self, epoch: int):
        raise TypeError("a mix has no single EpochStream; each source has its own (MixedEngine.engines)")

    # ------------------------------------------------------------ read

    def _pieces(self, spans):
        """(block g, first, last) offsets inside the block covering the spans, in order; at most
        `_PIECE` positions each, so that the first rows go out before a wide block is read."""
        starts = self.plan().starts
        for lo, hi in spans:
            g = int(np.searchsorted(starts, lo, side="right")) - 1
            while lo < hi:
                end = min(hi, int(starts[g + 1]), lo + _PIECE)
                if end > lo:
                    yield g, lo - int(starts[g]), end - int(starts[g])
                lo = end
                if lo == int(starts[g + 1]):
                    g += 1

    def segments(self, epoch: int, spans, stats: Stats, row_ids: bool = False, lanes=None):
        """A lane's mixed positions as blocks, in order. Each source's part of the lane is one
        contiguous run of its share (share indices grow with the mixed position), read by that
        source's own `StreamReader` as one stream (runs of units, shuffle chunks, as for one
        dataset); each block piece takes the next rows of every source and puts them in order
        (`_mixed`). With `lanes` (this iteration's thread lanes, see `stream.StreamReader`), each
        source's readers share its shuffle blocks across the lanes as one dataset's do
        (`_source_lanes`)."""
        grid = self._grid(epoch)
        src_lanes, k = self._source_lanes(epoch, spans, lanes)
        src_stats = [Stats() for _ in self.engines]
        cursors = {i: _Cursor(self._reader(i, epoch, src_stats[i], row_ids, src_lanes[i]), src_lanes[i][k])
                   for i in range(len(self.engines)) if src_lanes[i][k]}
        try:
            for g, a, b in self._pieces(spans):
                labels = grid.block(g)[a:b]
                taken = _label_counts(labels, len(self.engines))
                present = np.flatnonzero(taken)
                parts = [self._conformed(int(i), cursors[int(i)].take(int(taken[i]))) for i in present]
                _drain(src_stats, stats)  # before the yield: the batches cut from it carry them
                if len(parts) == 1:  # one source: its slices (in order: copied out of Arrow's buffers)
                    yield from ([_gathered(b) for b in parts[0]] if self.config.shuffle else [_owned(parts[0])])
                else:
                    yield _mixed(parts, labels, present)
        finally:
            _drain(src_stats, stats)
            for c in cursors.values():
                c.close()

    def _reader(self, i: int, epoch: int, stats: Stats, row_ids: bool, lanes=None) -> StreamReader:
        engine = self.engines[i]
        # views: every source's rows are copied into mixed order (`_mixed`, `_owned`), so reading
        # converts them without a copy of its own
        return StreamReader(engine.stream(epoch), make_reader(engine.format, engine.context(stats, lanes=lanes)),
                            row_ids=row_ids, lanes=lanes, views=True)

    def _grid(self, epoch: int) -> "_Grid":
        """This epoch's grid, shared by the lanes (readers and batch accounting) of this process;
        one grid for every epoch without shuffle (the time order does not change)."""
        key, plan = (epoch if self.config.shuffle else None), self.plan()  # planning outside the lock
        with _SHARED_LOCK:
            grid = self._grids.get(key)
            if grid is None:
                grid = self._grids[key] = _Grid(plan, self.config.seed, epoch, self.config.shuffle)
                while len(self._grids) > 2:
                    self._grids.pop(next(iter(self._grids)))
        return grid

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_grids": {}}  # worker processes build their own

    def _share_of(self, grid: "_Grid", offsets: list[int], spans) -> list[list]:
        """Per source, the positions of its own stream that mixed `spans` hold, in order."""
        share: list[list] = [[] for _ in self.engines]
        for lo, hi in spans:
            first, last = grid.before(lo), grid.before(hi)
            for i in np.flatnonzero(last - first):
                share[i] += share_spans(offsets[i], self.plan().sizes[i], int(first[i]), int(last[i] - first[i]))
        return share

    def _source_lanes(self, epoch: int, spans, lanes) -> tuple[list[list], int]:
        """Per source, every lane's share (one list object per source for all the thread lanes of
        this iteration, so that its readers find each other as one dataset's lanes do), and which
        lane `spans` is. Without `lanes` (or from a worker process): this lane alone."""
        offsets = self.offsets(epoch)
        k = None if lanes is None else next((j for j, other in enumerate(lanes) if other is spans), None)
        if k is None:
            return [[share] for share in self._share_of(self._grid(epoch), offsets, spans)], 0
        key = (id(lanes), id(self), epoch)
        with _SHARED_LOCK:
            entry = _SHARED_LANES.get(key)
        if entry is None or entry[0] is not lanes:
            grid = self._grid(epoch)
            per_lane = [self._share_of(grid, offsets, lane) for lane in lanes]
            entry = (lanes, [[per_lane[j][i] for j in range(len(lanes))] for i in range(len(self.engines))])
            with _SHARED_LOCK:
                found = _SHARED_LANES.get(key)
                if found is not None and found[0] is lanes:
                    return found[1], k  # another lane got there first: share its lists
                _SHARED_LANES[key] = entry
                while len(_SHARED_LANES) > 8:
                    _SHARED_LANES.popitem(last=False)
        return entry[1], k

    def _conformed(self, i: int, parts: list) -> list:
        """Source i's rows (slices of its blocks) with the mix's column order and dtypes, and row
        keys that name the source; nothing is copied when the source matches the mix (a
        `Shuffled` piece then stays ungathered, for `_mixed` to gather column by column)."""
        columns, casts = self.config.columns, self.casts[i]
        out = []
        for block in parts:
            cols = block.rows.columns if isinstance(block, Shuffled) else block.columns
            keyed = ROW_KEYS in cols
            if casts or (keyed and i) or tuple(cols) != (columns + (ROW_KEYS,) if keyed else columns):
                block = _gathered(block)
                cols = block.columns
                cols = {name: cols[name].to(casts[name]) if name in casts else cols[name] for name in columns}
                if keyed:
                    cols[ROW_KEYS] = block.columns[ROW_KEYS] | (i << _SOURCE_SHIFT)
                block = block._replace(columns=cols)
            out.append(block)
        return out

    def decode_skips(self, keys: torch.Tensor, rows) -> dict:
        """Per source, the rows of a batch that decoding dropped: `source.<i>.samples_skipped` up
        and `source.<i>.samples` down by them, as the totals are (a row key names its source in
        bits 56+, `_conformed`)."""
        sources = (keys[torch.as_tensor(list(rows), dtype=torch.int64)] >> _SOURCE_SHIFT).numpy()
        out = {}
        for i, n in enumerate(np.bincount(sources, minlength=len(self.engines)).tolist()):
            if n:
                out[f"source.{i}.samples_skipped"], out[f"source.{i}.samples"] = n, -n
        return out

    def _accounting(self, epoch: int, spans):
        """Per batch of a lane: each source's delivered samples, and `__source__` when asked
        (`_Delivered`)."""
        return _Delivered(self._grid(epoch), spans, self._sample_keys, self.with_source)


def _mixed(parts: list[list], labels: np.ndarray, present: np.ndarray) -> Block:
    """One block whose positions labelled `present[i]` hold the rows of `parts[i]` (`Block`s, or
    `Shuffled` pieces of a source's shuffle block), in order.

    The parts are laid one after another and gathered into the labels' order (one index per
    position). Where every part holds the same tensor columns and no skipped sample (the common
    case), this runs column by column (`_placed`): each column is laid out and gathered while
    it is in the cache. Otherwise the parts are concatenated as blocks (`Block.concat`: every
    column type, skipped samples) and permuted. Measured on the bench's 200,000 tabular rows in
    order (16 pieces of 16,384 positions, 10 columns; CPU ms per epoch of the copy alone, least
    of 40, two runs): lay-out + gather 4.6–5.3 (4.9–5.2 as whole blocks), numpy's indexed
    assignment of each source's rows into place 6.6–6.9; an int32 index makes `index_select`
    slower (6.0–6.5). docs/benchmark-studies.md (mixing) lists the other ways tried."""
    flat = [b for blocks in parts for b in blocks]
    index = _gather_index(labels, present)
    if _tensors_alike(flat):
        return _placed(flat, torch.from_numpy(index))
    return Block.concat([_gathered(b) for b in flat]).permute(index)


def _gathered(block) -> Block:
    return block.gathered() if isinstance(block, Shuffled) else block


def _tensors_alike(flat: list) -> bool:
    """Whether every part holds the same columns, all tensors of one dtype and row shape, and
    no skipped position: what `_placed` handles."""
    blocks = [b.rows if isinstance(b, Shuffled) else b for b in flat]
    first = blocks[0].columns
    if any(not isinstance(v, torch.Tensor) or v.dim() == 0 for v in first.values()):
        return False
    return all(b.good is None and b.columns.keys() == first.keys() and all(
        isinstance(v, torch.Tensor) and v.dtype == first[k].dtype and v.shape[1:] == first[k].shape[1:]
        for k, v in b.columns.items()) for b in blocks)


def _placed(flat: list, index: torch.Tensor) -> Block:
    """`flat`'s positions gathered by `index` from their lay-out, one column at a time: the
    column's parts (a `Shuffled` piece gathered from its block, a `Block`'s slice as it is)
    concatenated, then gathered into order while they are in the cache. (Gathering a piece
    straight into its place in the lay-out, `index_select(out=)` into a slice, costs more than
    gathering it into a tensor of its own and concatenating: 20 against 15 + 3 µs for 8,192
    rows.)"""
    orders = [torch.from_numpy(b.order) if isinstance(b, Shuffled) else None for b in flat]
    first = (flat[0].rows if isinstance(flat[0], Shuffled) else flat[0]).columns
    columns = {}
    for name in first:
        laid = [b.columns[name] if order is None else batching.index_rows(b.rows.columns[name], order)
                for b, order in zip(flat, orders)]
        columns[name] = batching.index_rows(laid[0] if len(laid) == 1 else batching.cat(laid), index)
    return Block(columns, len(index))


def _owned(blocks: list[Block]) -> Block:
    """A source's slices as one block of its own memory: read with `views`, the slices may lie
    in Arrow's buffers, which are not handed to users (this path is rare: a piece of a mix
    rarely holds one source)."""
    if len(blocks) > 1:
        return Block.concat(blocks)
    block = blocks[0]
    return block._replace(columns={k: v.clone() if isinstance(v, torch.Tensor) else v
                                   for k, v in block.columns.items()})


def _label_counts(labels: np.ndarray, sources: int) -> np.ndarray:
    """How many of `labels` name each source: with two sources one `count_nonzero` (a tenth of a
    `bincount`'s cost), else a `bincount`."""
    if sources == 2:
        second = int(np.count_nonzero(labels))
        return np.array([len(labels) - second, second], dtype=np.int64)
    return np.bincount(labels, minlength=sources)


def _gather_index(labels: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Position p takes row `rank of p among the positions sorted stably by label` of the parts
    laid one after another. Two sources (the common mix): from one running count, half the
    cost of the general way, a stable radix argsort and its inverse."""
    n = len(labels)
    if len(present) == 2:  # int64: torch's index_select is slower with an int32 index
        second = labels == present[1]
        seen = np.cumsum(second, dtype=np.int64)  # positions of the second source up to p
        return np.where(second, seen + (n - int(seen[-1]) - 1), np.arange(n, dtype=np.int64) - seen)
    where = np.empty(n, dtype=np.int64)
    where[np.argsort(labels, kind="stable")] = np.arange(n, dtype=np.int64)
    return where


class _Grid:
    """One epoch's block grid: each block's labels (a few blocks cached: lanes walk the blocks in
    order, and the batch accounting reads the labels the reader used)."""

    def __init__(self, plan: MixPlan, seed: int, epoch: int, shuffle: bool):
        self.plan, self.seed, self.epoch, self.shuffle = plan, seed, epoch, shuffle
        self.counts = np.array(plan.counts, dtype=np.int64)
        self.starts = plan.starts.tolist()
        self._labels: dict[int, np.ndarray] = {}

    def block(self, g: int) -> np.ndarray:
        """Block g's labels (the source of each of its positions), read-only."""
        labels = self._labels.get(g)
        if labels is None:
            labels = block_labels(self.counts, self.plan.blocks, g, seed=self.seed, epoch=self.epoch,
                                  shuffle=self.shuffle)
            labels.flags.writeable = False
            with _SHARED_LOCK:
                self._labels[g] = labels
                while len(self._labels) > _CACHED_BLOCKS:
                    self._labels.pop(next(iter(self._labels)))
        return labels

    def labels(self, lo: int, hi: int) -> np.ndarray:
        """The labels of mixed positions [lo, hi) (a view when they lie in one block)."""
        g = bisect.bisect_right(self.starts, lo) - 1
        out = []
        while lo < hi:
            end = min(hi, self.starts[g + 1])
            out.append(self.block(g)[lo - self.starts[g]:end - self.starts[g]])
            lo, g = end, g + 1
        return out[0] if len(out) == 1 else np.concatenate(out) if out else np.zeros(0, np.uint8)

    def before(self, p: int) -> np.ndarray:
        """Per source, how many of its share indices lie before mixed position p."""
        if p >= self.starts[-1]:
            return self.counts.copy()
        g = bisect.bisect_right(self.starts, p) - 1
        return block_counts(self.counts, self.plan.blocks, g) + \
            np.bincount(self.block(g)[:p - self.starts[g]], minlength=len(self.counts))


class _Delivered:
    """One lane's per-batch accounting: a batch holds lane positions [start, start + n), which
    `spans` map to mixed positions, whose labels the grid gives; skipped positions (on_error=
    "skip") are left out. So no per-row source column travels with the rows.

    The counts are taken once per window (a span within one grid block: the labels of its
    positions), at every batch boundary in it (`_marks`: batches are `size` positions from
    the lane's start, `size` learnt from the first batch), so a batch inside a window costs a
    few list lookups; a batch across windows, or holding skipped positions, counts its labels
    (`bincount`)."""

    def __init__(self, grid: _Grid, spans, keys: list[str], with_source: bool):
        self.grid, self.keys, self.with_source = grid, keys, with_source
        self.spans = [(int(lo), int(hi)) for lo, hi in spans]
        self.bounds = np.concatenate([[0], np.cumsum([hi - lo for lo, hi in self.spans])]).astype(np.int64).tolist()
        self.window, self.lo, self.hi = np.zeros(0, np.uint8), 0, 0  # labels of lane positions [lo, hi)
        self.size: int | None = None  # positions per batch (the first batch's)
        self.marks: dict | None = None  # the window's batches (`_marks`), made after its first

    def __call__(self, block: Block, start: int, columns: dict, delta: dict) -> None:
        end = start + block.positions
        batch = None if self.marks is None else self.marks.get(start)
        if batch is not None and batch[0] == end and block.good is None and not self.with_source:
            for key, n in zip(self.keys, batch[1]):  # the common case: a few lookups
                delta[key] = delta.get(key, 0) + n
            return
        self.size = block.positions if self.size is None else self.size
        labels = self.window[start - self.lo:end - self.lo] if self.lo <= start and end <= self.hi \
            else self._labels(start, end)
        if block.good is not None:
            labels = self._count_skipped(labels, np.diff(block.good).astype(bool), delta)
        counts = batch[1] if batch is not None and batch[0] == end and block.good is None else \
            np.bincount(labels, minlength=len(self.keys)).tolist()
        for key, n in zip(self.keys, counts):
            delta[key] = delta.get(key, 0) + n
        if self.with_source:
            columns[SOURCE_COLUMN] = torch.from_numpy(labels.astype(np.int64))
        if self.marks is None and self.hi > self.lo:
            self.marks = self._marks()

    def _count_skipped(self, labels: np.ndarray, kept: np.ndarray, delta: dict) -> np.ndarray:
        """The labels of the kept positions; the skipped ones (a null where a tensor needs a value,
        under on_error="skip") counted per source in `source.<i>.samples_skipped`, beside the
        total the engine counts (without this every source's stayed 0)."""
        skipped = np.bincount(labels[~kept], minlength=len(self.keys)).tolist()
        for i, n in enumerate(skipped):
            if n:
                key = f"source.{i}.samples_skipped"
                delta[key] = delta.get(key, 0) + n
        return labels[kept]

    def _marks(self) -> dict[int, tuple[int, list[int]]]:
        """The window's batches: first lane position -> (end, per-source counts), batches being
        `size` positions from the lane's start (cut at the window's ends); one pass per source
        over the window's labels, once per window."""
        size, lo, hi, k = self.size, self.lo, self.hi, len(self.keys)
        cuts = np.arange(-(-lo // size) * size, hi, size, dtype=np.int64)
        cuts = np.concatenate([[lo], cuts[cuts > lo], [hi]]).astype(np.int64)
        at = cuts[:-1] - lo
        if k <= 4:  # a few sources: one pass per source
            counts = np.stack([np.add.reduceat(self.window == i, at, dtype=np.int64) for i in range(k)], axis=1)
        else:
            batch = np.repeat(np.arange(len(at), dtype=np.int64), np.diff(cuts))
            counts = np.bincount(batch * k + self.window, minlength=len(at) * k).reshape(len(at), k)
        bounds = cuts.tolist()
        return dict(zip(bounds[:-1], zip(bounds[1:], counts.tolist())))

    def _labels(self, lo: int, hi: int) -> np.ndarray:
        """Labels of lane positions [lo, hi); the window moves to the last span and block met."""
        k = bisect.bisect_right(self.bounds, lo) - 1
        out = []
        while lo < hi:
            base = self.spans[k][0] - self.bounds[k]
            g = bisect.bisect_right(self.grid.starts, base + lo) - 1
            first, last = self.grid.starts[g] - base, self.grid.starts[g + 1] - base
            self.lo, self.hi = max(first, self.bounds[k]), min(last, self.bounds[k + 1])
            self.window, self.marks = self.grid.block(g)[self.lo - first:self.hi - first], None
            end = min(hi, self.hi)
            out.append(self.window[lo - self.lo:end - self.lo])
            lo = end
            if lo == self.bounds[k + 1]:
                k += 1
        return out[0] if len(out) == 1 else np.concatenate(out)


class _Cursor:
    """One source's part of a lane, read as one stream; `take(n)` gives its next n positions (as
    slices of the reader's blocks, or of its shuffle blocks ungathered: `Shuffled`), which
    `_mixed` copies into mixed order."""

    def __init__(self, reader: StreamReader, spans: list):
        self.reader, self.it = reader, reader.segments(spans, gather=False)
        self.block: Block | Shuffled | None = None
        self.pos = 0

    def take(self, n: int) -> list:
        parts = []
        while n:
            if self.block is None or self.pos == self.block.positions:
                self.block, self.pos = next(self.it), 0
            k = min(n, self.block.positions - self.pos)
            parts.append(self.block.slice(self.pos, self.pos + k))
            self.pos, n = self.pos + k, n - k
        return parts

    def close(self) -> None:
        self.it.close()
        self.reader.close()


_SHARED_LANES: OrderedDict = OrderedDict()  # (id(lanes), id(engine), epoch) -> (lanes, per-source lanes)
_SHARED_LOCK = threading.Lock()


def _drain(src_stats: list[Stats], stats: Stats) -> None:
    """Move the sources' read counters into the lane's: the totals, and per source."""
    for i, s in enumerate(src_stats):
        delta = s.take()
        if delta:
            stats.merge(delta)
            stats.merge({f"source.{i}.{k}": v for k, v in delta.items() if k in SOURCE_STATS and v})
