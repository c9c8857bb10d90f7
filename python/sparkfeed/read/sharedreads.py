"""What the readers of one iteration share: Parquet footers read once, fetches one lane started
that another lane's reader takes instead of fetching again, and small files' bytes held while
their row groups are read (a tar's index, a footer, a small file: one request per iteration)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TypeVar

from .. import retries

T = TypeVar("T")

# Bytes of small files (`SharedReads.hold`) held per iteration and process: 256 files of 64 KiB.
WHOLE_HELD_BYTES = 16 << 20


class SharedReads:
    """What the readers of one iteration in one process share: the thread lanes, the threads
    that read a shuffle block's runs, and their read-ahead. Each reader keeps its own open files
    and its own read-ahead; without this each would read, parse and check every file's footer
    again (over HTTP or S3, a request each), and a lane would fetch again runs of a shuffle block
    it shares with another lane that the other's read-ahead has fetched.

    * footers: what opening a Parquet file learns (its parsed footer, checked against the
      manifest), once per file (`once`, `get`), and footers read-ahead is fetching
      (`fetching`, `fetched`; a tar's index text the same way, under `("index", path)`);
    * version checks of indexed files (`Reader._check_unchanged`): started by read-ahead
      (`checking`, `check_of`), or made in place once (`once`, under `("version", path)`);
    * offered fetches: a read-ahead fetch of units that another reader may read (`offer`,
      `offered`);
    * small files fetched whole (`hold`, `whole`, `done`): a Parquet file no larger than its
      footer read is fetched once, in one request, and its row groups served from those bytes
      to every read-ahead task and lane that needs them, until each has been read;
    * `ranges_ignored`: set once any reader or read-ahead task of the iteration meets an HTTP
      server that answers Range requests with the whole file (`TarReader._no_ranges`,
      `ParquetReader._no_ranges`); the filter's count pass's, for the first iteration's lanes.

    Per iteration, as a reader's own files are: a file replaced between epochs is read anew.
    Bounded to the last `limit` entries of each kind, and the small files' bytes to
    `held_bytes`; a copy for another process starts empty."""

    def __init__(self, limit: int = 4096, held_bytes: int | None = None):
        self._limit, self._lock = limit, threading.Lock()
        self._held_bytes = WHOLE_HELD_BYTES if held_bytes is None else held_bytes
        self._wholes: OrderedDict[str, _Whole] = OrderedDict()  # small files' bytes (`hold`)
        self._read: OrderedDict[str, set] = OrderedDict()  # small file -> row groups read (`done`)
        self._known: OrderedDict[str, Future] = OrderedDict()
        self._fetches: OrderedDict[str, Future] = OrderedDict()  # footers being fetched ahead
        self._offers: OrderedDict[object, Future] = OrderedDict()  # unit key -> its fetch
        self._claims: OrderedDict[object, None] = OrderedDict()  # keys a reader read in place
        self._checks: OrderedDict[str, Future] = OrderedDict()  # files' version checks started ahead
        self.ranges_ignored = threading.Event()

    def ranged(self, dataset: str, instead: str, fetch: Callable[..., T], *args, **kwargs) -> T | None:
        """A read-ahead task's range request, `fetch(*args, **kwargs)`, unless a server that
        ignores Range requests was met (`ranges_ignored`; None: the reader reads the file whole).
        The first failure that says so sets the flag (and is logged once, with what is read
        `instead`), so the tasks queued behind it, of every lane, send no request the server
        would answer with the whole file (14 GETs of each 1.3 MB tar shard under CI's load)."""
        if self.ranges_ignored.is_set():
            return None
        try:
            return fetch(*args, **kwargs)
        except ValueError as exc:
            if retries.ignores_ranges(exc, dataset, instead):
                self.ranges_ignored.set()
            raise

    def get(self, path: str):
        """What was learnt of the file at `path` (relative to the dataset), else None."""
        with self._lock:
            entry = self._known.get(path)
        return entry.result() if entry is not None and entry.done() and not entry.exception() else None

    def once(self, path, learn: Callable[[], T]) -> T:
        """`learn()` for the file at `path`, run by the first reader that asks; the others that
        ask meanwhile wait for it. If it fails, each reader runs `learn` itself (and meets its
        own error, as without sharing). `path` may be a tuple naming something else learnt of
        the file (`("version", path)`: `Reader._check_unchanged`)."""
        with self._lock:
            entry, mine = self._known.get(path), False
            if entry is None:
                entry, mine = Future(), True
                self._put(self._known, path, entry)
        if not mine:
            try:
                return entry.result()
            except Exception:  # noqa: BLE001 - the first reader's failure: try for ourselves
                return learn()
        try:
            entry.set_result(learn())
        except BaseException as exc:
            with self._lock:
                if self._known.get(path) is entry:
                    del self._known[path]
            entry.set_exception(exc)
            raise
        return entry.result()

    def fetching(self, path: str, start: Callable[[], Future | None]) -> Future | None:
        """The fetch of the file's footer that a reader's read-ahead started (`start()`, called
        for the first reader that asks), so the other readers wait for it instead of fetching
        the footer again. A fetch cancelled with its reader is started anew. (Also a tar's index
        text, under `("index", path)`.)"""
        return self._started(self._fetches, path, start)

    def checking(self, path: str, start: Callable[[], Future | None]) -> None:
        """The check of the file's indexed version (`Reader._check_unchanged`) that a reader's
        read-ahead started, as `fetching` starts a footer's: every reader of the iteration waits
        for it (`check_of`) instead of checking again."""
        self._started(self._checks, path, start)

    def _started(self, table: OrderedDict, path: str, start: Callable[[], Future | None]) -> Future | None:
        with self._lock:
            future = table.get(path)
            if future is None or future.cancelled():
                future = start()
                if future is not None:
                    self._put(table, path, future)
            return future

    def check_of(self, path: str) -> Future | None:
        """The version check read-ahead started for `path`, or None."""
        with self._lock:
            return self._checks.get(path)

    def fetched(self, path: str):
        """The footer read-ahead fetched for `path` (waiting for it), None if none or failed."""
        with self._lock:
            future = self._fetches.get(path)
        return _result(future)

    def reserve(self, keys) -> dict:
        """Of `keys` (units a reader is about to fetch ahead and offer), those no reader has
        read in place or offered, each with the place now held for its fetch (`offer` fills
        it): a reader that asks for one meanwhile waits for the offer instead of reading it in
        place beside the fetch."""
        with self._lock:
            free = {k: Future() for k in keys if k not in self._claims and k not in self._offers}
            for k, place in free.items():
                self._put(self._offers, k, place)
            return free

    def offer(self, key, place: Future, fetch: Future | None) -> None:
        """Fill the place reserved for unit `key` with the read-ahead fetch that holds it, for
        whichever reader reads the unit (None: not fetched after all; the place is freed)."""
        if fetch is None:
            with self._lock:
                if self._offers.get(key) is place:
                    del self._offers[key]  # free to reserve again
            place.set_result(None)
        else:
            fetch.add_done_callback(lambda f: place.set_result(_result(f)))

    def withdraw(self, key) -> None:
        """The offering reader read unit `key` itself."""
        with self._lock:
            self._offers.pop(key, None)

    def offered(self, key):
        """What the fetch another reader offered for unit `key` brought (waiting for it), None
        if none, cancelled (its reader dropped it) or failed: the caller then reads in place,
        and the key is claimed (`claimed`), so no reader fetches it ahead after that."""
        with self._lock:
            place = self._offers.get(key)  # left in place until resolved: `offer` resolves it
        got = _result(place)
        with self._lock:
            if place is not None and self._offers.get(key) is place:
                del self._offers[key]
            if got is None:
                self._put(self._claims, key, None)
        return got

    def claimed(self, key) -> bool:
        """True when a reader read unit `key` in place (read-ahead should not fetch it)."""
        with self._lock:
            return key in self._claims

    def hold(self, path: str, data, groups: int) -> None:
        """Keep `data`, the whole bytes of the small file at `path` (fetched once with its
        footer), for the iteration's readers until each of its `groups` row groups has been read
        (`done`). At most `held_bytes` in all: past it the least recently used file is dropped,
        and its row groups not yet read are fetched by range, as for a large file (a row group
        that no reader of this process reads, pruned or another process's, holds its file until
        then). A file whose row groups were all read already is not kept."""
        with self._lock:
            left = set(range(groups)) - self._read.get(path, set())
            if not left:
                return
            self._wholes[path] = _Whole(data, left)
            self._wholes.move_to_end(path)
            held = sum(len(w.data) for w in self._wholes.values())
            while held > self._held_bytes and len(self._wholes) > 1:
                _, dropped = self._wholes.popitem(last=False)
                held -= len(dropped.data)

    def whole(self, path: str):
        """The whole bytes of the small file at `path` while held (`hold`), else None."""
        with self._lock:
            entry = self._wholes.get(path)
            if entry is None:
                return None
            self._wholes.move_to_end(path)
            return entry.data

    def done(self, path: str, groups) -> None:
        """Row groups `groups` of the small file at `path` were read (or skipped): after the
        last one its bytes are dropped (a fetch that sliced them keeps its views until read)."""
        groups = set(groups)
        with self._lock:
            self._put(self._read, path, self._read.get(path, set()) | groups)
            entry = self._wholes.get(path)
            if entry is not None:
                entry.left.difference_update(groups)
                if not entry.left:
                    del self._wholes[path]

    def held(self) -> int:
        """Bytes of small files held now (`hold`)."""
        with self._lock:
            return sum(len(w.data) for w in self._wholes.values())

    def _put(self, table: OrderedDict, key, value) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > self._limit:
            table.popitem(last=False)

    def __reduce__(self):
        return (SharedReads, (self._limit, self._held_bytes))


@dataclass
class _Whole:
    """A small file's bytes (`SharedReads.hold`) and its row groups not read yet."""

    data: object  # bytes-like
    left: set


def _result(future: Future | None):
    try:
        return None if future is None else future.result()
    except Exception:  # noqa: BLE001 - cancelled or failed: the reader reads in place
        return None
