"""What every reader shares: its context, the error policy, and the bookkeeping columns."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TypeVar

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import arrowtypes, filters, retries, storage
from ..batch import lists_holding_nulls, ragged_as_binary
from ..errors import ShardReadError
from ..manifest import Column, Shard
from ..plan import WorkUnit
from ..stats import Stats

log = logging.getLogger(__name__)
_UNIT = "__sparkfeed_unit__"  # which unit a row of a batched count came from (`count_many`)
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
      to every read-ahead task and lane that needs them, until each has been read.

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


@dataclass
class ReadContext:
    """Everything a reader needs; built once per worker."""

    fs: fsspec.AbstractFileSystem
    root: str
    dataset: str
    schema: tuple[Column, ...]
    columns: tuple[str, ...]          # delivered
    filter_columns: tuple[str, ...]
    expr: pc.Expression | None
    on_error: str = "raise"
    ragged: tuple[str, ...] = ()  # list columns carried as binary (`batch.ragged_as_binary`)
    read_ahead_bytes: int | None = None  # `readahead.ReadAhead`'s bound (None: its default)
    stats: Stats = field(default_factory=Stats)
    manifest_bytes: dict[str, int] = field(default_factory=dict)  # shard path -> size on storage
    shards: dict[str, Shard] = field(default_factory=dict)  # shard path -> manifest entry
    # (filesystem, directory) that the manifest's DALI index paths (`Shard.index`) are relative
    # to: the manifest's own directory; None when unknown (tars are then streamed, not indexed).
    indexes: tuple[fsspec.AbstractFileSystem, str] | None = None
    shared: SharedReads = field(default_factory=SharedReads)  # this iteration's, in this process
    # (shard path, row group) of the units whose statistics prove that every row passes the
    # filter (`Plan.proven`): read as without one, no filter evaluated
    unfiltered: frozenset = frozenset()

    def filtered(self, unit) -> bool:
        """Whether the filter must be evaluated over `unit`'s rows (a filter, and its statistics
        do not prove that every row passes)."""
        return self.expr is not None and (unit.path, unit.row_group) not in self.unfiltered

    def partition_of(self, path: str) -> dict:
        """The shard's partition values (Hive directories, Delta), {} when it has none."""
        shard = self.shards.get(path)
        return dict(shard.partition) if shard is not None and shard.partition else {}

    @property
    def read_columns(self) -> list[str]:
        """Delivered columns plus filter columns, in schema order."""
        wanted = set(self.columns) | set(self.filter_columns)
        return [c.name for c in self.schema if c.name in wanted]

    def arrow_schema(self, names: Sequence[str]) -> pa.Schema:
        types = {c.name: arrowtypes.arrow_type(c.type) for c in self.schema}
        return pa.schema([pa.field(n, types[n] or pa.null()) for n in names])


