"""A batch of encoded images as numpy views of the buffers they arrived in, with each row's bounds:
what the header checks scan and what both backends are fed (no bytes are copied)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .binarycols import BinaryChunks, BinaryColumn


@dataclass(frozen=True)
class _Encoded:
    """A batch of encoded images left in the buffers they arrived in (numpy views, no copy):
    row i is `buffers[where[i]][starts[i]:ends[i]]`. One buffer for a `BinaryColumn`, one per
    part for `BinaryChunks` (a batch cut across row groups)."""

    buffers: tuple
    where: np.ndarray  # the buffer of each row
    starts: np.ndarray
    ends: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)

    def row(self, r: int) -> np.ndarray:
        return self.buffers[self.where[r]][self.starts[r]:self.ends[r]]

    def views(self, rows) -> list[np.ndarray]:
        """Per-row views for DALI's batch input (it takes a list of arrays; no bytes are copied)."""
        if len(self.buffers) == 1:
            data = self.buffers[0]
            return [data[a:b] for a, b in zip(self.starts[rows].tolist(), self.ends[rows].tolist())]
        bufs = self.buffers
        return [bufs[w][a:b] for w, a, b in zip(self.where[rows].tolist(), self.starts[rows].tolist(),
                                                 self.ends[rows].tolist())]

    def groups(self):
        """(buffer, its rows) for each buffer: what the header scans run on at once."""
        if len(self.buffers) == 1:
            yield self.buffers[0], np.arange(len(self))
            return
        for i, data in enumerate(self.buffers):
            yield data, np.flatnonzero(self.where == i)


def _column_encoded(parts) -> _Encoded:
    offsets = [p.offsets.numpy() for p in parts]
    return _Encoded(tuple(p.data.contiguous().numpy() for p in parts),
                    np.repeat(np.arange(len(parts)), [len(o) - 1 for o in offsets]),
                    np.concatenate([o[:-1] for o in offsets]), np.concatenate([o[1:] for o in offsets]))


def _encoded(images) -> _Encoded:
    """Normalise the input: a BinaryColumn (or its chunks) as is, a list of bytes joined once."""
    if isinstance(images, BinaryColumn):
        return _column_encoded([images])
    if isinstance(images, BinaryChunks):
        return _column_encoded(images.parts)
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise TypeError(f"`images` should be a BinaryColumn or a sequence of bytes, but got {type(images).__name__}")
    images = [b"" if b is None else b for b in images]  # no value: refused as an empty image
    offsets = np.cumsum([0] + [len(b) for b in images], dtype=np.int64)
    return _Encoded((np.frombuffer(b"".join(images), np.uint8),), np.zeros(len(images), np.int64),
                    offsets[:-1], offsets[1:])


def _as_arrays(images) -> list[np.ndarray]:
    """Per-row uint8 numpy views of the input (the micro-benchmark's hand-over)."""
    enc = _encoded(images)
    return enc.views(np.arange(len(enc)))
