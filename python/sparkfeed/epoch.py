"""The epoch's layout: which unit holds each stream position 0..N-1, in epoch order (or, with
shuffle, runs of units in blocks), and which units and blocks a lane's spans of positions reach.

`EpochStream` is a pure description; `stream.StreamReader` reads what it describes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from . import shuffle as shuffling
from .plan import Plan

if TYPE_CHECKING:  # annotations only
    from .blocks import SharedBlocks, SharedUnits

__all__ = ["EpochStream", "piece_positions"]

_PIECE_BYTES = 16 << 20  # shuffle: positions gathered into one segment hold about this many
# stored bytes: the gathered pieces a lane queues stay a few times this, not a few shuffle blocks
_MIN_PIECE = 256  # ... but at least this many positions (a batch, for the usual sizes)
_MAX_PIECE = 1 << 16  # ... and at most this many (small rows; see `piece_positions`)
_PIECE = 4096  # ... and this many where the dataset's stored bytes are not known


def lane_units(stream: "EpochStream", spans, runs_ahead: bool = False,
                shared: "SharedBlocks | SharedUnits | None" = None, lane: int | None = None,
                in_pieces=None) -> np.ndarray:
    """Positions in the epoch of the units a lane reads for `spans`, ascending: what
    `Reader.read_ahead` is told comes next. With shuffle, where the reader fetches runs ahead
    (`Reader.runs_ahead`; else none), the units of the lane's blocks in the order they are read
    (a block's runs one after another). A block this lane shares with other thread lanes
    (`shared`) is told only by the lane that reaches it first (`first_lane`): its runs are
    taken by whichever lane gets there, from that lane's fetches (`offered_units`), and hints
    from two lanes would fetch a run twice. Unshuffled, a unit the lanes share is told by none:
    the lane that asks first reads it in place, alone (`SharedUnits`); a fetch ahead by one lane
    would race that read and could fetch it a second time. Except a unit the reader reads in
    pieces of the lane's own rows (`in_pieces(k)`: an indexed tar, `Reader.windows`): each lane
    fetches only its own rows of it, so each tells its read-ahead."""
    if stream.shuffle and not runs_ahead:
        return np.zeros(0, dtype=np.int64)
    if stream.shuffle:
        return block_units(stream, [b for b in lane_blocks(stream, spans)
                                     if shared is None or not shared.shares(b) or shared.first_lane(b) == lane])
    found = []
    for lo, hi in spans:
        if hi > lo:
            first = int(np.searchsorted(stream.starts, lo, side="right")) - 1
            last = int(np.searchsorted(stream.starts, hi - 1, side="right")) - 1
            found.extend(k for k in range(first, last + 1) if stream.counts[k] > 0
                         and (shared is None or not shared.shares(k) or (in_pieces is not None and in_pieces(k))))
    return np.unique(np.array(found, dtype=np.int64))


def block_units(stream: "EpochStream", blocks) -> np.ndarray:
    """Positions in the epoch of the units (holding samples) of `blocks`, in order."""
    units = [np.arange(stream.run_units[stream.block_runs[b]], stream.run_units[stream.block_runs[b + 1]])
             for b in blocks]
    units = np.concatenate(units) if units else np.zeros(0, dtype=np.int64)
    return units[stream.counts[units] > 0].astype(np.int64)


def offered_units(stream: "EpochStream", shared: "SharedBlocks | SharedUnits | None",
                   lane: int | None) -> frozenset:
    """(path, row group) of the units of the shared blocks this lane tells its read-ahead
    (`lane_units`: those it reaches first): a lane that reads one of their runs before this
    lane has reads from this lane's fetch (`SharedReads.offered`) instead of fetching it again."""
    if shared is None or not stream.shuffle:
        return frozenset()
    return frozenset((stream.units[int(k)].path, stream.units[int(k)].row_group)
                     for k in block_units(stream, shared.first_of(lane)))


def lane_blocks(stream: "EpochStream", spans) -> list[int]:
    """Shuffle: the blocks a lane delivers positions of, in the order it gets to them."""
    out: list[int] = []
    for lo, hi in spans:
        if hi > lo:
            out.extend(b for b in range(stream.block_of(lo), stream.block_of(hi - 1) + 1)
                       if not out or out[-1] != b)
    return out


def lane_windows(stream: "EpochStream", spans) -> dict[int, tuple[int, int]]:
    """{unit position: (first row, stop row)} for the units a lane reads only part of: those a
    span starts or ends inside (a lane boundary), unless another span holds them whole. Told
    to the reader (`Reader.windows`), whose pieces (`Reader.chunks`) then cover that part alone."""
    windows, whole = {}, set()
    for lo, hi in spans:
        if hi <= lo:
            continue
        first = int(np.searchsorted(stream.starts, lo, side="right")) - 1
        last = int(np.searchsorted(stream.starts, hi - 1, side="right")) - 1
        for k, a, b in ((first, lo - int(stream.starts[first]), int(stream.counts[first])),
                        (last, 0, hi - int(stream.starts[last]))):
            if first == last:
                a, b = lo - int(stream.starts[k]), hi - int(stream.starts[k])
            was = windows.get(k, (a, b))
            windows[k] = (min(a, was[0]), max(b, was[1]))
        whole.update(range(first + 1, last))
    return {k: w for k, w in windows.items()
            if k not in whole and (w[0] > 0 or w[1] < int(stream.counts[k]))}


def piece_positions(sample_bytes: float) -> int:
    """Positions of a shuffle block gathered at once (`StreamReader.segments`): the power of two
    (a multiple of power-of-two batch sizes) that keeps a piece near `_PIECE_BYTES` of stored
    bytes, in [`_MIN_PIECE`, `_MAX_PIECE`]; `_PIECE` when the size is unknown. Large samples:
    4,096 positions of 110 KB images would make every piece a whole default block (256 MB),
    and a lane queues several. Small rows: each piece costs a gather call per column, a hand-over
    and a split, and a gather run piece after piece between other work keeps less of the block
    in cache; 65,536 positions of tabular rows against 4,096 took a 2,000,000-row shuffled
    epoch from 0.70-0.74 s to 0.46-0.51 s here (docs/benchmark-studies.md)."""
    if not sample_bytes or sample_bytes <= 0:
        return _PIECE
    fit = 1 << int(math.floor(math.log2(max(1.0, _PIECE_BYTES / sample_bytes))))
    return min(_MAX_PIECE, max(_MIN_PIECE, fit))


class EpochStream:
    """Which unit holds each stream position in this epoch, and (with shuffle) which block.

    Unshuffled, the units come in plan order and positions are their rows in order. Shuffled,
    runs of units come in the order `shuffle.ALGORITHMS[shuffle_algo]` draws, cut into blocks;
    positions `blocks[b]..blocks[b+1]-1` are the rows of block b in the order
    `shuffle.block_permutation(seed, epoch, b, ...)`. `shuffle_buffer` is the block size in
    samples (None: `shuffle.default_block` of `sample_bytes`, the stored bytes per sample, in
    blocks of at most `shuffle.MAX_BLOCK_RUNS` runs).
    """

    def __init__(self, plan: Plan, *, seed: int, epoch: int, shuffle: bool,
                 shuffle_buffer: int | None = None, shuffle_algo: str = shuffling.DEFAULT_ALGORITHM,
                 sample_bytes: float = 0.0):
        self.seed, self.epoch, self.shuffle = seed, epoch, shuffle
        self.block = int(shuffle_buffer) if shuffle_buffer else shuffling.default_block(sample_bytes)
        self.max_runs = None if shuffle_buffer else shuffling.MAX_BLOCK_RUNS  # the default block's
        self.piece = piece_positions(sample_bytes)  # shuffle: positions gathered at once
        counts = np.array(plan.counts, dtype=np.int64)
        order = np.arange(len(plan.units), dtype=np.int64)
        run_units = np.array([0, len(order)], dtype=np.int64)
        cuts = np.array([0, 1], dtype=np.int64)
        self.capped = False
        if shuffle and len(order):
            bounds = shuffling.runs(np.fromiter((u.shard for u in plan.units), np.int64, len(order)),
                                    counts, self.block)
            sizes = np.add.reduceat(counts, bounds[:-1]) if len(bounds) > 1 else np.zeros(0, np.int64)
            run_order, cuts = shuffling.block_layout(shuffle_algo, sizes, seed, epoch, self.block,
                                                     self.max_runs)
            # the default block's run cap cut more blocks than its size alone: the order differs
            # from a sparkfeed without the cap (a saved state's fingerprint says so)
            self.capped = len(sizes) > (self.max_runs or len(sizes)) and not np.array_equal(
                cuts, shuffling.block_layout(shuffle_algo, sizes, seed, epoch, self.block)[1])
            order = shuffling.runs_in_order(bounds, run_order)
            run_units = np.concatenate([[0], np.cumsum(np.diff(bounds)[run_order])]).astype(np.int64)
        self.units = [plan.units[i] for i in order]
        self.counts = counts[order]
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.run_units = run_units                     # unit bounds (stream order) of the runs
        self.block_runs = cuts                         # run bounds of the blocks
        self.blocks = self.starts[run_units[cuts]]     # position bounds of the blocks

    @property
    def num_samples(self) -> int:
        return int(self.starts[-1])

    @property
    def max_block(self) -> int:
        """The most samples one block holds: what a lane holds in memory at once (shuffle)."""
        return int(np.diff(self.blocks).max(initial=0)) if self.shuffle else 0

    def samples_read(self, lanes: Sequence[Sequence[tuple[int, int]]], shared: bool,
                     kept: Sequence[tuple[int, int]] | None = None) -> int:
        """Samples of the shuffle blocks that `lanes` (spans of positions) read in this epoch: a
        block that any span reaches is read whole, by each lane, or once for all lanes where
        they share blocks (thread lanes of one process). With `kept` (the spans every rank
        delivers), a block counts only its kept positions: the tail `drop_last` leaves to nobody
        is read with its block, but by no other reader, so it is not read twice."""
        reached = [{b for lo, hi in spans if hi > lo
                    for b in range(self.block_of(lo), self.block_of(hi - 1) + 1)} for spans in lanes]
        groups = [set().union(*reached)] if shared else reached
        sizes = np.diff(self.blocks) if kept is None else np.diff(_positions_below(self.blocks, kept))
        return int(sum(int(sizes[sorted(g)].sum()) for g in groups if g))

    def runs_of(self, block: int) -> range:
        """The runs (stream order) that block `block` holds."""
        return range(int(self.block_runs[block]), int(self.block_runs[block + 1]))

    def block_of(self, position: int) -> int:
        """The block holding stream position `position`."""
        return int(np.searchsorted(self.blocks, position, side="right")) - 1

    def pieces(self, lo: int, hi: int):
        """(unit position in the epoch, first row, last row) covering positions [lo, hi)."""
        k = int(np.searchsorted(self.starts, lo, side="right")) - 1
        while lo < hi:
            end = min(hi, int(self.starts[k + 1]))
            if end > lo:  # units left with no sample by the filter hold no position
                yield k, lo - int(self.starts[k]), end - int(self.starts[k])
            lo, k = end, k + 1


def _positions_below(edges: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """For each position in `edges`, how many positions below it the spans hold."""
    lo = np.array([a for a, _ in spans], dtype=np.int64)
    width = np.array([b - a for a, b in spans], dtype=np.int64)
    if not len(lo):
        return np.zeros(len(edges), dtype=np.int64)
    return np.clip(np.asarray(edges, dtype=np.int64)[:, None] - lo[None, :], 0, width[None, :]).sum(axis=1)
