"""Worker lanes on threads: the lanes torch's worker processes would run, read ahead by threads.

Each lane's segments (unit pieces or shuffle-chunk pieces, see `stream.py`) are read and
converted ahead on a reading thread: reading Parquet is pyarrow work that releases the GIL, so
threads overlap it as well as processes do, without moving every batch between processes.
Batches are cut out of the segments on the consuming thread, so the hand-over between threads
happens once per segment (about a row group), not once per batch. `round_robin` gives the order
torch's process workers give (batch i from lane i mod K, skipping finished lanes), so results
do not depend on the worker type.

There are K lanes (`num_workers`) but at most `reading_threads(K)` threads: one per core left
after the consuming thread. More Python threads than cores only trade the GIL back and forth;
each thread serves its lanes (k mod R), always the one whose queue is emptiest. Two kinds of
data get a thread per lane instead (`Engine.thread_per_lane`): remote storage, where a lane's
thread mostly waits for its fetches and a thread serving two lanes left one lane's fetched bytes
unread while it waited on the other's (an HTTP epoch of 20,000 images in indexed tars: 0.32 s
against 0.38); and large samples (4 KiB or more stored), whose reading is copies and page faults
outside the GIL (a local epoch of the same images on 2 cores: tars 0.158 s against 0.194,
Parquet 0.076 against 0.082; 200,000 small tabular rows were 2-3% slower that way, so they keep
the rule).

Every lane starts at once: a thread that serves several lanes starts each lane but its first on
a starter thread of its own (`_Start`), which reads a queue's worth of the lane's items, then
hands its lane to the serving thread, which serves it like any other. A lane's first items are
mostly waiting where its reads wait (over object storage, or on a slow disk), and started one
after the other, lane 1's reads began only after lane 0's first segment was read and converted,
and lane 1's first batch (the consumer's second) waited for both. With `in_turn=True`
(`Engine.lanes_start_in_turn`: data in small files, whose reading is Python's work per file,
under the GIL) a thread starts its first lane alone and the others once that one has its first
item: started together they only split the GIL, and the consumer's first batch waited for every
lane's first item (shuffled over 10,000 Parquet files of 10 rows, each lane's first item a block
of 1,024 files: 1.8-4.0 s to the first batch, 1.1-1.5 s in turn, the second batch no later;
docs/INTERNALS.md, "Workers"). While a starter runs, the serving thread then reads only for
lanes whose queue is empty.

Threads follow the one protocol of `threads.py` (final item per queue, bounded waits, the
shutdown order of `close()`). Here: each lane k has one bounded queue (maxsize `depth`) filled
by the one thread that serves it, after its starter (the serving thread leaves a lane alone
until its starter is done); a lane's failure is also put to the thread's other unfinished lanes,
so whichever the consumer reads next raises it. The serving thread closes every lane's
iterator, after waiting for its starter (a generator is never closed while another thread runs
it). The thread never blocks on a full queue: it reads for a lane with room, and when every
queue it serves is full it waits on its `space` event (cleared before it looks, set by the
consumer after each get from its lanes and by a starter when it is done).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

from . import threads as protocol
from .errors import WorkerError

__all__ = ["LaneReader", "round_robin", "reading_threads"]


def reading_threads(lanes: int) -> int:
    """Threads to read `lanes` lanes: one per core, less the consuming thread's, at least one."""
    return max(1, min(lanes, protocol.cores() - 1))


class _Start:
    """A lane started on a thread of its own: it makes the lane's iterator and puts a queue's
    worth of items (`maxsize`; fewer at the lane's end or an error, kept in `error`:
    StopIteration for an end), then hands the lane to its serving thread. `space` is set when it is done, waking the
    serving thread, which does not touch the lane before."""

    def __init__(self, make: Callable[[], Iterator], q: queue.Queue, stop: threading.Event,
                 space: threading.Event, name: str):
        self.iterator: Iterator | None = None
        self.error: BaseException | None = None
        self._done = threading.Event()
        threading.Thread(target=self._run, args=(make, q, stop, space), name=name, daemon=True).start()

    def _run(self, make, q: queue.Queue, stop: threading.Event, space: threading.Event) -> None:
        protocol.working_for(stop)
        try:
            self.iterator = make()
            for _ in range(q.maxsize):  # at most a queue's worth: never a second reading thread
                if stop.is_set():
                    break
                q.put_nowait(next(self.iterator))  # only this thread puts here until done
        except BaseException as exc:  # noqa: BLE001 - handed to the serving thread
            self.error = exc
        finally:
            self._done.set()
            space.set()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self) -> None:
        """Until it is done (a source blocked in `next()` keeps this waiting, as it would keep
        the serving thread)."""
        self._done.wait()


