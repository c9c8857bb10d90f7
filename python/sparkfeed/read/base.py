"""What every reader shares: its context, the error policy, and the bookkeeping columns."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import arrowtypes, filters, retries, storage
from ..batch import ragged_as_binary
from ..errors import ShardReadError
from ..manifest import Column, Shard
from ..plan import WorkUnit
from ..stats import Stats
from .nullvalues import _null_inside, _tensor_values_valid, is_list, needs_value, null_lists_holding_nulls
from .rowfilter import apply_filter, free_name
from .sharedreads import SharedReads

log = logging.getLogger(__name__)

__all__ = ["ReadContext", "Reader", "UnitRows", "placeholder", "apply_filter", "free_name", "needs_value",
           "is_list"]  # (the last four: `rowfilter`, `nullvalues`)
_UNIT = "__sparkfeed_unit__"  # which unit a row of a batched count came from (`count_many`)

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
    verify_checksums: bool = True  # Parquet pages checked against their CRCs (`parquetfetch.read_options`)
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
        unit_column = free_name({n for _, t, _ in parts for n in t.column_names}, _UNIT)
        try:
            tables = [t.append_column(unit_column, pa.array(np.full(t.num_rows, k, np.int32))) for k, t, _ in parts]
            oks = None if all(ok is None for _, _, ok in parts) else np.concatenate(
                [np.ones(t.num_rows, bool) if ok is None else ok for _, t, ok in parts])
            kept, _ = apply_filter(self.ctx, pa.concat_tables(tables), ok=oks)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            for k, table, ok in parts:
                try:
                    counts[k] = apply_filter(self.ctx, table, ok=ok)[0].num_rows
                except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                    raise filters.unevaluable(exc, self.ctx.expr, self.ctx.dataset, units[k].path,
                                              units[k].row_group) from exc
            return counts
        per_unit = np.bincount(kept.column(unit_column).to_numpy(), minlength=len(units))
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

    def _filter_input(self, unit: WorkUnit) -> tuple[pa.Table, np.ndarray | None]:  # pragma: no cover - abstract
        """The table the filter's count is evaluated over (the unit's filter columns), and which
        rows were read (`apply_filter`'s `ok`; None: all): the others count whatever it says."""
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
