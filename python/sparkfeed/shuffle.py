"""(seed, epoch) -> permutations. Pure functions; the order never depends on ranks or workers.

Two levels, both seeded from (seed, epoch): the work units of the epoch are permuted globally,
then the stream of their samples is cut into chunks on a fixed global grid of `shuffle_buffer`
positions and each chunk is permuted on its own (a bounded shuffle buffer whose result is a pure
function of the position, which is what makes exact and elastic resume possible).
"""

from __future__ import annotations

import numpy as np

__all__ = ["unit_order", "chunk_permutation"]


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([k & 0xFFFFFFFF for k in key] + [len(key)])


def unit_order(num_units: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The order in which the epoch visits the work units."""
    if not shuffle:
        return np.arange(num_units, dtype=np.int64)
    return _rng(seed, epoch).permutation(num_units)


def chunk_permutation(seed: int, epoch: int, chunk: int, length: int) -> np.ndarray:
    """The permutation applied to the samples of grid chunk `chunk` (of `length` samples)."""
    return _rng(seed, epoch, chunk, 1).permutation(length)
