"""What the thread lanes of one process share, and shuffle blocks read by several threads.

A lane boundary (between the thread lanes of one iteration) can fall inside what is read whole:
a shuffle block (`SharedBlocks`), or, unshuffled, a unit such as a Parquet row group
(`SharedUnits`). Either is read once and handed to every lane that delivers positions of it.
`PendingBlock` lets several threads (those lanes, and helper threads) read the runs of one
block in parallel, and the last one build it. They work with any reader that has `stream`,
`_pending_block(block)`, `_read_run_part(run, into, part)` and
`_finish_block(block, parts, order, into)` (a `StreamReader`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import TYPE_CHECKING, Callable

import numpy as np

from . import forks
from .threads import stopping

if TYPE_CHECKING:  # annotations only: stream.py imports this module
    from .epoch import EpochStream
    from .segments import Block, Shuffled
    from .stream import StreamReader

__all__ = ["SharedBlocks", "SharedUnits", "PendingBlock"]


class _LaneShare:
    """What several thread lanes of one iteration need: `need[x]` counts the lanes whose spans
    touch x (only x touched by two or more are kept); each lane releases x when it is done with
    it (or closes), and x's entry is dropped when the last one has. One object per iteration,
    found through the lanes list the loader hands every lane (`for_lanes`)."""

    # The shares of the last iterations, held strongly: a lane may start after another lane of
    # its iteration has finished and dropped the share, and must still find it (else it would
    # read what they share again). Lanes of an abandoned iteration that never started never
    # release: holding only the last `_RECENT` shares bounds what they keep.
    _registry: "OrderedDict[tuple, _LaneShare]" = OrderedDict()
    _registry_lock = threading.Lock()
    _RECENT = 2

    def __init__(self, lanes, touched: list[set[int]]):
        self._lanes = lanes  # held: the registry key is its id
        self._lock = threading.Lock()
        self._entries: dict = {}  # x -> its read in progress, or done
        self._need = {x: n for x in set().union(*touched) if (n := sum(x in t for t in touched)) > 1}
        self._pending = [t & set(self._need) for t in touched]  # per lane: what it has to release
        self._sharing = dict(self._need)  # as `_need` starts: it counts down as lanes release

    @classmethod
    def for_lanes(cls, stream: EpochStream, lanes):
        """The one object of this kind for this iteration's lanes (`SharedBlocks` for a shuffled
        stream, `SharedUnits` for an unshuffled one); None for fewer than two lanes."""
        if lanes is None or len(lanes) < 2:
            return None
        key = (cls.__name__, id(lanes), stream.seed, stream.epoch, stream.block)
        with cls._registry_lock:
            shared = cls._registry.get(key)
            if shared is None or shared._lanes is not lanes:
                shared = cls(stream, lanes)
                cls._registry[key] = shared
                while len(cls._registry) > cls._RECENT:
                    cls._registry.popitem(last=False)
            return shared

    def shares(self, x: int) -> bool:
        """True for what several lanes of this process deliver positions of."""
        return x in self._need

    def held_by(self, lane: int) -> list:
        """What lane `lane` shares with other lanes and has not released yet, ascending."""
        with self._lock:
            return sorted(self._pending[lane])

    def sharing(self, x: int) -> int:
        """How many lanes of this process deliver positions of x (1 where x is not shared)."""
        return self._sharing.get(x, 1)

    def release(self, x: int, lane: int | None = None) -> None:
        with self._lock:
            if x not in self._need:
                return
            if lane is not None:
                if x not in self._pending[lane]:
                    return
                self._pending[lane].discard(x)
            self._need[x] -= 1
            if self._need[x] <= 0:
                self._entries.pop(x, None)

    def leave(self, lane: int) -> None:
        """A lane closed: release everything it has not released yet."""
        for x in list(self._pending[lane]):
            self.release(x, lane)


forks.free_at_fork(_LaneShare._registry_lock)  # (a forked child's own thread lanes take it)


class SharedBlocks(_LaneShare):
    """Shuffle blocks that several lanes of one process deliver positions of (a lane boundary
    falls inside them), read once and handed to each such lane: thread lanes read no byte twice.

    A lane waiting for a block another lane is reading waits on that block's lock only, and
    reading never waits on anything else, so there is no cycle; if the read fails, the waiting
    lane reads the block itself (and meets the same error, naming the shard)."""

    def __init__(self, stream: EpochStream, lanes):
        touched = [_blocks_touched(stream, spans) for spans in lanes]
        super().__init__(lanes, touched)
        # per shared block, the lane that reaches it first: the first lane that starts inside it
        # (lanes start together; for the lane before, it is the last block). It alone tells its
        # read-ahead the block's runs (`epoch.lane_units`), so no two lanes fetch one run.
        firsts = [min(t) if t else None for t in touched]
        self._first_lane = {b: next((k for k, f in enumerate(firsts) if f == b), None) for b in self._need}

    def first_lane(self, b: int) -> int | None:
        """The lane that reaches shared block b first (see `__init__`)."""
        return self._first_lane.get(b)

    def first_of(self, lane: int | None) -> list[int]:
        """The shared blocks `lane` reaches first, ascending."""
        return sorted(b for b, first in self._first_lane.items() if first == lane)

    def get(self, b: int, reader: StreamReader) -> Shuffled:
        """Block b: lanes that need it at the same time read its runs together."""
        if b not in self._need:
            return reader._read_block(b)
        with self._lock:
            entry, new = self._entries.get(b), False
            if entry is None:
                entry, new = reader._pending_block(b), True
                self._entries[b] = entry
        if new:
            reader._start_helpers(entry, b)
        return entry.join(reader, b)


class SharedUnits(_LaneShare):
    """Unshuffled: the units that a lane boundary falls inside, read once for the thread lanes
    of one process that deliver rows of them. A Parquet row group is read whole, so each of
    those lanes would read and convert all of it: a file of one large row group (Spark writes
    128 MB ones by default) read by K thread lanes was read K times.

    The lane that asks first reads the unit (alone, not in a run with the units after it) and
    leaves it here; the others take it, waiting while it is read. A failed read is not shared:
    a waiting lane reads the unit itself (and meets the same error, naming the shard). A unit
    stays here until every lane that needs it has taken it, so one a lane reaches at its end
    waits in memory meanwhile: at most K-1 units per iteration, each no larger than a default
    shuffle block (`stream.block` samples, 256 MiB stored); a larger one is read by each lane,
    as before, rather than held for a whole epoch."""

    def __init__(self, stream: EpochStream, lanes):
        ends = [{k for k in _end_units(stream, spans) if stream.units[k].num_rows <= stream.block}
                for spans in lanes]
        super().__init__(lanes, ends)
        self._sorted = np.array(sorted(self._need), dtype=np.int64)

    def run_end(self, k: int, end: int) -> int:
        """Where a run of units from k (not shared) must stop: before the next shared unit,
        which is read alone."""
        at = int(np.searchsorted(self._sorted, k, side="right"))
        return min(end, int(self._sorted[at])) if at < len(self._sorted) else end

    def get(self, k: int, lane: int | None, read: Callable[[], tuple]):
        """Unit k as `read()` gives it, read by the first lane that asks (in place: no lane
        fetches a shared unit ahead, `epoch.lane_units`); its entry holds the result, None
        when that read failed. A lane that took it already and asks again (a resumed lane whose
        spans touch it twice) reads it alone."""
        with self._lock:
            alone = lane is None or k not in self._pending[lane]
            entry = None if alone else self._entries.get(k)
            mine = not alone and entry is None
            if mine:
                entry = self._entries[k] = Future()
        if alone:
            return read()
        try:
            if mine:
                try:
                    value = read()
                except BaseException:
                    entry.set_result(None)
                    raise
                entry.set_result(value)
                return value
            value = entry.result()
            return read() if value is None else value
        finally:
            self.release(k, lane)


class PendingBlock:
    """A shared block being read: each lane that needs it takes runs not yet taken, reads them
    (outside the lock), and the lane that finds every run read builds the block; the others
    wait for it. A lane whose read fails gives its run back before raising, so a waiting lane
    takes it over (and meets the same error); nobody waits on a run nobody is reading.

    `into` (opaque here: `segments.BlockColumns`) receives each run's number columns as the
    thread that read it places them, and `make_order()` gives the block's order: a thread with
    no run left to take computes it while the last runs are read, so that building the block
    after its last run is quick while the other lanes wait for it."""

    def __init__(self, runs: int, into=None, make_order: Callable[[], np.ndarray] | None = None):
        self.cond = threading.Condition()
        self.parts: list[list[Block] | None] | None = [None] * runs
        self.taken: set[int] = set()
        self.building = False
        self.block: Shuffled | None = None
        self.into, self.make_order = into, make_order
        self.order: np.ndarray | None = None
        self.ordering = False

    def join(self, reader: StreamReader, b: int) -> Shuffled:
        first = int(reader.stream.block_runs[b])
        with self.cond:
            while self.block is None:
                todo = self._todo()
                if todo is not None:
                    if stopping():  # closed, or the interpreter is exiting: no more reads
                        raise RuntimeError(f"shuffle block {b} not read: its lanes were closed")
                    self.taken.add(todo)
                    self._unlocked(lambda: reader._read_run_part(first + todo, self.into, todo), todo)
                elif not self.taken and not self.building and not self.ordering:
                    self.building = True
                    self._unlocked(lambda: reader._finish_block(b, self.parts, self.order, self.into), None)
                elif self._order_wanted():
                    self._order()
                else:
                    self.cond.wait()
            return self.block

    def help(self, reader: StreamReader, b: int) -> None:
        """A helper thread: read runs nobody has taken (then the block's order, if nobody has
        started it), then stop (never waits, never builds). A failed run is given back
        (`_unlocked`) for the lane to read and raise."""
        first = int(reader.stream.block_runs[b])
        try:
            with self.cond:
                while self.block is None and self.parts is not None:
                    todo = self._todo()
                    if stopping():  # no more reads (threads.py): the lane gives up too
                        return
                    if todo is None:
                        if self._order_wanted():
                            self._order()
                        return
                    self.taken.add(todo)
                    try:
                        self._unlocked(lambda: reader._read_run_part(first + todo, self.into, todo), todo)
                    except Exception:  # noqa: BLE001 - the lane that needs the run raises it
                        return
        except Exception:  # noqa: BLE001 - the order failed: the builder computes it and raises
            return
        finally:
            reader.close()

    def _todo(self) -> int | None:
        return next((i for i, p in enumerate(self.parts) if p is None and i not in self.taken), None)

    def _order_wanted(self) -> bool:
        """Nobody has the order or is drawing it, and no builder draws it itself (`_finish_block`
        draws it when it starts without one: a thread that drew it beside would draw it twice)."""
        return self.make_order is not None and self.order is None and not self.ordering and not self.building

    def _order(self) -> None:
        """Compute the block's order without the lock (holding it on entry and exit)."""
        self.ordering = True
        self.cond.release()
        order = None
        try:
            order = self.make_order()
        finally:
            self.cond.acquire()
            self.order, self.ordering = order, False
            self.cond.notify_all()

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


def _end_units(stream: EpochStream, spans) -> set[int]:
    """Unshuffled: the units (holding samples) a lane's spans start or end in. Only these can
    hold positions of another lane too: a unit inside a span is the span's alone."""
    out: set[int] = set()
    for lo, hi in spans:
        if hi > lo:
            out.add(int(np.searchsorted(stream.starts, lo, side="right")) - 1)
            out.add(int(np.searchsorted(stream.starts, hi - 1, side="right")) - 1)
    return out