class Reader:
    """Base of the format readers: `read(unit)` -> table, `count_many(units)` -> rows passing the filter."""

    def __init__(self, ctx: ReadContext):
        self.ctx = ctx
        # units this reader needs only part of, by the stream: {unit: (first row, stop row)}
        # (a lane's first or last unit, which a lane boundary splits); see `chunks`
        self.windows: dict[WorkUnit, tuple[int, int]] = {}
        # units of shuffle blocks this lane shares with other thread lanes and fetches ahead for
        # them (`SharedReads.offer`), as (path, row group); set by the stream (`StreamReader`)
        self.offers: frozenset = frozenset()
        self._ahead = None  # remote storage: this reader's `readahead.ReadAhead` (subclasses)
        self._offered: set = set()  # fetch keys offered to other readers (`_offer`)

    def read(self, unit: WorkUnit, expected: int) -> UnitRows:
        """Rows of `unit` (filtered), or under on_error="skip" `expected` placeholder rows."""
        try:
            table = self._read(unit)
            if table.num_rows != expected:
                raise ShardReadError(
                    f"holds {table.num_rows} matching samples where the manifest/plan expects "
                    f"{expected}; the shard changed after the manifest was written",
                    dataset=self.ctx.dataset, shard=unit.path, row_group=unit.row_group)
            return table
        except ShardReadError as exc:
            return self.failed(unit, expected, exc)

    def failed(self, unit: WorkUnit, expected: int, exc: ShardReadError) -> UnitRows:
        """`exc` raised, or under on_error="skip" `expected` placeholder rows for `unit`."""
        if self.ctx.on_error != "skip":
            raise exc
        log.warning("skipping %d samples: %s", expected, exc)
        return placeholder(self.ctx, unit, expected)

    def read_run(self, units: Sequence[WorkUnit], expected: Sequence[int]) -> UnitRows:
        """Rows of the first units of `units` (consecutive in the stream) in one read, where the
        format can (see `ParquetReader`); here, just the first unit. `parts()` says which."""
        return self.read(units[0], expected[0])

    def chunks(self, unit: WorkUnit, expected: int) -> list[tuple[int, int]] | None:
        """The pieces (rows [a, b), within `windows`) this reader reads `unit` in, each with
        `read_window`, where the format can (`TarReader`: an indexed shard); None: whole."""
        return None

    def read_window(self, unit: WorkUnit, expected: int, start: int, stop: int) -> UnitRows | None:
        """Rows [start, stop) of `unit` (of `expected`; no filter) for less than reading it whole,
        where the format can (`TarReader`: a shard's byte range through its index); None: read
        the unit whole. `rows` of the result are the rows' numbers in the unit."""
        return None

    def count_many(self, units: Sequence[WorkUnit]) -> list[int]:
        """Rows of each of `units` that pass the filter (reading only what the filter needs), the
        filter evaluated once over all their filter columns: an evaluation costs more to set up
        than 10 rows take (`id in` 14,286 values over 10,000 files of 10 rows: the count pass
        12.5 s a file at a time, 5.4 s many at a time). A unit whose read fails under
        on_error="skip" counts its rows, as its read will deliver them as placeholders. Filter
        columns that cannot be joined into one table: each unit's evaluated alone."""
        counts, parts = [u.num_rows for u in units], []
        for k, unit in enumerate(units):
            try:
                parts.append((k, *self._filter_input(unit)))
            except ShardReadError:
                if self.ctx.on_error != "skip":
                    raise
        if not parts:
            return counts
        try:
            tables = [t.append_column(_UNIT, pa.array(np.full(t.num_rows, k, np.int32))) for k, t, _ in parts]
            kept, _ = apply_filter(self.ctx, pa.concat_tables(tables), keep_bad=parts[0][2])
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            for k, table, keep_bad in parts:
                try:
                    counts[k] = apply_filter(self.ctx, table, keep_bad)[0].num_rows
                except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                    raise filters.unevaluable(exc, self.ctx.expr, self.ctx.dataset, units[k].path,
                                              units[k].row_group) from exc
            return counts
        per_unit = np.bincount(kept.column(_UNIT).to_numpy(), minlength=len(units))
        for k, _, _ in parts:
            counts[k] = int(per_unit[k])
        return counts

    @property
    def runs_ahead(self) -> bool:
        """True where `read_ahead` fetches what a shuffled block's reads then take (remote
        storage), so the stream tells it the blocks' runs (`epoch.lane_units`)."""
        return self._ahead is not None

    def _reserve(self, keys) -> dict:
        """Of fetch keys `keys` (the first item is the unit's path), those of units in `offers`
        not offered yet, reserved for offering (`SharedReads.reserve`): call before read-ahead
        submits them, and `_offer` the result after, whatever happens between."""
        return self.ctx.shared.reserve([k for k in keys if k not in self._offered and
                                        (k[0], k[1] if len(k) == 2 else None) in self.offers])

    def _offer(self, reserved: dict) -> None:
        """Offer the read-ahead fetches of the `reserved` units to the other lanes (once each)."""
        for key, place in reserved.items():
            future = self._ahead.fetch_of(key)
            self.ctx.shared.offer(key, place, future)
            if future is not None:
                self._offered.add(key)

    def _take_fetched(self, key):
        """What read-ahead fetched for `key`: this reader's own fetch, or one that the lane
        sharing its block offered (`SharedReads`); None: read in place."""
        if self._ahead is None:  # local files: nothing is fetched ahead
            return None
        got = self._ahead.take(key)
        if got is not None and key in self._offered:
            self.ctx.shared.withdraw(key)
        return got if got is not None else self.ctx.shared.offered(key)

    def read_ahead(self, units: Sequence[WorkUnit]) -> None:
        """Hint: `units` are what this reader reads next, in order. Remote readers start
        fetching them (`readahead.ReadAhead`); the default does nothing."""

    def close(self) -> None:
        """Release cached files."""

    def _read(self, unit: WorkUnit) -> UnitRows:  # pragma: no cover - abstract
        raise NotImplementedError

    def _filter_input(self, unit: WorkUnit) -> tuple[pa.Table, bool]:  # pragma: no cover - abstract
        """The table the filter's count is evaluated over (the unit's filter columns), and whether
        rows that could not be read count whatever it says (`apply_filter`'s `keep_bad`)."""
        raise NotImplementedError

    def _versioned(self, unit: WorkUnit) -> bool:
        """Whether the manifest recorded the unit's file's version (indexed data)."""
        shard = self.ctx.shards.get(unit.path)
        return shard is not None and (shard.mtime is not None or shard.etag is not None)

    def open_ahead(self, units) -> None:
        """Over remote storage, what opening the files of `units` needs, started on the
        read-ahead threads, no row data: their version checks (`check_ahead`) and the format's
        metadata (`_meta_ahead`: a Parquet footer, a tar's index). For units read in place (the
        lanes' shared units), whose file would otherwise be opened with a request or two on the
        lane before its first read."""
        if self._ahead is None:
            return
        units = list(units)
        self.check_ahead(units)
        self._meta_ahead(units)

    def _meta_ahead(self, units: list[WorkUnit]) -> None:
        """The format's part of `open_ahead` (none by default)."""

    def check_ahead(self, units) -> None:
        """Indexed data over remote storage: start the version check (`_check_unchanged`) of
        each file of `units` on this reader's read-ahead threads, once per file and iteration,
        shared with the iteration's other readers: its request (a HEAD) then goes out beside the
        footers' fetches and the other files' checks, not on the lane before the file's first
        read (5 files over HTTP with 20 ms per request: 0.262 s per epoch against 0.187 s with no
        version to check). `read_ahead` calls it for the units whose fetches it makes or prepares
        (`readahead.Deferred`); `open_ahead` for the units the lanes share, which no read-ahead
        fetches (a check moves no row data)."""
        if self._ahead is None:
            return
        for unit in {u.path: u for u in reversed(list(units))}.values():  # each file's first unit
            if self._versioned(unit):
                full = storage.join(self.ctx.root, unit.path, self.ctx.dataset)
                self.ctx.shared.checking(unit.path, lambda unit=unit, full=full: self._ahead.once(
                    (unit.path, "version"), lambda: self._check_now(unit, full), (self._ahead.order(unit.path), 0)))

    def _check_unchanged(self, unit: WorkUnit, full: str) -> None:
        """Indexed data (`sparkfeed.index`) records each file's size and mtime/ETag: a file that
        differs now was changed after indexing, and is an error rather than wrong rows. Once per
        file open; written datasets (no version recorded) skip it. The check read-ahead started
        (`check_ahead`) is waited for; if it failed, or none was started, the file is checked here
        (once for the iteration's readers), where the error names this unit and transient
        failures are retried."""
        if not self._versioned(unit):
            return
        started = self.ctx.shared.check_of(unit.path)
        if started is not None:
            try:
                started.result()
                return
            except Exception:  # noqa: BLE001 - met again below, in place
                pass
        self.ctx.shared.once(("version", unit.path), lambda: self._check_now(unit, full))

    def _check_now(self, unit: WorkUnit, full: str) -> None:
        """`_check_unchanged`'s comparison, one request for the file's size and version (retried:
        fsspec's HTTP client calls any failure of it, a 503 too, a missing file)."""
        shard = self.ctx.shards[unit.path]
        from ..index.discover import file_version

        try:
            info = retries.with_retries(lambda: self.ctx.fs.info(full), f"checking {full}")
        except Exception as exc:
            named = self._storage_error(unit, exc)
            if named is None and isinstance(exc, OSError):
                named = self._error(unit, f"storage kept failing ({type(exc).__name__}: {exc})")
            if named is not None:
                raise named from exc
            raise
        mtime, etag = file_version(info)
        size = int(info.get("size", -1))
        recorded = [(what, a, b) for what, a, b in (("an mtime", shard.mtime, mtime), ("an ETag", shard.etag, etag))
                    if a is not None]
        redo = "run `sparkfeed index ... --overwrite` where the data is read from"
        if size != shard.num_bytes or any(b is not None and a != b for _, a, b in recorded):
            was, now = (shard.num_bytes, shard.mtime, shard.etag), (size, mtime, etag)
            raise self._error(unit, f"the file changed after it was indexed, or was copied (a copy "
                              f"has a new mtime) (size, mtime, ETag: {was} when indexed, {now} now); {redo}")
        unseen = [what for what, _, b in recorded if b is None]
        if unseen and len(unseen) == len(recorded):  # nothing recorded can be compared: refuse
            raise self._error(unit, f"cannot be checked against its index: it was indexed with "
                              f"{unseen[0]} that this storage does not report (plain HTTP reports "
                              f"none), so a change would go unseen; {redo}")

    def _unit_rows(self, table: pa.Table, unit: WorkUnit, rows: np.ndarray | None = None,
                   ok: np.ndarray | None = None, run: tuple = ()) -> UnitRows:
        """What `read` returns: the delivered columns of the unit's rows, with their row numbers
        and which rows hold a sample. `ragged` list columns become binary columns of their
        values (`batch.ragged_as_binary`): lists of any lengths then travel as binary columns
        do, and a null list is a null there (None for users), not a missing sample."""
        table = null_lists_holding_nulls(table.select(list(self.ctx.columns)), set(self.ctx.ragged))
        for name in self.ctx.ragged:
            col = table.column(name)
            arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
            if self.ctx.on_error == "skip" and (bad := _null_inside(arr)) is not None:
                # a null list is delivered (None) in a ragged column: such rows are skipped instead
                ok = ~bad if ok is None else ok & ~bad
                arr = pc.if_else(pa.array(bad), pa.scalar(None, arr.type), arr)
            try:
                carried = ragged_as_binary(arr, name)
            except ValueError as exc:
                raise self._error(unit, str(exc)) from exc
            table = table.set_column(table.column_names.index(name), name, carried)
        return _bookkept(table, unit, rows, ok, run)

    def _error(self, unit: WorkUnit, message: str, offset: int | None = None) -> ShardReadError:
        return ShardReadError(message, dataset=self.ctx.dataset, shard=unit.path,
                              row_group=unit.row_group, offset=offset)

    def _storage_error(self, unit: WorkUnit, exc: BaseException, offset: int | None = None) -> ShardReadError | None:
        """The error naming the unit for a storage failure that retries did not cure (after
        `retries.with_retries`, which gives it as an OSError of Python's own): the file is
        missing, storage refused access, or the server or connection kept failing. None for
        anything else (corrupt bytes: the format's reader names those)."""
        if isinstance(exc, FileNotFoundError) and not retries.is_transient(exc):
            return self._error(unit, f"file missing: the manifest names {unit.path!r} but storage "
                               "has no such file", offset)
        words = retries.failure_words(exc)
        return None if words is None else self._error(unit, words, offset)


