"""Worker lanes on threads: the same lanes torch's worker processes would run, read by threads.

Reading Parquet is pyarrow work that releases the GIL, so threads overlap it as well as
processes do, without moving every batch between processes. The output order is the one torch's
process workers give (batch i comes from lane i mod K, skipping finished lanes), so results do
not depend on the worker type.

Shutdown protocol (the one note; `_lane_loop` and `LaneReader` cite it)
------------------------------------------------------------------------
Each lane k has one thread running `_lane_loop` and one bounded queue `queues[k]` (maxsize =
`depth`). The thread puts batches, then exactly one final item: `_END` or a `_Failure`. A shared
`stop` event is set only by `LaneReader.close()`. The thread puts with a timeout and re-checks
`stop`, so a full queue never pins it; the consumer gets with a timeout and re-checks that the
thread is alive, so a dead thread is an error, not a hang. `close()` (idempotent, also on garbage
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

__all__ = ["LaneReader"]

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
    """Iterate K lanes read by K threads, in torch's round-robin worker order."""

    def __init__(self, lanes: list[Callable[[], Iterator]], depth: int = 2, name: str = "sparkfeed-lane"):
        self._stop = threading.Event()
        self._queues = [queue.Queue(maxsize=max(1, depth)) for _ in lanes]
        self._threads = [threading.Thread(target=_lane_loop, args=(make, q, self._stop),
                                          name=f"{name}-{k}", daemon=True)
                         for k, (make, q) in enumerate(zip(lanes, self._queues))]
        for t in self._threads:
            t.start()
        self._active = list(range(len(lanes)))
        self._turn = 0
        self._closed = False

    def __iter__(self) -> "LaneReader":
        return self

    def __next__(self):
        while self._active:
            k = self._active[self._turn % len(self._active)]
            item = self._get(k)
            if item is _END:
                self._active.remove(k)
                continue
            if isinstance(item, _Failure):
                self.close()
                item.exc.add_note(f"(raised while reading lane {k} on thread {self._threads[k].name!r})")
                raise item.exc
            self._turn = (self._active.index(k) + 1) % len(self._active)
            return item
        self.close()
        raise StopIteration

    def _get(self, k: int):
        while True:
            try:
                return self._queues[k].get(timeout=_POLL_S)
            except queue.Empty:
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
