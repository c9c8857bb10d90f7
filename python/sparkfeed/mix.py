"""Mixing several datasets into one epoch stream: the plan and `MixedEngine`, which reads it.

The mix's other parts: `mixsource.py` (`Source`, the checks when built), `mixshares.py` (steps 1-3
below), `mixgrid.py` (the grid's labels, per-batch counts), `mixrows.py` (rows into mixed order),
`mixstate.py` (the shares a saved state records, and a state whose shares another version computed).

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
blocks ungathered (`segments.Shuffled`); a small source (`_TILE_BYTES`) that a lane's share
repeats is read once there and its repeats gathered from it (`_Tiled`). The rows taken from
each source are laid one after another and gathered into mixed order, column by column
(`_mixed`; a piece that holds one source is copied once, `_owned`): a few tensor ops per piece,
never per-sample Python (lists of strings aside, as everywhere). No per-row source column travels with the rows: a batch's per-source
counts and `__source__` come from its mixed positions and the grid's labels (`_Delivered`: the
counts at every batch bound of a window taken at once), the labels being computed once per block
and process (`_Grid`).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .engine import Engine, ReadConfig
from .mixgrid import _SHARED_LOCK, _Delivered, _Grid
from .mixrows import Repeats, _Cursor, _gathered, _label_counts, _mixed, _owned, _Tiled
from .mixshares import _rng, _source_seed, block_counts, block_labels, share_spans, shares
from .mixsource import _SOURCE_SHIFT, SOURCE_COLUMN, Source, _Resolved, resolve
from .read import make_reader
from .stats import Stats
from .segments import ROW_KEYS, Shuffled
from .stream import StreamReader

__all__ = ["Source", "SOURCE_COLUMN", "MixPlan", "MixedEngine", "shares", "block_counts",
           "block_labels", "share_spans", "resolve"]

SOURCE_STATS = ("samples", "bytes_read", "rows_filtered", "samples_skipped", "shards_planned",
                "shards_pruned", "row_groups_planned", "row_groups_pruned", "shards_emptied",
                "row_groups_emptied")
_BLOCK_BYTES = 16 << 20  # a block holds about this many stored bytes of rows ...
_MAX_BLOCK = 65_536      # ... and at most this many positions (at least shuffle_buffer)
_MIN_BLOCK = 2048         # without a shuffle_buffer
_PIECE = 65_536           # positions put in order at once (a segment), at most: a whole block of
                          # the grid at most (so bounded like a block); fewer per-piece costs than
                          # 32,768 or 16,384 (docs/benchmark-studies.md, mixing)
_MAX_GRID = 1 << 24       # blocks a grid may have (its starts and counts: 8 bytes x sources each)
_TILE_BYTES = 16 << 20    # a source of at most this many stored bytes, repeated in a lane, is
                          # read once there and tiled (`_tiles`)


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
            blocks = _grid_blocks(self.sources, counts, self.block_size())
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
        src_lanes, own = self._source_lanes(epoch, spans, lanes)
        src_stats = [Stats() for _ in self.engines]
        cursors = {i: self._cursor(i, epoch, src_stats[i], row_ids, src_lanes[i], part)
                   for i, part in enumerate(own) if part}
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

    def _cursor(self, i: int, epoch: int, stats: Stats, row_ids: bool, lanes: list, part):
        """Source i's part of this lane: spans read as one stream (`_Cursor`, with `lanes` every
        lane's spans of the source), or where it repeats a small source (`Repeats`), the source
        read once and tiled (`_Tiled`)."""
        if isinstance(part, Repeats):
            return _Tiled(self._reader(i, epoch, stats, row_ids), part)
        return _Cursor(self._reader(i, epoch, stats, row_ids, lanes), part)

    def _tiles(self, i: int, count: int) -> bool:
        """Whether `count` share indices of source i hold its every sample at least twice over
        and its samples (after its filter) hold about `_TILE_BYTES` stored at most: holding them
        costs little, and reading them once costs less than reading each repeat (what the other
        lanes share with this one they read themselves)."""
        size, m = self.plan().sizes[i], self.engines[i].config.manifest
        return 0 < 2 * size <= count and size * m.num_bytes <= _TILE_BYTES * max(1, m.num_samples)

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

    def _share_of(self, grid: "_Grid", offsets: list[int], spans) -> list:
        """Per source, the positions of its own stream that mixed `spans` hold, in order: spans,
        or where they repeat a small source (`_tiles`), its share ranges (`Repeats`: never a span
        per repeat, which a 10-row source repeated to 2**36 samples made billions of)."""
        ranges: list[list] = [[] for _ in self.engines]
        for lo, hi in spans:
            first, last = grid.before(lo), grid.before(hi)
            for i in np.flatnonzero(last - first):
                ranges[i].append((int(first[i]), int(last[i] - first[i])))
        sizes = self.plan().sizes
        return [Repeats(offsets[i], sizes[i], r) if self._tiles(i, sum(n for _, n in r)) else
                [span for start, n in r for span in share_spans(offsets[i], sizes[i], start, n)]
                for i, r in enumerate(ranges)]

    def _source_lanes(self, epoch: int, spans, lanes) -> tuple[list[list], list]:
        """Per source, every lane's spans (one list object per source for all the thread lanes of
        this iteration, so that its readers find each other as one dataset's lanes do; a tiled
        part, read apart, is none there), and this lane's part of each source (`_share_of`).
        Without `lanes` (or from a worker process): this lane alone."""
        offsets = self.offsets(epoch)
        k = None if lanes is None else next((j for j, other in enumerate(lanes) if other is spans), None)
        if k is None:
            own = self._share_of(self._grid(epoch), offsets, spans)
            return [[_spans(part)] for part in own], own
        key = (id(lanes), id(self), epoch)
        with _SHARED_LOCK:
            entry = _SHARED_LANES.get(key)
        if entry is None or entry[0] is not lanes:
            grid = self._grid(epoch)
            per_lane = [self._share_of(grid, offsets, lane) for lane in lanes]
            entry = (lanes, [[_spans(per_lane[j][i]) for j in range(len(lanes))] for i in range(len(self.engines))],
                     per_lane)
            with _SHARED_LOCK:
                found = _SHARED_LANES.get(key)
                if found is not None and found[0] is lanes:
                    return found[1], found[2][k]  # another lane got there first: share its lists
                _SHARED_LANES[key] = entry
                while len(_SHARED_LANES) > 8:
                    _SHARED_LANES.popitem(last=False)
        return entry[1], entry[2][k]

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


_SHARED_LANES: OrderedDict = OrderedDict()  # (id(lanes), id(engine), epoch) -> (lanes, per-source lanes)


def _grid_blocks(sources, counts: tuple[int, ...], block: int) -> int:
    """The grid's block count for these shares; a ValueError naming the largest share where the
    epoch is longer than a grid can order (a weighted source with `repeat` beside a tiny weight
    that bounds the epoch: 1e-30 made 10**31 samples, numpy's 'Maximum allowed size exceeded';
    samples=2**63, a 1 PiB allocation)."""
    n = sum(counts)
    blocks = max(1, -(-n // block))
    if blocks > _MAX_GRID:
        i = max(range(len(counts)), key=counts.__getitem__)
        raise ValueError(f"the mix's shares {list(counts)} make an epoch of {n:,} samples, more than a mix orders "
                         f"({_MAX_GRID * block:,}: {_MAX_GRID:,} blocks of {block:,}); source {i} "
                         f"({sources[i].path!r}) has the largest: give it samples=, or weights that do not "
                         "leave a repeating source a share that large")
    return blocks


def _spans(part) -> list:
    """A lane's part of a source as the spans its readers share with the other lanes' (a tiled
    part, `Repeats`, shares none)."""
    return [] if isinstance(part, Repeats) else part


def _drain(src_stats: list[Stats], stats: Stats) -> None:
    """Move the sources' read counters into the lane's: the totals, and per source."""
    for i, s in enumerate(src_stats):
        delta = s.take()
        if delta:
            stats.merge(delta)
            stats.merge({f"source.{i}.{k}": v for k, v in delta.items() if k in SOURCE_STATS and v})
