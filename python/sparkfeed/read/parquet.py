"""Parquet work units (row groups) -> Arrow tables, filter columns first, heavy columns last.

For a row group that may match, the filter columns are read and evaluated first; the other
columns (images, features) are read only when some row survives, then only surviving rows are
kept. Bytes read are counted from the column-chunk sizes in the footer.
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .. import httpranges, readahead, remotefiles, retries, storage
from ..errors import CorruptSampleError, ShardReadError
from ..plan import WorkUnit
from .base import Reader, UnitRows, apply_filter
from .parquetahead import NO_RANGES_INSTEAD, ParquetAhead
from .parquetchecks import ParquetChecks
from .parquetcols import _as_delivered, _cast, _partition_scalar, _paths_above, _stored_names
from .parquetfetch import _FOOTER_BYTES, _fetch_footer, _fetch_whole, read_options
from .text import bad_text_rows, null_rows

log = logging.getLogger(__name__)

_ERRORS = (OSError, pa.ArrowException, ValueError, EOFError)
_OPEN_FILES = 16  # open Parquet files kept per reader
_WHOLE_FILES = 2  # ... when each is held in memory whole (a server that ignores Range)
_RUN_BYTES = 16 << 20  # uncompressed bytes read as one run of row groups (`read_run`): a
# handful of runs per lane stay in memory (cache, queue), so this bounds what runs add to it


class _FetchedCorrupt(Exception):
    """A read that failed on bytes read-ahead had fetched, with no request of its own: corrupt
    data, which retrying would only delay by the whole backoff (its cause is the error)."""


def _gave_up(exc: ShardReadError) -> bool:
    """Whether `exc` names a storage failure its retries gave up on (not the file's bytes)."""
    cause = exc.__cause__
    return isinstance(cause, (PermissionError, FileNotFoundError, ConnectionError, TimeoutError)) or (
        cause is not None and retries.is_transient(cause))


class ParquetReader(ParquetChecks, ParquetAhead, Reader):
    """Reads row groups of the dataset's Parquet shards; keeps the last `_OPEN_FILES` files open."""

    def __init__(self, ctx):
        super().__init__(ctx)
        self._pafs = _arrow_filesystem(ctx.fs)
        # The last files opened: with shuffle, units hop between files, and a footer is read,
        # parsed and checked once per file, not once per unit.
        # path -> (open file, column -> its chunks, column -> the manifest type to cast it to,
        # the names it can be read by)
        self._files: OrderedDict[str, tuple[pq.ParquetFile, dict, dict]] = OrderedDict()
        self._ahead = None if self._pafs is not None else readahead.ReadAhead(ctx.read_ahead_bytes)
        self._ranges = True  # False: an HTTP server that ignores Range (whole-file reads)
        self._fetched = False  # read-ahead made its first fetch (`_FIRST_FETCH_BYTES`)
        self._unopened: dict[str, BaseException] = {}  # file -> the storage failure opening it (`_open`)
        self._heads: dict[str, tuple] = {}  # file -> (range, future) of its head's fetch (`_head`)

    def _open_input(self, path: str):
        """A seekable file: pyarrow's native one for local files, fsspec's otherwise (fsspec's
        errors keep their cause, so transient failures are retried, not taken as 'missing'),
        opened on its first read: a file whose footer and row groups read-ahead fetched is
        never opened through fsspec (its `fs.open` was 15% of a lane's time over 200 small
        files)."""
        if self._pafs is not None:
            return self._pafs.open_input_file(path)
        if not self._ranges:  # one GET without a Range header, held in memory
            return pa.BufferReader(self.ctx.fs.cat_file(path))
        size = self._size(path)
        opener = functools.partial(remotefiles.open_remote, self.ctx.fs, path, size, self._etag(path))
        if size is not None and size <= _FOOTER_BYTES:  # small: whole, in one request, once read
            opener = functools.partial(_fetch_whole, self.ctx, storage.relative(self.ctx.root, path), path, size)
        return opener() if size is None else remotefiles.KnownRanges({}, size, opener)

    def _parquet_file(self, path: str, metadata) -> pq.ParquetFile:
        """Open with pre-buffering (remote); a server that ignores Range requests gets fsspec's
        default block reads instead, and no read-ahead."""
        remote = self._pafs is None
        self._follow_ranges()  # (before `_files` takes this file: `_file`)
        try:
            if remote and self._ranges and metadata is None and (self._size(path) or 0) > _FOOTER_BYTES:
                # the footer's one request, as pyarrow's own footer read would make it, but
                # checked: a file whose size is not the manifest's is refused here (no later
                # read says its size; a small file's one whole fetch checks it already)
                metadata = _fetch_footer(self.ctx.fs, path, self._size(path), self._etag(path))[0]
            return pq.ParquetFile(self._open_input(path), metadata=metadata,
                                  pre_buffer=remote and self._ranges, **read_options(self.ctx.verify_checksums))
        except ValueError as exc:
            if not self._no_ranges(exc):
                raise
            return pq.ParquetFile(self._open_input(path), metadata=metadata,
                                  **read_options(self.ctx.verify_checksums))

    def _no_ranges(self, exc: BaseException) -> bool:
        """True (and whole-file reads from now on, for every reader of the iteration) when `exc`
        says the HTTP server ignored a Range request and this reader still read ranges."""
        if self._pafs is not None or not self._ranges or not retries.ignores_ranges(
                exc, self.ctx.dataset, NO_RANGES_INSTEAD):
            return False
        self.ctx.shared.ranges_ignored.set()
        self._whole_reads()
        return True

    def _whole_reads(self) -> None:
        """This reader turns to whole-file reads: the files it opened for range reads are
        dropped, and its read-ahead closed."""
        self._ranges, self._files = False, OrderedDict()
        if self._ahead is not None:
            self._ahead.close()
            self._ahead = None

    def _follow_ranges(self) -> None:
        """Whole-file reads where another reader or read-ahead task of the iteration met a server
        that ignores Range requests (`SharedReads.ranges_ignored`): checked before this reader
        opens a file or is told what it reads next, so it sends no range request after."""
        if self._ranges and self.ctx.shared.ranges_ignored.is_set():
            self._whole_reads()

    def _size(self, path: str) -> int | None:
        """The file's size from the manifest (full path), so opening it sends no HEAD."""
        rel = storage.relative(self.ctx.root, path)
        return self.ctx.manifest_bytes.get(rel)

    def _etag(self, path: str) -> str | None:
        """The ETag the manifest recorded for the file (full path; indexed data), which its
        version check compared once per iteration: remote reads are conditional on it, so a file
        replaced during the epoch is an error, not rows of two versions' bytes."""
        shard = self.ctx.shards.get(storage.relative(self.ctx.root, path))
        return None if shard is None else shard.etag

    def _retrying(self, fn, what: str):
        """Remote storage: retry transient errors (`retries.with_retries`). Local files: once; a
        local OSError out of pyarrow is corrupt data (a bad page, a short file), and retrying
        it would only delay the error by the whole backoff."""
        return fn() if self._pafs is not None else retries.with_retries(fn, what)

    def _file(self, unit: WorkUnit, metadata=None) -> pq.ParquetFile:
        """The unit's file, opened once per reader, its footer read, parsed and checked once per
        iteration in this process (`ctx.shared`, which the other readers share); `metadata` is a
        footer already fetched with the unit's bytes, else the one read-ahead fetched for the file
        (`_ahead_footer`), so a file opened in place does not read its footer again. Remote files
        pre-buffer: the column chunks of a row group are fetched as coalesced, concurrent range
        requests."""
        if unit.path in self._files:
            self._files.move_to_end(unit.path)
            return self._files[unit.path][0]
        metadata = metadata if metadata is not None else self._ahead_footer(unit)
        path = storage.join(self.ctx.root, unit.path, self.ctx.dataset)
        opened: list[pq.ParquetFile] = []

        def first_open() -> tuple:
            """Open, read the footer, check the file against the manifest (once per iteration)."""
            self._check_unchanged(unit, path)
            pf = self._open(unit, path, metadata)
            self._check_footer(unit, pf.metadata)
            opened.append(pf)
            self.ctx.stats.add("bytes_read", pf.metadata.serialized_size + 8)
            schema = pf.schema_arrow  # made anew at each call: once here
            casts = self._check_schema(unit, schema)
            self._check_recorded(unit, path, pf.metadata, schema)
            chunks_of: dict[str, list[int]] = {}  # column (or struct leaf) -> its column chunks
            for j in range(pf.metadata.num_columns):
                for name in _paths_above(pf.metadata.schema.column(j).path):
                    chunks_of.setdefault(name, []).append(j)
            return pf.metadata, chunks_of, casts, _stored_names(schema)

        # a server that ignores Range (`_no_ranges`) has each reader read whole files, as before
        known = self.ctx.shared.once(unit.path, first_open) if self._ranges else first_open()
        pf = opened[0] if opened else self._open(unit, path, known[0])
        self._files[unit.path] = (pf, *known[1:])
        while len(self._files) > (_OPEN_FILES if self._ranges else _WHOLE_FILES):
            self._files.popitem(last=False)
        return pf

    def _open(self, unit: WorkUnit, path: str, metadata) -> pq.ParquetFile:
        """The file opened (with its footer, if known), or an error that names it. A file storage
        failed to give after the retries is not asked for again by this reader: under
        on_error="skip" each of its row groups waited out the retries once more (17 s each)."""
        try:
            if path in self._unopened:
                raise self._unopened[path]
            return self._retrying(lambda: self._parquet_file(path, metadata), f"opening {path}")
        except Exception as exc:
            named = self._storage_error(unit, exc)
            if named is not None:
                self._unopened[path] = exc
                raise named from exc
            if not isinstance(exc, _ERRORS) and not retries.is_transient(exc):
                raise
            raise self._error(unit, f"cannot open Parquet file ({type(exc).__name__}: {exc})") from exc

    def _read_columns(self, unit: WorkUnit, names: list[str], groups: list[int] | None = None) -> pa.Table:
        """Columns `names` of the unit's row groups; partition columns (not in the file) are
        made from the shard's partition values."""
        part = self.ctx.partition_of(unit.path)
        if not part or not set(names) & set(part):
            return self._read_file_columns(unit, names, groups)
        table = self._read_file_columns(unit, [n for n in names if n not in part], groups)
        types = {f.name: f.type for f in self.ctx.arrow_schema([n for n in names if n in part])}
        for name in names:
            if name in part:
                value = _partition_scalar(part[name], types[name])
                if value is None:
                    raise self._error(unit, f"the shard's partition value {part[name]!r} of column "
                                            f"{name!r} is not a {types[name]} (the manifest's schema)")
                table = table.append_column(name, pa.repeat(value, table.num_rows))
        return table.select(names)

    def _read_file_columns(self, unit: WorkUnit, names: list[str], groups: list[int] | None = None) -> pa.Table:
        """Columns `names` of the unit's row groups from the file: from bytes fetched ahead
        where there are some (anything else read in place), retried as a whole."""
        fetched = self._take_ahead(unit, names, groups)
        absent: list[str] = []

        def attempt() -> pa.Table:
            nonlocal groups, absent
            pf = self._file(unit, fetched[0] if fetched else None)
            if groups is None:
                groups = range(pf.metadata.num_row_groups) if unit.row_group is None else [unit.row_group]
            stored = self._files[unit.path][3]  # what `_file` just opened, or had
            absent = [n for n in names if n not in stored]  # added to the table after this file
            here = [n for n in names if n in stored]
            src, known = self._from_parts(unit, pf, fetched[1]) if fetched else (pf, None)
            try:
                if len(groups) != 1:  # one read: remote, pre-buffered; local, a third of the cost
                    return src.read_row_groups(list(groups), columns=here, use_threads=False)
                return src.read_row_group(groups[0], columns=here, use_threads=False)
            except Exception as exc:
                self._files.pop(unit.path, None)  # reopen on retry: the stream may be broken
                if self._no_ranges(exc):
                    return attempt()
                if known is not None and not known.opened and isinstance(exc, _ERRORS):
                    raise _FetchedCorrupt() from exc  # no request in this read: not transient
                raise

        try:
            table = self._retrying(attempt, f"reading {unit.path} row group {unit.row_group}")
        except (PermissionError, FileNotFoundError, ConnectionError, TimeoutError, httpranges.VersionChanged) as exc:
            raise (self._storage_error(unit, exc) or self._error(unit, f"{type(exc).__name__}: {exc}")) from exc
        except (_FetchedCorrupt, *_ERRORS) as exc:
            cause = exc.__cause__ if isinstance(exc, _FetchedCorrupt) else exc
            raise self._error(unit, f"corrupt or truncated data ({type(cause).__name__}: {cause})") from cause
        except Exception as exc:  # (a file replaced: `retries.failure_words`)
            named = self._storage_error(unit, exc)
            if named is None:
                raise
            raise named from exc
        nbytes = sum(self._chunk_bytes(unit.path, g, names) for g in groups)
        self.ctx.stats.add("bytes_read", nbytes)
        if fetched:
            self.ctx.stats.add("bytes_read_ahead", nbytes)  # of bytes_read: fetched by read-ahead
        try:
            table = _cast(_as_delivered(table), self._files[unit.path][2])
        except pa.ArrowInvalid as exc:  # a value out of the manifest type's range
            raise self._error(unit, f"a value does not fit the manifest's type ({exc}); index the "
                              "data again: `sparkfeed index ... --overwrite`") from exc
        for field in self.ctx.arrow_schema(absent):  # a column this file predates: nulls (Delta's
            table = table.append_column(field.name, pa.nulls(table.num_rows, field.type))  # evolution)
        return table.select(names)

    def _chunk_bytes(self, path: str, group: int, names: list[str]) -> int:
        """Compressed bytes of the column chunks of `names` in row group `group` (what a read
        fetches), from the open file's footer."""
        pf, chunks_of = self._files[path][:2]
        rg = pf.metadata.row_group(group)
        return sum(rg.column(j).total_compressed_size for n in names for j in chunks_of.get(n, ()))

    def _read(self, unit: WorkUnit) -> UnitRows:
        try:
            return self._read_unit(unit)
        finally:  # read or failed (skipped, or the end of the iteration): never read again
            self._read_done(unit.path, None if unit.row_group is None else [unit.row_group])

    def _read_unit(self, unit: WorkUnit) -> UnitRows:
        ctx = self.ctx
        wanted = ctx.read_columns
        if not ctx.filtered(unit):
            table, bad = self._text_checked(unit, self._read_columns(unit, wanted))
            return self._unit_rows(table, unit, None, None if bad is None else ~bad)
        light, bad = self._text_checked(unit, self._read_columns(unit, list(ctx.filter_columns)))
        light, rows, bad = _filtered(ctx, light, bad)
        ctx.stats.add("rows_filtered", unit.num_rows - light.num_rows)
        heavy = [c for c in wanted if c not in ctx.filter_columns]
        if light.num_rows == 0 or not heavy:
            table = light
        else:
            table, more = self._text_checked(unit, self._read_columns(unit, heavy).take(pa.array(rows)), rows)
            bad = more if bad is None else bad if more is None else bad | more
            for name in ctx.filter_columns:
                table = table.append_column(name, light.column(name))
            table = table if bad is None else null_rows(table, bad)
        return self._unit_rows(table.select(wanted), unit, rows, None if bad is None else ~bad)

    def _text_checked(self, unit: WorkUnit, table: pa.Table, rows=None) -> tuple[pa.Table, np.ndarray | None]:
        """`table`, and which of its rows hold string bytes that are not UTF-8 (`text.bad_text_rows`;
        None: none). Such a row is an error naming its row (`rows`: the table's row numbers in
        the unit), or under on_error="skip" a sample skipped and counted, its values made null:
        the row group's other rows are delivered."""
        bad, column = bad_text_rows(table)
        if bad is None:
            return table, None
        at = np.flatnonzero(bad)
        numbers = at if rows is None else np.asarray(rows)[at]
        what = (f"column {column!r} holds bytes that are not UTF-8 text: the file is damaged, or its "
                f"writer stored bytes in a string column (read it as binary); {len(at)} such row(s) "
                f"in this row group, rows {numbers[:8].tolist()}{' ...' if len(at) > 8 else ''}")
        if self.ctx.on_error != "skip":
            raise CorruptSampleError(f"{what}; on_error='skip' skips and counts them",
                                     dataset=self.ctx.dataset, shard=unit.path, row_group=unit.row_group,
                                     key=f"row {int(numbers[0])}")
        log.warning("%s: shard %s row group %s: skipping %d sample(s): %s", self.ctx.dataset, unit.path,
                    unit.row_group, len(at), what)
        return null_rows(table, bad), bad

    def read_run(self, units, expected) -> UnitRows:
        """Consecutive row groups of one file read and checked as one table, up to `_RUN_BYTES`
        of uncompressed data: one read and, downstream, one conversion to tensors instead of one
        per row group (row groups are small, 1,024 rows by default, and the fixed cost per read
        would dominate). Without a filter only, or over row groups whose statistics prove that every
        row passes it (`ReadContext.filtered`; a filter reads row group by row group, filter
        columns first). Anything wrong falls back to reading the first unit alone, which names
        the row group and applies `on_error` exactly."""
        if len(units) == 1 or self.ctx.filtered(units[0]):
            return self.read(units[0], expected[0])
        try:
            pf = self._file(units[0])
        except ShardReadError as exc:
            if _gave_up(exc):  # opened with retries already: alone, it would wait them out again
                return self.failed(units[0], expected[0], exc)
            return self.read(units[0], expected[0])
        md, groups, size = pf.metadata, [], 0
        for unit, n in zip(units, expected):
            if (unit.path != units[0].path or unit.row_group is None or unit.row_group >= md.num_row_groups
                    or self.ctx.filtered(unit)):
                break
            rg = md.row_group(unit.row_group)
            if rg.num_rows != n or (groups and size + rg.total_byte_size > _RUN_BYTES):
                break
            groups.append(unit.row_group)
            size += rg.total_byte_size
        groups = self._arrived(units[0].path, groups) if groups else groups
        if len(groups) < 2:
            return self.read(units[0], expected[0])
        try:
            table = self._read_columns(units[0], self.ctx.read_columns, groups)
        except ShardReadError:
            return self.read(units[0], expected[0])
        counts = expected[:len(groups)]
        if table.num_rows != sum(counts) or bad_text_rows(table)[0] is not None:  # named by row group
            return self.read(units[0], expected[0])
        self._read_done(units[0].path, groups)
        rows = np.concatenate([np.arange(n, dtype=np.int32) for n in counts])
        return self._unit_rows(table, units[0], rows, run=tuple(zip(units[:len(groups)], counts)))

    def _filter_input(self, unit: WorkUnit) -> tuple[pa.Table, np.ndarray | None]:
        """The unit's filter columns, and which rows are UTF-8 text where they should be (the
        others skipped, `_text_checked`: the count keeps them as the read does, `_filtered`)."""
        table, bad = self._text_checked(unit, self._read_columns(unit, list(self.ctx.filter_columns)))
        return table, (None if bad is None else ~bad)

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.close()
        self._files.clear()


def _arrow_filesystem(fs) -> pafs.FileSystem | None:
    """pyarrow's native filesystem for local files (the fast path), None for everything else."""
    return pafs.LocalFileSystem() if storage.is_local(fs) else None


def _filtered(ctx, light: pa.Table, bad: np.ndarray | None) -> tuple[pa.Table, np.ndarray, np.ndarray | None]:
    """`apply_filter` over the filter columns; rows skipped as not UTF-8 (`bad`, their values
    null) pass whatever the filter says, as `count_many` counts them: the skip is counted, not
    taken for a filtered row. Returns (rows kept, their numbers, which of them are bad)."""
    if bad is None:
        return (*apply_filter(ctx, light), None)
    kept, rows = apply_filter(ctx, light, ok=~bad)
    return kept, rows, bad[rows]
