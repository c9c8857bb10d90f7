"""`sparkfeed.DataLoader`: the one-line replacement for `torch.utils.data.DataLoader`.

Wiring only. The engine (`engine.py`) plans, partitions and reads; lanes run on threads
(`lanes.py`) or torch's worker processes; per-batch work (unpacking, decoding, the user's
collate: `batchwork.py`; pinning, the device copy) runs on the prefetch thread (`prefetch.py`) when there is
any; `progress.py` keeps exactly which positions the consumer received, which is what
`state_dict()` saves (`loaderstate.py`: set_epoch, len(), state_dict, load_state_dict).
Every batch travels as a `Delivery` (the batch beside its bookkeeping), so the user gets
exactly the batch: every column of any name, or whatever `collate_fn` returned.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch

from . import checks, epochnotes, forks, loaderargs, progress, workerdeaths
from .batchwork import BatchWork
from .epochahead import EpochEnd, Reading, epochs, waited, weakly
from .lanes import LaneReader, round_robin
from .prefetch import Lookahead, Prefetcher
from .loaderstate import LoaderState
from .stats import Stats
from .threads import close_quietly
from .workerdeaths import worker_died
from .workerprocs import WorkerProcesses, WorkerSettings, mp_context

__all__ = ["DataLoader"]
log = logging.getLogger(__name__)

# what loaders in a forked child inherited from the parent's threads and worker processes: kept
# here, never used nor destroyed (`DataLoader._own_process`)
_INHERITED: list = []


class DataLoader(LoaderState):
    """Batches of a sparkfeed dataset as dicts of tensors, with torch's familiar arguments.

    Example::

        loader = sparkfeed.DataLoader("s3://bucket/ds", batch_size=256, shuffle=True,
                                      num_workers=8, pin_memory=True, device="cuda",
                                      columns=["image", "label"], filter=[("label", "<", 10)],
                                      decode={"image": sparkfeed.ImageDecode(size=224)})
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            for batch in loader: ...

    `state_dict()` / `load_state_dict()` resume mid-epoch exactly (any world size or worker
    count); `stats()` says where the time and bytes went. `worker_type="auto"` reads Parquet
    and WebDataset tars cut up through their DALI indexes (every tar sparkfeed writes or indexes)
    with `num_workers` threads (pyarrow and numpy release the GIL, and batches need not cross
    processes), and tars without an index with torch worker processes (parsing them is Python
    work); "thread" or "process" chooses explicitly.
    Both give the same batches in the same order.

    torch's own arguments are taken so that replacing `torch.utils.data.DataLoader` is one line:
    `persistent_workers=True` (thread workers start each epoch in milliseconds; instead, once an
    epoch's last data is read, the next epoch's reading starts, `_read_next_epoch`, and where a
    prefetch thread stages batches it goes on into that epoch's first ones, `epochahead.epochs`;
    worker processes are kept between epochs, `workerprocs.WorkerProcesses.kept`) and
    `in_order` (batches always come in order, which `in_order=False` allows) change no batch;
    `sampler`, `batch_sampler`, `generator`, `worker_init_fn` and `pin_memory_device` are
    refused with what does their job here (`checks.torch_only`).
    """

    def __init__(self, path_or_dataset=None, batch_size: int = 1, shuffle: bool = False, seed: int = 0,
                 columns: Sequence[str] | None = None, filter=None,
                 decode: Mapping[str, object] | None = None, num_workers: int = 0, prefetch: int = 2,
                 pin_memory: bool = False, device=None, drop_last: bool = False,
                 collate_fn: Callable | None = None, on_error: str = "raise",
                 rank: int | None = None, world_size: int | None = None, shuffle_buffer: int | None = None,
                 storage_options: dict | None = None, timeout: float = 0,
                 multiprocessing_context=None, prefetch_factor: int | None = None,
                 worker_type: str = "auto", manifest=None, with_source: bool = False,
                 persistent_workers: bool = False, in_order: bool = True, sampler=None,
                 batch_sampler=None, generator=None, worker_init_fn=None, pin_memory_device: str = "",
                 ragged=None, read_ahead_bytes: int | None = None, verify_checksums: bool = True):
        checks.positive_int("batch_size", batch_size)
        batch_size = loaderargs.dataset_batch_size(path_or_dataset, batch_size)
        checks.non_negative_int("num_workers", num_workers)
        checks.torch_only(persistent_workers, num_workers, sampler=sampler, batch_sampler=batch_sampler,
                          generator=generator, worker_init_fn=worker_init_fn,
                          pin_memory_device=pin_memory_device)
        if not isinstance(in_order, bool):
            raise ValueError(f"`in_order` should be True or False, but got in_order={in_order!r}")
        checks.non_negative_int("prefetch", prefetch)
        checks.positive_int("prefetch_factor", prefetch_factor, allow_none=True)
        checks.one_of("worker_type", worker_type, loaderargs.WORKER_TYPES)
        checks.one_of("pin_memory", pin_memory, (False, True))
        mp_context(multiprocessing_context)  # an unknown start method fails here, not at the first batch
        if collate_fn is not None and not callable(collate_fn):
            raise ValueError(f"`collate_fn` should be callable, but got collate_fn={collate_fn!r}")
        loaderargs.checked_timeout(timeout)
        self.dataset = loaderargs.dataset_for(path_or_dataset, _PARAMETERS, columns=columns, filter=filter, shuffle=shuffle,
                                     seed=seed, drop_last=drop_last, on_error=on_error, rank=rank,
                                     world_size=world_size, shuffle_buffer=shuffle_buffer,
                                     storage_options=storage_options, manifest=manifest,
                                     with_source=with_source, ragged=ragged,
                                     read_ahead_bytes=read_ahead_bytes, verify_checksums=verify_checksums)
        self.batch_size, self.num_workers, self.prefetch = batch_size, num_workers, prefetch
        self.pin_memory, self.timeout = pin_memory, timeout
        self.worker_type = worker_type
        self.multiprocessing_context, self.prefetch_factor = multiprocessing_context, prefetch_factor
        self.device = checks.resolve_device(device)
        self.decode = checks.check_decode(decode, self.dataset.columns, self.dataset.manifest)
        self._work = BatchWork(self.dataset, self.decode, batch_size, collate_fn)  # unpack, decode, collate
        self._stats = Stats()
        self._progress: progress.EpochProgress | None = None  # the epoch being (or last) delivered
        self._pending: list | None = None  # lanes to start the next iteration with (a resume)
        self.persistent_workers = persistent_workers
        self._epoch_set = False  # set_epoch() called since the last iteration began
        self._next: Reading | None = None  # the next epoch, read ahead (persistent_workers)
        self._procs = WorkerProcesses(self._engine, batch_size, bool(self.decode), self.dataset.rank,
                                      self.dataset.path, weakly(self._worker_reading))
        self._blocks_noted = False  # `_note_first_epoch` ran
        self._again_noted = False  # `_note_same_epoch_again` warned
        self._began_resumed = False  # the last iteration began from a loaded state
        self._changes = 0  # set_epoch / load_state_dict calls so far: an iteration started before one restarts
        self._pid = os.getpid()  # the process whose threads and workers the loader holds (`_own_process`)
        self._made = True  # attributes set from now on follow torch's rules (`__setattr__`)

    def __setattr__(self, name: str, value) -> None:
        """As torch's: once made, `batch_size`, `drop_last`, `persistent_workers` (...) are refused,
        and `num_workers`, `timeout`, `pin_memory` (...) are checked and take effect at the next
        epoch (`loaderargs.checked`)."""
        if self.__dict__.get("_made"):
            value = loaderargs.checked(name, value)
        super().__setattr__(name, value)

    @property
    def collate_fn(self) -> Callable | None:
        """The user's collate, applied to each batch after decoding (settable, as torch's)."""
        return self._work.collate_fn

    @collate_fn.setter
    def collate_fn(self, fn: Callable | None) -> None:
        self._work.collate_fn = fn

    @property
    def _engine(self):
        return self.dataset.engine

    @property
    def _workers(self) -> int:
        return max(1, self.num_workers)

    # ------------------------------------------------------------ epochs and state: loaderstate.py

    def stats(self) -> dict:
        """Counters summed over workers and over every epoch so far (not reset by `set_epoch`):
        samples, bytes read, pruning, filtering, skips, wait time; docs/INTERNALS.md says what
        each counts and when."""
        self._own_process()
        out = self._stats.snapshot()
        planning = self._engine.planning_stats()
        out.update(planning["pruning"])
        for key, value in planning["counted"].items():
            out[key] = out.get(key, 0) + value
        return out

    # ------------------------------------------------------------ iteration

    def __iter__(self):
        self._own_process()
        pending, self._pending = self._pending, None
        self._began_resumed = bool(pending)  # this iteration continues a loaded state
        explicit, self._epoch_set = self._epoch_set, False
        epoch = self.dataset.epoch
        if not (explicit or pending):
            self._note_same_epoch_again(epoch)
        ahead = self._take_next(None if pending else epoch)
        if ahead is not None and ahead.staged:  # a prefetch thread already into this epoch
            self._progress = progress.EpochProgress(ahead.lanes, self.batch_size)
            return self._deliver(self._progress, ahead.deliveries, mark=self._changes)
        # the epoch read ahead once this one is read: the next with set_epoch, else this one again
        step = 1 if explicit else 0
        then = epoch + step if self.persistent_workers else None
        reading = ahead or self._reading(epoch, pending, then=None if pending else then)
        if not self._blocks_noted and not pending:
            self._note_first_epoch(epoch, reading.lanes)
        self._progress = progress.EpochProgress(reading.lanes, self.batch_size)
        if reading.reader is None:  # inline, or worker processes (which read on themselves)
            then = None
        if not self._staged():
            source = waited(reading.deliveries, self._work.stage, self._stats)
            return self._deliver(self._progress, source, reading.reader, then, mark=self._changes)
        source = reading.deliveries
        if then is not None and self.prefetch > 0:  # the prefetch thread reads on into the next epochs
            source, then = epochs(reading, weakref.WeakMethod(self._reading), step), None
        return self._deliver(self._progress, self._prefetcher(source), reading.reader, then, mark=self._changes)

    def _prefetcher(self, source) -> Prefetcher:
        """The prefetch thread over `source`: decoding (`BatchWork.ahead` batches ahead), the
        collate, pinning, the device copy. It calls the loader's work weakly, so one kept for the
        next epoch lets the loader go."""
        work = self._work
        stage = Lookahead(weakly(work.start), weakly(work.finish), weakly(work.cancel),
                          depth=work.ahead) if self.decode and work.ahead else weakly(work.stage)
        return Prefetcher(source, depth=self.prefetch, pin_memory=self.pin_memory,
                          device=self.device, stage=stage, stats=self._stats)

    def _staged(self) -> bool:
        """Whether batches need work on a prefetch thread (decoding, pinning on CUDA, a device
        copy, a collate_fn). Without it there is no such thread: the lanes already read ahead,
        and a thread that only passed batches on would add a hand-over per batch."""
        return bool(self.decode) or self.collate_fn is not None or self.device is not None \
            or (self.pin_memory and torch.cuda.is_available())

    def _threads(self) -> bool:
        """Threads where reading runs outside the GIL (`Engine.reads_in_c`: Parquet, indexed
        tars); processes for tars parsed in Python. With num_workers=0 one background thread
        reads (`prefetch` segments ahead)."""
        if self.worker_type == "auto" or self.num_workers == 0:
            return self.num_workers == 0 or self._engine.reads_in_c
        return self.worker_type == "thread"

    def _deliveries(self, lanes: list, epoch: int, then: int | None = None) -> tuple[Iterator, LaneReader | None]:
        """The lanes' deliveries in torch's worker order: inline, on threads, or from processes;
        with the threads' `LaneReader` (None for the others). `then`: the epoch that kept worker
        processes read ahead once they have read this one."""
        engine, size, row_ids = self._engine, self.batch_size, bool(self.decode)
        if self._threads():  # (num_workers or worker_type set since kept worker processes started)
            self._procs.drop(unless_in_use=True)
        if self.num_workers == 0 and self.prefetch == 0:
            return engine.deliveries(epoch, lanes[0], 0, size, row_ids=row_ids), None  # on the caller's thread
        if self._threads():
            stats = [Stats() for _ in lanes]
            depth = self.prefetch_factor or max(2, self.prefetch if self.num_workers == 0 else 2)
            reader = LaneReader([functools.partial(engine.segments, epoch, spans, stats[k], row_ids, lanes)
                                 for k, spans in enumerate(lanes)], depth=depth, timeout=self.timeout,
                                threads=len(lanes) if engine.thread_per_lane else None,  # (lanes.py)
                                in_turn=engine.lanes_start_in_turn)
            return round_robin([engine.deliveries(epoch, spans, k, size, segments=reader.lane(k),
                                                  stats=stats[k]) for k, spans in enumerate(lanes)],
                               on_close=reader.close), reader
        workers = WorkerSettings(self.timeout, self.multiprocessing_context, self.prefetch_factor)
        if self.persistent_workers:
            return self._procs.kept(lanes, epoch, then, workers), None
        return self._procs.new(lanes, epoch, workers), None

    def _deliver(self, epoch_progress: progress.EpochProgress, deliveries, reader: LaneReader | None = None,
                 then: int | None = None, mark: int | None = None):
        """The user's batches; each delivery's positions and counters are recorded as it is handed
        over (counted when delivered, not when read ahead). With `then`, epoch `then` starts
        reading as soon as `reader` has read this one to its end (at the latest, once the last
        batch is delivered: its reading threads may end just after). An `EpochEnd` (a prefetch
        thread gone on into the next epoch) ends the epoch and keeps that thread for it. `mark`: the
        loader's `_changes` when `iter()` made this; a `set_epoch` or `load_state_dict` since then,
        before the first batch, restarts it as that epoch or state (torch's sampler takes its epoch at
        the first batch too; `state_dict()` counts the restarted one)."""
        try:
            if mark is not None and mark != self._changes:
                close_quietly(deliveries)  # (its reading threads stop before the new ones start)
                deliveries = None
                yield from self.__iter__()
                return
            for d in deliveries:
                if isinstance(d, EpochEnd):
                    self._drop_next()  # another iterator's, left over: one staged epoch at a time
                    self._next = Reading(d.epoch, d.lanes, deliveries, None, staged=True, settings=d.settings)
                    deliveries = None  # kept for the next iteration, not closed
                    epoch_progress.ended = True
                    return
                epoch_progress.record(d.worker, d.consumed)
                self._stats.merge(d.stats)
                if mark is not None and mark != self._changes:
                    log.warning(*epochnotes.stale_iteration(self.dataset.path, self.dataset.epoch))
                    mark = None  # once per iteration
                if then is not None and reader.done_reading():
                    self._read_next_epoch(then)
                    then = None
                yield d.batch
            epoch_progress.ended = True
            if then is not None:
                self._read_next_epoch(then)
        except RuntimeError as exc:
            if worker_died(exc):
                raise workerdeaths.named(exc, self.dataset.rank) from exc
            if workerdeaths.timed_out(exc) and epoch_progress.lanes:
                raise workerdeaths.stuck(exc, self.dataset.rank, self._worker_reading,
                                         len(epoch_progress.lanes)) from exc
            raise
        finally:
            forks.close_redelivering_interrupts(lambda: close_quietly(deliveries))

    def _worker_reading(self, worker: int) -> str:
        """What lane `worker` of the epoch being delivered reads next: named when its worker
        process dies (`workerdeaths`)."""
        ds = self.dataset
        return workerdeaths.reading(ds.path, self._engine, ds.epoch, self._current(), worker)

    def _note_first_epoch(self, epoch: int, lanes: list) -> None:
        """Once per loader: how much more than its share this rank reads of a shuffled epoch
        (`epochnotes.blocks_read_twice`), and ranks with different numbers of batches, which hangs
        DDP (`epochnotes.uneven_ranks`)."""
        self._blocks_noted = True
        note = epochnotes.blocks_read_twice(self.dataset, epoch, lanes, self.batch_size, shared=self._threads())
        if note is not None:
            log.log(*note)
        note = epochnotes.uneven_ranks(self.dataset, self.batch_size, self._workers)
        if note is not None:
            log.warning(*note)

    def _note_same_epoch_again(self, epoch: int) -> None:
        """Once per loader: a shuffled epoch delivered to its end starts again without `set_epoch`
        (`epochnotes.same_epoch_again`)."""
        done = self._progress is not None and self._progress.ended
        if self.dataset.shuffle and done and not self._again_noted:
            self._again_noted = True
            log.warning(*epochnotes.same_epoch_again(self.dataset.path, epoch))

    # ------------------------------------------------------------ the next epoch, read ahead

    def _reading(self, epoch: int, lanes: list | None = None, then: int | None = None) -> Reading:
        """Epoch `epoch` starting to read: from its beginning, or `lanes` (a resume); `then`: the
        epoch kept worker processes go on to read."""
        lanes = lanes or self._fresh_lanes()
        return Reading(epoch, lanes, *self._deliveries(lanes, epoch, then), settings=loaderargs.settings(self))

    def _read_next_epoch(self, epoch: int) -> None:
        """Start reading epoch `epoch` from its beginning (threads; `persistent_workers=True`),
        for the next iteration to take if it is that epoch (`_take_next`)."""
        self._own_process()
        if self._next is None:
            self._next = self._reading(epoch)
            log.debug("epoch %d: reading ahead", epoch)

    def _take_next(self, epoch: int | None) -> Reading | None:
        """The epoch read ahead, if it is `epoch` from its beginning (None: a resume) read with the
        loader's settings as they are now (`loaderargs.settings`); else it is dropped (its reads were for nothing and are not counted)."""
        ahead = self._next
        if ahead is not None and epoch == ahead.epoch and ahead.lanes == self._fresh_lanes() \
                and ahead.settings == loaderargs.settings(self):
            self._next = None
            self._stats.add("epochs_read_ahead")
            return ahead
        self._drop_next()
        return None

    def _own_process(self) -> None:
        """In a forked child (`os.fork()`, or the worker process of another loader that holds this
        one), forget what the parent's threads and processes hold: its decoders, the epoch it read
        ahead and its kept worker processes. Used there, a decoder hung (its lock held by the
        parent's prefetch thread, its DALI threads absent), the epoch read ahead failed ("thread
        ended without a result or an error") and kept workers, the parent's, took this process's
        restart: the parent's next epoch hung. Destroyed there, they would shut the parent's workers
        down (torch's iterator's finaliser) or wait on DALI threads that do not exist. So they are
        kept, out of reach (`_INHERITED`), and this process makes its own."""
        if self._pid == os.getpid():
            return
        _INHERITED.append((self._work, self._next, self._procs))
        self._work, self._next, self._procs = self._work.fresh(), None, self._procs.fresh()
        self._stats.forked()  # (its lock, as a parent's prefetch thread may have held it)
        self._pid = os.getpid()

    def _drop_next(self) -> None:
        """Stop reading the epoch read ahead, counted in `epochs_read_ahead_dropped`."""
        if self._next is not None:
            self._next, ahead = None, self._next
            ahead.close()
            self._stats.add("epochs_read_ahead_dropped")



_PARAMETERS = inspect.signature(DataLoader.__init__).parameters  # (`loaderargs.refuse_dataset_overrides`)
