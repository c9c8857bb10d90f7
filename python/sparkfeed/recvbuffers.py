"""Buffers that remote range reads receive into, reused once nothing refers to them any more.

Why: the kernel zeroes a page the first time a process touches it. Received into a fresh buffer
from the memory pool, every byte over HTTP paid that on top of its copy out of the socket: the
read-ahead threads end with their reader, and the pool returns what they freed to the system,
so each epoch's bytes landed in fresh pages again (about 1 ms per MB of fault and zeroing on
the 2-core machine, more than the receive itself; docs/deploy.md). Here a buffer goes back to
a free list when the last view, Arrow buffer or array over it is gone (CPython's reference
count, through the `base` of a pyarrow foreign buffer) and the next range of a fitting size is
received into the same, already-mapped pages.

Reuse is safe by construction: a buffer is only taken again once its `_Lease` has died, and the
lease lives as long as anything made from the received bytes (slices included). What is kept
free is bounded (`KEEP_BYTES`); ranges under `MIN_BYTES` come from the pool as before.
"""

from __future__ import annotations

import bisect
import collections
import os
import threading

# bytes of free buffers kept for reuse per process: what two readers' read-ahead holds (64 MiB
# each, `readahead.READ_AHEAD_BYTES`); SPARKFEED_RECEIVE_KEEP_BYTES=0 turns reuse off
KEEP_BYTES = int(os.environ.get("SPARKFEED_RECEIVE_KEEP_BYTES", 128 << 20))
MIN_BYTES = 256 << 10  # smaller ranges (footers, indexes) are not worth a free list
_GRAIN = 256 << 10  # capacities are rounded up to this, so that ranges of near sizes share buffers
_SLACK = 2  # a free buffer serves a range of at least 1/_SLACK of its capacity


class _Lease:
    """Owns one buffer while anything made from it lives; returns it when collected."""

    __slots__ = ("buffer", "owner")

    def __init__(self, buffer, owner: "ReceiveBuffers"):
        self.buffer, self.owner = buffer, owner

    def __del__(self):
        self.owner._returned.append(self.buffer)  # deque.append: atomic, no lock in a finaliser


class ReceiveBuffers:
    """A free list of receive buffers for one process (`take`)."""

    def __init__(self, keep_bytes: int = KEEP_BYTES):
        self.keep_bytes = keep_bytes
        self._lock = threading.Lock()
        self._free: list = []  # (capacity, sequence, buffer), sorted
        self._kept = 0
        self._seq = 0
        self._returned: collections.deque = collections.deque()
        self.reused = self.allocated = 0  # counts, for tests and diagnosis

    def take(self, nbytes: int) -> tuple[memoryview, memoryview]:
        """(where to receive, what to hand on): two byte views of the same `nbytes`, of a reused
        buffer where a free one fits, else of a new one. The first is writable and must not
        outlive the receive; the second (read-only) holds the buffer until nothing refers to it."""
        import pyarrow as pa

        if nbytes < MIN_BYTES or self.keep_bytes <= 0:
            view = memoryview(pa.allocate_buffer(nbytes)).cast("B")
            return view, view
        with self._lock:
            self._take_returned()
            buffer = self._pop_fitting(nbytes)
            if buffer is None:
                self.allocated += 1
            else:
                self.reused += 1
        if buffer is None:  # (allocated outside the lock)
            buffer = pa.allocate_buffer(-(-nbytes // _GRAIN) * _GRAIN)
        held = pa.foreign_buffer(buffer.address, nbytes, base=_Lease(buffer, self))
        return memoryview(buffer).cast("B")[:nbytes], memoryview(held).cast("B")

    def free_bytes(self) -> int:
        """Bytes held in free buffers now (returned ones included)."""
        with self._lock:
            self._take_returned()
            return self._kept

    def forget(self) -> None:
        """Drop the free list (a forked child: its pages are the parent's until written)."""
        self._lock = threading.Lock()
        self._free, self._kept = [], 0
        self._returned = collections.deque()

    def _pop_fitting(self, nbytes: int):
        at = bisect.bisect_left(self._free, (nbytes,))
        if at == len(self._free) or self._free[at][0] > nbytes * _SLACK:
            return None
        capacity, _, buffer = self._free.pop(at)
        self._kept -= capacity
        return buffer

    def _take_returned(self) -> None:
        """Move returned buffers into the free list, the largest dropped while over the budget."""
        while self._returned:
            buffer = self._returned.popleft()
            self._seq += 1
            bisect.insort(self._free, (buffer.size, self._seq, buffer))
            self._kept += buffer.size
        while self._kept > self.keep_bytes:
            capacity, _, _ = self._free.pop()
            self._kept -= capacity


_BUFFERS = ReceiveBuffers()


def take(nbytes: int) -> tuple[memoryview, memoryview]:
    """(where to receive, what to hand on) for a range of `nbytes` (`ReceiveBuffers.take`)."""
    return _BUFFERS.take(nbytes)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_BUFFERS.forget)
