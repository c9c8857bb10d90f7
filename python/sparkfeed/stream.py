"""The epoch stream: units in epoch order, positions 0..N-1, each grid chunk permuted.

`EpochStream` is a pure description (which unit holds which positions); `StreamReader` turns a
range of positions into an Arrow table, reading each unit once per pass thanks to a small cache
(the last units and the last permuted chunk), so memory stays bounded by the shuffle buffer.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pyarrow as pa

from .plan import Plan
from .read import Reader
from .shuffle import chunk_permutation, unit_order

__all__ = ["EpochStream", "StreamReader"]


class EpochStream:
    """Which unit holds each stream position in this epoch."""

    def __init__(self, plan: Plan, *, seed: int, epoch: int, shuffle: bool, shuffle_buffer: int):
        order = unit_order(len(plan.units), seed, epoch, shuffle)
        self.units = [plan.units[i] for i in order]
        self.counts = np.array([plan.counts[i] for i in order], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.seed, self.epoch, self.shuffle = seed, epoch, shuffle
        self.chunk = max(1, int(shuffle_buffer))

    @property
    def num_samples(self) -> int:
        return int(self.starts[-1])

    def pieces(self, lo: int, hi: int):
        """(unit position in the epoch, first row, last row) covering positions [lo, hi)."""
        k = int(np.searchsorted(self.starts, lo, side="right")) - 1
        while lo < hi:
            end = min(hi, int(self.starts[k + 1]))
            yield k, lo - int(self.starts[k]), end - int(self.starts[k])
            lo, k = end, k + 1


class StreamReader:
    """Reads positions of an `EpochStream` with a reader; caches a few units and one chunk."""

    def __init__(self, stream: EpochStream, reader: Reader, cached_units: int = 2):
        self.stream, self.reader = stream, reader
        self._units: OrderedDict[int, pa.Table] = OrderedDict()
        self._cached_units = cached_units
        self._chunk: tuple[int, pa.Table] | None = None

    def _unit(self, k: int) -> pa.Table:
        if k not in self._units:
            self._units[k] = self.reader.read(self.stream.units[k], int(self.stream.counts[k]))
            while len(self._units) > self._cached_units:
                self._units.popitem(last=False)
        self._units.move_to_end(k)
        return self._units[k]

    def _raw(self, lo: int, hi: int) -> pa.Table:
        parts = [self._unit(k).slice(a, b - a) for k, a, b in self.stream.pieces(lo, hi)]
        return pa.concat_tables(parts) if len(parts) != 1 else parts[0]

    def _permuted_chunk(self, g: int) -> pa.Table:
        if self._chunk is None or self._chunk[0] != g:
            size = self.stream.chunk
            lo, hi = g * size, min((g + 1) * size, self.stream.num_samples)
            perm = chunk_permutation(self.stream.seed, self.stream.epoch, g, hi - lo)
            self._chunk = (g, self._raw(lo, hi).take(pa.array(perm)))
        return self._chunk[1]

    def read(self, lo: int, hi: int) -> pa.Table:
        """The samples at stream positions [lo, hi), in stream order."""
        if not self.stream.shuffle:
            return self._raw(lo, hi)
        size, parts = self.stream.chunk, []
        while lo < hi:
            g = lo // size
            end = min(hi, (g + 1) * size)
            parts.append(self._permuted_chunk(g).slice(lo - g * size, end - lo))
            lo = end
        return pa.concat_tables(parts) if len(parts) != 1 else parts[0]

    def close(self) -> None:
        self._units.clear()
        self._chunk = None
        self.reader.close()
