"""torch's worker processes under a sparkfeed loader: new ones for each iteration, or ones kept
between epochs (`persistent_workers=True`); a worker that dies or hangs named by its rank.

Tars without a DALI index are parsed in Python, so their lanes read in worker processes
(`loader.DataLoader._threads`); each runs a `LaneDataset` and hands batches over torch's queues."""

from __future__ import annotations

import logging
import multiprocessing
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.utils.data

from . import forks, frozenworkers, workerdeaths
from .lanedataset import LaneDataset
from .errors import WorkerError
from .workerdeaths import worker_died

log = logging.getLogger(__name__)
STUCK_JOIN_S = 2.0  # a worker process terminated after a timeout: the most to wait for its end


class WorkerSettings(NamedTuple):
    """The loader's settings that worker processes start with, as they are at an epoch's start
    (a user may change them between epochs, as torch allows); one per lane is started."""

    timeout: float
    context: Any
    prefetch_factor: int | None


class WorkerProcesses:
    """One loader's worker processes: what they read with, and the processes kept between
    epochs, if any."""

    def __init__(self, engine, batch_size: int, row_ids: bool, rank: int, path: str,
                 where: Callable[[int], str] | None = None):
        self.engine, self.batch_size, self.row_ids = engine, batch_size, row_ids
        self.rank, self.path = rank, path
        self.where = where  # what worker k is reading, for its death (`workerdeaths.reading`)
        self._kept: _Kept | None = None

    def fresh(self) -> "WorkerProcesses":
        """The same with no process kept (a forked child starts its own)."""
        return WorkerProcesses(self.engine, self.batch_size, self.row_ids, self.rank, self.path, self.where)

    def new(self, lanes: list, epoch: int, settings: WorkerSettings) -> Iterator:
        """Worker processes for this iteration alone."""
        loader = _torch_loader(LaneDataset(self.engine, epoch, lanes, self.batch_size, self.row_ids),
                               len(lanes), settings, persistent=False)
        workers = _forked(loader, self.rank, self.where)
        self.engine.let_go_counted()  # (forked workers have their copy: `Engine._first_shared`)
        return _named_worker_errors(frozenworkers.watched(lambda: workers, settings.timeout), self.rank,
                                    workers=lambda: workers)

    def kept(self, lanes: list, epoch: int, then: int | None, settings: WorkerSettings) -> Iterator:
        """Worker processes kept between epochs (`persistent_workers=True`, as torch keeps them):
        the same lanes again run the next epoch in them (its number through shared memory; torch
        restarts each worker's iteration), and each starts reading its lane of epoch `then` once
        it has read this one (`LaneDataset`); other lanes (a resume) start new ones. Workers that
        fail are shut down and forgotten. While another live iteration runs in them (torch would
        restart it), this one gets workers of its own."""
        kept = self._kept
        if kept is not None and kept.in_use():
            return self.new(lanes, epoch, settings)
        dead = kept.dead() if kept is not None else []
        if dead:  # (torch would wait 5 s for its resume, then fail this epoch too)
            log.warning("%s: kept worker process(es) %s of rank %d ended (exit code %s; -9: SIGKILL, as "
                        "the OOM killer sends); epoch %d starts new ones", self.path,
                        ", ".join(str(p.pid) for p in dead), self.rank,
                        ", ".join(str(p.exitcode) for p in dead), epoch)
        if kept is None or kept.lanes != lanes or kept.settings != settings or dead:
            self.drop()
            self.engine.let_go_counted()  # (these start later, without it: `Engine.let_go_counted`)
            context = mp_context(settings.context)
            shared, shared_then = context.RawValue("q", epoch), context.RawValue("q", -1)
            dataset = LaneDataset(self.engine, epoch, lanes, self.batch_size, self.row_ids, shared, shared_then)
            kept = self._kept = _Kept(lanes, settings, _torch_loader(dataset, len(lanes), settings, persistent=True),
                                      shared, shared_then)
        kept.epoch.value, kept.then.value = epoch, -1 if then is None else then
        iteration = _named_worker_errors(_iterated(kept.loader, self.rank, self.where, settings.timeout),
                                         self.rank,
                                        on_failure=self.drop, workers=lambda: kept.loader._iterator)
        kept.user = weakref.ref(iteration)
        return iteration

    def drop(self, unless_in_use: bool = False) -> None:
        """Shut down the worker processes kept between epochs, if any (`unless_in_use`: not while
        an iteration runs in them)."""
        if unless_in_use and self._kept is not None and self._kept.in_use():
            return
        kept, self._kept = self._kept, None
        workers = None if kept is None else kept.loader._iterator  # torch keeps its persistent iterator there
        if workers is not None:
            workers._shutdown_workers()


@dataclass(eq=False)
class _Kept:
    """Worker processes kept between epochs: their lanes and settings, torch's loader (persistent_workers),
    the shared-memory epoch they read at each iteration's start and the one they read ahead
    after it (-1: none), and the iteration running in them (a weak reference to its generator)."""

    lanes: list
    settings: WorkerSettings
    loader: torch.utils.data.DataLoader
    epoch: Any
    then: Any
    user: weakref.ref | None = None

    def in_use(self) -> bool:
        """An iteration handed out and not finished or closed (a generator not yet started counts)."""
        iteration = self.user() if self.user is not None else None
        return iteration is not None and iteration.gi_frame is not None

    def dead(self) -> list:
        """The kept worker processes that have ended (killed, say, between epochs)."""
        workers = self.loader._iterator  # (torch's persistent iterator; None before the first epoch)
        return [p for p in getattr(workers, "_workers", ()) if not p.is_alive()]