@dataclass(frozen=True)
class UnitRows:
    """What a reader returns for one unit: the delivered columns of the rows that passed the
    filter, each row's number in the unit (for error messages; None: 0..n-1) and which rows hold
    a sample (None: all; False marks a sample skipped under on_error="skip", or a null where a
    tensor needs a value). Positions in the stream are rows here, skipped or not."""

    table: pa.Table
    unit: WorkUnit
    rows: np.ndarray | None = None
    ok: np.ndarray | None = None
    run: tuple[tuple[WorkUnit, int], ...] = ()  # several units read as one: (unit, rows) each

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    def parts(self) -> tuple[tuple[WorkUnit, int], ...]:
        """(unit, rows) for each unit these rows hold, in order."""
        return self.run or ((self.unit, self.num_rows),)

    def row_numbers(self) -> np.ndarray:
        return np.arange(self.num_rows, dtype=np.int32) if self.rows is None else self.rows.astype(np.int32)


def needs_value(t: pa.DataType) -> bool:
    """Whether a null of this type cannot be delivered: integer, boolean, date, timestamp and
    list columns become tensors; floats hold NaN, strings and bytes None."""
    return not (pa.types.is_floating(t) or pa.types.is_string(t) or pa.types.is_large_string(t)
                or pa.types.is_binary(t) or pa.types.is_large_binary(t))


