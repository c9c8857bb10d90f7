"""The thread protocol shared by the reading lanes (`lanes.py`) and the prefetcher (`prefetch.py`).

The protocol (the one note; every loop that uses these helpers cites it)
------------------------------------------------------------------------
A producer thread hands items to a consumer through a bounded `queue.Queue`. Two rules make sure
nobody blocks forever and nothing is lost:

1. **Last item.** A producer ends each queue it feeds with exactly one final item: `END` (its
   source is exhausted) or a `Failure` (the exception it met, with where it happened). Nothing
   follows a final item.
2. **Bounded waits.** The producer puts with `put()`, which waits in steps of `POLL_S` and gives up
   as soon as the shared `stop` event is set, so a full queue never pins it. The consumer gets with
   `get()`, which waits in steps of `POLL_S` and checks the producer thread is alive, so a dead
   producer is a `WorkerError`, not a hang.

At interpreter exit (`close_at_exit`): the owners still open are closed, and the threads that
work for them joined, before any exit hook registered earlier runs. A daemon thread left inside
pyarrow (or DALI) while the process tears down its native thread pools aborts the process
("terminate called without an active exception", rc 134): a script that stops iterating a
shuffled loader mid-epoch and ends did so about one run in three.

`stop` is set only by the owner's `close()`. Shutdown order, in every `close()` (idempotent; also run
on garbage collection, after a failure or `END`, and when the consumer stops early):
set `stop`; `drain()` the queues (frees items, unblocks a producer mid-`put`); join each thread for
at most `JOIN_S` seconds, draining again between tries. Each thread closes its own source
iterators in its `finally` (the thread that runs a generator is the one that closes it). A source
that blocks forever inside `next()` keeps its daemon thread until it returns; `close()` still
returns after `JOIN_S`.
"""

from __future__ import annotations

import atexit
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import WorkerError

__all__ = ["POLL_S", "JOIN_S", "END", "EXITING", "Failure", "TimedOut", "put", "get", "drain", "join",
           "close_quietly", "cores", "start", "close_at_exit", "closed", "join_at_exit"]

POLL_S = 0.1   # how often a blocked put/get re-checks `stop` / the producer's liveness
JOIN_S = 5.0   # the longest close() waits for a thread
END = object()  # a producer's last item when its source is exhausted
EXITING = threading.Event()  # set at interpreter exit: loops over many reads stop at the next one

# owners (a `Prefetcher`, a `LaneReader`) whose threads run, with the order they close in at exit
# (consumers first), and other threads to join then (a shuffle block's helper readers)
_LIVE: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()
_HELPERS: "weakref.WeakSet[threading.Thread]" = weakref.WeakSet()


def start(threads: list[threading.Thread], close: Callable[[], None]) -> None:
    """Start an owner's `threads`, registered with `close_at_exit` before: if starting one
    raises (a Ctrl-C lands in `Thread.start`, which waits for the thread to run), `close()`
    stops the ones already running before the error goes on. Before, a `LaneReader` whose
    start a Ctrl-C interrupted was neither closed nor closed at exit, and its threads, left
    inside pyarrow at teardown, aborted the process (rc 134)."""
    try:
        for t in threads:
            t.start()
    except BaseException:
        close()
        raise


_current = threading.local()  # per thread: the `stop` of the owner it works for (`working_for`)


def working_for(stop: threading.Event | None) -> None:
    """Mark the calling thread as working for an owner whose `stop` ends its work, so that a
    long loop on it (a shuffle block's runs) ends at the next read once the owner closes
    (`stopping`), rather than finishing the block while `close()` waits for it."""
    _current.stop = stop


def current_stop() -> threading.Event | None:
    """The `stop` the calling thread works for (None: the consumer's own thread)."""
    return getattr(_current, "stop", None)


def stopping() -> bool:
    """The interpreter is exiting, or the owner the calling thread works for was closed."""
    stop = current_stop()
    return EXITING.is_set() or (stop is not None and stop.is_set())