def _serve(makes: dict[int, Callable[[], Iterator]], queues: list[queue.Queue],
           stop: threading.Event, space: threading.Event, in_turn: bool = False) -> None:
    """One reading thread: keep its lanes' queues filled (see the shutdown protocol above); its
    lanes but the first are started by starters, at the same time as the first, or (`in_turn`)
    once the first has its first item (or ended)."""
    protocol.working_for(stop)
    name = threading.current_thread().name
    later = list(makes)[1:]  # lanes not started yet
    starts: dict[int, _Start] = {}
    its: dict[int, Iterator] = {}
    active = list(makes)

    def start_later() -> None:
        starts.update((k, _Start(makes[k], queues[k], stop, space, f"{name}-start-{k}")) for k in later)
        later.clear()

    if not in_turn:
        start_later()

    try:
        while active and not stop.is_set():
            space.clear()  # before looking: a get or a starter's end from now on wakes the wait below
            starting = in_turn and any(not start.done() for start in starts.values())
            ready = [k for k in active if not queues[k].full() and k not in later
                     and (k not in starts or starts[k].done()) and not (starting and queues[k].qsize())]
            if not ready:
                space.wait(protocol.POLL_S)
                continue
            k = min(ready, key=lambda j: queues[j].qsize())
            try:
                item = _next(k, makes, its, starts)
            except StopIteration:
                active.remove(k)
                protocol.put(queues[k], protocol.END, stop)
                start_later()
                continue
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
                failure = protocol.Failure(exc, f"lane {k} on thread {name!r}")
                for j in sorted(active, key=lambda j: queues[j].qsize()):  # an empty one may be awaited
                    protocol.put(queues[j], failure, stop)
                return
            queues[k].put_nowait(item)  # only this thread puts here (its starter is done), and it had room
            start_later()
    finally:
        for k, start in starts.items():
            start.wait()
            its.setdefault(k, start.iterator)
        protocol.close_quietly(*[it for it in its.values() if it is not None])


def _next(k: int, makes: dict, its: dict[int, Iterator], starts: dict[int, _Start]):
    """Lane k's next item from its iterator: the one its starter made (raising what ended the
    starter, once), or one made here on first use (the thread's first lane)."""
    start = starts.get(k)
    if start is not None and k not in its:
        its[k] = start.iterator
        if start.error is not None:
            raise start.error
    if k not in its:
        its[k] = makes[k]()
    return next(its[k])


class LaneReader:
    """K lane generators read ahead by up to `threads` threads, each lane into its own bounded
    queue; `lane(k)` iterates one lane. `timeout` > 0: waiting longer than that for a lane's next
    item raises (torch's `DataLoader(timeout=)`). `in_turn`: a thread's lanes start one after
    the other (see the module doc)."""

    def __init__(self, lanes: list[Callable[[], Iterator]], depth: int = 2, threads: int | None = None,
                 name: str = "sparkfeed-lane", timeout: float = 0, in_turn: bool = False):
        self._timeout = timeout
        threads = reading_threads(len(lanes)) if threads is None else max(1, min(threads, len(lanes)))
        self._stop = threading.Event()
        self._space = [threading.Event() for _ in range(threads)]  # one per thread: its lanes got room
        self._queues = [queue.Queue(maxsize=max(1, depth)) for _ in lanes]
        self._threads = [threading.Thread(
            target=_serve, name=f"{name}-{t}", daemon=True,
            args=({k: make for k, make in enumerate(lanes) if k % threads == t},
                  self._queues, self._stop, self._space[t], in_turn)) for t in range(threads)]
        self._closed = False
        protocol.close_at_exit(self, 1)  # after the prefetchers that consume the lanes
        protocol.start(self._threads, self.close)

    def lane(self, k: int) -> Iterator:
        """The items of lane k, in order; its thread's exception is re-raised here."""
        thread = self._threads[k % len(self._threads)]
        space = self._space[k % len(self._threads)]
        while True:
            if self._closed:
                raise WorkerError(f"lane {k} was read after the lanes were closed")
            try:
                item = protocol.get(self._queues[k], thread, f"lane {k}", timeout=self._timeout)
            except protocol.TimedOut as exc:
                self.close(wait_s=0)  # its thread is stuck in a read: it stops once that returns
                exc.lane = k  # (which the loader names the shards of)
                raise
            space.set()
            if item is protocol.END:
                return
            if isinstance(item, protocol.Failure):
                self.close()
                item.reraise()
            yield item

    def done_reading(self) -> bool:
        """Every lane read to its end (or failed): its threads are gone, their items queued."""
        return not any(t.is_alive() for t in self._threads)

    def close(self, wait_s: float = protocol.JOIN_S) -> None:
        """Stop every thread (the shutdown order of `threads.py`), waiting at most `wait_s` for
        them; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        protocol.join(self._threads, self._queues, wait_s)
        protocol.closed(self)

    def __del__(self):
        if hasattr(self, "_closed"):
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
        protocol.close_quietly(*iterators)
        if on_close is not None:
            on_close()
