"""Bounded prefetch: batches are staged, pinned and copied to the device on a background thread.

One producer thread (`_prefetch_loop`) and the consumer (`Prefetcher.__next__`) follow the thread
protocol of `threads.py`: one bounded queue of `depth` items, each a staged batch (with the CUDA
event recorded after its copy, or None) or a final `END` / `Failure`; `stop` is set only by
`Prefetcher.close()`, which runs the protocol's shutdown order (called by `__exit__`, `__del__`,
after a final item, and by the user after an early `break` or a `KeyboardInterrupt`). The
thread holds no reference to the `Prefetcher`, so dropping the last reference garbage-collects
it and `__del__` runs the same order; with `depth=0` the work runs inline and `close()` closes
the source itself. At interpreter exit the threads still running (a persistent loader's, an
iterator kept in a variable) are closed the same way before DALI's own exit hook runs
(`threads.close_at_exit`): a thread left inside a DALI run while DALI shuts its pipelines down
aborts the process.

A stage given as a `Lookahead` runs in two halves, `depth` batches apart (one by default): the
thread starts batch n+depth (`start`, e.g. feeding it to DALI, which decodes it in the
background) before it finishes batch n (`finish`: waits for it, then pinning and the copy), so
the decode overlaps the rest of the thread's work and the wait for the next batch. A started
batch is only ever finished or `cancel`led, in order; an error of batch n (started, read or
finished) surfaces as batch n.

An item may be a batch or a value carrying one (`engine.Delivery`: anything with `batch` and
`with_batch`): pinning and the copy then apply to its batch, and the rest rides along. A `Marker`
passes through in its place, untouched and not counted (the loader marks an epoch's end with one).
"""
from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from . import threads as protocol
from .binarycols import BinaryColumn
from .checks import resolve_device
from .pinring import PinnedRing, Slot
from .stats import Stats

__all__ = ["Prefetcher", "Lookahead", "Marker"]

Batch = dict[str, Any]


class Marker:
    """An item that passes through a `Prefetcher` untouched, in its place among the batches: no
    stage, no pinning, no copy, not counted as a batch. Subclass it to say something in order."""

    __slots__ = ()


# ----------------------------------------------------------------------------- pure helpers
def _map_tensors(batch: Any, fn: Callable[[str, torch.Tensor], torch.Tensor]) -> Any:
    """Apply `fn(name, tensor)` to every tensor of a batch (a dict, a tuple or list of values, or
    one value, as a `collate_fn` may return); strings and other objects pass unchanged."""
    if isinstance(batch, Mapping):
        return {k: _map_value(str(k), v, fn) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)) and not hasattr(batch, "_fields"):
        return type(batch)(_map_value(str(i), v, fn) for i, v in enumerate(batch))
    return _map_value("", batch, fn)


