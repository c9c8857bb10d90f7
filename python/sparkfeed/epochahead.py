"""The next epoch read ahead (`persistent_workers=True`): an epoch being read as a value, a
prefetch thread that goes on from one epoch into the next, and the consumer's own staging when
no prefetch thread is worth it. A prefetch thread kept for the next epoch holds its loader weakly."""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator
from typing import NamedTuple

from .engine import Delivery
from .lanes import LaneReader
from .prefetch import Marker
from .stats import Stats
from .threads import close_quietly


class Reading(NamedTuple):
    """An epoch being read: its lanes, its deliveries and their `LaneReader` (threads; None for
    processes). `staged`: `deliveries` is a prefetch thread already into this epoch (`epochs`).
    `settings`: the loader's, as it was read with (`loaderargs.settings`; None: unknown)."""

    epoch: int
    lanes: list
    deliveries: Iterator
    reader: LaneReader | None
    staged: bool = False
    settings: tuple | None = None

    def close(self) -> None:
        """Stop its threads (deliveries never started would not stop them when closed)."""
        if self.reader is not None:
            self.reader.close()
        close_quietly(self.deliveries)


class EpochEnd(Marker):
    """Where one epoch's batches end in a prefetch thread that goes on into the next (`epochs`)."""

    __slots__ = ("epoch", "lanes", "settings")

    def __init__(self, epoch: int, lanes: list, settings: tuple | None):
        self.epoch, self.lanes, self.settings = epoch, lanes, settings


def epochs(first: Reading, reading: weakref.WeakMethod, step: int):
    """Epoch after epoch for one prefetch thread (`persistent_workers=True`, thread lanes): the next
    epoch (this one + `step`) starts reading once this one is read, and an `EpochEnd` follows this
    one's last batch, so the thread stages (decodes, copies) the next epoch's first batches while
    the consumer finishes this one. `reading` is `DataLoader._reading`, held weakly: a loader that
    goes closes its prefetch thread, which ends this."""
    current, following = first, None
    try:
        while True:
            for d in current.deliveries:
                if following is None and current.reader.done_reading():
                    following = _read(reading, current.epoch + step)
                yield d
            following = following or _read(reading, current.epoch + step)
            current.close()
            current, following = following, None
            # the thread's own settings (pinning, depth) are the first epoch's
            yield EpochEnd(current.epoch, current.lanes,
                           current.settings if current.settings == first.settings else None)
    finally:
        for r in (current, following):
            if r is not None:
                r.close()


def _read(reading: weakref.WeakMethod, epoch: int) -> Reading:
    method = reading()
    if method is None:
        raise RuntimeError(f"the DataLoader whose epoch {epoch} was to be read ahead is gone")
    return method(epoch)


def weakly(method: Callable) -> Callable:
    """`method` called through a weak reference to its object: a prefetch thread kept for the next
    epoch (`epochs`) must not keep its loader alive."""
    ref = weakref.WeakMethod(method)

    def call(*args):
        bound = ref()
        if bound is None:
            raise RuntimeError("the DataLoader this prefetch thread served is gone")
        return bound(*args)
    return call


def waited(source, stage: Callable[[Delivery], Delivery], stats: Stats):
    """Deliveries staged on the consumer's thread (nothing worth a prefetch thread), with the time
    the training loop spent on each, waiting for it and staging it (a worker process's batch
    unpacked), counted in `wait_s`, as the prefetcher counts it with `depth=0`."""
    it = iter(source)
    try:
        while True:
            start = time.perf_counter()
            try:
                staged = stage(next(it))
            except StopIteration:
                return
            finally:
                stats.add("wait_s", time.perf_counter() - start)
            yield staged
    finally:
        close_quietly(it)
