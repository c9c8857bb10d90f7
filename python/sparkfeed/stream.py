"""The epoch stream: units (or, with shuffle, runs of units in blocks) in epoch order, positions
0..N-1.

`EpochStream` is a pure description (which unit holds which positions, which block).
`StreamReader.segments` turns a lane's spans of positions into `Block`s of tensors, in order: one
per unit piece, or with shuffle one per piece of a block, gathered into the block's order as it is
delivered. Each unit is read and converted to tensors once, column by column; `cut` then splits
the segments at the batch boundaries with one `split` call per column, so a batch costs a few
views, not an Arrow conversion, and the hand-over between a reading thread and the batching
happens once per segment, not once per batch. Unshuffled, a small cache holds the last units;
shuffled, one block (`blocks.py` shares blocks between thread lanes and reads them in parallel).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import torch
import torch.utils.data

from . import batch as batching
from .errors import ShardReadError
from .threads import cores, current_stop, join_at_exit, working_for
from .plan import Plan
from .read import Reader, UnitRows
from .read.base import is_list, needs_value
from . import shuffle as shuffling
from .blocks import PendingBlock, SharedBlocks, SharedUnits

__all__ = ["EpochStream", "StreamReader", "Block", "BlockColumns", "Shuffled", "cut", "ROW_KEYS"]


class _RowKeys:
    """The key under which a block keeps each row's `(unit << 32) | row` (with `row_ids`): not a
    string, so no user column name can collide with it; popped before a batch is delivered."""

    def __repr__(self) -> str:
        return "ROW_KEYS"


ROW_KEYS = _RowKeys()

_RUN_UNITS = 16  # at most this many units read as one run (`Reader.read_run`)
_SPLIT = 16  # batches cut out of a segment per split call (see `cut`)
_PIECE_BYTES = 16 << 20  # shuffle: positions gathered into one segment hold about this many
# stored bytes: the gathered pieces a lane queues stay a few times this, not a few shuffle blocks
_MIN_PIECE = 256  # ... but at least this many positions (a batch, for the usual sizes)
_MAX_PIECE = 1 << 16  # ... and at most this many (small rows; see `piece_positions`)
_PIECE = 4096  # ... and this many where the dataset's stored bytes are not known
_BLOCK_HELPERS = 3  # threads besides the lanes reading the runs of one block (fewer: `_spare_cores`)
_AHEAD_UNITS = 64  # units after the current run a reader is told about (`Reader.read_ahead`)


def _lane_units(stream: "EpochStream", spans, runs_ahead: bool = False,
                shared: "SharedBlocks | SharedUnits | None" = None, lane: int | None = None,
                in_pieces=None) -> np.ndarray:
    """Positions in the epoch of the units a lane reads for `spans`, ascending: what
    `Reader.read_ahead` is told comes next. With shuffle, where the reader fetches runs ahead
    (`Reader.runs_ahead`; else none), the units of the lane's blocks in the order they are read
    (a block's runs one after another). A block this lane shares with other thread lanes
    (`shared`) is told only by the lane that reaches it first (`first_lane`): its runs are
    taken by whichever lane gets there, from that lane's fetches (`_offered_units`), and hints
    from two lanes would fetch a run twice. Unshuffled, a unit the lanes share is told by none:
    the lane that asks first reads it in place, alone (`SharedUnits`); a fetch ahead by one lane
    would race that read and could fetch it a second time. Except a unit the reader reads in
    pieces of the lane's own rows (`in_pieces(k)`: an indexed tar, `Reader.windows`): each lane
    fetches only its own rows of it, so each tells its read-ahead."""
    if stream.shuffle and not runs_ahead:
        return np.zeros(0, dtype=np.int64)
    if stream.shuffle:
        return _block_units(stream, [b for b in _lane_blocks(stream, spans)
                                     if shared is None or not shared.shares(b) or shared.first_lane(b) == lane])
    found = []
    for lo, hi in spans:
        if hi > lo:
            first = int(np.searchsorted(stream.starts, lo, side="right")) - 1
            last = int(np.searchsorted(stream.starts, hi - 1, side="right")) - 1
            found.extend(k for k in range(first, last + 1) if stream.counts[k] > 0
                         and (shared is None or not shared.shares(k) or (in_pieces is not None and in_pieces(k))))
    return np.unique(np.array(found, dtype=np.int64))


def _block_units(stream: "EpochStream", blocks) -> np.ndarray:
    """Positions in the epoch of the units (holding samples) of `blocks`, in order."""
    units = [np.arange(stream.run_units[stream.block_runs[b]], stream.run_units[stream.block_runs[b + 1]])
             for b in blocks]
    units = np.concatenate(units) if units else np.zeros(0, dtype=np.int64)
    return units[stream.counts[units] > 0].astype(np.int64)


def _offered_units(stream: "EpochStream", shared: "SharedBlocks | SharedUnits | None",
                   lane: int | None) -> frozenset:
    """(path, row group) of the units of the shared blocks this lane tells its read-ahead
    (`_lane_units`: those it reaches first): a lane that reads one of their runs before this
    lane has reads from this lane's fetch (`SharedReads.offered`) instead of fetching it again."""
    if shared is None or not stream.shuffle:
        return frozenset()
    return frozenset((stream.units[int(k)].path, stream.units[int(k)].row_group)
                     for k in _block_units(stream, shared.first_of(lane)))


def _lane_blocks(stream: "EpochStream", spans) -> list[int]:
    """Shuffle: the blocks a lane delivers positions of, in the order it gets to them."""
    out: list[int] = []
    for lo, hi in spans:
        if hi > lo:
            out.extend(b for b in range(stream.block_of(lo), stream.block_of(hi - 1) + 1)
                       if not out or out[-1] != b)
    return out


def _lane_windows(stream: "EpochStream", spans) -> dict[int, tuple[int, int]]:
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


class Block(NamedTuple):
    """Consecutive stream positions as tensors: the values of the positions that hold a sample,
    and which positions hold none (samples skipped under on_error="skip", or rows with a null
    where a tensor needs a value). `good` is the running count of kept rows per position
    (length positions + 1), or None when every position is kept, the common case. A named
    tuple: immutable, and cheap to make once per batch."""

    columns: dict
    positions: int
    good: np.ndarray | None = None

    @staticmethod
    def from_rows(read: UnitRows, row_ids: bool = False, copy: bool = True, views: bool = False) -> "Block":
        """A reader's rows converted column-wise to tensors, once per unit; with `row_ids`, also
        `ROW_KEYS`, `(unit << 32) | row` per row, which name a sample for keyed augmentations
        and for an error that comes later (image decoding). `copy=False`: numbers stay in
        Arrow's buffers (`batch.table_to_batch`), for rows that are copied again downstream;
        `views=True` also binary columns in the chunks they were read in (rows only gathered)."""
        table = read.table if read.ok is None else read.table.filter(pa.array(read.ok))
        columns = batching.table_to_batch(table, copy, views)
        if row_ids:
            rows = read.row_numbers() if read.ok is None else read.row_numbers()[read.ok]
            units = np.repeat(np.array([u.index for u, _ in read.parts()], dtype=np.int64),
                              [n for _, n in read.parts()])
            units = units if read.ok is None else units[read.ok]
            columns[ROW_KEYS] = torch.from_numpy((units << 32) | rows.astype(np.int64))
        return Block(columns, read.num_rows, None if read.ok is None else _running(read.ok))

    @property
    def rows(self) -> int:
        return self.positions if self.good is None else int(self.good[-1])

    @property
    def skipped(self) -> int:
        return self.positions - self.rows

    def slice(self, start: int, stop: int) -> "Block":
        """Positions [start, stop), as views."""
        if start == 0 and stop == self.positions:
            return self
        if self.good is None:
            return Block(batching.slice_rows(self.columns, start, stop), stop - start)
        lo, hi = int(self.good[start]), int(self.good[stop])
        good = self.good[start:stop + 1] - lo
        return Block(batching.slice_rows(self.columns, lo, hi), stop - start,
                     None if hi - lo == stop - start else good)

    def split(self, sizes: list[int]) -> list["Block"]:
        """Consecutive pieces of `sizes` positions (summing to `positions`), as views."""
        if len(sizes) == 1:
            return [self]
        if self.good is not None:
            bounds = np.concatenate([[0], np.cumsum(sizes)])
            return [self.slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        parts = [batching.split_rows(value, sizes) for value in self.columns.values()]
        names = list(self.columns)
        return [Block(dict(zip(names, values)), n) for n, values in zip(sizes, zip(*parts))]

    def permute(self, order: np.ndarray) -> "Block":
        """The positions in `order` (a permutation of 0..positions-1)."""
        if self.good is None:
            return Block(batching.select_rows(self.columns, torch.from_numpy(order)), len(order))
        mask = np.diff(self.good).astype(bool)
        rows = self.good[:-1][order][mask[order]]
        return Block(batching.select_rows(self.columns, torch.from_numpy(rows)), len(order),
                     _running(mask[order]))

    @staticmethod
    def concat(blocks: list["Block"], views: bool = False, chunks: bool = False) -> "Block":
        """The positions of `blocks`, one after another; `views=True` leaves binary columns in
        their buffers (`batch.BinaryViews`), for a block whose rows are only gathered;
        `chunks=True` leaves them in their parts (`batch.BinaryChunks`), for a batch."""
        if len(blocks) == 1:
            return blocks[0]
        filled = [b for b in blocks if b.rows] or blocks[:1]
        columns = batching.concat_rows([b.columns for b in filled], views, chunks)
        positions = sum(b.positions for b in blocks)
        if all(b.good is None for b in blocks):
            return Block(columns, positions)
        mask = np.concatenate([np.ones(b.positions, bool) if b.good is None else np.diff(b.good).astype(bool)
                               for b in blocks])
        return Block(columns, positions, _running(mask))

    def first_skipped(self) -> int:
        """Index of the first position holding no sample (call only when `skipped`)."""
        return int(np.flatnonzero(np.diff(self.good) == 0)[0])


class BlockColumns:
    """A shuffle block's number columns, one buffer each, filled run by run by the threads that
    read the runs (`place`), so that building the block after its last run copies nothing: the
    join of 200,000 rows of 12 number columns (3.8 ms here) ran after the last read while
    every lane waited. Any run that cannot be placed (a position holding no sample, a column
    whose type differs from the first run's) makes `block` join the runs as before, the placed
    ones as views of the buffers."""

    def __init__(self, offsets: np.ndarray):
        self.offsets = offsets  # run i holds the block's positions offsets[i]..offsets[i+1]-1
        self.names: list | None = None  # every column, in the order the first placed run had
        self.buffers: dict[str, torch.Tensor] | None = None
        self.placed: set[int] = set()
        self._lock = threading.Lock()

    def place(self, i: int, pieces: list[Block]) -> list[Block]:
        """Copy run i's number columns into the buffers; its pieces without them (their Arrow
        memory can go now), or the pieces as they are where the run cannot be placed."""
        n = sum(p.positions for p in pieces)
        if n == 0 and self.offsets[i + 1] == self.offsets[i]:  # nothing to place
            with self._lock:
                self.placed.add(i)
            return pieces
        buffers = self._buffers(pieces[0].columns) if pieces else None
        if buffers is None or n != self.offsets[i + 1] - self.offsets[i] \
                or not all(self._fits(p, buffers) for p in pieces):
            return pieces
        at = int(self.offsets[i])
        for p in pieces:
            for name, buffer in buffers.items():
                batching.copy_rows(buffer, at, p.columns[name])
            at += p.positions
        with self._lock:
            self.placed.add(i)
        return [Block({k: v for k, v in p.columns.items() if k not in buffers}, p.positions) for p in pieces]

    def block(self, parts: list[list[Block]]) -> Block:
        """The block from every run's pieces (as `place` returned them)."""
        if self.buffers is None or len(self.placed) < len(parts):
            return Block.concat(self._restored(parts), views=True)
        rest = Block.concat([piece for run in parts for piece in run], views=True).columns
        columns = {k: self.buffers[k] if k in self.buffers else rest[k] for k in self.names}
        return Block(columns, int(self.offsets[-1]))

    def _buffers(self, columns: dict) -> dict | None:
        """The buffers, made from the first run placed (its number columns' dtypes and shapes)."""
        with self._lock:
            if self.buffers is None:
                total = int(self.offsets[-1])
                self.names = list(columns)
                self.buffers = {k: batching.empty_rows(total, v) for k, v in columns.items() if _placeable(v)}
            return self.buffers or None

    def _fits(self, piece: Block, buffers: dict) -> bool:
        if piece.good is not None or list(piece.columns) != self.names:
            return False
        return all(_placeable(v := piece.columns[k]) and v.dtype == b.dtype and v.shape[1:] == b.shape[1:]
                   for k, b in buffers.items())

    def _restored(self, parts: list[list[Block]]) -> list[Block]:
        """Every run's pieces with their placed columns back, as views of the buffers."""
        out = []
        for i, run in enumerate(parts):
            at = int(self.offsets[i])
            for p in run:
                if i in self.placed:
                    placed = {k: b[at:at + p.positions] for k, b in self.buffers.items()}
                    p = Block({k: placed[k] if k in placed else p.columns[k] for k in self.names}, p.positions)
                out.append(p)
                at += p.positions
        return out


def _placeable(value) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.device.type == "cpu"


def cut(segments, size: int):
    """Blocks of `size` consecutive positions (the last one shorter) out of a stream of blocks.

    A segment is split at the batch boundaries that fall inside it with one `split` per column
    (`Block.split`), so a batch costs a dict of views, not one slicing call per column. A batch
    that spans segments keeps its binary columns in their parts (`batch.BinaryChunks`): the
    decoder and `user_facing` read each sample where it lies, so joining them would copy every
    byte once more on the consuming thread (0.3 s per 10,000 images at 224 px on an H100, where
    image row groups hold 39 rows). A long
    segment (a shuffle block) is first sliced into stretches of `_SPLIT` batches: torch's
    `split_with_sizes` costs more per view the more views it makes (1.3 µs each for 10, 29 µs
    each for 782 here)."""
    pending, have = [], 0
    for seg in segments:
        head = min(size - have, seg.positions) if have else 0
        sizes = [head] if head else []
        rest = seg.positions - head
        sizes += [size] * (rest // size) + ([rest % size] if rest % size else [])
        for piece in _split(seg, sizes):
            pending.append(piece)
            have += piece.positions
            if have == size:
                yield Block.concat(pending, chunks=True)
                pending, have = [], 0
    if pending:
        yield Block.concat(pending, chunks=True)


def _split(seg: Block, sizes: list[int]):
    """`seg.split(sizes)`, at most `_SPLIT` pieces per split call."""
    if len(sizes) <= _SPLIT:
        yield from seg.split(sizes)
        return
    start = 0
    for i in range(0, len(sizes), _SPLIT):
        group = sizes[i:i + _SPLIT]
        stop = start + sum(group)
        yield from seg.slice(start, stop).split(group)
        start = stop


def _running(mask: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])


class StreamReader:
    """Reads positions of an `EpochStream` with a reader; caches a few units, or one block.

    `lanes` (every lane's spans: the list object the loader hands all lanes of one iteration,
    whose item `segments` gets) lets thread lanes of one process share the blocks a lane
    boundary falls in (`SharedBlocks`); without it each reader reads alone.

    `views`: convert what is read without copying numbers out of Arrow's buffers, because they
    are copied again before they are delivered (default: with shuffle, whose runs are joined
    into a block and gathered into its order; a mix passes True for its sources).
    """

    def __init__(self, stream: EpochStream, reader: Reader, cached_units: int = 2, row_ids: bool = False,
                 lanes=None, views: bool | None = None):
        self.stream, self.reader, self.row_ids = stream, reader, row_ids
        self.views = stream.shuffle if views is None else views
        self._units: OrderedDict[int, tuple[Block, int]] = OrderedDict()  # unit -> (run, offset)
        self._cached_units = cached_units
        self._current: tuple[int, Shuffled] | None = None  # shuffle: the block being delivered
        self._lanes, self._lane = lanes, None
        # what this lane shares with the other thread lanes of its iteration: shuffle blocks,
        # or unshuffled, the units a lane boundary falls inside (`_join_lanes`)
        self._shared: SharedBlocks | SharedUnits | None = None
        self._nulls: dict[int, tuple[UnitRows, int]] = {}  # on_error="raise": units with nulls
        self._ahead_units = np.zeros(0, dtype=np.int64)  # this lane's units in order (read-ahead)
        self._chunking = False  # read units in the reader's pieces (`_chunks`)
        self._chunk_plan: tuple[int, list | None] = (-1, None)  # (unit, its pieces)
        self._last_chunk: tuple = (None, None)  # ((unit, first row), (block, rows read))

    def _unit(self, k: int, last: int | None = None) -> tuple[Block, int]:
        """The k-th unit of the epoch as (its run's block, its first position there); reading it
        also reads the units after it, up to `last`, that the reader can read in the same run
        (`Reader.read_run`)."""
        if k not in self._units:
            self._read_run(k, k if last is None else last)
        self._units.move_to_end(k)
        return self._units[k]

    def _read_run(self, k: int, last: int) -> None:
        units = self.stream.units
        end = min(last, k + _RUN_UNITS - 1) + 1
        at = int(np.searchsorted(self._ahead_units, k))  # this run and what follows it in the lane
        self.reader.read_ahead([units[int(i)] for i in self._ahead_units[at:at + _AHEAD_UNITS]])
        shared = self._shared if isinstance(self._shared, SharedUnits) else None
        if shared is not None and shared.shares(k):  # read once for the lanes it is split between
            read, block = shared.get(k, self._lane, lambda: self._read_converted(k, k + 1))
        else:
            read, block = self._read_converted(k, end if shared is None else shared.run_end(k, end))
        offset, parts = 0, read.parts()
        for j, (_, n) in enumerate(parts):
            self._units[k + j] = (block, offset)
            if block.skipped and self.reader.ctx.on_error != "skip" and block.slice(offset, offset + n).skipped:
                self._nulls[k + j] = (read, offset)
            offset += n
        while len(self._units) > max(self._cached_units, len(parts) + 1):
            self._nulls.pop(self._units.popitem(last=False)[0], None)

    def _read_converted(self, k: int, end: int) -> tuple[UnitRows, Block]:
        """Units [k, end) of the epoch read as one run, and converted."""
        counts = self.stream.counts
        read = self.reader.read_run(self.stream.units[k:end], [int(n) for n in counts[k:end]])
        return read, self._converted(read)

    def _piece(self, k: int, a: int, b: int, last: int | None = None) -> Block:
        """Rows [a, b) of the k-th unit of the epoch; a null a tensor cannot hold is an error here."""
        run, offset = self._unit(k, last)
        block = run.slice(offset + a, offset + b)
        if block.skipped and k in self._nulls:
            raise self._null_error(k, a + block.first_skipped())
        return block

    def _in_pieces(self, k: int) -> bool:
        """Whether the reader reads unit k in pieces of the lane's rows (`Reader.chunks`)."""
        return self.reader.chunks(self.stream.units[k], int(self.stream.counts[k])) is not None

    def _chunks(self, k: int) -> list[tuple[int, int]] | None:
        """The pieces (rows [a, b)) the reader reads unit k in (`Reader.chunks`: an indexed tar
        shard, a piece at a time), when a unit's pieces are its rows (no filter); None: whole."""
        if not self._chunking:
            return None
        if self._chunk_plan[0] != k:
            self._chunk_plan = (k, self.reader.chunks(self.stream.units[k], int(self.stream.counts[k])))
        return self._chunk_plan[1]

    def _chunked(self, k: int, a: int, b: int, chunks: list[tuple[int, int]]):
        """Rows [a, b) of unit k out of the pieces that hold them, each piece read once
        (`Reader.read_window`); a piece the reader cannot read apart has the unit read whole."""
        for ca, cb in chunks:
            if cb <= a or ca >= b:
                continue
            got = self._chunk(k, ca, cb)
            if got is None:
                yield self._piece(k, max(a, ca), b)  # the whole unit, read once, for the rest
                return
            block, read = got
            part = block.slice(max(a, ca) - ca, min(b, cb) - ca)
            if part.skipped and self.reader.ctx.on_error != "skip":
                self._nulls[k] = (read, -ca)
                raise self._null_error(k, max(a, ca) + part.first_skipped())
            yield part

    def _chunk(self, k: int, ca: int, cb: int) -> tuple[Block, UnitRows] | None:
        """Rows [ca, cb) of unit k as read (the last piece kept: pieces are asked for in order)."""
        if self._last_chunk[0] != (k, ca):
            units = self.stream.units
            at = int(np.searchsorted(self._ahead_units, k))
            self.reader.read_ahead([units[int(i)] for i in self._ahead_units[at:at + _AHEAD_UNITS]])
            read = self.reader.read_window(units[k], int(self.stream.counts[k]), ca, cb)
            if read is None:
                return None
            self._last_chunk = ((k, ca), (self._converted(read), read))
        return self._last_chunk[1]

    def _pieces_joined(self, pieces: list, last: int | None = None):
        """Blocks for consecutive unit pieces; pieces of units read in one run come out as one
        slice of the run (one hand-over and one split per run downstream, not per unit). Runs
        may read ahead up to unit `last` (default: the last piece's)."""
        last, i = (pieces[-1][0] if last is None else last), 0
        while i < len(pieces):
            k, a, b = pieces[i]
            chunks = self._chunks(k) if k not in self._units else None
            if chunks:
                yield from self._chunked(k, a, b, chunks)
                i += 1
                continue
            run, offset = self._unit(k, last)
            j = i
            while j + 1 < len(pieces) and b == self.stream.counts[pieces[j][0]] and pieces[j + 1][1] == 0 \
                    and pieces[j + 1][0] in self._units and self._units[pieces[j + 1][0]][0] is run:
                j += 1
                b = pieces[j][2]
            if not any(pieces[x][0] in self._nulls for x in range(i, j + 1)):
                yield run.slice(offset + a, self._units[pieces[j][0]][1] + b)
            else:  # a null to raise: piece by piece, so the error names its unit
                yield from (self._piece(*piece, last) for piece in pieces[i:j + 1])
            i = j + 1

    def _converted(self, read: UnitRows) -> Block:
        """The rows as tensors; a value no tensor can hold (lists of different lengths, a null
        list) is an error naming the dataset, the shard and the row group it is in."""
        try:
            return Block.from_rows(read, self.row_ids, copy=not self.views, views=self.stream.shuffle)
        except ValueError as exc:
            unit, start = read.unit, 0
            for part, n in read.parts():  # a run of units: find the one that fails
                try:
                    batching.table_to_batch(read.table.slice(start, n), True, False)
                except ValueError:
                    unit = part
                    break
                start += n
            raise ShardReadError(f"{exc}; or leave the column out with `columns=`",
                                 dataset=self.reader.ctx.dataset, shard=unit.path,
                                 row_group=unit.row_group) from exc

    def _null_error(self, k: int, row: int) -> ShardReadError:
        """A null where a tensor needs a value: name the columns, the shard and the row group."""
        (read, offset), unit = self._nulls[k], self.stream.units[k]
        row += offset
        schema = read.table.schema
        columns = [n for n in read.table.column_names if needs_value(schema.field(n).type)
                   and read.table.column(n)[row].as_py() is None]
        lists = any(is_list(schema.field(n).type) for n in columns)
        advice = (" (a null list, or a null inside its list), which become tensors; filter null lists "
                  "out (filter=pc.field(name).is_valid()) or pass on_error='skip', which skips both"
                  if lists else ", which become tensors; filter such rows out (e.g. "
                  "filter=pc.field(name).is_valid()) or pass on_error='skip'")
        return ShardReadError(f"sample at row {int(read.row_numbers()[row])} has no value in "
                              f"{columns}{advice}", dataset=self.reader.ctx.dataset, shard=unit.path,
                              row_group=unit.row_group)

    def _read_run_part(self, r: int, into: "BlockColumns | None" = None, part: int = 0) -> list[Block]:
        """Run r of the stream (consecutive units of one shard), unpermuted, as the pieces it
        was read in: one `read_run` call where the format allows. With `into` (the block's
        `BlockColumns`, this run its `part`-th), its number columns are placed there."""
        units, starts = self.stream.run_units, self.stream.starts
        lo, hi = int(starts[units[r]]), int(starts[units[r + 1]])
        try:
            pieces = list(self._pieces_joined(list(self.stream.pieces(lo, hi)), int(units[r + 1]) - 1))
        finally:
            self._units.clear()  # a run's units are never needed again: spans only go forward
            self._nulls.clear()
        return pieces if into is None else into.place(part, pieces)

    def _finish_block(self, b: int, parts: list[list[Block]], order: np.ndarray | None = None,
                      into: "BlockColumns | None" = None) -> "Shuffled":
        """Block b from its runs' pieces: joined (binary columns left where they were read:
        `batch.BinaryViews`; number columns already placed `into` one buffer each as the runs
        were read), with its order (computed here unless given); counted in `shuffle_blocks`
        and `shuffle_block_rows` (the rows the block held). The rows are gathered into that
        order piece by piece as they are delivered (`segments`), so the first batch waits for
        one piece's gather, not the whole block's, and the gathering overlaps the consumer."""
        n = int(self.stream.blocks[b + 1] - self.stream.blocks[b])
        stats = self.reader.ctx.stats
        stats.add("shuffle_blocks")
        stats.add("shuffle_block_rows", n)
        rows = into.block(parts) if into is not None else Block.concat(
            [piece for run in parts for piece in run], views=True)
        if order is None:
            order = self._block_order(b)
        return Shuffled(rows, order)

    def _block_order(self, b: int) -> np.ndarray:
        n = int(self.stream.blocks[b + 1] - self.stream.blocks[b])
        return shuffling.block_permutation(self.stream.seed, self.stream.epoch, b, n)

    def _pending_block(self, b: int) -> PendingBlock:
        """Block b, to be read by one or more threads: its runs' positions in it, its order."""
        runs = self.stream.runs_of(b)
        starts = self.stream.starts[self.stream.run_units[runs.start:runs.stop + 1]]
        return PendingBlock(len(runs), BlockColumns(starts - starts[0]), lambda: self._block_order(b))

    def _read_block(self, b: int) -> "Shuffled":
        """Block b read by this lane, with helper threads taking some of its runs."""
        pending = self._pending_block(b)
        self._start_helpers(pending, b)
        return pending.join(self, b)

    def _start_helpers(self, pending: "PendingBlock", b: int) -> None:
        """Threads that read runs of block b beside the lane (each with a reader of its own):
        a block must be read whole before its first position is delivered, and the consumer
        waits meanwhile, so its runs are read in parallel (pyarrow releases the GIL). None where
        the reader fetches runs ahead (remote storage): the lane reads the runs from the bytes its
        read-ahead fetches, many requests at once, as for unshuffled reads; a helper's reads
        would be requests made one at a time, on top of the lane's."""
        if self.reader.runs_ahead:
            return
        helpers = min(len(self.stream.runs_of(b)) - 1, _BLOCK_HELPERS, self._spare_cores(b))
        for _ in range(max(0, helpers)):
            helper = StreamReader(self.stream, type(self.reader)(self.reader.ctx), row_ids=self.row_ids,
                                  views=self.views)
            helper._chunking = self._chunking  # it reads whole runs, in the lane's pieces
            thread = threading.Thread(target=_help, args=(pending, helper, b, current_stop()), daemon=True,
                                      name="sparkfeed-block-reader")
            thread.start()
            join_at_exit(thread)  # it stops after the run it reads once its lane is closed, or at exit

    def _spare_cores(self, b: int) -> int:
        """Cores block b's read may add threads for: the lanes of this iteration read at once, so
        each has an even share of the cores, and a block that k lanes deliver from (and read
        together) has k shares and k threads already. On 2 cores, 2 lanes sharing one block read
        it no faster with a third thread: a 200,000-row shuffled epoch ran at 0.915 of the
        unshuffled one with a helper, 0.940 without (medians of 150 paired epochs)."""
        info = torch.utils.data.get_worker_info()
        lanes = info.num_workers if info is not None else len(self._lanes) if self._lanes else 1
        sharing = self._shared.sharing(b) if isinstance(self._shared, SharedBlocks) else 1
        return sharing * cores() // max(1, lanes) - sharing

    def _block(self, b: int) -> "Shuffled":
        """Block b, from this reader's one-block cache, the lanes' shared blocks, or storage."""
        if self._current is not None and self._current[0] == b:
            return self._current[1]
        self._leave_block()
        block = self._shared.get(b, self) if self._shared is not None else self._read_block(b)
        self._current = (b, block)
        return block

    def _leave_block(self) -> None:
        if self._current is not None and self._shared is not None and self._lane is not None:
            self._shared.release(self._current[0], self._lane)
        self._current = None

    def segments(self, spans, gather: bool = True):
        """Blocks whose positions, one after another, are exactly those of `spans` in order: one
        per unit piece, or with shuffle one per piece of a block. `gather=False` (shuffle): each
        block's part of a span as one `Shuffled`, for a caller that gathers it itself."""
        self._join_lanes(spans)
        self._ahead_units = _lane_units(self.stream, spans, self.reader.runs_ahead, self._shared, self._lane,
                                        self._in_pieces if self.reader.ctx.expr is None else None)
        if isinstance(self._shared, SharedUnits):  # read in place (all but tars' pieces), so told to no
            # read-ahead: what opening their files needs goes ahead all the same (version checks, footers)
            self.reader.open_ahead(self.stream.units[k] for k in self._shared.held_by(self._lane))
        if self.reader.runs_ahead:
            self.reader.offers = _offered_units(self.stream, self._shared, self._lane)
        if self.reader.ctx.expr is None:  # a unit's pieces are its rows then
            self._chunking = True
            if not self.stream.shuffle:  # lanes split units (a shuffled block holds whole units)
                self.reader.windows = {self.stream.units[k]: w for k, w in _lane_windows(self.stream, spans).items()}
        piece = self.stream.piece if gather else None
        for lo, hi in spans:
            if not self.stream.shuffle:
                yield from self._pieces_joined(list(self.stream.pieces(lo, hi)))
                continue
            first = lo
            while lo < hi:  # pieces of at most `piece` positions, on a grid from the span's start
                b = self.stream.block_of(lo)
                start = int(self.stream.blocks[b])
                end = min(hi, int(self.stream.blocks[b + 1]))
                end = end if piece is None else min(end, first + ((lo - first) // piece + 1) * piece)
                part = self._block(b).slice(lo - start, end - start)
                yield part.gathered() if gather else part
                lo = end

    def _join_lanes(self, spans) -> None:
        """Thread lanes (not torch's worker processes, which share no memory): find this lane
        among `lanes` and the blocks (unshuffled: units) it shares with the others."""
        if self._lanes is None or self._shared is not None or torch.utils.data.get_worker_info() is not None:
            return
        lane = next((k for k, other in enumerate(self._lanes) if other is spans), None)
        if lane is not None:
            kind = SharedBlocks if self.stream.shuffle else SharedUnits
            self._lane, self._shared = lane, kind.for_lanes(self.stream, self._lanes)

    def close(self) -> None:
        self._leave_block()
        if self._shared is not None and self._lane is not None:
            self._shared.leave(self._lane)
            self._shared = None
        self._units.clear()
        self._nulls.clear()
        self.reader.close()


class Shuffled(NamedTuple):
    """Positions of a shuffle block, not yet gathered: position i holds row `order[i]` of
    `rows` (the block's runs one after another, as read). A whole block (`StreamReader._block`)
    or a piece of one (`segments(gather=False)`), which a mix gathers straight into its mixed
    order (`mixrows._mixed`): one copy where gathering here and again there would make two."""

    rows: Block
    order: np.ndarray

    @property
    def positions(self) -> int:
        return len(self.order)

    def slice(self, start: int, stop: int) -> "Shuffled":
        """Positions [start, stop), still not gathered."""
        return Shuffled(self.rows, self.order[start:stop])

    def gathered(self) -> Block:
        """The positions as a block of their own (one gather)."""
        return self.rows.permute(self.order)


def _help(pending: PendingBlock, helper: "StreamReader", b: int, stop) -> None:
    """A block's helper thread: reads runs of block b for the lane that started it, and stops
    taking runs once that lane's reader is closed (`stop`, `threads.stopping`)."""
    working_for(stop)
    pending.help(helper, b)
