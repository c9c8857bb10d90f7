"""Read-ahead: the next units' bytes fetched on a few threads, in the order the reader needs
them, while the current unit is converted, bounded by the bytes held (`ReadAhead`)."""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from .errors import redact

log = logging.getLogger(__name__)

# Configurable with the SPARKFEED_READ_AHEAD_BYTES environment variable; 0 turns it off.
READ_AHEAD_BYTES = int(os.environ.get("SPARKFEED_READ_AHEAD_BYTES", 64 << 20))
READ_AHEAD_THREADS = 6  # read-ahead tasks running at once per reader (fetches, footers, indexes)
ONCE_KEPT = 64  # `ReadAhead.once` results kept per reader (footers of the files ahead)


@dataclass(frozen=True)
class Deferred:
    """A read-ahead fetch made only when `ReadAhead.ahead` submits it: `make()` starts what the
    fetch needs (a file's version check and footer, a tar's index) and returns the fetch. So
    that work goes out only for units within the bytes kept ahead, not for every unit the
    reader was told of. `prepare()`, where given, starts that work alone: `ahead` calls it for
    the units in the next `max_bytes` past those kept ahead, so a unit's index or footer is in
    when its bytes' turn comes. `priority`: see `ReadAhead`."""

    make: Callable[[], Any]
    priority: tuple = ()
    prepare: Callable[[], None] | None = None  # only what the fetch needs (idempotent)


@dataclass(frozen=True)
class After:
    """A read-ahead task that needs another one's result (`future`: an index text for the piece
    ranges and the parse): queued only once that is done, so no thread sits waiting for it.
    `fn` reads the done future itself. `priority`: see `ReadAhead`.

    Unit fetches are not made so: a fetch waits for its ranges on its own thread and goes out
    the moment they are known. Queued behind other tasks instead, the 4-shard HTTP epoch took
    0.37-0.48 s against 0.24-0.27 (more fetched buffers landing at once, in fresh memory: the
    kernel zeroing fresh huge pages was a sixth of `perf`'s samples)."""

    future: Future | None
    fn: Callable[[], Any]
    priority: tuple = ()


