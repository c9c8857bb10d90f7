"""`timeout=` held against a worker process frozen whole (SIGSTOP, a debugger's stop, a cgroup
freezer) while the loader receives from it.

torch's `timeout` bounds only the wait for a message on its queue. A batch's tensors travel as
file descriptors that the receiver asks their sender for (`multiprocessing.resource_sharer`) while
it unpickles the message: a worker frozen with a batch queued hung the parent there for as long
as it stayed frozen (py-spy: `rebuild_storage_fd` -> `DupFd.detach` -> `answer_challenge` ->
`recv_bytes`, under torch's `Queue.get`). So while the loader waits for a batch, a thread looks at
its workers' states (`cannot_run`); one that stays unable to run for `timeout` seconds meanwhile is
killed (which ends the receive), and the wait raises the time-out naming it (`watched`).
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import time

import torch.utils.data

from .threads import TimedOut
from .workerdeaths import timed_out

POLL_S = 0.25  # how often worker states are looked at while a wait for a batch lasts


def cannot_run(pid: int) -> str | None:
    """Why process `pid` cannot run now: stopped (SIGSTOP, SIGTSTP, a debugger) or frozen by its
    cgroup (v2 `cgroup.freeze`, v1 freezer); None if it can, or is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0].decode()
        with open(f"/proc/{pid}/cgroup") as f:
            groups = [line.rstrip("\n").split(":", 2) for line in f]
    except (OSError, IndexError):
        return None
    if state in ("T", "t"):
        return f"stopped (state {state}: SIGSTOP, SIGTSTP or a debugger)"
    for _, controllers, path in groups:
        if controllers == "" and _read(f"/sys/fs/cgroup{path}/cgroup.events").count("frozen 1"):
            return f"frozen by its cgroup ({path})"
        if "freezer" in controllers.split(",") and \
                _read(f"/sys/fs/cgroup/freezer{path}/freezer.state").strip() == "FROZEN":
            return f"frozen by its cgroup's freezer ({path})"
    return None


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


class FrozenWatch:
    """A thread over torch's iterator `workers` (its `_workers` processes) while the loader waits
    for a batch (`waiting` .. `received`): a worker unable to run for `timeout` seconds of such
    waits is killed, and `error()` says which, its pid, why and how long."""

    def __init__(self, workers, timeout: float):
        self.workers, self.timeout = workers, timeout
        self.found: tuple[int, int, str, float] | None = None  # (worker, pid, why, seconds): killed
        self._since: float | None = None
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sparkfeed-frozen-workers", daemon=True)
        self._thread.start()

    def waiting(self) -> None:
        self._since = time.monotonic()

    def received(self) -> None:
        self._since = None

    def close(self) -> None:
        self._closed.set()

    def _run(self) -> None:
        """Poll while a wait lasts; a worker seen unable to run for `timeout` of it is killed."""
        seen: dict[int, float] = {}  # worker -> when first seen unable to run, in this wait
        while not self._closed.wait(min(POLL_S, self.timeout / 4)):
            if self._since is None:
                seen.clear()
                continue
            now = time.monotonic()
            for k, process in enumerate(getattr(self.workers, "_workers", ())):
                why = cannot_run(process.pid)
                if why is None:
                    seen.pop(k, None)
                elif now - seen.setdefault(k, now) >= self.timeout:
                    self._kill(k, process.pid, why, now - seen[k])
                    return

    def _kill(self, worker: int, pid: int, why: str, seconds: float) -> None:
        """Kill the frozen worker (SIGKILL ends even a stopped process), its pid first taken off
        torch's SIGCHLD watch, so the receive ends there and `watched` raises the time-out."""
        self.found = (worker, pid, why, seconds)
        workers = self.workers
        if getattr(workers, "_worker_pids_set", False):
            torch.utils.data._utils.signal_handling._remove_worker_pids(id(workers))
            workers._worker_pids_set = False
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def kill_stopped(self) -> bool:
        """torch's own time-out ended the wait first (both count `timeout`; under load torch's
        may): a worker unable to run now is its cause, killed and named as the watch would have."""
        waited = time.monotonic() - self._since if self._since is not None else self.timeout
        for k, process in enumerate(getattr(self.workers, "_workers", ())):
            if (why := cannot_run(process.pid)) is not None:
                self._kill(k, process.pid, why, waited)
                return True
        return False

    def error(self) -> TimedOut:
        """The time-out naming the worker killed: `DataLoader timed out after N seconds` first,
        as torch's (`workerdeaths.timed_out`), with `lane` set (`workerdeaths.stuck` names it)."""
        worker, pid, why, seconds = self.found
        out = TimedOut(f"DataLoader timed out after {self.timeout:g} seconds: worker {worker} (pid {pid}) "
                       f"was {why} for {seconds:.1f} s while the loader waited for a batch, so its batches "
                       "could not be received; it was killed")
        out.lane = worker
        return out


def watched(start, timeout: float, kept=None):
    """torch's iterator `start()` returns, each wait for a batch under a `FrozenWatch` when
    `timeout` is set: a frozen worker ends the wait with the time-out naming it instead of hanging
    it. `kept`: torch's iterator of workers kept between epochs, which `start()` restarts, there
    receiving what the last iteration left queued: watched too (new workers start unwatched: no
    thread of it runs while they fork)."""
    if not timeout:
        yield from start()
        return
    watch = FrozenWatch(kept, timeout) if kept is not None else None
    try:
        workers = _waited(watch, start) if watch is not None else start()
        watch = watch or FrozenWatch(workers, timeout)
        while True:
            try:
                batch = _waited(watch, functools.partial(next, workers))
            except StopIteration:
                return
            yield batch
    finally:
        if watch is not None:
            watch.close()


def _waited(watch: FrozenWatch, receive):
    """`receive()` under `watch`: a worker it killed turns what the wait raised, or its end, into
    the time-out naming that worker."""
    watch.waiting()
    try:
        out = receive()
    except StopIteration:
        raise
    except Exception as exc:
        if watch.found is not None or (timed_out(exc) and watch.kill_stopped()):
            raise watch.error() from exc
        raise
    finally:
        watch.received()
    if watch.found is not None:  # killed as this arrived: what follows cannot
        raise watch.error()
    return out
