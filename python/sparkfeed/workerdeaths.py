"""A worker process's death named by what it was reading, wherever torch reports it.

torch reports a dead worker with a bare RuntimeError ("DataLoader worker (pid N) is killed by
signal"), raised either inside `next()` or by its SIGCHLD handler wherever the main thread is at
that moment: usually the user's training step, outside any sparkfeed frame. sparkfeed keeps which
of its workers each pid is (`watch`) and wraps torch's handler (`wrap_sigchld_handler`), so that
both become a `WorkerError` naming the rank, the dataset, the worker and the shards its lane was
reading next (`reading`); another library's workers keep torch's error."""

from __future__ import annotations

import re
import signal
import threading
import weakref
from collections.abc import Callable

from . import partition
from .epoch import EpochStream
from .errors import WorkerError

# pid -> (torch's iterator of the workers, weakly; the worker's index; its rank; what names its reading)
_WATCHED: dict[int, tuple[weakref.ref, int, int, Callable[[int], str] | None]] = {}
_LOCK = threading.Lock()
_PIDS = re.compile(r"\bpid(?:\(s\))? ([\d, ]+)")


def watch(workers, rank: int, where: Callable[[int], str] | None) -> None:
    """Remember torch's worker processes `workers` (its iterator) as sparkfeed's, of rank `rank`:
    what worker k was reading is `where(k)`. Entries of iterators gone or shut down are dropped."""
    ref = weakref.ref(workers)
    with _LOCK:
        for pid in [p for p, entry in _WATCHED.items() if not _live(entry[0])]:
            del _WATCHED[pid]
        for k, process in enumerate(getattr(workers, "_workers", ())):
            _WATCHED[process.pid] = (ref, k, rank, where)
    wrap_sigchld_handler()


def _live(ref: weakref.ref) -> bool:
    workers = ref()
    return workers is not None and not getattr(workers, "_shutdown", True)


def worker_died(exc: BaseException) -> bool:
    """torch's error for a worker process that died (raised inside `next()` or by its SIGCHLD
    handler)."""
    return isinstance(exc, RuntimeError) and "DataLoader worker" in str(exc)


def named(exc: RuntimeError, rank: int | None = None) -> WorkerError | None:
    """`exc` (torch's error for a dead worker) as a WorkerError naming what that worker read,
    if the pid is one of sparkfeed's (`watch`); with `rank`, one naming at least the rank."""
    for pid in (int(p) for m in _PIDS.finditer(str(exc)) for p in re.findall(r"\d+", m.group(1))):
        entry = _WATCHED.get(pid)
        if entry is not None and _live(entry[0]):  # (a pid reused after a shutdown is not ours)
            _, k, rank, where = entry
            return WorkerError(f"a sparkfeed loader worker of rank {rank} died ({_where(where, k)}): {exc}")
    if rank is None:
        return None
    return WorkerError(f"a sparkfeed loader worker of rank {rank} died: {exc}")


def _where(where: Callable[[int], str] | None, k: int) -> str:
    if where is None:
        return f"worker {k}"
    try:
        return where(k)
    except Exception as exc:  # (naming it must never hide the death itself)
        return f"worker {k}; what it read is unknown: {type(exc).__name__}: {exc}"


def timed_out(exc: BaseException) -> bool:
    """torch's `DataLoader(timeout=)` error, or sparkfeed's for thread lanes (`threads.TimedOut`)."""
    return isinstance(exc, RuntimeError) and str(exc).startswith("DataLoader timed out")


def stuck(exc: RuntimeError, rank: int, where: Callable[[int], str], lanes: int) -> RuntimeError:
    """`exc` (a time-out) naming what was being read: the lane that timed out (`exc.lane`, thread
    lanes), else every lane not yet delivered to its end (worker processes: torch does not say
    which one it waited for); a RuntimeError still, as torch's."""
    lane = getattr(exc, "lane", None)
    said = "; ".join(_where(where, k) for k in ([lane] if lane is not None else range(lanes)))
    out = type(exc)(f"{exc} (rank {rank}: {said})")
    out.lane = lane
    return out


def wrap_sigchld_handler() -> None:
    """Once torch has set its SIGCHLD handler (its first worker processes, on the main thread),
    wrap it: a death of one of sparkfeed's workers it raises becomes `named`'s WorkerError."""
    if threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGCHLD)
    if not callable(current) or getattr(current, "sparkfeed_names_workers", False):
        return

    def handler(signum, frame):
        try:
            current(signum, frame)
        except RuntimeError as exc:
            error = named(exc) if worker_died(exc) else None
            if error is None:
                raise
            raise error from exc
    handler.sparkfeed_names_workers = True
    signal.signal(signal.SIGCHLD, handler)


def reading(path: str, engine, epoch: int, progress, worker: int) -> str:
    """'worker K, dataset D, epoch E, reading shard(s) S': the shards holding the next batch that
    lane `worker` of `progress` (an `EpochProgress`) had to deliver."""
    lanes = progress.remaining_lanes()
    spans = partition.take(lanes[worker], 0, progress.batch_size) if worker < len(lanes) else []
    shards = _shards(engine.stream(epoch), spans) if spans else []
    said = f", reading shard(s) {', '.join(repr(s) for s in shards)}" if shards else \
        "" if spans else ", every position of its lane delivered"
    return f"worker {worker}, dataset {path!r}, epoch {epoch}{said}"


def _shards(stream, spans) -> list[str]:
    """The shards (in reading order, once each) of the units holding `spans`' positions; none
    where the stream is not a plain dataset's (a mix's)."""
    if not isinstance(stream, EpochStream):
        return []
    units = []
    for lo, hi in spans:
        if stream.shuffle:
            for b in range(stream.block_of(lo), stream.block_of(hi - 1) + 1):
                runs = stream.runs_of(b)
                units += range(int(stream.run_units[runs.start]), int(stream.run_units[runs.stop]))
        else:
            units += [k for k, _, _ in stream.pieces(lo, hi)]
    return list(dict.fromkeys(stream.units[k].path for k in units))