def _torch_loader(dataset: LaneDataset, workers: int, settings: WorkerSettings,
                  persistent: bool) -> torch.utils.data.DataLoader:
    """torch's loader over `dataset`: one worker process per lane."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=workers, timeout=settings.timeout,
        multiprocessing_context=forks.interrupt_safe(mp_context(settings.context)),
        prefetch_factor=settings.prefetch_factor, persistent_workers=persistent)


def _iterated(loader: torch.utils.data.DataLoader, rank: int, where, timeout: float) -> Iterator:
    """`iter(loader)` at the first `next()`, so that a worker found dead while torch restarts its
    kept workers is raised where `_named_worker_errors` names it; its waits, that restart's too,
    watched for a frozen worker (`frozenworkers.watched`)."""
    yield from frozenworkers.watched(lambda: _forked(loader, rank, where), timeout, kept=loader._iterator)


def _forked(loader: torch.utils.data.DataLoader, rank: int, where):
    """`iter(loader)`, where torch starts (forks) its workers: the parent's objects frozen meanwhile
    (`forks.frozen_while_forking`). A Ctrl-C while new workers start is held until `iter` has
    returned them (else torch's half-made iterator, out of reach, kept them until a garbage
    collection), one lost in the fork's hooks is kept (`forks.interrupts_kept`), and either is
    delivered once the workers are shut down. Kept workers restarting are not held: their
    restart waits on them. The workers are then watched (`workerdeaths.watch`): a death names
    rank `rank` and `where(k)`, what worker k was reading, wherever torch raises it."""
    fresh = loader._iterator is None
    with forks.frozen_while_forking(), forks.interrupts_kept(hold=fresh) as interrupts:
        try:
            workers = iter(loader)
        except BaseException:
            interrupts.deliver()  # (a Ctrl-C held meanwhile is not lost to the failure)
            raise
    if interrupts:
        workers._shutdown_workers()
        interrupts.deliver()
    workerdeaths.watch(workers, rank, where)
    return workers


def mp_context(context):
    """The multiprocessing context torch's workers will start in (`multiprocessing_context`)."""
    if context is None:
        return multiprocessing.get_context()
    methods = multiprocessing.get_all_start_methods()
    if isinstance(context, str) and context in methods:
        return multiprocessing.get_context(context)
    if not isinstance(context, str) and hasattr(context, "Process"):
        return context
    raise ValueError(f"`multiprocessing_context` should be None, one of {tuple(methods)} or a "
                     f"multiprocessing context, but got multiprocessing_context={context!r}")


def _named_worker_errors(it, rank: int, on_failure: Callable[[], None] | None = None,
                         workers: Callable[[], object] | None = None):
    """Re-raise a crashed worker as WorkerError naming the rank (torch names the worker). Workers
    are shut down when the epoch ends; those kept between epochs (`on_failure` given) only when
    something fails, and `on_failure` forgets them. `workers()`: torch's iterator of the
    workers (`it` itself otherwise)."""
    failed = True
    try:
        yield from it
        failed = False
    except GeneratorExit:  # the consumer stopped early: kept workers stay for the next epoch
        failed = False
        raise
    except RuntimeError as exc:
        if worker_died(exc):
            raise workerdeaths.named(exc, rank) from exc
        if "DataLoader timed out" in str(exc):
            _stop_stuck_workers(workers() if workers is not None else it)
        raise
    except (ConnectionError, EOFError) as exc:
        # a batch a worker queued before it died points at shared memory that only the dead
        # worker could hand over: receiving it fails on the worker's closed socket
        raise WorkerError(f"a sparkfeed loader worker of rank {rank} died before its batch could "
                          f"be received ({type(exc).__name__}: {exc})") from exc
    finally:
        # Stop the workers now, not when the iterator is collected: an error's traceback keeps
        # it alive, and torch's SIGCHLD handler would keep watching the dead workers meanwhile.
        if on_failure is None or failed:
            shutdown = getattr(workers() if workers is not None else it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            if on_failure is not None:
                on_failure()


def _stop_stuck_workers(workers) -> None:
    """After torch's `timeout`: the workers are stuck in a read, and torch's shutdown would wait
    5 s for each (`MP_STATUS_CHECK_INTERVAL`) before terminating it, so the error came about 10 s
    after the timeout with 2 workers. Terminate them now, their pids first taken off torch's
    SIGCHLD watch (else their end would raise again in this thread), as that shutdown does."""
    procs = getattr(workers, "_workers", None)
    if not procs or getattr(workers, "_shutdown", True):
        return
    if getattr(workers, "_worker_pids_set", False):
        torch.utils.data._utils.signal_handling._remove_worker_pids(id(workers))
        workers._worker_pids_set = False
    for process in procs:  # one stopped or frozen waits for SIGTERM until it runs again: killed
        if process.is_alive():
            process.kill() if frozenworkers.cannot_run(process.pid) else process.terminate()
    for process in procs:
        process.join(STUCK_JOIN_S)
        if process.is_alive():  # (stopped meanwhile)
            process.kill()
            process.join(STUCK_JOIN_S)
