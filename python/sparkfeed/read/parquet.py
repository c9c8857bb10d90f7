"""Parquet work units (row groups) -> Arrow tables, filter columns first, heavy columns last.

For a row group that may match, the filter columns are read and evaluated first; the other
columns (images, features) are read only when some row survives, then only surviving rows are
kept. Bytes read are counted from the column-chunk sizes in the footer.
"""

from __future__ import annotations

import functools
import io
import logging
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .. import arrowtypes, footer, footercheck, pruning, readahead, remotefiles, retries, storage
from ..errors import CorruptSampleError, ShardReadError
from ..plan import WorkUnit
from .base import Reader, UnitRows, apply_filter
from .text import bad_text_rows, null_rows

log = logging.getLogger(__name__)

_ERRORS = (OSError, pa.ArrowException, ValueError, EOFError)
_OPEN_FILES = 16  # open Parquet files kept per reader
_WHOLE_FILES = 2  # ... when each is held in memory whole (a server that ignores Range)
_FETCH_BYTES = 8 << 20  # bytes of consecutive row groups of a file fetched ahead as one request
_FIRST_FETCH_BYTES = 2 << 20  # a reader's first fetch: about one row group, for the first batch
_RUN_BYTES = 16 << 20  # uncompressed bytes read as one run of row groups (`read_run`): a
# handful of runs per lane stay in memory (cache, queue), so this bounds what runs add to it
_HEAD_SLACK = 1.25  # a first fetch's head range: its row groups' share of the file, times this
# Pages that carry a CRC (parquet-mr, so Spark, writes one per page; pyarrow with
# write_page_checksum=True) are checked against it: a damaged page of an uncompressed column
# was delivered as wrong bytes without a word. Pages without one cost nothing.
_READ_OPTIONS = {**arrowtypes.INT96_UNIT, "page_checksum_verification": True}
_FOOTER_BYTES = 64 << 10  # a footer's fetch: the file's tail (pyarrow's own footer read); a file
# no larger is fetched whole by it, and its row groups served from those bytes (`SharedReads.hold`)


class _FetchedCorrupt(Exception):
    """A read that failed on bytes read-ahead had fetched, with no request of its own: corrupt
    data, which retrying would only delay by the whole backoff (its cause is the error)."""


