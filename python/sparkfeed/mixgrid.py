"""A mixed epoch's block grid (labels per block, cached) and each batch's per-source counts from it."""

from __future__ import annotations

import bisect
import threading
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import forks
from .mixshares import block_counts, block_labels
from .mixsource import SOURCE_COLUMN
from .segments import Block

if TYPE_CHECKING:
    from .mix import MixPlan

_CACHED_BLOCKS = 16       # block labels a grid keeps (uint8, at most 64 KiB each)
_SHARED_LOCK = threading.Lock()
forks.free_at_fork(_SHARED_LOCK)  # (mix lanes in worker processes need it)


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