def null_lists_holding_nulls(table: pa.Table, ragged: set[str] = frozenset()) -> pa.Table:
    """The table with each list of integers or booleans that holds a null element made a null
    list: a tensor cannot hold that element, and a null list is a sample without a value, which
    `on_error` covers (named by row and column, or skipped and counted). Left as they were, such
    lists failed the whole batch when it became tensors, even under on_error='skip', with advice
    (`is_valid()`) that does not reach inside a list. Lists of floats keep theirs (NaN); `ragged`
    columns are left alone (a null list is delivered there, as None: `_unit_rows`)."""
    for i, f in enumerate(table.schema):
        if f.name in ragged or not is_list(f.type) or pa.types.is_floating(f.type.value_type):
            continue
        col = table.column(i)
        if not any(c.values.null_count for c in col.chunks):  # the cheap test, before any copy
            continue
        arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        bad = _null_inside(arr)
        if bad is not None:
            table = table.set_column(i, f, pc.if_else(pa.array(bad), pa.scalar(None, f.type), arr))
    return table


def is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _null_inside(arr: pa.Array) -> np.ndarray | None:
    """Which rows of a list array of integers or booleans hold a null element (None: none, or a
    list of floats, where a null is NaN); the cheap test first, the whole values' null count."""
    if pa.types.is_floating(arr.type.value_type) or not arr.values.null_count:
        return None
    return lists_holding_nulls(arr)


