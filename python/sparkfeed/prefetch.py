"""Bounded prefetch: batches are staged, pinned and copied to the device on a background thread.

Shutdown protocol (the one note; `_prefetch_loop`, `_put` and `Prefetcher._get` cite it)
------------------------------------------------------------------------------------------
One queue and one event connect two threads:

* `out_queue` (`queue.Queue(maxsize=depth)`): the producer thread (`_prefetch_loop`) puts
  `_Item`s, the consumer (`Prefetcher.__next__`) gets them. An item is a batch (with the CUDA event
  recorded after its copy, or None), a `_Failure` (the exception `source`/`stage`/the copy raised,
  always the last item), or `_END` (source exhausted, always the last item).
* `stop` (`threading.Event`): set only by `Prefetcher.close()`.

Nobody blocks forever. The producer puts with a timeout and re-checks `stop` between tries, so a
full queue never pins it; it checks `stop` before pulling each batch. The consumer gets with a
timeout and re-checks that the thread is alive, so a dead producer is an error, not a hang.

Shutdown order, in `close()` (idempotent; called by `__exit__`, by `__del__`, after a `_Failure`
or `_END`, and by the user after an early `break` or a `KeyboardInterrupt`):
  1. set `stop`;  2. drain `out_queue` (frees batches, unblocks a producer mid-`put`);
  3. join the thread for at most `_JOIN_S` seconds;  4. the thread closes the source iterator
  and `source` in its own `finally` (the thread is the one running them, so a generator is never
  closed while it executes); with `depth=0` `close()` closes them itself.
A source that blocks forever inside `next()` keeps its (daemon) thread until it returns; `close()`
still returns after `_JOIN_S`. The thread holds no reference to the `Prefetcher`, so dropping the
last reference garbage-collects it and `__del__` runs this same order.
"""

from __future__ import annotations

import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .batch import BinaryColumn
from .errors import WorkerError
from .stats import Stats

__all__ = ["Prefetcher"]

Batch = dict[str, Any]
_POLL_S = 0.1   # how often a blocked put/get re-checks `stop` / thread liveness
_JOIN_S = 5.0   # the longest close() waits for the thread
_END = object()


# ----------------------------------------------------------------------------- pure helpers
def _map_tensors(batch: Any, fn: Callable[[str, torch.Tensor], torch.Tensor]) -> Any:
    """Apply `fn(name, tensor)` to every tensor of a batch; lists, strings and objects pass."""
    if isinstance(batch, Mapping):
        return {k: _map_value(str(k), v, fn) for k, v in batch.items()}
    return _map_value("", batch, fn)


