"""Worker lanes on threads: the lanes torch's worker processes would run, read ahead by threads.

Each lane's thread reads and converts its segments (unit pieces or shuffle-chunk pieces, see
`stream.py`) ahead: reading Parquet is pyarrow work that releases the GIL, so threads overlap it
as well as processes do, without moving every batch between processes. Batches are cut out of
the segments on the consuming thread, so the hand-over between threads happens once per segment
(about a row group), not once per batch. `round_robin` gives the order torch's process workers
give (batch i from lane i mod K, skipping finished lanes), so results do not depend on the
worker type.

Shutdown protocol (the one note; `_lane_loop` and `LaneReader` cite it)
------------------------------------------------------------------------
Each lane k has one thread running `_lane_loop` and one bounded queue `queues[k]` (maxsize =
`depth`). The thread puts items, then exactly one final item: `_END` or a `_Failure`. A shared
`stop` event is set only by `LaneReader.close()`. The thread puts with a timeout and re-checks
`stop`, so a full queue never pins it; the consumer (`lane(k)`) gets with a timeout and re-checks that
the thread is alive, so a dead thread is an error, not a hang. `close()` (idempotent, also on garbage
collection, after a failure, after the last lane ends, and after an early `break`) sets `stop`,
drains every queue, and joins every thread for a bounded time; each thread closes its own
generator in its `finally`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

from .errors import WorkerError
from .prefetch import _put  # the same bounded put, under the same protocol

__all__ = ["LaneReader", "round_robin"]

_POLL_S = 0.1
_JOIN_S = 5.0
_END = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _lane_loop(make: Callable[[], Iterator], q: queue.Queue, stop: threading.Event) -> None:
    """Run one lane's batch generator into its queue (see the shutdown protocol above)."""
    it = None
    try:
        it = make()
        for batch in it:
            if not _put(q, batch, stop):
                return
        _put(q, _END, stop)
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
        _put(q, _Failure(exc), stop)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


class LaneReader:
    """K lane generators run by K threads, each into its own bounded queue; `lane(k)` reads one."""

    def __init__(self, lanes: list[Callable[[], Iterator]], depth: int = 2, name: str = "sparkfeed-lane"):
        self._stop = threading.Event()
        self._queues = [queue.Queue(maxsize=max(1, depth)) for _ in lanes]
        self._threads = [threading.Thread(target=_lane_loop, args=(make, q, self._stop),
                                          name=f"{name}-{k}", daemon=True)
                         for k, (make, q) in enumerate(zip(lanes, self._queues))]
        for t in self._threads:
            t.start()
        self._closed = False

    def lane(self, k: int) -> Iterator:
        """The items of lane k, in order; its thread's exception is re-raised here."""
        while True:
            item = self._get(k)
            if item is _END:
                return
            if isinstance(item, _Failure):
                self.close()
                item.exc.add_note(f"(raised while reading lane {k} on thread {self._threads[k].name!r})")
                raise item.exc
            yield item

    def _get(self, k: int):
        while True:
            try:
                return self._queues[k].get(timeout=_POLL_S)
            except queue.Empty:
                if self._closed:
                    raise WorkerError(f"lane {k} was read after the lanes were closed") from None
                if not self._threads[k].is_alive() and self._queues[k].empty():
                    self.close()
                    raise WorkerError(f"lane thread {self._threads[k].name!r} ended without a result") from None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        for q in self._queues:
            while True:
                try:
                    q.get_nowait()
                except queue.Empty:
                    break
        for t in self._threads:
            t.join(timeout=_JOIN_S)

    def __del__(self):
        self.close()


def round_robin(iterators: list[Iterator], on_close: Callable[[], None] | None = None) -> Iterator:
    """Item i from iterator i mod K, skipping exhausted ones: the order torch's workers give.
    Closes every iterator (and calls `on_close`) when done, on an error, or when closed early."""
    active, turn = list(iterators), 0
    try:
        while active:
            k = turn % len(active)
            try:
                item = next(active[k])
            except StopIteration:
                active.pop(k)
                turn = k
                continue
            turn = k + 1
            yield item
    finally:
        for it in iterators:
            close = getattr(it, "close", None)
            if close is not None:
                close()
        if on_close is not None:
            on_close()