class ReadAhead:
    """Fetches the next units' bytes on a few threads while the current unit is converted.

    `ahead(items)` is told the reader's upcoming units in order, as (keys, bytes, fetch): one
    fetch may serve several units (the row groups of one file, one request); a `Deferred` fetch
    is made when submitted. It keeps fetches in flight or done for the first of them up to
    `max_bytes` in all (at least one), and drops fetched units no longer ahead. `take(key)`
    hands a fetch's result to the reader (waiting for it if still in flight), or None: not
    fetched, or the fetch failed, in which case the reader reads the unit itself and its
    retries and errors apply as without read-ahead. `once(key, fetch)` runs a fetch that
    several unit fetches share (a file's footer) once, on the same threads; `fetch_of(key)`
    tells whether a unit's fetch is done (a run stops before one that is not,
    `read/parquet.py`).

    The threads take the task of the earliest unit first (`priority`, a tuple that starts with
    `order(file)`, the order in which the reader first named the file), whatever the order the
    tasks became ready in: the first unit's index, piece ranges and fetch go before the indexes
    of the units after it (told of 64 small shards, a reader once fetched 60 indexes before its
    first piece).
    """

    def __init__(self, max_bytes: int | None = None, threads: int = READ_AHEAD_THREADS):
        self.max_bytes = READ_AHEAD_BYTES if max_bytes is None else max_bytes
        self._threads = threads
        self._pool: _PriorityPool | None = None
        self._pending: dict = {}  # key -> (future, its share of the fetch's bytes)
        self._once: OrderedDict = OrderedDict()  # key -> future of a fetch made once (`once`)
        self._order: dict = {}  # file -> its rank in the order the reader named files

    def __contains__(self, key) -> bool:
        return key in self._pending

    def order(self, name) -> int:
        """The rank of file `name` in the order the reader first named it (priorities start with it)."""
        return self._order.setdefault(name, len(self._order))

    def _submit(self, fetch, priority: tuple = ()) -> Future:
        """Start `fetch` on the threads: a callable now, an `After` once its future is done;
        an `After`'s own priority, else `priority`, orders it among the waiting tasks."""
        if self._pool is None:
            self._pool = _PriorityPool(self._threads, "sparkfeed-ahead")
        if not isinstance(fetch, After):
            return self._pool.submit(priority, fetch)
        priority = fetch.priority or priority
        if fetch.future is None or fetch.future.done():
            return self._pool.submit(priority, fetch.fn)
        return _when_done(self._pool, priority, fetch.future, fetch.fn)

    def once(self, key, fetch, priority: tuple = ()) -> Future | None:
        """The future of `fetch`, started on the first call for `key` only: something several
        unit fetches need (a file's footer), fetched once and concurrently with the others.
        Not counted against `max_bytes` (small), the last `ONCE_KEPT` kept; None when off."""
        if self.max_bytes <= 0:
            return None
        if key not in self._once:
            self._once[key] = self._submit(fetch, priority)
            while len(self._once) > ONCE_KEPT:
                self._once.popitem(last=False)
        self._once.move_to_end(key)
        return self._once[key]

    def forget(self, key) -> None:
        """Let go of the `once` fetch for `key`, which no fetch to come needs (a file's head once
        the reader has left the file); fetches made already keep what they took from it."""
        self._once.pop(key, None)

    def once_future(self, key) -> Future | None:
        """The future of the `once` fetch for `key`, or None (none, or forgotten)."""
        return self._once.get(key)

    def once_result(self, key):
        """The result of the `once` fetch for `key` (waiting for it), None if none or failed."""
        future = self._once.get(key)
        try:
            return None if future is None else future.result()
        except Exception:
            return None

    def fetch_of(self, key) -> Future | None:
        """The future of the fetch that holds `key` (several keys may share one), or None."""
        entry = self._pending.get(key)
        return None if entry is None else entry[0]

    def ahead(self, items) -> None:
        if self.max_bytes <= 0:
            return
        items = list(items)
        wanted = {key for keys, _, _ in items for key in keys}
        dropped = {self._pending.pop(k)[0] for k in [k for k in self._pending if k not in wanted]}
        for future in dropped - {f for f, _ in self._pending.values()}:
            future.cancel()
        held, beyond = sum(n for _, n in self._pending.values()), 0
        for keys, nbytes, fetch in items:
            keys = [k for k in keys if k not in self._pending]
            if not keys:
                continue
            if self._pending and held + nbytes > self.max_bytes:  # past the bytes kept ahead
                if not isinstance(fetch, Deferred) or fetch.prepare is None or beyond + nbytes > self.max_bytes:
                    break
                fetch.prepare()
                beyond += nbytes
                continue
            future = self._submit(fetch.make(), fetch.priority) if isinstance(fetch, Deferred) \
                else self._submit(fetch)
            for k in keys:
                self._pending[k] = (future, nbytes / len(keys))
            held += nbytes

    def take(self, key):
        entry = self._pending.pop(key, None)
        if entry is None:
            return None
        try:
            return entry[0].result()
        except Exception as exc:  # the reader's own read retries, or names the failure
            log.debug("read-ahead of %s failed (%s: %s); reading it in place", key,
                      type(exc).__name__, redact(exc))
            return None

    def close(self) -> None:
        for future in [f for f, _ in self._pending.values()] + list(self._once.values()):
            future.cancel()
        self._pending.clear()
        self._once.clear()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._order.clear()


class _PriorityPool:
    """Up to `threads` threads, started as tasks come, that run the waiting task of the lowest
    priority first (then the first submitted). `shutdown` cancels what waits and joins them."""

    def __init__(self, threads: int, name: str):
        self._threads, self._name = threads, name
        self._workers: list[threading.Thread] = []
        self._idle = 0
        self._heap: list = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._closed = False

    def submit(self, priority: tuple, fn: Callable[[], Any], future: Future | None = None) -> Future:
        future = Future() if future is None else future
        with self._cv:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            heapq.heappush(self._heap, (priority, next(self._seq), fn, future))
            if len(self._heap) > self._idle and len(self._workers) < self._threads:
                worker = threading.Thread(target=self._work, daemon=True,
                                          name=f"{self._name}_{len(self._workers)}")
                self._workers.append(worker)
                worker.start()
            self._cv.notify()
        return future

    def _work(self) -> None:
        while True:
            with self._cv:
                self._idle += 1
                while not self._heap and not self._closed:
                    self._cv.wait()
                self._idle -= 1
                if not self._heap:
                    return
                _, _, fn, future = heapq.heappop(self._heap)
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # noqa: BLE001 - handed to whoever takes the result
                    future.set_exception(exc)

    def shutdown(self) -> None:
        with self._cv:
            self._closed = True
            for *_, future in self._heap:
                future.cancel()
            self._heap.clear()
            self._cv.notify_all()
        for worker in self._workers:
            if worker is not threading.current_thread():
                worker.join()


def _when_done(pool: _PriorityPool, priority: tuple, upstream: Future, fn: Callable[[], Any]) -> Future:
    """A future of `fn()`, queued on `pool` when `upstream` is done; cancelled with it unrun, or
    when the pool has shut down by then (the reader closed)."""
    out: Future = Future()

    def queue(_done: Future) -> None:
        try:
            pool.submit(priority, fn, out)
        except RuntimeError:  # shut down: nobody will take it
            out.cancel()
    upstream.add_done_callback(queue)
    return out
