"""Shuffle blocks shared by the thread lanes of one process, and read by several threads.

A block must be read whole before its first position is delivered (`stream.StreamReader`).
`SharedBlocks` lets the lanes of one iteration that need the same block (a lane boundary falls
inside it) read it once; `PendingBlock` lets several threads (those lanes, and helper threads)
read the runs of one block in parallel, and the last one build it. They work with any reader that
has `stream`, `_read_run_part(run)` and `_finish_block(block, parts)` (a `StreamReader`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: stream.py imports this module
    from .stream import Block, EpochStream, StreamReader, Shuffled

__all__ = ["SharedBlocks", "PendingBlock"]


class SharedBlocks:
    """Blocks that several lanes of one process deliver positions of (a lane boundary falls
    inside them), read once and handed to each such lane: thread lanes read no byte twice.

    `need[b]` counts the lanes of this process whose spans touch block b; each lane releases a
    block when it moves past it (or closes), and the block is dropped when the last one has.
    A lane waiting for a block another lane is reading waits on that block's lock only, and
    reading never waits on anything else, so there is no cycle; if the read fails, the waiting
    lane reads the block itself (and meets the same error, naming the shard)."""

    # The shares of the last iterations, held strongly: a lane may start after another lane of
    # its iteration has finished and dropped the share, and must still find it (else it would
    # read the blocks they share again). Lanes of an abandoned iteration that never started
    # never release their blocks: holding only the last `_RECENT` shares bounds what they keep.
    _registry: "OrderedDict[tuple, SharedBlocks]" = OrderedDict()
    _registry_lock = threading.Lock()
    _RECENT = 2

    def __init__(self, stream: EpochStream, lanes):
        self._lanes = lanes  # held: the registry key is its id
        self._lock = threading.Lock()
        self._entries: dict[int, PendingBlock] = {}  # block -> its read in progress, or done
        touched = [_blocks_touched(stream, spans) for spans in lanes]
        self._need = {b: n for b in set().union(*touched)
                      if (n := sum(b in t for t in touched)) > 1}
        self._pending = [t & set(self._need) for t in touched]  # per lane: shared blocks to release
        # per shared block, the lane that reaches it first: the first lane that starts inside it
        # (lanes start together; for the lane before, it is the last block). It alone tells its
        # read-ahead the block's runs (`stream._lane_units`), so no two lanes fetch one run.
        firsts = [min(t) if t else None for t in touched]
        self._first_lane = {b: next((k for k, f in enumerate(firsts) if f == b), None) for b in self._need}

    @classmethod
    def for_lanes(cls, stream: EpochStream, lanes) -> SharedBlocks | None:
        """The one object for this iteration's lanes (the list the loader hands every lane)."""
        if not stream.shuffle or lanes is None or len(lanes) < 2:
            return None
        key = (id(lanes), stream.seed, stream.epoch, stream.block)
        with cls._registry_lock:
            shared = cls._registry.get(key)
            if shared is None or shared._lanes is not lanes:
                shared = cls(stream, lanes)
                cls._registry[key] = shared
                while len(cls._registry) > cls._RECENT:
                    cls._registry.popitem(last=False)
            return shared

    def get(self, b: int, reader: StreamReader) -> Shuffled:
        """Block b: lanes that need it at the same time read its runs together."""
        if b not in self._need:
            return reader._read_block(b)
        with self._lock:
            entry, new = self._entries.get(b), False
            if entry is None:
                entry, new = PendingBlock(len(reader.stream.runs_of(b))), True
                self._entries[b] = entry
        if new:
            reader._start_helpers(entry, b)
        return entry.join(reader, b)

    def shares(self, b: int) -> bool:
        """True for a block that several lanes of this process deliver positions of."""
        return b in self._need

    def first_lane(self, b: int) -> int | None:
        """The lane that reaches shared block b first (see `__init__`)."""
        return self._first_lane.get(b)

    def release(self, b: int, lane: int | None = None) -> None:
        with self._lock:
            if b not in self._need:
                return
            if lane is not None:
                if b not in self._pending[lane]:
                    return
                self._pending[lane].discard(b)
            self._need[b] -= 1
            if self._need[b] <= 0:
                self._entries.pop(b, None)

    def leave(self, lane: int) -> None:
        """A lane closed: release every shared block it has not released yet."""
        for b in list(self._pending[lane]):
            self.release(b, lane)


class PendingBlock:
    """A shared block being read: each lane that needs it takes runs not yet taken, reads them
    (outside the lock), and the lane that finds every run read builds the block; the others
    wait for it. A lane whose read fails gives its run back before raising, so a waiting lane
    takes it over (and meets the same error); nobody waits on a run nobody is reading."""

    def __init__(self, runs: int):
        self.cond = threading.Condition()
        self.parts: list[list[Block] | None] | None = [None] * runs
        self.taken: set[int] = set()
        self.building = False
        self.block: Shuffled | None = None

    def join(self, reader: StreamReader, b: int) -> Shuffled:
        first = int(reader.stream.block_runs[b])
        with self.cond:
            while self.block is None:
                todo = next((i for i, p in enumerate(self.parts) if p is None and i not in self.taken), None)
                if todo is not None:
                    self.taken.add(todo)
                    self._unlocked(lambda: reader._read_run_part(first + todo), todo)
                elif not self.taken and not self.building:
                    self.building = True
                    self._unlocked(lambda: reader._finish_block(b, self.parts), None)
                else:
                    self.cond.wait()
            return self.block

    def help(self, reader: StreamReader, b: int) -> None:
        """A helper thread: read runs nobody has taken, then stop (never waits, never builds).
        A failed run is given back (`_unlocked`) for the lane to read and raise."""
        first = int(reader.stream.block_runs[b])
        try:
            with self.cond:
                while self.block is None and self.parts is not None:
                    todo = next((i for i, p in enumerate(self.parts) if p is None and i not in self.taken), None)
                    if todo is None:
                        return
                    self.taken.add(todo)
                    try:
                        self._unlocked(lambda: reader._read_run_part(first + todo), todo)
                    except Exception:  # noqa: BLE001 - the lane that needs the run raises it
                        return
        finally:
            reader.close()

    def _unlocked(self, work, part: int | None) -> None:
        """Run `work` without the lock, then record its result (a run, or the block)."""
        self.cond.release()
        try:
            result = work()
        except BaseException:
            self.cond.acquire()
            self.taken.discard(part)
            self.building = self.building and part is not None
            self.cond.notify_all()
            raise
        self.cond.acquire()
        if part is None:
            self.block, self.parts = result, None
        else:
            self.parts[part] = result
            self.taken.discard(part)
        self.cond.notify_all()


def _blocks_touched(stream: EpochStream, spans) -> set[int]:
    out: set[int] = set()
    for lo, hi in spans:
        if hi > lo:
            out.update(range(stream.block_of(lo), stream.block_of(hi - 1) + 1))
    return out
