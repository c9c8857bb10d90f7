"""Pinned host memory reused batch after batch: one bounded ring of buffers per column, a slot
reused only once no tensor views it and the copy out of it has finished (its CUDA event).
The prefetch thread pins through it (`prefetch._Work`); pinning a fresh buffer per batch costs
more than the copy itself."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


def pinned_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, pin_memory=True)


def _storage_refs(t: torch.Tensor) -> int | None:
    """How many tensors share `t`'s storage (sub-views included); None where torch hides it."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    return None if use_count is None else use_count(t.untyped_storage()._cdata)


@dataclass(eq=False)
class Slot:
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
class PinnedRing:
    """A bounded ring of reusable host buffers for one column.

    A slot is reused only when (a) no tensor viewing it is alive and (b) the copy out of it has
    finished (its event); when every slot is held, `put` returns freshly allocated memory that
    the ring does not keep, so the ring never grows past `capacity` slots.
    """

    capacity: int
    allocate: Callable[[tuple[int, ...], torch.dtype], torch.Tensor] | None = None
    slots: list[Slot] = field(default_factory=list)
    largest: int = 0
    _next: int = 0

    def put(self, src: torch.Tensor) -> tuple[torch.Tensor, Slot | None]:
        """Copy `src` into a free slot; return the slot's view and the slot (None if unpooled)."""
        allocate = self.allocate or pinned_empty
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

    def _free_slot(self) -> Slot | None:
        """A slot safe to overwrite, oldest first; a new one while under capacity; else None."""
        n = len(self.slots)
        order = [self.slots[(self._next + i) % n] for i in range(n)]
        chosen = next((s for s in order if not s.in_use() and not s.copying()), None)
        if chosen is None and n < self.capacity:
            buffer = (self.allocate or pinned_empty)((self.largest,), torch.uint8)
            self.slots.append(Slot(buffer, _storage_refs(buffer)))
            return self.slots[-1]
        if chosen is None:  # only copies in flight hold the rest: wait for the oldest
            chosen = next((s for s in order if not s.in_use()), None)
            if chosen is None:
                return None
            chosen.event.synchronize()
        self._next = (self.slots.index(chosen) + 1) % n
        return chosen