class ParquetReader(Reader):
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
        opener = functools.partial(remotefiles.open_remote, self.ctx.fs, path, size)
        if size is not None and size <= _FOOTER_BYTES:  # small: whole, in one request, once read
            opener = functools.partial(_fetch_whole, self.ctx.fs, path, size)
        return opener() if size is None else remotefiles.KnownRanges({}, size, opener)

    def _parquet_file(self, path: str, metadata) -> pq.ParquetFile:
        """Open with pre-buffering (remote); a server that ignores Range requests gets fsspec's
        default block reads instead, and no read-ahead."""
        remote = self._pafs is None
        try:
            if remote and self._ranges and metadata is None and (self._size(path) or 0) > _FOOTER_BYTES:
                # the footer's one request, as pyarrow's own footer read would make it, but
                # checked: a file whose size is not the manifest's is refused here (no later
                # read says its size; a small file's one whole fetch checks it already)
                metadata = _fetch_footer(self.ctx.fs, path, self._size(path))[0]
            return pq.ParquetFile(self._open_input(path), metadata=metadata,
                                  pre_buffer=remote and self._ranges, **_READ_OPTIONS)
        except ValueError as exc:
            if not self._no_ranges(exc):
                raise
            return pq.ParquetFile(self._open_input(path), metadata=metadata, **_READ_OPTIONS)

    def _no_ranges(self, exc: BaseException) -> bool:
        """True (and whole-file reads from now on) when `exc` says the HTTP server ignored a
        Range request."""
        if self._pafs is not None or not self._ranges or not retries.ignores_ranges(
                exc, self.ctx.dataset, "reading whole files, without read-ahead"):
            return False
        self._ranges, self._files = False, OrderedDict()
        if self._ahead is not None:
            self._ahead.close()
            self._ahead = None
        return True

    def _size(self, path: str) -> int | None:
        """The file's size from the manifest (full path), so opening it sends no HEAD."""
        rel = path[len(self.ctx.root):].lstrip("/")
        return self.ctx.manifest_bytes.get(rel)

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

    def _check_footer(self, unit: WorkUnit, md: pq.FileMetaData) -> None:
        """A footer pyarrow's metadata accessors would abort the process on (`footercheck.damage`) is
        an error naming the file, before any of them is called."""
        found = footercheck.damage(md)
        if found is not None:
            group, what = found
            raise ShardReadError(f"damaged Parquet footer: {what}", dataset=self.ctx.dataset,
                                 shard=unit.path, row_group=group)

    def _check_recorded(self, unit: WorkUnit, path: str, md: pq.FileMetaData, schema: pa.Schema) -> None:
        """The file is the one its manifest recorded: a local file's size (remote ones: the
        footer's fetch compares the server's), then its row groups' counts and statistics
        (`footer.difference`). Another file put in its place, one shard copied over another
        with the same size and counts, would otherwise deliver its rows instead, and pruning
        would go by the wrong statistics. Once per file and iteration, no I/O but a local stat."""
        shard = self.ctx.shards.get(unit.path)
        if shard is None:
            return
        if self._pafs is not None and shard.num_bytes:
            size = self._pafs.get_file_info(path).size
            if size != shard.num_bytes:
                raise self._error(unit, f"the file is {size} bytes but the manifest says "
                                  f"{shard.num_bytes}: truncated or replaced after the write")
        found = footer.difference(md, schema, shard)
        if found is not None:
            group, what = found
            raise ShardReadError(f"{what}: the file was replaced or changed after the manifest was "
                                 "written (write or index the dataset again if the change is wanted)",
                                 dataset=self.ctx.dataset, shard=unit.path, row_group=group)

    def _open(self, unit: WorkUnit, path: str, metadata) -> pq.ParquetFile:
        """The file opened (with its footer, if known), or an error that names it."""
        try:
            return self._retrying(lambda: self._parquet_file(path, metadata), f"opening {path}")
        except Exception as exc:
            named = self._storage_error(unit, exc)
            if named is not None:
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
        except (PermissionError, FileNotFoundError, ConnectionError, TimeoutError) as exc:
            raise (self._storage_error(unit, exc) or self._error(unit, f"{type(exc).__name__}: {exc}")) from exc
        except (_FetchedCorrupt, *_ERRORS) as exc:
            cause = exc.__cause__ if isinstance(exc, _FetchedCorrupt) else exc
            raise self._error(unit, f"corrupt or truncated data ({type(cause).__name__}: {cause})") from cause
        except Exception as exc:
            if not retries.is_transient(exc):
                raise
            raise self._error(unit, f"storage kept failing ({type(exc).__name__}: {exc})") from exc
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

    # ------------------------------------------------------------ read-ahead (remote files only)

    def _ahead_columns(self) -> list[str]:
        """What a unit's first read needs: with a filter only the filter columns (the others
        are read only for row groups where some row survives, so pushdown still saves bytes)."""
        return list(self.ctx.filter_columns) if self.ctx.expr is not None else self.ctx.read_columns

    def read_ahead(self, units) -> None:
        """Upcoming row groups: consecutive row groups of a file fetched together up to
        `_FETCH_BYTES` (one coalesced range request), each fetch after its file's footer (one
        request, once per file; for indexed data its version check too), started file by file
        for the bytes kept ahead and the next as many (`readahead.Deferred`); the reader's first
        fetch is smaller (`_FIRST_FETCH_BYTES`), so the first batch waits for little while the
        rest streams in."""
        if self._ahead is None:
            return
        names, items, first = self._ahead_columns(), [], {}
        for unit in units:
            first.setdefault(unit.path, unit)
            key = (unit.path, unit.row_group)
            if unit.row_group is None:
                continue
            if key in self._ahead:  # still wanted, already fetched or in flight
                items.append(([key], 0, None))
                continue
            if self.ctx.shared.claimed(key):  # read in place by the lane sharing its block
                continue
            nbytes = self._unit_bytes(unit, names)
            limit = _FETCH_BYTES if self._fetched or len(items) > 1 else _FIRST_FETCH_BYTES
            last = items[-1] if items else None
            if last and last[2] is not None and last[0][0][0] == unit.path and last[1] + nbytes <= limit:
                items[-1] = (last[0] + [key], last[1] + nbytes, last[2] + [unit.row_group])
            else:
                items.append(([key], nbytes, [unit.row_group]))
        head = None if self._fetched else next((i for i, (_, _, groups) in enumerate(items) if groups), None)
        self._fetched = self._fetched or any(groups is not None for _, _, groups in items)
        reserved = self._reserve([key for keys, _, groups in items if groups is not None for key in keys])
        try:
            self._ahead.ahead([(keys, 0, None) if groups is None else
                               (keys, nbytes, self._deferred(first[keys[0][0]], groups,
                                                             nbytes if i == head else 0))
                               for i, (keys, nbytes, groups) in enumerate(items)])
        finally:  # every reserved place resolved, even if submitting failed: nobody waits forever
            self._offer(reserved)

    def _deferred(self, unit: WorkUnit, groups: list[int], head_bytes: int = 0) -> readahead.Deferred:
        """The fetch of row groups `groups` of the unit's file, made as read-ahead submits it;
        the file's version check and footer started then (or earlier, `prepare`), in the order
        the reader meets the files (`readahead.ReadAhead`), not all at once for every file told.
        `head_bytes` (the reader's first fetch): about that much of the file's head is fetched
        beside its footer (`_head`)."""
        prepare = functools.partial(self.open_ahead, [unit])

        def make():
            prepare()
            self._head(unit.path, groups, head_bytes)
            return self._fetcher(unit.path, groups)
        return readahead.Deferred(make, (self._ahead.order(unit.path), 2, groups[0]), prepare)

    def _head(self, rel: str, groups: list[int], nbytes: int) -> None:
        """The reader's first fetch, when it starts at the file's first row group and the footer
        is not known yet: the file's head (after the 4-byte magic, about `nbytes` times
        `_HEAD_SLACK`) is fetched beside the footer instead of after it. Row groups follow one
        another from the head of a Parquet file, so the first batch waits for one round trip
        instead of two (the footer's, then the ranges it gives). The file's fetches take from it
        what it holds and fetch only the rest (`_fetch_groups`), so no byte comes twice. Never
        into the tail the footer's fetch reads, so a file smaller than `_FIRST_FETCH_BYTES` plus
        two footers' fetches gets none."""
        size = self.ctx.manifest_bytes.get(rel)
        if not nbytes or groups[0] != 0 or size is None or size < _FIRST_FETCH_BYTES + 2 * _FOOTER_BYTES:
            return
        footer = self._footer(rel)  # (started by `prepare` already: known, or its fetch's future)
        if not isinstance(footer, Future) or footer.done():
            return
        end = min(size - _FOOTER_BYTES, 4 + int(nbytes * _HEAD_SLACK) + _FOOTER_BYTES)
        path = storage.join(self.ctx.root, rel, self.ctx.dataset)
        fetch = functools.partial(remotefiles.fetch_ranges, self.ctx.fs, path, [(4, end)], size)
        self._heads[rel] = ((4, end), self._ahead.once(("head", rel), fetch, (self._ahead.order(rel), 0)))

    def _meta_ahead(self, units: list[WorkUnit]) -> None:
        """The footer of each file of `units`, fetched once, concurrently (`_footer`)."""
        for rel in dict.fromkeys(u.path for u in units if u.row_group is not None):
            self._footer(rel)

    def _unit_bytes(self, unit: WorkUnit, names: list[str]) -> int:
        """Bytes a fetch of the unit's columns `names` moves: from the footer when the file is
        open, else the shard's size in the manifest shared out by rows (all columns: at most)."""
        if unit.path in self._files:
            return self._chunk_bytes(unit.path, unit.row_group, names)
        shard = self.ctx.shards.get(unit.path)
        if shard is None or not shard.num_samples or not shard.num_bytes:
            return _FETCH_BYTES
        return max(1, shard.num_bytes * unit.num_rows // shard.num_samples)

    def _footer(self, rel: str):
        """The file's footer where this reader or another of its iteration has it, else the future
        of its fetch (once, concurrently)."""
        known = self._files.get(rel)
        if known is not None:
            return known[0].metadata
        shared = self.ctx.shared.get(rel)
        if shared is not None:
            return shared[0]
        return self.ctx.shared.fetching(rel, lambda: self._ahead.once(
            ("footer", rel), functools.partial(self._footer_task, rel), (self._ahead.order(rel), 0)))

    def _footer_task(self, rel: str):
        """Read-ahead task: the file's parsed footer (`_fetch_footer`, one request); a small
        file's whole bytes, which that request brought, held for the iteration's readers
        (`SharedReads.hold`) so its row groups are served from them, not fetched again."""
        path = storage.join(self.ctx.root, rel, self.ctx.dataset)
        metadata, whole = _fetch_footer(self.ctx.fs, path, self._size(path))
        if whole is not None:
            self.ctx.shared.hold(rel, whole, metadata.num_row_groups)
        return metadata

    def _fetcher(self, rel: str, groups: list[int]):
        """The fetch of row groups `groups` of the file (`_fetch_groups`). A small file's is
        queued once its footer's fetch is done (`readahead.After`): it only serves the bytes that
        fetch brought, and a thread waiting for it (as a large file's fetch does, to go out the
        moment its ranges are known) would leave 3 of the 6 threads fetching (2.2 s an epoch
        over 200 files of 23 KB with 20 ms per request)."""
        path, footer = storage.join(self.ctx.root, rel, self.ctx.dataset), self._footer(rel)
        fetch = functools.partial(_fetch_groups, self.ctx.fs, path, footer, groups, self._ahead_columns(),
                                  self._size(path), functools.partial(self.ctx.shared.whole, rel),
                                  self._heads.get(rel))
        return readahead.After(footer, fetch) if self._small(rel) and isinstance(footer, Future) else fetch

    def _small(self, rel: str) -> bool:
        """Whether read-ahead fetches the file whole with its footer (`_FOOTER_BYTES`)."""
        size = self.ctx.manifest_bytes.get(rel)
        return self._ahead is not None and size is not None and size <= _FOOTER_BYTES

    def _whole(self, rel: str):
        """(footer, {(0, size): bytes}) of a small file whose bytes read-ahead holds (waiting
        for its footer's fetch if one is under way), else None."""
        if not self._small(rel):
            return None
        metadata = self.ctx.shared.fetched(rel)
        data = self.ctx.shared.whole(rel)
        return None if metadata is None or data is None else (metadata, {(0, len(data)): data})

    def _read_done(self, rel: str, groups) -> None:
        """Row groups `groups` of the file were read (None: all): a small file's bytes are
        dropped after its last (`SharedReads.done`)."""
        if not self._small(rel):
            return
        if groups is None:
            known = self._files.get(rel)
            if known is None:
                return
            groups = range(known[0].metadata.num_row_groups)
        self.ctx.shared.done(rel, groups)

    def _ahead_footer(self, unit: WorkUnit):
        """The footer of the unit's file if read-ahead (this reader's or another's of this
        iteration) fetched it, None otherwise."""
        if self._ahead is None or unit.path in self._files:
            return None
        return self.ctx.shared.fetched(unit.path)

    def _arrived(self, rel: str, groups: list[int]) -> list[int]:
        """`groups` (a run) cut before the first row group whose bytes are in another fetch
        still in flight: the run converts what has arrived while the rest downloads, instead of
        waiting for all of it (what makes the first batch wait for one small fetch)."""
        if self._ahead is None:
            return groups
        first = self._ahead.fetch_of((rel, groups[0]))
        for i, g in enumerate(groups[1:], 1):
            fetch = self._ahead.fetch_of((rel, g))
            if fetch is not None and fetch is not first and not fetch.done():
                return groups[:i]
        return groups

    def _take_ahead(self, unit: WorkUnit, names: list[str], groups) -> tuple | None:
        """(footer, {range: bytes}) fetched ahead for the row groups of this read, or None."""
        if self._ahead is None:
            return None
        wanted = [unit.row_group] if groups is None else groups
        md, parts, taken = None, {}, 0
        for g in wanted:
            got = None if g is None else self._take_fetched((unit.path, g))
            if got is not None:
                md, parts, taken = got[0], {**parts, **got[1]}, taken + 1
        if taken < len(wanted):  # some read in place: from a small file's bytes if held
            return self._whole(unit.path) or ((md, parts) if parts else None)
        return (md, parts) if parts else None

    def _from_parts(self, unit: WorkUnit, pf: pq.ParquetFile, parts: dict) -> tuple:
        """(the unit's file served from the fetched ranges, anything else read in place; the
        `remotefiles.KnownRanges` under it)."""
        path = storage.join(self.ctx.root, unit.path, self.ctx.dataset)
        size = self._size(path) or self.ctx.fs.size(path)
        src = remotefiles.KnownRanges(parts, size, functools.partial(remotefiles.open_remote, self.ctx.fs, path, size))
        # no pre-buffering: it would ask for a run's chunks as one range across fetches (a copy);
        # chunk by chunk, each read is a view into the fetched bytes
        return pq.ParquetFile(src, metadata=pf.metadata, pre_buffer=False, **_READ_OPTIONS), src

    def _chunk_bytes(self, path: str, group: int, names: list[str]) -> int:
        """Compressed bytes of the column chunks of `names` in row group `group` (what a read
        fetches), from the open file's footer."""
        pf, chunks_of = self._files[path][:2]
        rg = pf.metadata.row_group(group)
        return sum(rg.column(j).total_compressed_size for n in names for j in chunks_of.get(n, ()))

    def _check_schema(self, unit: WorkUnit, schema: pa.Schema) -> dict[str, pa.DataType]:
        """Once per file: the columns this dataset reads have the manifest's types, or one that
        casts to it without loss (`arrowtypes.common_type`); those columns -> the manifest's type."""
        fields = {f.name: f for f in arrowtypes.leaf_fields(schema)}
        present = [n for n in self.ctx.read_columns if n in fields]
        casts = {}
        for want in self.ctx.arrow_schema(present):
            got = arrowtypes.delivered_type(fields[want.name].type)
            if want.type == pa.null() or got.equals(want.type):
                continue
            common = arrowtypes.common_type(got, want.type)
            if not _int96_indexed_at_ns(got, want.type) and (common is None or not common.equals(want.type)):
                raise self._error(unit, f"schema drift: column {want.name!r} is {got} here but "
                                  f"{want.type} in the manifest")
            casts[want.name] = want.type
        return casts

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
        except ShardReadError:
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

    def _filter_input(self, unit: WorkUnit) -> tuple[pa.Table, bool]:
        """The unit's filter columns; rows that are not UTF-8 text (skipped, `_text_checked`)
        marked `__ok_in__` False, so the count keeps them as the read does (`_filtered`)."""
        table, bad = self._text_checked(unit, self._read_columns(unit, list(self.ctx.filter_columns)))
        return (table, False) if bad is None else (table.append_column("__ok_in__", pa.array(~bad)), True)

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.close()
        self._files.clear()


def _fetch_whole(fs, path: str, size: int) -> io.BytesIO:
    """A small file read in place (the filter's count pass, a lane ahead of read-ahead), fetched
    whole in one request: its footer and row groups would otherwise be a request each. Not
    retried here: the read that needs it is (`ParquetReader._retrying`)."""
    return io.BytesIO(remotefiles.fetch_whole(fs, path, size, retry=False))


def _fetch_footer(fs, path: str, size: int | None) -> tuple:
    """(the file's parsed footer, the whole file's bytes if the request brought all of it, else
    None): one request for its last `_FOOTER_BYTES` (`remotefiles.fetch_ranges`, which checks the
    server's size against the manifest's and that it honoured the range), a second one only
    for a footer longer than that. Without a known size, fsspec's file reads the tail."""
    if size is None:
        with remotefiles.open_remote(fs, path, size) as f:
            metadata = pq.ParquetFile(f).metadata
        footercheck.check(metadata)
        return metadata, None
    start = max(0, size - _FOOTER_BYTES)
    parts = remotefiles.fetch_ranges(fs, path, [(start, size)], size)
    with remotefiles.KnownRanges(parts, size, functools.partial(remotefiles.open_remote, fs, path, size)) as src:
        metadata = pq.ParquetFile(src).metadata
    footercheck.check(metadata)  # read-ahead reads no row group of a damaged footer (`footercheck.damage`)
    return metadata, (parts[(start, size)] if start == 0 else None)


def _fetch_groups(fs, path: str, footer, groups: list[int], names: list[str], size: int | None = None,
                  whole: Callable[[], object] | None = None, head: tuple | None = None):
    """Read-ahead task: (footer, {range: bytes}) of the column chunks of `names` in row groups
    `groups` of one file, adjacent chunks in one request (a file whose size is not the
    manifest's `size` fails it: read in place, where the error is named), or no request where
    `whole()` gives the small file's bytes its footer's fetch brought (`SharedReads.hold`); what
    `head` ((range, future) of the file's head, fetched beside its footer:
    `ParquetReader._head`) holds is taken from it, and only the rest is fetched.
    `footer` is the file's metadata, or the future of its fetch (`_fetch_footer`, submitted
    before this task, so never behind it)."""
    metadata = footer.result() if isinstance(footer, Future) else footer
    if metadata is None:  # not fetched ahead (read-ahead's once-fetches are off): read it here
        metadata = _fetch_footer(fs, path, None)[0]
    data = None if whole is None else whole()
    if data is not None:
        return metadata, {(0, len(data)): data}
    wanted, ranges = set(names), []
    for g in groups:
        rg = metadata.row_group(g)
        for j in range(rg.num_columns):
            col = rg.column(j)
            if not wanted.isdisjoint(_paths_above(col.path_in_schema)):
                start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
                ranges.append((start, start + col.total_compressed_size))
    held, rest = _from_head(head, ranges)
    return metadata, {**held, **(remotefiles.fetch_ranges(fs, path, rest, size) if rest else {})}


def _from_head(head: tuple | None, ranges: list[tuple[int, int]]) -> tuple[dict, list[tuple[int, int]]]:
    """({range: bytes} of the head fetch (`head`: its range and future) if it holds any part of
    `ranges`, else nothing; the pieces of `ranges` it does not hold). Only a fetch that wants
    some of its bytes waits for it; a failed head is no fetch's failure: the ranges are then
    fetched as without it."""
    if head is None or not any(x < head[0][1] and y > head[0][0] for x, y in ranges):
        return {}, ranges
    try:
        parts = head[1].result()
    except Exception:
        parts = None
    if not parts:
        return {}, ranges
    (a, b), = parts
    rest = []
    for x, y in ranges:
        if y <= a or x >= b:
            rest.append((x, y))
            continue
        if x < a:
            rest.append((x, a))
        if y > b:
            rest.append((b, y))
    overlaps = any(x < b and y > a for x, y in ranges)
    return (parts if overlaps else {}), rest


def _arrow_filesystem(fs) -> pafs.FileSystem | None:
    """pyarrow's native filesystem for local files (the fast path), None for everything else."""
    return pafs.LocalFileSystem() if storage.is_local(fs) else None


def _as_delivered(table: pa.Table) -> pa.Table:
    """Columns as the manifest records them: struct columns as their leaves (`image.bytes`:
    `arrowtypes.leaf_fields`; pyarrow reads only the leaves asked for), dictionaries decoded to
    their values (the values, not the codes, are what a sample holds), fixed-size binary as
    binary (`arrowtypes.delivered_type`)."""
    while any(pa.types.is_struct(f.type) for f in table.schema):
        table = table.flatten()
    for i, field in enumerate(table.schema):
        want = arrowtypes.delivered_type(field.type)
        if want != field.type:
            table = table.set_column(i, field.name, table.column(i).cast(want))
    return table


def _filtered(ctx, light: pa.Table, bad: np.ndarray | None) -> tuple[pa.Table, np.ndarray, np.ndarray | None]:
    """`apply_filter` over the filter columns; rows skipped as not UTF-8 (`bad`, their values
    null) pass whatever the filter says, as `count_many` counts them: the skip is counted, not
    taken for a filtered row. Returns (rows kept, their numbers, which of them are bad)."""
    if bad is None:
        return (*apply_filter(ctx, light), None)
    kept, rows = apply_filter(ctx, light.append_column("__ok_in__", pa.array(~bad)), keep_bad=True)
    return kept.drop_columns(["__ok_in__"]), rows, bad[rows]


def _cast(table: pa.Table, casts: dict[str, pa.DataType]) -> pa.Table:
    """Columns a file holds narrower than the manifest (`_check_schema`) in the manifest's type:
    a `null` column (None in every row of this file) as nulls of it, string/binary/list as
    their large_ forms, list elements as nullable, INT96 microseconds as an older manifest's
    nanoseconds (a value out of range raises ArrowInvalid)."""
    if not casts:  # every file of one writer: the usual case
        return table
    for name in casts.keys() & set(table.schema.names):
        i, column = table.schema.get_field_index(name), table.column(name)
        column = pa.nulls(len(column), casts[name]) if column.type == pa.null() else column.cast(casts[name])
        table = table.set_column(i, name, column)
    return table


def _int96_indexed_at_ns(got: pa.DataType, want: pa.DataType) -> bool:
    """A Spark INT96 column (now read at microseconds, `arrowtypes.INT96_UNIT`) that a manifest
    from an earlier sparkfeed records at nanoseconds: cast, so dates 1677-2262 read as before
    and others fail by name instead of wrapping around."""
    return (pa.types.is_timestamp(got) and pa.types.is_timestamp(want) and got.tz == want.tz
            and got.unit == "us" and want.unit == "ns")


def _stored_names(schema: pa.Schema) -> set[str]:
    """The names a file can be read by: its columns and its structs' leaves."""
    return set(schema.names) | {f.name for f in arrowtypes.leaf_fields(schema)}


def _paths_above(path: str) -> list[str]:
    """A column chunk's path and the paths above it ("a.b.c" -> "a", "a.b", "a.b.c"): the
    names a column, or a struct's leaf, is selected by."""
    parts = path.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts) + 1)]


def _partition_scalar(value, type_: pa.DataType) -> pa.Scalar | None:
    """A shard's partition value as a scalar of its column's type: a null scalar only where the
    value is null (a False or a 0 is no missing value); None where it does not fit the type."""
    if value is None:
        return pa.scalar(None, type_)
    return pruning._scalar(value, type_)