def _map_value(name: str, value: Any, fn: Callable[[str, torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(name, value)
    if isinstance(value, BinaryColumn):
        return type(value)(fn(f"{name}.data", value.data), fn(f"{name}.offsets", value.offsets))
    return value


def _payload(item: Any) -> Any:
    """The batch an item carries (a `Delivery`'s), or the item itself."""
    return item.batch if hasattr(item, "with_batch") else item


def _with_payload(item: Any, batch: Any) -> Any:
    return item.with_batch(batch) if hasattr(item, "with_batch") else batch


def _pin_enabled(pin_memory: bool) -> bool:
    """`pin_memory=True` pins only where CUDA exists; elsewhere it does nothing, as in torch."""
    return bool(pin_memory) and torch.cuda.is_available()


# ----------------------------------------------------------------------------- per-batch work
@dataclass(frozen=True)
class Lookahead:
    """A stage in two halves: `start(item) -> ticket` begins the work, `finish(ticket) -> item`
    completes it (raising the batch's error, if any), `cancel(ticket)` drops a started batch
    that will not be finished (on close or after an error). The prefetch thread starts batch
    n+depth before finishing batch n, so up to depth+1 batches are started at once."""

    start: Callable[[Any], Any]
    finish: Callable[[Any], Any]
    cancel: Callable[[Any], None]
    depth: int = 1

    def __post_init__(self):
        if not isinstance(self.depth, int) or isinstance(self.depth, bool) or self.depth < 1:
            raise ValueError(f"`depth` should be a positive integer, but got depth={self.depth!r}")


class _Started:
    """A batch whose stage has begun: the stage's ticket, or the exception its start raised
    (raised again when it is finished, so it surfaces at its own batch)."""

    __slots__ = ("ticket", "error")

    def __init__(self, ticket: Any = None, error: BaseException | None = None):
        self.ticket, self.error = ticket, error


class _Work:
    """What the thread does to each batch: stage, pin into rings, copy on the side stream."""

    def __init__(self, stage, pin: bool, device, stats: Stats | None, capacity: int):
        self.stage, self.pin, self.device, self.stats = stage, pin, device, stats
        self.capacity = capacity
        self.ahead = stage.depth if isinstance(stage, Lookahead) else 0  # batches started ahead
        self.rings: dict[str, PinnedRing] = {}
        self.stream = torch.cuda.Stream(device) if device is not None else None

    def start(self, item: Any) -> _Started:
        """The first half of the stage (a `Lookahead`'s start); never raises."""
        if not isinstance(self.stage, Lookahead) or isinstance(item, Marker):
            return _Started(item)
        t0 = time.perf_counter()
        try:
            return _Started(self.stage.start(item))
        except Exception as exc:  # noqa: BLE001 - raised by finish(), at this batch's turn
            return _Started(error=exc)
        finally:
            self._add("stage_s", time.perf_counter() - t0)

    def finish(self, started: _Started) -> tuple[Any, Any]:
        """The rest: the stage's second half, pinning, the device copy; (item, event)."""
        if started.error is not None:
            raise started.error
        item = started.ticket
        if isinstance(item, Marker):
            return item, None
        if isinstance(self.stage, Lookahead):
            item = self._timed("stage_s", self.stage.finish, item)
        elif self.stage is not None:
            item = self._timed("stage_s", self.stage, item)
        batch = _payload(item)
        slots: list[Slot] = []
        if self.pin:
            batch = self._timed("pin_s", _map_tensors, batch, lambda k, t: self._pin(k, t, slots))
        event = None
        if self.device is not None:
            batch, event = self._timed("copy_s", self._copy, batch, slots)
        return _with_payload(item, batch), event

    def cancel(self, started: _Started | None) -> None:
        """Drop a started batch that will not be finished; never raises."""
        if started is None or started.error is not None or not isinstance(self.stage, Lookahead) \
                or isinstance(started.ticket, Marker):
            return
        try:
            self.stage.cancel(started.ticket)
        except Exception:  # noqa: BLE001 - shutting down: nothing left to report it to
            pass

    def __call__(self, item: Any) -> tuple[Any, Any]:
        """Both halves at once (depth=0: no thread to overlap with)."""
        return self.finish(self.start(item))

    def _pin(self, name: str, t: torch.Tensor, slots: list[Slot]) -> torch.Tensor:
        if t.device.type != "cpu" or t.is_pinned():
            return t
        ring = self.rings.setdefault(name, PinnedRing(self.capacity))
        view, slot = ring.put(t)
        if slot is not None:
            slots.append(slot)
        return view

    def _copy(self, batch: Batch, slots: list[Slot]) -> tuple[Batch, Any]:
        with torch.cuda.stream(self.stream):
            out = _map_tensors(batch, lambda _k, t: t.to(self.device, non_blocking=True))
            event = torch.cuda.Event()
            event.record(self.stream)
        for slot in slots:  # the host buffer is busy until this copy has run
            slot.event = event
        return out, event

    def _timed(self, counter: str, fn, *args):
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self._add(counter, time.perf_counter() - start)

    def _add(self, counter: str, seconds: float) -> None:
        if self.stats is not None:
            self.stats.add(counter, seconds)


# ----------------------------------------------------------------------------- the thread
def _prefetch_loop(source: Iterable, out_queue: queue.Queue, stop: threading.Event,
                   work: _Work) -> None:
    """The producer thread (the protocol of `threads.py`). With a `Lookahead` stage of depth d,
    batch n+d is started before batch n is finished (`_Work.start`/`finish`); at the source's end
    or error the batches started before it are finished first, so every error keeps its
    batch's position. With `num_workers=0` it reads the data itself: a shuffle block's reads then
    stop at the next run once the prefetcher closes (`threads.working_for`)."""
    protocol.working_for(stop)
    if work.device is not None:
        torch.cuda.set_device(work.device)
    it, index, pending = None, 0, collections.deque()
    try:
        it = iter(source)
        while not stop.is_set():
            batch, source_error = _next(it)
            last = batch is protocol.END or source_error is not None
            if not last:
                pending.append(work.start(batch))
            while pending and (last or len(pending) > work.ahead):  # the oldest started batches
                done = pending.popleft()
                if not protocol.put(out_queue, work.finish(done), stop):
                    return
                index = 0 if isinstance(done.ticket, Marker) else index + 1  # batches count from a marker
            if source_error is not None:
                raise source_error
            if batch is protocol.END:
                protocol.put(out_queue, protocol.END, stop)
                return
    except Exception as exc:  # noqa: BLE001 - re-raised in the consumer at this position
        where = f"prefetch thread {threading.current_thread().name!r} while producing batch {index}"
        protocol.put(out_queue, protocol.Failure(exc, where, index), stop)
    finally:
        for started in pending:  # started but never handed over (an error, or close())
            work.cancel(started)
        protocol.close_quietly(it, source)


def _next(it) -> tuple[Any, Exception | None]:
    """The source's next batch (`END` at its end), or the exception it raised."""
    try:
        return next(it), None
    except StopIteration:
        return protocol.END, None
    except Exception as exc:  # noqa: BLE001 - raised once the batch before it is handed over
        return None, exc


# ----------------------------------------------------------------------------- the consumer
class Prefetcher:
    """Pulls batches from `source` on a background thread, `depth` batches ahead of the consumer.

    `stage(batch)` (e.g. decoding) runs on that thread (a `Lookahead` stage one batch ahead: its
    `start` of batch n+1 before its `finish` of batch n), then tensors are pinned (a reused ring of
    pinned buffers when `pin_memory=True` and CUDA exists) and copied to `device` on a side CUDA
    stream. `depth=0` does the same work synchronously, with no thread. See docs/prefetch.md.

        with Prefetcher(loader_batches, depth=4, pin_memory=True, device="cuda") as batches:
            for batch in batches:
                loss = model(batch["image"]).sum()
    """

    def __init__(self, source: Iterable[Batch], *, depth: int = 2, pin_memory: bool = False,
                 device: torch.device | str | None = None,
                 stage: Callable[[Batch], Batch] | Lookahead | None = None,
                 stats: Stats | None = None, name: str = "sparkfeed-prefetch"):
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
            raise ValueError(f"`depth` should be a non-negative integer, but got depth={depth!r}")
        if stage is not None and not callable(stage) and not isinstance(stage, Lookahead):
            raise ValueError(f"`stage` should be a callable, a Lookahead or None, but got stage={stage!r}")
        self._device = resolve_device(device)
        self._stats, self._name, self._closed, self._index = stats, name, False, 0
        self._source = source
        self._work = _Work(stage, _pin_enabled(pin_memory), self._device, stats, depth + 2)
        self._thread: threading.Thread | None = None
        self._it: Any = None
        self._stop = threading.Event()
        if depth == 0:
            self._it = iter(source)
            return
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=_prefetch_loop, name=name, daemon=True,
                                        args=(source, self._queue, self._stop, self._work))
        protocol.close_at_exit(self, 0)  # before the lanes it consumes
        protocol.start([self._thread], self.close)

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> Batch:
        if self._closed:
            raise StopIteration
        start = time.perf_counter()
        try:
            item = self._get() if self._thread is not None else self._produce()
        finally:
            self._count("wait_s", time.perf_counter() - start)
        if item is protocol.END:
            self.close()
            raise StopIteration
        if isinstance(item, protocol.Failure):
            self.close()
            self._raise(item)
        if isinstance(item[0], Marker):
            self._index = 0  # batches count from a marker, as the thread counts them
            return item[0]
        self._index += 1
        self._count("prefetch_batches", 1)
        return self._hand_over(*item)

    def _produce(self) -> Any:
        """depth=0: the loop body, inline."""
        try:
            batch = next(self._it)
        except StopIteration:
            return protocol.END
        except Exception as exc:  # noqa: BLE001 - same path as the thread
            return protocol.Failure(exc, f"the source of batch {self._index}", self._index)
        try:
            return self._work(batch)
        except Exception as exc:  # noqa: BLE001
            return protocol.Failure(exc, f"the stage of batch {self._index}", self._index)

    def _get(self) -> Any:
        item = protocol.get(self._queue, self._thread, f"prefetch thread {self._name!r}, batch {self._index}")
        if self._stats is not None:
            self._stats.set("prefetch_queue_depth", self._queue.qsize())
        return item

    def _raise(self, failure: protocol.Failure) -> None:
        """Re-raise the producer's exception itself: type, attributes and traceback kept."""
        delivered = f"batches 0..{failure.index - 1} were delivered" if failure.index else "no batch was delivered"
        failure.reraise(f"; {delivered}")

    def _hand_over(self, item: Any, event: Any) -> Any:
        """Order the consumer's stream after the copy; tell the allocator who uses the memory."""
        if event is None:
            return item
        current = torch.cuda.current_stream(self._device)
        current.wait_event(event)

        def adopt(_name: str, t: torch.Tensor) -> torch.Tensor:
            if t.is_cuda:
                t.record_stream(current)
            return t
        return _with_payload(item, _map_tensors(_payload(item), adopt))

    def _count(self, name: str, value: float) -> None:
        if self._stats is not None:
            self._stats.add(name, value)

    def close(self) -> None:
        """Stop the thread and close the source (the order is in the shutdown protocol)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        protocol.closed(self)
        if self._thread is None:
            protocol.close_quietly(self._it, self._source)
            return
        protocol.join([self._thread], [self._queue])

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_work", None) is not None and not getattr(self, "_closed", True):
            try:
                self.close()
            except Exception:  # noqa: BLE001 - never raise from a finaliser (interpreter exit)
                pass