def close_at_exit(owner: Any, order: int) -> None:
    """Have `owner.close()` run at interpreter exit if it is still open then (lower `order`
    first), before every exit hook registered so far: DALI registers its own when a decoder
    first imports it, after sparkfeed was imported (atexit runs the last registered first)."""
    _LIVE[owner] = order
    atexit.unregister(_close_live_at_exit)
    atexit.register(_close_live_at_exit)


def closed(owner: Any) -> None:
    """`owner` closed: nothing to do for it at exit."""
    _LIVE.pop(owner, None)


def join_at_exit(thread: threading.Thread) -> None:
    """Join `thread` at interpreter exit (after the owners close; it should stop at `EXITING`)."""
    _HELPERS.add(thread)


def _close_live_at_exit() -> None:
    """Close the owners still open, then join the helper threads, within `JOIN_S` each."""
    EXITING.set()
    for owner, _ in sorted(list(_LIVE.items()), key=lambda item: item[1]):
        try:
            owner.close()
        except Exception:  # noqa: BLE001 - exit goes on; one owner must not stop the others
            pass
    deadline = time.monotonic() + JOIN_S
    for thread in list(_HELPERS):
        if thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))


class TimedOut(RuntimeError):
    """No item within the consumer's `timeout` (torch's `DataLoader(timeout=)` raises a
    RuntimeError there too); the producer is stuck, so its owner closes without waiting for it."""


def cores() -> int:
    """The cores this process may run on (its affinity, else the machine's), at least one."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Failure:
    """A producer's last item when it failed: the exception and where it happened."""

    exc: BaseException
    origin: str        # e.g. "lane 3 on thread 'sparkfeed-lane-1'", "prefetch thread 'x'"
    index: int = -1    # the item it was producing, where that means something

    def reraise(self, what: str = "") -> None:
        """Raise the producer's own exception (type, attributes, traceback kept), noting where."""
        exc = self.exc
        exc.add_note(f"(raised in {self.origin}{what})")
        if isinstance(exc, StopIteration):  # would silently end the consumer's loop (PEP 479)
            raise RuntimeError(f"a stage or source raised StopIteration in {self.origin}") from exc
        raise exc


def put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put unless `stop` is set first; True if the item went in (rule 2)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=POLL_S)
            return True
        except queue.Full:
            continue
    return False


def get(q: queue.Queue, thread: threading.Thread, what: str,
        on_wait: Callable[[], None] | None = None, timeout: float = 0) -> Any:
    """Get the next item, or a `WorkerError` when `thread` ended without a final item (rule 2).
    `timeout` > 0: `TimedOut` once no item came for that many seconds, as torch's
    `DataLoader(timeout=)` raises for its worker processes."""
    since = time.monotonic()
    while True:
        try:
            return q.get(timeout=POLL_S)
        except queue.Empty:
            if on_wait is not None:
                on_wait()
            if timeout and time.monotonic() - since >= timeout:
                raise TimedOut(f"DataLoader timed out after {timeout} seconds: no data from "
                                   f"{what} (thread {thread.name!r}) in that time")
            if not thread.is_alive():
                try:
                    return q.get_nowait()
                except queue.Empty:
                    raise WorkerError(f"{what}: thread {thread.name!r} ended without a result "
                                      "or an error") from None


def drain(q: queue.Queue) -> None:
    """Empty a queue without blocking."""
    try:
        while True:
            q.get_nowait()
    except queue.Empty:
        pass


def join(threads: list[threading.Thread], queues: list[queue.Queue], wait_s: float = JOIN_S) -> None:
    """Join `threads` for at most `wait_s` in all, draining `queues` between tries. The calling
    thread is skipped: an owner whose last reference dies on one of its own threads is closed
    there (its `__del__`), and that thread stops by itself once it sees the stop."""
    deadline = time.monotonic() + wait_s
    me = threading.current_thread()
    for t in threads:
        while t is not me and t.is_alive() and time.monotonic() < deadline:
            for q in queues:
                drain(q)
            t.join(timeout=POLL_S)
    for q in queues:
        drain(q)


def close_quietly(*objs: Any) -> None:
    """Call `close()` on each object that has one (iterators, generators, sources), once each."""
    seen: set[int] = set()
    for obj in objs:
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        close = getattr(obj, "close", None)
        if callable(close):
            close()
