"""Positions of the epoch stream -> ranks -> workers, in contiguous runs of whole batches.

A `Span` is a half-open range `(lo, hi)` of stream positions. Work still to deliver is a list of
spans (`[(0, N)]` at the start of an epoch; whatever a saved state says after a resume). These pure
functions cut such a list; they never look at data. Worked example, 7 samples, batch 2, 1 rank:
drop_last=False gives batches of 2, 2, 2, 1; drop_last=True gives 2, 2, 2 (the 7th is dropped).
With 2 ranks and drop_last=True: 7 // (2 * 2) = 1 full batch each, samples 0-1 and 2-3, and
positions 4-6 are dropped so that neither rank waits for the other.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["Span", "total", "take", "skip", "normalise", "split_ranks", "split_workers"]

Span = tuple[int, int]


def total(spans: Sequence[Span]) -> int:
    """How many positions the spans hold."""
    return sum(hi - lo for lo, hi in spans)


def normalise(spans: Sequence[Sequence[int]]) -> list[Span]:
    """Spans as sorted, merged, non-empty integer tuples (state from JSON arrives as lists)."""
    out: list[Span] = []
    for lo, hi in sorted((int(lo), int(hi)) for lo, hi in spans):
        if hi <= lo:
            continue
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def take(spans: Sequence[Span], start: int, count: int) -> list[Span]:
    """The positions `[start, start + count)` of the spans laid end to end."""
    out: list[Span] = []
    offset = 0
    for lo, hi in spans:
        n = hi - lo
        a, b = max(start - offset, 0), min(start + count - offset, n)
        if a < b:
            out.append((lo + a, lo + b))
        offset += n
        if offset >= start + count:
            break
    return out


def skip(spans: Sequence[Span], count: int) -> list[Span]:
    """The spans without their first `count` positions."""
    return take(spans, count, total(spans) - count)


def split_ranks(spans: Sequence[Span], world_size: int, batch_size: int,
                drop_last: bool) -> list[list[Span]]:
    """One list of spans per rank. With `drop_last`, every rank gets the same number of full
    batches and only the fewest positions needed are dropped; without, ranks differ by at most
    one sample."""
    n = total(spans)
    if drop_last:
        per_rank = n // (world_size * batch_size) * batch_size
        return [take(spans, r * per_rank, per_rank) for r in range(world_size)]
    bounds = [r * n // world_size for r in range(world_size + 1)]
    return [take(spans, bounds[r], bounds[r + 1] - bounds[r]) for r in range(world_size)]


def split_workers(spans: Sequence[Span], num_workers: int, batch_size: int) -> list[list[Span]]:
    """One list of spans per worker: contiguous runs of whole batches (the last may be short)."""
    n = total(spans)
    batches = -(-n // batch_size)
    out = []
    for w in range(num_workers):
        a, b = w * batches // num_workers, (w + 1) * batches // num_workers
        start = a * batch_size
        out.append(take(spans, start, min(b * batch_size, n) - start))
    return out