def _map_value(name: str, value: Any, fn: Callable[[str, torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(name, value)
    if isinstance(value, BinaryColumn):
        return BinaryColumn(fn(f"{name}.data", value.data), fn(f"{name}.offsets", value.offsets))
    return value


def _pin_enabled(pin_memory: bool) -> bool:
    """`pin_memory=True` pins only where CUDA exists; elsewhere it does nothing, as in torch."""
    return bool(pin_memory) and torch.cuda.is_available()


def _resolve_device(device: torch.device | str | None) -> torch.device | None:
    """None/"cpu" mean no copy; a CUDA device must exist, else a clear ValueError now."""
    if device is None:
        return None
    device = torch.device(device)
    if device.type == "cpu":
        return None
    if device.type != "cuda":
        raise ValueError(f"`device` should be None, 'cpu' or a CUDA device, but got device={device!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was requested but CUDA is not available on this "
                         "machine; pass device=None (or 'cpu') to keep batches on the host")
    if device.index is None:  # pin it now: the thread's current device is not the caller's
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _pinned_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, pin_memory=True)


def _storage_refs(t: torch.Tensor) -> int | None:
    """How many tensors share `t`'s storage (sub-views included); None where torch hides it."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    return None if use_count is None else use_count(t.untyped_storage()._cdata)


# ----------------------------------------------------------------------------- pinned ring
@dataclass(eq=False)
class _Slot:
    buffer: torch.Tensor                       # flat uint8, reused
    baseline: int | None                       # `_storage_refs(buffer)` with nothing handed out
    view: weakref.ref | None = None            # the last tensor handed out of it
    event: Any = None                          # recorded after the last copy out of it

    def in_use(self) -> bool:
        """Held by the consumer (the view or any view of it is alive)."""
        if self.view is not None and self.view() is not None:
            return True
        refs = _storage_refs(self.buffer)
        return refs is not None and self.baseline is not None and refs > self.baseline

    def copying(self) -> bool:
        return self.event is not None and not self.event.query()


@dataclass(eq=False)
class _PinnedRing:
    """A bounded ring of reusable host buffers for one column.

    A slot is reused only when (a) no tensor viewing it is alive and (b) the copy out of it has
    finished (its event); when every slot is held, `put` returns freshly allocated memory that
    the ring does not keep, so the ring never grows past `capacity` slots.
    """

    capacity: int
    allocate: Callable[[tuple[int, ...], torch.dtype], torch.Tensor] | None = None
    slots: list[_Slot] = field(default_factory=list)
    largest: int = 0
    _next: int = 0

    def put(self, src: torch.Tensor) -> tuple[torch.Tensor, _Slot | None]:
        """Copy `src` into a free slot; return the slot's view and the slot (None if unpooled)."""
        allocate = self.allocate or _pinned_empty
        nbytes = src.numel() * src.element_size()
        self.largest = max(self.largest, nbytes)
        slot = self._free_slot()
        if slot is None:
            return allocate(tuple(src.shape), src.dtype).copy_(src), None
        if slot.buffer.numel() < nbytes:
            slot.buffer = allocate((self.largest,), torch.uint8)
            slot.baseline = _storage_refs(slot.buffer)
        view = slot.buffer[:nbytes].view(src.dtype).view(src.shape).copy_(src)
        slot.view, slot.event = weakref.ref(view), None
        return view, slot

    def _free_slot(self) -> _Slot | None:
        """A slot safe to overwrite, oldest first; a new one while under capacity; else None."""
        n = len(self.slots)
        order = [self.slots[(self._next + i) % n] for i in range(n)]
        chosen = next((s for s in order if not s.in_use() and not s.copying()), None)
        if chosen is None and n < self.capacity:
            buffer = (self.allocate or _pinned_empty)((self.largest,), torch.uint8)
            self.slots.append(_Slot(buffer, _storage_refs(buffer)))
            return self.slots[-1]
        if chosen is None:  # only copies in flight hold the rest: wait for the oldest
            chosen = next((s for s in order if not s.in_use()), None)
            if chosen is None:
                return None
            chosen.event.synchronize()
        self._next = (self.slots.index(chosen) + 1) % n
        return chosen


# ----------------------------------------------------------------------------- per-batch work
@dataclass
class _Failure:
    exc: BaseException
    index: int


class _Work:
    """What the thread does to each batch: stage, pin into rings, copy on the side stream."""

    def __init__(self, stage, pin: bool, device, stats: Stats | None, capacity: int):
        self.stage, self.pin, self.device, self.stats = stage, pin, device, stats
        self.capacity = capacity
        self.rings: dict[str, _PinnedRing] = {}
        self.stream = torch.cuda.Stream(device) if device is not None else None

    def __call__(self, batch: Batch) -> tuple[Batch, Any]:
        if self.stage is not None:
            batch = self._timed("stage_s", self.stage, batch)
        slots: list[_Slot] = []
        if self.pin:
            batch = self._timed("pin_s", _map_tensors, batch, lambda k, t: self._pin(k, t, slots))
        if self.device is None:
            return batch, None
        return self._timed("copy_s", self._copy, batch, slots)

    def _pin(self, name: str, t: torch.Tensor, slots: list[_Slot]) -> torch.Tensor:
        if t.device.type != "cpu" or t.is_pinned():
            return t
        ring = self.rings.setdefault(name, _PinnedRing(self.capacity))
        view, slot = ring.put(t)
        if slot is not None:
            slots.append(slot)
        return view

    def _copy(self, batch: Batch, slots: list[_Slot]) -> tuple[Batch, Any]:
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
            if self.stats is not None:
                self.stats.add(counter, time.perf_counter() - start)


# ----------------------------------------------------------------------------- the thread
def _put(out_queue: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put unless `stop` is set first (see the shutdown protocol); True if it went in."""
    while not stop.is_set():
        try:
            out_queue.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _close_source(it: Any, source: Any) -> None:
    for obj in (it,) if it is source else (it, source):
        close = getattr(obj, "close", None)
        if callable(close):
            close()


def _prefetch_loop(source: Iterable, out_queue: queue.Queue, stop: threading.Event,
                   work: _Work) -> None:
    """The producer thread (see the shutdown protocol at the top of this module)."""
    if work.device is not None:
        torch.cuda.set_device(work.device)
    it, index = None, 0
    try:
        it = iter(source)
        while not stop.is_set():
            try:
                batch = next(it)
            except StopIteration:
                _put(out_queue, _END, stop)
                return
            if not _put(out_queue, work(batch), stop):
                return
            index += 1
    except Exception as exc:  # noqa: BLE001 - re-raised in the consumer at this position
        _put(out_queue, _Failure(exc, index), stop)
    finally:
        _close_source(it if it is not None else source, source)


# ----------------------------------------------------------------------------- the consumer
class Prefetcher:
    """Pulls batches from `source` on a background thread, `depth` batches ahead of the consumer.

    `stage(batch)` (e.g. decoding) runs on that thread, then tensors are pinned (a reused ring of
    pinned buffers when `pin_memory=True` and CUDA exists) and copied to `device` on a side CUDA
    stream. `depth=0` does the same work synchronously, with no thread. See docs/prefetch.md.

        with Prefetcher(loader_batches, depth=4, pin_memory=True, device="cuda") as batches:
            for batch in batches:
                loss = model(batch["image"]).sum()
    """

    def __init__(self, source: Iterable[Batch], *, depth: int = 2, pin_memory: bool = False,
                 device: torch.device | str | None = None,
                 stage: Callable[[Batch], Batch] | None = None,
                 stats: Stats | None = None, name: str = "sparkfeed-prefetch"):
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
            raise ValueError(f"`depth` should be a non-negative integer, but got depth={depth!r}")
        if stage is not None and not callable(stage):
            raise ValueError(f"`stage` should be a callable or None, but got stage={stage!r}")
        self._device = _resolve_device(device)
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
        self._thread.start()

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
        if item is _END:
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            self._raise(item)
        self._index += 1
        self._count("prefetch_batches", 1)
        return self._hand_over(*item)

    def _produce(self) -> Any:
        """depth=0: the loop body, inline."""
        try:
            batch = next(self._it)
        except StopIteration:
            return _END
        except Exception as exc:  # noqa: BLE001 - same path as the thread
            return _Failure(exc, self._index)
        try:
            return self._work(batch)
        except Exception as exc:  # noqa: BLE001
            return _Failure(exc, self._index)

    def _get(self) -> Any:
        """Get with a timeout, checking the producer is alive (see the shutdown protocol)."""
        while True:
            try:
                item = self._queue.get(timeout=_POLL_S)
                if self._stats is not None:
                    self._stats.set("prefetch_queue_depth", self._queue.qsize())
                return item
            except queue.Empty:
                if not self._thread.is_alive():
                    try:
                        return self._queue.get_nowait()
                    except queue.Empty:
                        self.close()
                        raise WorkerError(f"prefetch thread {self._name!r} exited without "
                                          f"delivering batch {self._index} or an error") from None

    def _raise(self, failure: _Failure) -> None:
        """Re-raise the producer's exception itself: type, attributes and traceback kept."""
        exc = failure.exc
        delivered = f"batches 0..{failure.index - 1} were delivered" if failure.index else "no batch was delivered"
        exc.add_note(f"(raised in prefetch thread {self._name!r} while producing batch "
                     f"{failure.index}; {delivered})")
        if isinstance(exc, StopIteration):  # would silently end the consumer's loop (PEP 479)
            raise RuntimeError(f"stage or source raised StopIteration at batch {failure.index}") from exc
        raise exc

    def _hand_over(self, batch: Batch, event: Any) -> Batch:
        """Order the consumer's stream after the copy; tell the allocator who uses the memory."""
        if event is None:
            return batch
        current = torch.cuda.current_stream(self._device)
        current.wait_event(event)

        def adopt(_name: str, t: torch.Tensor) -> torch.Tensor:
            if t.is_cuda:
                t.record_stream(current)
            return t
        return _map_tensors(batch, adopt)

    def _count(self, name: str, value: float) -> None:
        if self._stats is not None:
            self._stats.add(name, value)

    def close(self) -> None:
        """Stop the thread and close the source (the order is in the shutdown protocol)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is None:
            _close_source(self._it, self._source)
            return
        deadline = time.monotonic() + _JOIN_S
        while self._thread.is_alive() and time.monotonic() < deadline:
            _drain(self._queue)
            self._thread.join(timeout=_POLL_S)
        _drain(self._queue)

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


def _drain(q: queue.Queue) -> None:
    try:
        while True:
            q.get_nowait()
    except queue.Empty:
        pass
