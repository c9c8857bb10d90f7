"""What torch's worker processes run (`workerprocs.py`): worker k delivers lane k of an epoch,
packed, with its bookkeeping (moved out of engine.py by job)."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from . import partition
from .engine import Delivery, Engine
from .lanes import LaneReader
from .stats import Stats

__all__ = ["LaneDataset"]


class LaneDataset(torch.utils.data.IterableDataset):
    """What torch's worker processes run: worker k delivers lane k (packed, with bookkeeping).

    Workers kept between epochs (`persistent_workers=True`) read each iteration's epoch from
    shared memory (`shared_epoch`, a multiprocessing RawValue: the dataset itself was copied when
    they started), and once their lane of this epoch is read they start reading it for epoch
    `shared_then` (-1: none) on a thread, which the next iteration takes if it is that epoch
    (`_NextEpoch`), as thread lanes do in the loader."""

    def __init__(self, engine: Engine, epoch: int, lanes: list[list[partition.Span]], size: int,
                 row_ids: bool, shared_epoch=None, shared_then=None):
        super().__init__()
        self.engine, self.epoch, self.lanes, self.size, self.row_ids = engine, epoch, lanes, size, row_ids
        self.shared_epoch, self.shared_then = shared_epoch, shared_then
        self._next: _NextEpoch | None = None  # the worker's own: its lane of the next epoch, read ahead

    def __iter__(self) -> Iterator[Delivery]:
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        epoch = self.epoch if self.shared_epoch is None else self.shared_epoch.value
        spans = self.lanes[worker]
        stats, segments = self._take_next(epoch, worker)
        if segments is None:
            segments = self.engine.segments(epoch, spans, stats, self.row_ids)
        if self.shared_then is not None:
            segments = self._then_next(segments, spans)
        return self.engine.deliveries(epoch, spans, worker, self.size, segments=segments, stats=stats,
                                      pack=info is not None)

    def _take_next(self, epoch: int, worker: int) -> tuple[Stats, Iterator | None]:
        """The lane's segments read ahead if they are of `epoch` (with their counters), else a
        fresh `Stats` and None; a reading of another epoch is stopped. Worker 0 counts it once
        per epoch (`epochs_read_ahead` / `epochs_read_ahead_dropped`, as the loader does)."""
        ahead, self._next = self._next, None
        if ahead is None:
            return Stats(), None
        if ahead.epoch == epoch:
            if worker == 0:
                ahead.stats.add("epochs_read_ahead")
            return ahead.stats, ahead.reader.lane(0)
        ahead.reader.close()  # its reads were for nothing and are not counted
        stats = Stats()
        if worker == 0:
            stats.add("epochs_read_ahead_dropped")
        return stats, None

    def _then_next(self, segments: Iterator, spans: Sequence[partition.Span]) -> Iterator:
        """`segments`, then the next epoch's reading started (the epoch the loader named in
        `shared_then`, if any) once they are all read; not when the iteration stops early."""
        yield from segments
        then = self.shared_then.value
        if then >= 0:
            stats = Stats()
            reader = LaneReader([functools.partial(self.engine.segments, then, spans, stats, self.row_ids)],
                                name="sparkfeed-next-epoch")
            self._next = _NextEpoch(then, reader, stats)


@dataclass(frozen=True)
class _NextEpoch:
    """A worker's lane of epoch `epoch` being read ahead on a thread, and that reading's counters."""

    epoch: int
    reader: LaneReader
    stats: Stats