def _tensor_values_valid(table: pa.Table) -> np.ndarray | None:
    """False for rows with a null where a tensor needs a value (`needs_value`); None when every
    row is fine. Once per unit."""
    valid = None
    for col in table.columns:
        if not col.null_count or not needs_value(col.type):
            continue
        v = pc.is_valid(col).to_numpy(zero_copy_only=False)
        valid = v if valid is None else valid & v
    return valid


def _bookkept(table: pa.Table, unit: WorkUnit, rows: np.ndarray | None = None,
              ok: np.ndarray | None = None, run: tuple = ()) -> UnitRows:
    """A unit's table with its row numbers and which rows hold a sample (nulls included)."""
    valid = _tensor_values_valid(table)
    if valid is not None:
        ok = valid if ok is None else ok & valid
    if ok is not None and ok.all():
        ok = None
    return UnitRows(table, unit, rows, ok, run)


def placeholder(ctx: ReadContext, unit: WorkUnit, n: int) -> UnitRows:
    """`n` null rows marked not-ok: they keep stream positions exact while standing for skips."""
    schema = pa.schema([pa.field(f.name, pa.large_binary()) if f.name in ctx.ragged else f  # as `_unit_rows`
                        for f in ctx.arrow_schema(ctx.columns)])
    table = pa.table({f.name: pa.nulls(n, f.type) for f in schema}, schema=schema)
    return UnitRows(table, unit, None, np.zeros(n, dtype=bool))


def apply_filter(ctx: ReadContext, table: pa.Table, keep_bad: bool = False,
                 unit=None) -> tuple[pa.Table, np.ndarray]:
    """Rows passing the filter and their row numbers in the unit (all rows when no filter, or
    when `unit`'s statistics prove that every row passes: `ReadContext.filtered`).

    With `keep_bad`, rows whose `__ok_in__` is False (samples skipped under on_error="skip") are
    kept whatever the filter says: their values are unknown, and they must still be counted.
    """
    if ctx.expr is None or (unit is not None and not ctx.filtered(unit)):
        return table, np.arange(table.num_rows)
    indexed = table.append_column("__i__", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    expr = ctx.expr
    if keep_bad:
        expr = pc.coalesce(expr, pc.scalar(False)) | ~pc.field("__ok_in__")
    kept = indexed.filter(expr)
    rows = kept.column("__i__").to_numpy()
    return kept.drop_columns(["__i__"]), rows
