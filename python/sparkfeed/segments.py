"""Consecutive stream positions as tensors (`Block`), a shuffle block's rows before they are
gathered into its order (`Shuffled`, `BlockColumns`), and `cut`: segments into batches.

Each unit is read and converted to tensors once, column by column; `cut` then splits the
segments at the batch boundaries with one `split` call per column, so a batch costs a few views,
not an Arrow conversion, and the hand-over between a reading thread and the batching happens
once per segment, not once per batch.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import torch

from . import batch as batching
from .read import UnitRows
from .tensorcopies import copy_rows, empty_rows

__all__ = ["Block", "BlockColumns", "Shuffled", "cut", "ROW_KEYS"]


class _RowKeys:
    """The key under which a block keeps each row's `(unit << 32) | row` (with `row_ids`): not a
    string, so no user column name can collide with it; popped before a batch is delivered."""

    def __repr__(self) -> str:
        return "ROW_KEYS"


ROW_KEYS = _RowKeys()
_SPLIT = 16  # batches cut out of a segment per split call (see `cut`)


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
        their buffers (`binarycols.BinaryViews`), for a block whose rows are only gathered;
        `chunks=True` leaves them in their parts (`binarycols.BinaryChunks`), for a batch."""
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
                copy_rows(buffer, at, p.columns[name])
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
                self.buffers = {k: empty_rows(total, v) for k, v in columns.items() if _placeable(v)}
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
    that spans segments keeps its binary columns in their parts (`binarycols.BinaryChunks`): the
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
