"""Rows of several sources put into mixed order (`_mixed`), taken through each source's `_Cursor`."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from . import batch as batching
from .segments import Block, Shuffled
from .stream import StreamReader
from .tensorcopies import cat


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
        columns[name] = batching.index_rows(laid[0] if len(laid) == 1 else cat(laid), index)
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


class Repeats(NamedTuple):
    """A lane's part of a small source that it repeats (`MixedEngine._tiles`): share index j is
    position `(offset + j) mod size` of the source's stream (`mixshares.share_spans`)."""

    offset: int
    size: int
    ranges: list  # (first share index, count), in the lane's order


class _Tiled:
    """A small source's part of a lane that repeats it (`Repeats`): the source's whole epoch
    stream read once, and `take(n)` gathers the part's next n positions from it. The same rows in
    the same order as a `_Cursor` over the part's spans, which reads every repeat (a span per
    repeat, each planned and read on its own: a 10-row source repeated to 100,000 samples was
    10,000 spans)."""

    def __init__(self, reader: StreamReader, part: Repeats):
        self.reader, self.part = reader, part
        self.first = np.array([first for first, _ in part.ranges], dtype=np.int64)
        self.bounds = np.concatenate([[0], np.cumsum([n for _, n in part.ranges])]).astype(np.int64)
        self.done = 0
        self.whole: Block | None = None

    def take(self, n: int) -> list:
        if self.whole is None:  # read when first needed, as a `_Cursor` reads
            it = self.reader.segments([(0, self.part.size)], gather=False)
            try:
                self.whole = Block.concat([_gathered(b) for b in it])
            finally:
                it.close()
        t = np.arange(self.done, self.done + n, dtype=np.int64)
        k = np.searchsorted(self.bounds, t, side="right") - 1
        self.done += n
        return [self.whole.permute((self.part.offset + self.first[k] + t - self.bounds[k]) % self.part.size)]

    def close(self) -> None:
        self.reader.close()
