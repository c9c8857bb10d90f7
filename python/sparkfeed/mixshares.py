"""A mixed epoch's arithmetic (`mix.py`, steps 1-3): shares, the block grid, share -> source position."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

from .shuffle import key_words

if TYPE_CHECKING:
    from .mixsource import Source

__all__ = ["shares", "block_counts", "block_labels", "share_spans"]


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
