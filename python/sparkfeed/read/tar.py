"""WebDataset tar shards -> Arrow tables, one row per sample (key), with hostile members refused.

Members `<key>.<ext>` are grouped by key, and the manifest's schema says which member holds each
column (`member`: an extension, `json` for scalar columns kept together, `__key__` for the key).
A shard with a DALI index (every shard sparkfeed writes or indexes) is cut up through it, checked
against the tar's own headers (`tarindex`: no per-member Python object); any other shard, or one
whose index does not match, is streamed member by member with Python's `tarfile`. Member data is
never unpickled: `.pyd`/`.pickle` and other unknown members are ignored. Links, devices and names
that `storage.path_problem` refuses (absolute, `..`, ...) are refused, naming the shard and tar
offset, as is a damaged member header (`StrictTarInfo`: never taken for the archive's end).
Members are grouped as webdataset groups them: one in no sample (`is_sample_member`: "README",
".txt") is skipped; integer members are read as webdataset reads them (`parse_int`).
A shard's keys, known from its headers at no extra cost, must be those the manifest implies
(`key_problem`): a file of the right size holding another shard's samples is an error.
"""

from __future__ import annotations

import contextlib
import decimal
import functools
import io
import json
import logging
import mmap
import os
import posixpath
import re
import tarfile
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import storage
from ..errors import CorruptSampleError, redact
from ..footer import STRING_STATS_MAX_CHARS, round_up
from ..manifest import Column, Shard
from ..plan import WorkUnit
from . import jsondoc, tarindex
from .tarindex import is_sample_member
from .base import Reader, UnitRows, apply_filter

log = logging.getLogger(__name__)
MAX_MEMBER_BYTES = 1 << 30
CHUNK_BYTES = 32 << 20  # an indexed shard is read in pieces of about this many bytes (`chunks`)
FIRST_CHUNK_BYTES = 8 << 20  # ... the first one smaller: the first batches wait for it alone
MIN_CHUNK_ROWS = 64    # ... of at least this many samples
_INDEXES_KEPT = 16     # parsed shard indexes kept per reader


def split_name(name: str) -> tuple[str, str]:
    """(key, extension) of a member name: the key ends at the first dot of the base name."""
    head, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(head, stem) if head else stem, ext


def parse_int(data: bytes) -> int:
    """An integer member's value as webdataset decodes `.cls` and the like (`int(data)`):
    ASCII digits with an optional sign, leading zeros, `_` between digits and surrounding
    whitespace; ValueError for anything else."""
    return int(data)


class TarHeaderError(Exception):
    """A member header with a bad checksum, or cut short, past the tar's first block. Not a
    `tarfile.HeaderError`, so `TarFile.next` raises it instead of taking it for the archive's
    end (`StrictTarInfo`)."""

    def __init__(self, offset: int, reason: str):
        super().__init__(f"{reason} (tar offset {offset})")
        self.offset, self.reason = offset, reason


class StrictTarInfo(tarfile.TarInfo):
    """The `tarinfo` class of every tar sparkfeed reads (`tarfile.open(..., tarinfo=...)`).
    Python's `TarFile.next` ends the archive without a word at a header whose checksum is wrong
    or that is cut short anywhere after byte 0, so every member after it would be lost
    silently; this raises `TarHeaderError` naming the header's offset there instead. The
    end-of-archive zero block, and a file that ends where a header would start (no
    end-of-archive blocks, as webdataset accepts), still end the archive."""

    @classmethod
    def frombuf(cls, buf, encoding, errors):
        """A header parsed as `tarfile` parses it, but one whose name (or non-empty ustar prefix)
        bytes go on past the NUL that ends it is refused (`_name_problem`): `tarfile` cuts the
        name there, and the member would become another one ("s1\\0.txt" a member "s1" in no
        sample) without a word. (Bytes after an empty prefix change nothing; the index check,
        `tarindex`, takes such a header as well.)"""
        obj = super().frombuf(buf, encoding, errors)
        problem = _name_problem(buf[:100]) or \
            (_name_problem(buf[345:500]) if buf[345] and buf[257:263] == b"ustar\0" else None)
        if problem is not None:
            raise _NameFieldError(problem)
        return obj

    @classmethod
    def fromtarfile(cls, tar):
        start = tar.fileobj.tell()
        try:
            return super().fromtarfile(tar)
        except _NameFieldError as exc:
            raise TarHeaderError(start, f"member header's {exc}") from None
        except (tarfile.InvalidHeaderError, tarfile.TruncatedHeaderError) as exc:
            if start == 0:
                raise  # byte 0: not a tar at all, which tarfile itself says
            what = "cut short" if isinstance(exc, tarfile.TruncatedHeaderError) else "damaged"
            raise TarHeaderError(start, f"member header {what} ({exc}); the members after it "
                                 "would be lost") from exc

    def _proc_pax(self, tarfile):
        """A pax extended header, its records checked first (`pax_problem`): `tarfile` before
        Python 3.11.10 parses them with regular expressions that backtrack, and a crafted header
        of 240 KB took 40 s and 7 GB (every record's keyword a copy of the rest of the header);
        a damaged one is refused naming its offset, as newer Pythons refuse it."""
        data = tarfile.fileobj.read(self._block(self.size))
        problem = pax_problem(data[:self.size]) if len(data) >= self.size else "is cut short"
        if problem is not None:
            raise TarHeaderError(self.offset, f"pax extended header {problem}; the members after "
                                 "it would be misread")
        return _replaying(tarfile, data, super()._proc_pax)

    def _proc_gnulong(self, tarfile):
        """A GNU long name (or link name), refused as `frombuf` refuses a name field when its
        bytes go on past the NUL that ends it."""
        data = tarfile.fileobj.read(self._block(self.size))
        problem = _name_problem(data[:self.size]) if len(data) >= self.size else None
        if problem is not None:
            raise TarHeaderError(self.offset, f"GNU long name's {problem}")
        return _replaying(tarfile, data, super()._proc_gnulong)


class _NameFieldError(Exception):
    """`StrictTarInfo.frombuf`'s refusal of a name field, given its tar offset by `fromtarfile`."""


def _name_problem(field: bytes) -> str | None:
    """What is wrong with a NUL-terminated name field (None: nothing): bytes other than NUL after
    the NUL that ends the name, which every tar writer pads with NULs."""
    end = field.find(b"\0")
    if end < 0 or not field[end:].strip(b"\0"):
        return None
    rest = field[end:].strip(b"\0")[:40]
    return (f"name {field[:end]!r} is followed by a NUL and then {rest!r}: "
            "a NUL inside a member name (tarfile and webdataset would cut the name there and read "
            "another member)")


_PAX_LENGTH = re.compile(rb"([0-9]{1,20}) ")
_PAX_DIGITS = re.compile(rb"[0-9]{65}")


def pax_problem(data: bytes) -> str | None:
    """What is wrong with pax header data (None: nothing), walked record by record in linear
    time: each record `<length> <keyword>=<value>\n` must fill its length exactly (to the end or
    a NUL), as Python 3.12.6+ demands; and no run of over 64 digits, on which `tarfile`'s search
    for a `hdrcharset` record backtracks quadratically."""
    pos = 0
    while pos < len(data) and data[pos] != 0:
        match = _PAX_LENGTH.match(data, pos)
        length = int(match.group(1)) if match else 0
        end = pos + length
        if length < 5 or end > len(data) or data[end - 1] != ord("\n") \
                or data.find(b"=", match.end() + 1, end - 1) < 0:
            return f"has a malformed record at byte {pos} of its data"
        pos = end
    if _PAX_DIGITS.search(data) is not None:
        return "has a run of over 64 digits"
    return None


def _replaying(tarfile, data: bytes, proc):
    """`proc(tarfile)` (tarfile's own parse of an extended header) reading `data`, the header's
    blocks already read and checked here, before the rest of the tar."""
    inner = tarfile.fileobj
    tarfile.fileobj = _Replayed(data, inner)
    try:
        return proc(tarfile)
    finally:
        tarfile.fileobj = inner


class _Replayed:
    """A tar's file object whose next read gives `data` (already read from it) back, for
    `tarfile`'s own parse of a pax header that `StrictTarInfo` checked first; all else goes to
    the file object itself."""

    def __init__(self, data: bytes, inner):
        self._data, self._inner = data, inner

    def read(self, size=-1):
        if self._data is not None:
            data, self._data = self._data, None
            return data
        return self._inner.read(size)

    def __getattr__(self, name):
        return getattr(self._inner, name)


class TarReader(Reader):
    """Reads tar shards (a WebDataset work unit is one shard). An indexed shard is read in
    pieces of about `CHUNK_BYTES` (`chunks`), each cut from the bytes that hold it alone; over
    remote storage the next pieces (or whole shards, unindexed) are fetched while the current
    one is parsed (`storage.ReadAhead`)."""

    def __init__(self, ctx):
        super().__init__(ctx)
        self._ahead = None if storage.is_local(ctx.fs) else storage.ReadAhead(ctx.read_ahead_bytes)
        self._indexes: OrderedDict[str, tuple] = OrderedDict()  # shard -> (index text, its parse)
        self._pieces_read: set = set()  # pieces read (a hint names its unit's pieces from the first)
        self._checked: set = set()  # shards whose indexed version was checked (`_check_unchanged`)
        self._key_rules: dict[str, KeyRule | None] | None = None  # shard -> its keys' rule (`key_rules`)

    def chunks(self, unit: WorkUnit, expected: int) -> list[tuple[int, int]] | None:
        """The pieces (rows [a, b)) this reader reads an indexed shard in: about `CHUNK_BYTES`
        each after a first of about `FIRST_CHUNK_BYTES`, within the rows the stream needs
        (`windows`); None: read it whole (no index, a filter, or no size in the manifest)."""
        size = self.ctx.manifest_bytes.get(unit.path)
        if self._index_path(unit) is None or self.ctx.expr is not None or not size or expected <= 0:
            return None
        rows = max(MIN_CHUNK_ROWS, CHUNK_BYTES * expected // size)
        first = max(MIN_CHUNK_ROWS, FIRST_CHUNK_BYTES * expected // size)
        a, b = self.windows.get(unit, (0, expected))
        bounds = [a, *range(min(b, a + first), b, rows), b]
        return [(x, y) for x, y in zip(bounds, bounds[1:]) if y > x]

    def read_ahead(self, units) -> None:
        """Fetch the next shards' pieces (`chunks`), each after its shard's index (fetched once);
        an unindexed shard is fetched whole. What a fetch needs (the shard's version check,
        index, piece ranges and parsed index) is started just before it, in unit order, and only
        for the shards whose bytes are kept ahead (`storage.Deferred`): told of 64 small shards,
        a reader does not fetch and parse 64 indexes before its first piece."""
        if self._ahead is None:
            return
        items = []
        for unit in units:
            path = storage.join(self.ctx.root, unit.path, self.ctx.dataset)
            size = self.ctx.manifest_bytes.get(unit.path)
            pieces = self.chunks(unit, unit.num_rows)
            order = self._ahead.order(unit.path)
            if pieces:
                for a, b in pieces:
                    key = (unit.path, a, b)
                    if key in self._pieces_read or self.ctx.shared.claimed(key):
                        continue
                    items.append(((key,), 0, None) if key in self._ahead else (
                        (key,), size * (b - a) // unit.num_rows,
                        storage.Deferred(functools.partial(self._piece_fetch, unit, path, size, tuple(pieces),
                                                           (a, b)), (order, 2, a),
                                         functools.partial(self._piece_prepare, unit, size, tuple(pieces)))))
            elif unit.path in self._ahead:
                items.append(((unit.path,), 0, None))  # still wanted, fetched or in flight
            elif size is not None:
                items.append(((unit.path,), size, storage.Deferred(functools.partial(
                    self._whole_fetch, unit, path, size), (order, 2, 0))))
        reserved = self._reserve([key for keys, _, fetch in items if fetch is not None
                                  for key in keys if len(key) == 3])
        try:
            self._ahead.ahead(items)
        finally:  # every reserved place resolved, even if submitting failed: nobody waits forever
            self._offer(reserved)

    def _piece_prepare(self, unit: WorkUnit, size: int, pieces: tuple):
        """What a shard's piece fetches need, started once per shard: its version check (indexed
        data), index, piece ranges and parse; the future of the ranges."""
        self.check_ahead([unit])
        index = self._index_ahead(unit)
        spans = self._ahead.once((unit.path, "spans"), storage.After(
            index, functools.partial(_piece_spans, index, pieces, size), (self._ahead.order(unit.path), 1)))
        self._parsed_ahead(unit, index)
        return spans

    def _piece_fetch(self, unit: WorkUnit, path: str, size: int, pieces: tuple, window: tuple[int, int]):
        """The fetch of one piece, made as read-ahead submits it. It waits for the piece's range
        on its thread (`storage.After`'s note says why)."""
        spans = self._piece_prepare(unit, size, pieces)
        return functools.partial(_fetch_rows, self.ctx.fs, path, size, spans, window)

    def _whole_fetch(self, unit: WorkUnit, path: str, size: int):
        """The fetch of a whole (unindexed) shard, made as read-ahead submits it."""
        self.check_ahead([unit])
        # the whole shard as one range; a file whose size is not the manifest's fails the fetch,
        # and the shard is then read in place, where the reader names the mismatch
        return functools.partial(_ahead_fetch, path, functools.partial(
            storage.fetch_whole, self.ctx.fs, path, size, retry=False))

    def _index_ahead(self, unit: WorkUnit):
        """The future of the fetch of the shard's index text, once for the readers of the
        iteration (`SharedReads.fetching`: the two lanes that split a shard each need its
        index, 750 KB for 5,000 images); None without an index."""
        where = self._index_path(unit)
        if where is None:
            return None
        return self.ctx.shared.fetching(("index", unit.path), lambda: self._ahead.once(
            (unit.path, "index"), functools.partial(self._read_index, unit, where), (self._ahead.order(unit.path), 0)))

    def _parsed_ahead(self, unit: WorkUnit, index_text) -> None:
        """The shard's index parsed on a read-ahead thread once its text is in (`index_text`, a
        future), once for the readers of the iteration: the parse (11 ms for 5,000 samples)
        runs while the shard's first pieces are fetched, not on the lane after they arrive."""
        if index_text is not None:
            self.ctx.shared.fetching(("parsed", unit.path), lambda: self._ahead.once(
                (unit.path, "parsed"), storage.After(index_text, functools.partial(_parse_text, index_text),
                                                     (self._ahead.order(unit.path), 1, 1))))

    def _meta_ahead(self, units: list[WorkUnit]) -> None:
        """Each shard's index text, fetched once, concurrently (`_index_ahead`)."""
        for unit in {u.path: u for u in units}.values():
            self._index_ahead(unit)

    @property
    def runs_ahead(self) -> bool:
        """Shuffled shards are read in pieces (`chunks`), which read-ahead fetches, except with
        a filter (read whole, in place)."""
        return self._ahead is not None and self.ctx.expr is None

    def read_window(self, unit: WorkUnit, expected: int, start: int, stop: int) -> UnitRows | None:
        """Samples [start, stop) of an indexed shard from the bytes that hold them alone (a
        piece, `chunks`, or what a lane needs of a shard that a lane boundary splits). Anything
        unusual (no index, a filter, an index that does not match, a failed read) gives None,
        and the shard is read whole, where errors are named and retried."""
        if self._index_path(unit) is None or self.ctx.expr is not None or not 0 <= start < stop <= expected:
            return None
        try:
            got = self._window_members(unit, (start, stop))
            if got is None:
                return None
            table, ok = self._table(unit, self.ctx.read_columns, got)
        except CorruptSampleError:
            raise
        except Exception as exc:  # noqa: BLE001 - the whole read names (or retries) it
            self._raise_gave_up(unit, exc, start)
            log.debug("%s: shard %s: samples %d-%d not read apart (%s: %s); reading it whole",
                      self.ctx.dataset, unit.path, start, stop, type(exc).__name__, exc)
            return None
        self.ctx.stats.add("bytes_read", got.nbytes)
        return self._unit_rows(table, unit, np.arange(start, stop), ok=ok)

    def _raise_gave_up(self, unit: WorkUnit, exc: Exception, start: int) -> None:
        """Raise the named error for a remote window read that storage's retries gave up on
        (`storage.with_retries`: a server that kept failing or stalling, a missing file, refused
        access): the whole read would spend the retry budget again on the same server, 8 more
        time-outs of a stalled one, before failing the same way."""
        if storage.is_local(self.ctx.fs) or not isinstance(exc, OSError):
            return
        index = self._indexes.get(unit.path, (None, None))[1]
        offset = index.sample_offset(start) if index is not None else None
        named = self._storage_error(unit, exc, offset)  # None for anything else (a 416, say)
        if named is not None:
            raise named from exc

    def _index(self, unit: WorkUnit) -> tuple[str | None, tarindex.Index | None, dict, tuple | None]:
        """The shard's index text, its parse, the byte ranges of its pieces (`chunks`) and what is
        wrong with its keys (`_keys_wrong`; None: nothing), once per shard: from what
        `read_ahead` fetched, or read and worked out here. A window or shard cut out through the
        index holds the index's keys (`Index.members` checks each header's name), so the index's
        keys are checked once for every read through it."""
        if unit.path not in self._indexes:
            once = self._ahead.once_result if self._ahead is not None else lambda key: None
            fetched = self.ctx.shared.fetched(("index", unit.path)) if self._ahead is not None else None
            text, where = fetched, self._index_path(unit)
            if text is None and where is not None:
                text = self._read_index(unit, where)
            spans, pieces = once((unit.path, "spans")), self.chunks(unit, unit.num_rows)
            if spans is None and text is not None and pieces:
                spans = tarindex.window_ranges(text, pieces, self.ctx.manifest_bytes[unit.path])
            parsed = self.ctx.shared.fetched(("parsed", unit.path)) if fetched is not None else None
            index = parsed if parsed is not None else self._parse_index(unit, text)  # (malformed: said here)
            wrong = None if index is None else self._keys_wrong(
                unit, index.keys if index.key_array is None else index.key_array, index.sample_offset)
            self._indexes[unit.path] = (text, index, spans or {}, wrong)
            while len(self._indexes) > _INDEXES_KEPT:
                self._indexes.popitem(last=False)
        return self._indexes[unit.path]

    def _window_members(self, unit: WorkUnit, window: tuple[int, int]) -> tarindex.Members | None:
        """The wanted members of samples `window`: from bytes fetched ahead, a slice of the
        mapped local file, or one range request (None: the index cannot serve the window)."""
        wanted = {c.member or c.name for c in self.ctx.schema if c.name in set(self.ctx.read_columns)}
        path = storage.join(self.ctx.root, unit.path, self.ctx.dataset)
        if unit.path not in self._checked:  # indexed data: the file is the one indexed (once)
            self._check_unchanged(unit, path)
            self._checked.add(unit.path)
        key = (unit.path, *window)
        self._pieces_read.add(key)
        fetched = self._take_fetched(key)
        text, index, spans, wrong = self._index(unit)
        if wrong is not None:
            return None  # not the shard written: the whole read names it
        if fetched is not None:
            got = None if index is None else index.members(fetched, wanted, window)
            if got is not None:
                self.ctx.stats.add("bytes_read_ahead", got.nbytes)  # of bytes_read: fetched ahead
            return got
        size = self.ctx.manifest_bytes.get(unit.path)
        if index is None or size is None:
            return None
        span = spans[window] if window in spans else tarindex.window_ranges(text, [window], size)[window]
        if span is None:
            return None
        if not storage.is_local(self.ctx.fs):
            return index.members(storage.fetch_ranges(self.ctx.fs, path, [span], size)[span], wanted, window)
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            if len(mapped) != size:
                return None
            with memoryview(mapped) as view, view[span[0]:span[1]] as part:
                return index.members(part, wanted, window)

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.close()

    def _index_path(self, unit: WorkUnit) -> tuple | None:
        """(filesystem, path) of the shard's DALI index, when the manifest names one."""
        shard = self.ctx.shards.get(unit.path)
        if shard is None or shard.index is None or self.ctx.indexes is None:
            return None
        fs, base = self.ctx.indexes
        return fs, storage.join(base, shard.index, self.ctx.dataset)

    def _read_index(self, unit: WorkUnit, where: tuple) -> str:
        """The index's text, or "" (missing or unreadable: the shard is streamed instead, and the
        index is not read again: read ahead, it is not fetched again in place). A time-out is not
        retried (`_ahead_fetch`): the tar, streamed, has the whole retry budget."""
        fs, path = where
        try:
            return _ahead_fetch(path, functools.partial(fs.cat_file, path), "reading the index",
                                "streaming the tar").decode("utf-8")
        except Exception as exc:  # an index is only a short cut: any failure means streaming
            log.info("%s: shard %s: its index %s cannot be read (%s: %s); streaming the tar",
                     self.ctx.dataset, unit.path, redact(path), type(exc).__name__, redact(exc))
            return ""

    def _parse_index(self, unit: WorkUnit, text: str | None) -> tarindex.Index | None:
        """The shard's index parsed and checked; None when it is missing or malformed, or names
        unsafe members: the shard is then streamed."""
        index = None if not text else tarindex.Index.parse(text, split_name, MAX_MEMBER_BYTES)
        if text and index is None:
            log.info("%s: shard %s: its index is malformed or names unsafe members; streaming "
                     "the tar", self.ctx.dataset, unit.path)
        return index

    @contextlib.contextmanager
    def _buffer(self, path: str, data: bytes | memoryview | None):
        """The whole shard as a buffer: bytes fetched ahead, a local file mapped into memory
        (pages read as they are cut), or a remote file read whole."""
        if data is not None:
            yield data
        elif storage.is_local(self.ctx.fs) and os.path.getsize(path) > 0:
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                yield mapped
        else:
            yield self.ctx.fs.cat_file(path)

    def _open(self, path: str, data: bytes | memoryview | None):
        """The shard streamed: bytes fetched ahead, or the file in place."""
        if data is not None:
            return io.BytesIO(data)
        return self.ctx.fs.open(path, "rb")  # fsspec's block cache: tarfile reads 10 KiB at a time

    def _check_member(self, unit: WorkUnit, info: tarfile.TarInfo) -> None:
        name = info.name
        where = info.offset
        if info.issym() or info.islnk():
            raise self._error(unit, f"member {name!r} is a link; links are refused", where)
        if not info.isreg():
            raise self._error(unit, f"member {name!r} is not a regular file (type {info.type!r})", where)
        problem = storage.path_problem(name)  # the same rule as manifest paths and the JVM
        if problem is not None:
            raise self._error(unit, f"member name {name!r} could escape the dataset: it {problem}",
                              where)
        if info.size > MAX_MEMBER_BYTES:
            raise self._error(unit, f"member {name!r} is {info.size} bytes, over the "
                              f"{MAX_MEMBER_BYTES}-byte limit", where)

    def _members(self, unit: WorkUnit, wanted_members: set[str]) -> tarindex.Members:
        """Keys in shard order and the wanted members' bytes per sample (retried as a whole)."""
        where = {"offset": 0}
        _, index, _, wrong = self._index(unit)  # its own retries, once: not retried with the shard
        try:
            found = storage.with_retries(lambda: self._read_members(unit, wanted_members, where, index, wrong),
                                         f"reading {unit.path}")
        except Exception as exc:
            named = self._storage_error(unit, exc, where["offset"])
            if named is None and storage.is_transient(exc):
                named = self._error(unit, f"storage kept failing ({type(exc).__name__}: {exc})", where["offset"])
            if named is not None:
                raise named from exc
            kind = self._compressed(unit) if isinstance(exc, tarfile.ReadError) and where["offset"] == 0 else None
            if kind is not None:
                raise self._error(unit, compressed_words(kind)) from exc
            if isinstance(exc, (tarfile.TarError, EOFError, ValueError)):
                raise self._error(unit, f"corrupt or truncated tar after the member at this offset "
                                  f"({type(exc).__name__}: {exc})", where["offset"]) from exc
            raise
        if len(set(found.keys)) != len(found.keys):
            raise self._error(unit, *_repeated_key(found))
        self.ctx.stats.add("bytes_read", found.nbytes)
        return found

    def _compressed(self, unit: WorkUnit) -> str | None:
        """The compression whose stream the shard holds (`compressed_kind` of its first bytes)."""
        try:
            head = self.ctx.fs.cat_file(storage.join(self.ctx.root, unit.path, self.ctx.dataset), start=0, end=6)
        except Exception:  # noqa: BLE001 - only a better word for an error already raised
            return None
        return compressed_kind(head)

    def _read_members(self, unit: WorkUnit, wanted_members: set[str], where: dict,
                      index: tarindex.Index | None, wrong: tuple | None = None) -> tarindex.Members:
        """The shard's members: through its index where it has one that matches, else streamed.
        A streamed shard must hold the members its manifest counts (`_check_present`); either
        way its keys must be the shard's (`_keys_wrong`; `wrong`: the index's keys' verdict)."""
        path = storage.join(self.ctx.root, unit.path, self.ctx.dataset)
        self._check_unchanged(unit, path)
        data = self._ahead.take(unit.path) if self._ahead is not None else None
        if index is not None:
            with self._buffer(path, data) as buf:
                self._check_size(unit, len(buf))
                found = index.members(buf, wanted_members)
                if found is not None:
                    if wrong is not None:
                        raise self._error(unit, *wrong)
                    return found
                data = buf if isinstance(buf, (bytes, memoryview)) else None
            log.info("%s: shard %s does not match its index; streaming the tar", self.ctx.dataset,
                     unit.path)
        seen: list[tuple[int, str]] = []
        present: dict[str, int] = {}
        found = self._stream(unit, path, data, wanted_members, where, seen, present)
        self._check_present(unit, present, seen, index)
        wrong = self._keys_wrong(unit, found.keys, found.starts.__getitem__)
        if wrong is not None:
            raise self._error(unit, *wrong)
        return found

    def _stream(self, unit: WorkUnit, path: str, data: bytes | None, wanted_members: set[str],
                where: dict, seen: list, present: dict) -> tarindex.Members:
        """One pass over the shard's members with `tarfile` (`StrictTarInfo`: a damaged header
        is an error, not the archive's end); `where["offset"]` tracks the last member header,
        `seen` gets each sample member's (header offset, name) and `present` each extension's
        count. Members in no sample (`is_sample_member`) are skipped, as webdataset skips them."""
        keys: list[str] = []
        starts: list[int] = []
        samples: list[dict] = []
        read = skipped = 0
        with self._open(path, data) as f:
            self._check_size(unit, getattr(f, "size", len(f.getbuffer()) if isinstance(f, io.BytesIO) else None))
            try:
                with tarfile.open(fileobj=f, mode="r|", errorlevel=2, tarinfo=StrictTarInfo) as tar:
                    for info in tar:
                        where["offset"] = info.offset
                        if info.isdir():
                            continue
                        self._check_member(unit, info)
                        read += info.size + 512
                        if not is_sample_member(info.name):
                            skipped += 1
                            continue
                        seen.append((info.offset, info.name))
                        key, ext = split_name(info.name)
                        present[ext] = present.get(ext, 0) + 1
                        if not keys or keys[-1] != key:
                            keys.append(key)
                            starts.append(info.offset)
                            samples.append({})
                        if ext in wanted_members:
                            samples[-1][ext] = tar.extractfile(info).read()
            except TarHeaderError as exc:
                raise self._error(unit, f"corrupt tar: {exc.reason}", exc.offset) from exc
        if skipped:
            log.debug("%s: shard %s: %d member(s) in no sample (no extension or no key) skipped",
                      self.ctx.dataset, unit.path, skipped)
        values = {m: [s.get(m) for s in samples] for m in wanted_members}
        return tarindex.Members(keys, values, read, starts)

    def _check_present(self, unit: WorkUnit, present: dict[str, int], seen: list[tuple[int, str]],
                       index: tarindex.Index | None) -> None:
        """A shard that `sparkfeed.index` scanned holds as many of each member as its manifest
        counts (samples less the column's nulls): else its headers changed after indexing (a
        renamed member with a valid checksum), and the sample counts alone would let samples
        through with members missing. The error names the first member that differs from the
        shard's index, when it has one (only named: the index decides nothing)."""
        shard = self.ctx.shards.get(unit.path)
        if shard is None or (shard.mtime is None and shard.etag is None):
            return  # written by sparkfeed (a sample without members leaves no trace there)
        for col in self.ctx.schema:
            member, stats = col.member or col.name, shard.stats.get(col.name)
            if member == "__key__" or stats is None or stats.null_count is None:
                continue
            want, got = shard.num_samples - stats.null_count, present.get(member, 0)
            if got != want:
                raise self._error(unit, f"the tar holds {got} .{member} member(s) where its manifest "
                                  f"counts {want}: the shard was damaged or changed after it was "
                                  "indexed (index it again if the change is wanted)",
                                  _first_difference(seen, index))

    def _keys_wrong(self, unit: WorkUnit, keys, offset_of) -> tuple[str, int] | None:
        """(what is wrong, the tar offset of the first sample concerned) when the shard's keys
        (all of them, in shard order) are not those its manifest entry implies (`key_problem`),
        else None. `offset_of(i)`: sample i's first member header."""
        if self._key_rules is None:
            self._key_rules = key_rules(self.ctx.schema, self.ctx.shards)
        rule = self._key_rules.get(unit.path)
        problem = None if rule is None or not len(keys) else key_problem(rule, keys)
        if problem is None:
            return None
        what, i = problem
        return (f"{what}: the file is not the shard that was written; it was replaced or changed "
                "after the write (another shard copied over it?); restore it or write the dataset "
                "again"), offset_of(i)

    def _check_size(self, unit: WorkUnit, size: int | None) -> None:
        """A shard whose size differs from the manifest's was truncated or replaced."""
        expected = self.ctx.manifest_bytes.get(unit.path)
        if size is not None and expected is not None and size != expected:
            raise self._error(unit, f"the file is {size} bytes but the manifest says {expected}: "
                              "truncated or replaced after the write", offset=min(size, expected))

    def _table(self, unit: WorkUnit, names: list[str],
               found: tarindex.Members | None = None) -> tuple[pa.Table, np.ndarray]:
        """The shard's samples (or those of `found`, a window's) as a table of `names`, and
        which rows decoded cleanly.

        A sample whose member cannot be parsed (bad UTF-8, bad JSON, a value of the wrong type)
        raises CorruptSampleError naming the shard and key, or under on_error="skip" becomes a
        null row marked not-ok, so stream positions stay exact and the skip is counted.
        """
        cols = [c for c in self.ctx.schema if c.name in set(names)]
        found = self._members(unit, {c.member or c.name for c in cols}) if found is None else found
        keys, n = found.keys, len(found.keys)
        bad: dict[int, str] = {}
        in_json = any((c.member or c.name) == "json" and c.type not in ("string", "large_string")
                      for c in cols)
        fields = self.ctx.arrow_schema([c.name for c in cols])
        arrays = _whole_columns(cols, fields, found.values, n)
        parsed = exact = None
        in_doc = {c.name for c in cols if c.member == "json"}
        if in_json and any(c.name not in arrays for c in cols if c.member == "json"):
            parsed = self._parse_json(_as_list(found.values.get("json"), n), bad, in_doc)
        if any(c.member == "json" and c.type.startswith("decimal") for c in cols):
            # decimals exactly as written ("12.34"), not through a double
            exact = self._parse_json(_as_list(found.values.get("json"), n), {}, in_doc, decimal.Decimal)
        for col, field in zip(cols, fields):
            if col.name not in arrays:
                docs = exact if col.type.startswith("decimal") else parsed
                values = self._column_values(col, keys, found.values, docs, bad)
                arrays[col.name] = self._to_array(col, values, field.type, bad)
        if bad:
            self._corrupt(unit, keys, bad)
        ok = np.ones(len(keys), dtype=bool)
        ok[list(bad)] = False
        table = pa.table(arrays) if arrays else pa.table({"n": np.zeros(len(keys))}).drop_columns(["n"])
        if bad:  # every value of a bad sample is null: no half-parsed sample leaks through
            mask = pa.array(~ok)
            table = pa.table({n: pc.if_else(mask, pa.nulls(len(keys), c.type), c) for n, c in
                              zip(table.column_names, table.columns)}) if arrays else table
        return table, ok

    def _corrupt(self, unit: WorkUnit, keys: list[str], bad: dict[int, str]) -> None:
        if self.ctx.on_error != "skip":
            row, reason = min(bad.items())
            raise CorruptSampleError(f"{reason} ({len(bad)} bad sample(s) in this shard; "
                                     "on_error='skip' skips and counts them)",
                                     dataset=self.ctx.dataset, shard=unit.path, key=keys[row])

    @staticmethod
    def _parse_json(raw: list, bad: dict[int, str], wanted: set[str], parse_float=float) -> list[dict]:
        """Each sample's `.json` object (an empty one where it has none); a document nested too
        deeply for Python's parser gives its `wanted` fields alone (`jsondoc`), so depth in a
        field the read did not ask for fails nothing, streamed or indexed."""
        out = []
        for i, r in enumerate(raw):
            doc = {}
            if r is not None:
                try:
                    try:
                        doc = json.loads(r, parse_float=parse_float)
                    except RecursionError:
                        doc = jsondoc.loads_fields(r, wanted, parse_float)
                    if not isinstance(doc, dict):
                        raise ValueError(f"a JSON {type(doc).__name__}, not an object")
                except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                    bad.setdefault(i, f"member .json cannot be parsed ({_json_problem(exc)})")
                    doc = {}
            out.append(doc)
        return out

    @staticmethod
    def _column_values(col, keys, members: dict, parsed_json, bad: dict[int, str]) -> list:
        member = col.member or col.name
        if member == "__key__":
            return keys
        if member == "json" and col.type not in ("string", "large_string"):
            return [d.get(col.name) for d in parsed_json]  # scalars kept together (the JVM writer)
        raw = _as_list(members.get(member), len(keys))
        if col.type in ("binary", "large_binary"):
            return raw
        values = []
        integer = col.type.startswith(("int", "uint"))
        for i, r in enumerate(raw):
            try:
                values.append(_member_value(r, col.type, integer))
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                bad.setdefault(i, f"member .{member} of column {col.name!r} cannot be parsed "
                                  f"({_json_problem(exc)})")
                values.append(None)
        return values

    @staticmethod
    def _to_array(col, values: list, type_: pa.DataType, bad: dict[int, str]) -> pa.Array:
        """Values as an Arrow array of the column's type; values that do not fit are bad rows."""
        type_ = None if type_ == pa.null() else type_
        _refuse_fractions(col, values, type_, bad)
        try:
            return _array(values, type_)
        except (pa.ArrowException, ValueError, TypeError, OverflowError):
            pass
        for i, v in enumerate(values):
            try:
                _array([v], type_)
            except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:
                bad.setdefault(i, f"column {col.name!r}: value does not fit {type_} ({exc})")
                values[i] = None
        return _array(values, type_)

    def _read(self, unit: WorkUnit) -> UnitRows:
        table, ok = self._table(unit, self.ctx.read_columns)
        n = table.num_rows
        table = table.append_column("__ok_in__", pa.array(ok))
        table, rows = apply_filter(self.ctx, table, keep_bad=True, unit=unit)
        self.ctx.stats.add("rows_filtered", n - table.num_rows)
        return self._unit_rows(table, unit, rows, ok=table.column("__ok_in__").to_numpy(zero_copy_only=False))

    def _filter_input(self, unit: WorkUnit) -> tuple[pa.Table, bool]:
        table, ok = self._table(unit, list(self.ctx.filter_columns))
        return table.append_column("__ok_in__", pa.array(ok)), True


# The first bytes of the compressed streams a `.tar` may hold (`tar -czf x.tar`, TarWriter's
# compress=True): gzip, bzip2, xz, zstd, lz4 frames.
COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz",
                    b"\x28\xb5\x2f\xfd": "zstd", b"\x04\x22\x4d\x18": "lz4"}


def compressed_kind(head: bytes) -> str | None:
    """The compression whose stream starts with `head` (a file's first bytes), else None."""
    return next((k for magic, k in COMPRESSED_MAGIC.items() if head.startswith(magic)), None)


def compressed_words(kind: str) -> str:
    """The error for a compressed stream named `.tar` (the index scan's and the reader's)."""
    return (f"is {kind}-compressed, though named .tar: sparkfeed reads tar members in place by "
            "offset, which a compressed stream does not allow; decompress it (JPEG and PNG "
            "members gain nothing from it)")


def _repeated_key(found: tarindex.Members) -> tuple[str, int | None]:
    """(the error, the tar offset of the key's second place) for a streamed shard whose key
    appears in two places (an index never gives one: its check refuses repeated keys)."""
    first: dict[str, int] = {}
    for i, key in enumerate(found.keys):
        if first.setdefault(key, i) != i:
            return (f"key {key!r} appears in two places (samples {first[key]} and {i}); members of a "
                    "sample must be adjacent, as webdataset reads them"), \
                found.starts[i] if found.starts else None
    return "a key appears in two places; members of a sample must be adjacent", None


def _json_problem(exc: Exception) -> str:
    """Why a JSON member did not parse; Python's parser recurses, so a document nested
    thousands deep (hostile or broken) raised RecursionError out of the reader, past on_error."""
    return "arrays or objects nested too deeply" if isinstance(exc, RecursionError) else str(exc)


def _refuse_fractions(col, values: list, type_: pa.DataType | None, bad: dict[int, str]) -> None:
    """Rows whose JSON number for an integer column (or list of integers) has a fraction are
    bad: Arrow's conversion from Python floats truncates (`{"id": 1.5}` was delivered as 1).
    A whole float (1.0) is the integer it equals."""
    inner = type_
    while inner is not None and (pa.types.is_list(inner) or pa.types.is_large_list(inner)
                                 or pa.types.is_fixed_size_list(inner)):
        inner = inner.value_type
    if inner is None or not pa.types.is_integer(inner):
        return
    for i, v in enumerate(values):
        if _fractional(v):
            bad.setdefault(i, f"column {col.name!r}: value {_brief(v)} is not a whole number, as "
                              f"{type_} needs")
            values[i] = None


def _fractional(v) -> bool:
    """Whether a parsed JSON value holds a float that is not a whole number (NaN included)."""
    if type(v) is float:  # noqa: E721 - the JSON parser's floats only
        return not v.is_integer()
    return type(v) is list and any(_fractional(x) for x in v)  # noqa: E721


def _brief(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _first_difference(seen: list[tuple[int, str]], index: tarindex.Index | None) -> int | None:
    """The tar offset of the first member whose name is not the one the shard's index names
    there (`seen`: the streamed members' header offsets and names); None without an index."""
    if index is None:
        return None
    names = index.names()
    got = [name for _, name in seen]
    i = next((i for i, (a, b) in enumerate(zip(got, names)) if a != b), min(len(got), len(names)))
    if i < len(seen):
        return seen[i][0]
    return int(index.offsets[i]) - 512 if i < len(names) else None


def _member_value(raw: bytes | None, type_: str, integer: bool):
    """One member's value: text as is; an integer as webdataset and `sparkfeed.index` read it
    (`parse_int`: "007", "+5", " 7\n"; ValueError for "1.0" or "null", as there); any other
    type as JSON (the JVM writer's values)."""
    if raw is None:
        return None
    if integer:
        return parse_int(raw)
    text = raw.decode("utf-8")
    return text if type_ in ("string", "large_string") else json.loads(text)


def _array(values: list, type_: pa.DataType | None) -> pa.Array:
    """Parsed member values as an Arrow array of the column's type. Dates and timestamps come as
    ISO 8601 text (the JVM writer's `.json`: `"2024-01-31"`, `"2024-01-31T12:00:00.000000+00:00"`),
    which Arrow parses to the column's unit and zone."""
    if type_ is not None and (pa.types.is_timestamp(type_) or pa.types.is_date(type_)) and \
            any(isinstance(v, str) for v in values):
        return pa.array(values, pa.string()).cast(type_)
    if type_ is not None and pa.types.is_floating(type_) and any(type(v) is int for v in values):  # noqa: E721
        # a JSON integer past int64 for a float column is the float it rounds to, as Arrow's JSON
        # reader (the whole-column path) gives it; pa.array refused it (OverflowError past 1e308)
        values = [float(v) if type(v) is int else v for v in values]  # noqa: E721
    return pa.array(values, type=type_)


def _piece_spans(index_text, pieces: tuple, size: int) -> dict:
    """Read-ahead task, once per shard: the byte ranges of its pieces (`tarindex.window_ranges`)
    from its index text (`index_text`: the future of its fetch; queued once that is done,
    `storage.After`)."""
    text = index_text.result() if index_text is not None else None
    return {} if not text else tarindex.window_ranges(text, pieces, size)


def _parse_text(index_text) -> tarindex.Index | None:
    """Read-ahead task, once per shard: its index parsed (`index_text`: the future of its
    fetch; queued once that is done, `storage.After`); None when there is none or it does not
    parse."""
    text = index_text.result()
    return None if not text else tarindex.Index.parse(text, split_name, MAX_MEMBER_BYTES)


def _fetch_rows(fs, path: str, size: int, spans, window: tuple[int, int]):
    """Read-ahead task: the bytes of samples `window` of a shard, the range its index names
    (`spans`: the future of `_piece_spans`, waited for here: a shard's ranges outrank its
    fetches on the read-ahead threads, so they are never queued behind them);
    None when the index cannot say, and the reader reads the shard whole."""
    span = spans.result().get(window) if spans is not None else None
    if span is None:
        return None
    return _ahead_fetch(path, functools.partial(storage.fetch_ranges, fs, path, [span], size, retry=False))[span]


class _Stalled(Exception):
    """A read-ahead fetch that timed out: not transient to `storage.with_retries`, so the fetch
    fails at once and the reader reads the bytes in place (`_ahead_fetch`)."""


def _ahead_fetch(path: str, fetch, what: str = "reading ahead", instead: str = "the reader reads it in place"):
    """A fetch that has another way if it fails (read-ahead: the reader reads the bytes in place;
    a shard's index: the shard is streamed), transient failures retried (`storage.with_retries`)
    except a time-out (a server silent for the client's whole time-out, 30 s by default), after
    which the other way is taken at once, with retries of its own. Retried here too, a stalled
    server cost the whole retry budget again for each way (8 time-outs ahead, 8 in place: 37 s
    with a 0.3 s time-out, over 8 minutes with the default) before an error."""
    def attempt():
        try:
            return fetch()
        except TimeoutError as exc:
            log.warning("%s %s: no answer within the storage client's time-out (%s); %s", what,
                        redact(path), type(exc).__name__, instead)
            raise _Stalled(f"{what} {redact(path)}: no answer within the storage client's "
                           f"time-out ({type(exc).__name__}: {redact(exc)}); {instead}") from exc
    return storage.with_retries(attempt, f"{what} {path}")


# ---------------------------------------------------------------- keys against the manifest
#
# Every read parses a shard's member headers, so its keys cost nothing more to check. What the
# manifest implies of them (`key_rules`):
# * a key column (`member: "__key__"`) with stats: the writer's min and max of the shard's keys
#   (the JVM writer's are of the keys as written, sanitised; both writers cut a string over 64
#   characters: min to a prefix, max to the prefix rounded up). The shard's own min and max must
#   give them again; older manifests hold them whole, or a max cut to a plain prefix, and both
#   are taken. Bounds holding a character that `invalidKeys=sanitize` replaces are of the raw
#   keys (the JVM writer before 2026-11-27's fix): no check there.
# * no key column: the JVM writer generated `p<partition:5>_<row:9>` keys for the shards it names
#   `part-<partition:5>-<n:4>.tar`: a shard's keys are of its partition, their rows increase and
#   start at or after the samples of the partition's earlier shards (rows whose every member was
#   null are not written, so rows can only start later). An earlier shard of the partition copied
#   over a later one is seen; a later one over an earlier one is not (no upper bound is known).
# Neither says anything for other shards (no key stats: data `sparkfeed.index` scanned, or a
# manifest made by hand): those are not checked.

_WRITER_SHARD = re.compile(r"part-([0-9]{5})-([0-9]{4})\.tar")
_GENERATED_KEY = r"^p(?P<partition>[0-9]{5,9})_(?P<row>[0-9]{9,18})$"
# what `invalidKeys=sanitize` replaces (the JVM's `KeyPolicy.invalidChar`), in a recorded bound
_SANITISED = re.compile(r"[./\\\s\x00-\x1f\x7f-\x9f\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")


@dataclass(frozen=True)
class KeyRule:
    """What a shard's manifest entry says of its keys: the key column's recorded `lo` and `hi`,
    or (generated keys) the Spark `partition` and the least row its first key may have."""

    lo: str | None = None
    hi: str | None = None
    partition: int | None = None
    first_row: int = 0


def key_rules(schema: tuple[Column, ...], shards: dict[str, Shard]) -> dict[str, KeyRule | None]:
    """Each shard's `KeyRule` (None: nothing to check), once per reader."""
    key = next((c for c in schema if (c.member or c.name) == "__key__"), None)
    if key is not None:
        return {path: _bounds_rule(s.stats.get(key.name)) for path, s in shards.items()}
    named = sorted((int(m[1]), int(m[2]), path) for path in shards
                   if (m := _WRITER_SHARD.fullmatch(path)) is not None)
    rules: dict[str, KeyRule | None] = {}
    rows, last = 0, None
    for partition, _, path in named:
        rows = rows if partition == last else 0
        rules[path] = KeyRule(partition=partition, first_row=rows)
        rows, last = rows + shards[path].num_samples, partition
    return rules


def _bounds_rule(stats) -> KeyRule | None:
    lo, hi = (None, None) if stats is None else (stats.min, stats.max)
    if not isinstance(lo, str) or not isinstance(hi, str) or _SANITISED.search(lo + hi):
        return None
    return KeyRule(lo=lo, hi=hi)


def key_problem(rule: KeyRule, keys) -> tuple[str, int] | None:
    """(what is wrong, the first sample concerned) when a shard's keys (a list or an Arrow array,
    all of them, in shard order) are not those `rule` says, else None. Arrow kernels over the
    keys: no Python step per sample."""
    keys = keys if isinstance(keys, pa.Array) else pa.array(keys, pa.string())
    return _generated_problem(rule, keys) if rule.partition is not None else _bounds_problem(rule, keys)


def _bounds_problem(rule: KeyRule, keys: pa.Array) -> tuple[str, int] | None:
    ends = pc.min_max(keys)
    low, high = ends["min"].as_py(), ends["max"].as_py()
    if _is_min(low, rule.lo) and _is_max(high, rule.hi):
        return None
    above = pc.greater(keys, rule.hi)
    if len(rule.hi) == STRING_STATS_MAX_CHARS:  # a max cut to a plain prefix is above nothing that starts so
        above = pc.and_(above, pc.invert(pc.starts_with(keys, rule.hi)))
    i = pc.index(pc.or_(pc.less(keys, rule.lo), above), True).as_py()
    if i >= 0:
        return (f"sample key {keys[i].as_py()!r} is outside the keys its manifest entry records "
                f"({rule.lo!r} to {rule.hi!r})"), i
    if not _is_min(low, rule.lo):
        return f"its smallest key is {low!r} where the manifest records {rule.lo!r}", pc.index(keys, low).as_py()
    return f"its largest key is {high!r} where the manifest records {rule.hi!r}", pc.index(keys, high).as_py()


def _is_min(low: str, lo: str) -> bool:
    """Whether `lo` is the min a writer records for keys whose least is `low`."""
    return low == lo or (len(lo) == STRING_STATS_MAX_CHARS and low[:STRING_STATS_MAX_CHARS] == lo)


def _is_max(high: str, hi: str) -> bool:
    """Whether `hi` is the max a writer records for keys whose greatest is `high`: itself, or past
    64 characters the prefix rounded up (a plain prefix in some manifests)."""
    if high == hi:
        return True
    prefix = high[:STRING_STATS_MAX_CHARS]
    return len(high) > STRING_STATS_MAX_CHARS and hi in (prefix, round_up(prefix))


def _generated_problem(rule: KeyRule, keys: pa.Array) -> tuple[str, int] | None:
    fields = _generated_fields(keys)
    if fields is None:  # not all of the usual width: Arrow's regular expression
        parts = pc.extract_regex(keys, _GENERATED_KEY)  # null where a key is not `p<digits>_<digits>`
        fields = tuple(pc.fill_null(pc.cast(pc.struct_field(parts, [k]), pa.int64()), -1).to_numpy()
                       for k in (0, 1))
    partition, row = fields
    bad = (partition != rule.partition) | (row < rule.first_row)
    bad[1:] |= row[1:] <= row[:-1]
    if not bad.any():
        return None
    i = int(np.argmax(bad))
    return (f"sample key {keys[i].as_py()!r} is not one the webdataset writer generated for this "
            f"shard (p{rule.partition:05d}_<row>, rows increasing from {rule.first_row} on, by the "
            "shard's name and the samples of the partition's earlier shards)"), i


_WIDTH = 16  # `p00003_000000042`
_DIGITS = np.r_[1:6, 7:16]


def _generated_fields(keys: pa.Array) -> tuple[np.ndarray, np.ndarray] | None:
    """(partition, row) of generated keys of the usual width (`p` 5 digits `_` 9 digits), read
    from the array's bytes with numpy (a tenth of the regular expression's time); None when a key
    is not of that shape."""
    n = len(keys)
    if keys.null_count or not pa.types.is_string(keys.type) or n == 0:
        return None
    offsets = np.frombuffer(keys.buffers()[1], np.int32, n + 1, keys.offset * 4)
    if (np.diff(offsets) != _WIDTH).any():
        return None
    rows = np.frombuffer(keys.buffers()[2], np.uint8, _WIDTH * n, int(offsets[0])).reshape(n, _WIDTH)
    digits = rows[:, _DIGITS] - np.uint8(ord("0"))  # wraps below "0": over 9 too
    if not ((rows[:, 0] == ord("p")).all() and (rows[:, 6] == ord("_")).all() and (digits <= 9).all()):
        return None
    digits = digits.astype(np.int64)
    return digits[:, :5] @ 10 ** np.arange(4, -1, -1), digits[:, 5:] @ 10 ** np.arange(8, -1, -1)


# ---------------------------------------------------------------- whole columns at C speed
#
# When every sample has the member (`tarindex` gives a binary array), a column is converted in
# one Arrow call where that gives exactly what the per-value path gives; anything it is not sure
# of (a value that is not a plain JSON number, bad UTF-8, a JSON document spread over lines)
# leaves the column to the per-value path, which names bad samples. An integer column's values
# that are not plain digits ("+5", "1_000") are parsed one by one (`parse_int`), the rest still
# at once.

_PLAIN_INT = r"^[ \t\n\r\x0b\x0c]*-?[0-9]+[ \t\n\r\x0b\x0c]*$"  # `parse_int`'s answer, cast by Arrow
_JSON_NUMBER = r"^[ \t\n\r]*-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?[ \t\n\r]*$"


def _as_list(raw, n: int) -> list:
    """A member column as a list of bytes (None where missing)."""
    if raw is None:
        return [None] * n
    return raw.to_pylist() if isinstance(raw, pa.Array) else raw


def _whole_columns(cols, fields, members: dict, n: int) -> dict[str, pa.Array]:
    """The columns that convert whole: their own member's bytes, text, integers or plain JSON numbers,
    and the JSON-kept scalars when every sample's `.json` parses as one line of numbers/bools."""
    out = {}
    for col, field in zip(cols, fields):
        raw = members.get(col.member or col.name)
        if isinstance(raw, pa.Array) and col.member != "json":
            arr = _whole_column(raw, field.type)
            if arr is not None:
                out[col.name] = arr
    kept = [(c, f) for c, f in zip(cols, fields) if c.member == "json" and c.type not in ("string", "large_string")]
    if kept and isinstance(members.get("json"), pa.Array):
        out.update(_json_scalars(members["json"], kept, n))
    return out


def _whole_column(raw: pa.Array, type_: pa.DataType) -> pa.Array | None:
    try:
        if pa.types.is_binary(type_) or pa.types.is_large_binary(type_):
            return raw.cast(type_)
        text = raw.cast(pa.string())  # validates UTF-8
        if pa.types.is_string(type_) or pa.types.is_large_string(type_):
            return text.cast(type_)
        if pa.types.is_integer(type_):
            return _whole_ints(raw, text, type_)
        if pa.types.is_floating(type_) and pc.all(pc.match_substring_regex(text, _JSON_NUMBER)).as_py():
            return pc.cast(pc.utf8_trim_whitespace(text), type_)
    except (pa.ArrowException, ValueError, OverflowError):
        pass
    return None


def _whole_ints(raw: pa.Array, text: pa.Array, type_: pa.DataType) -> pa.Array:
    """An integer column at once: plain digits cast by Arrow, the few others (a "+" sign, "_"
    between digits) by `parse_int`; ValueError or an Arrow error when one does not parse or fit
    (the per-value path then names it)."""
    plain = pc.match_substring_regex(text, _PLAIN_INT)
    if pc.all(plain).as_py():
        return pc.cast(pc.utf8_trim_whitespace(text), type_)
    other = pc.invert(plain)
    parsed = pa.array([parse_int(r) for r in raw.filter(other).to_pylist()], type_)
    cast = pc.cast(pc.utf8_trim_whitespace(pc.if_else(plain, text, pa.scalar(None, pa.string()))), type_)
    return pc.replace_with_mask(cast, other, parsed)


def _json_scalars(raw: pa.Array, kept, n: int) -> dict[str, pa.Array]:
    """Numeric and boolean columns kept together in `.json` members, read by Arrow's JSON
    reader at once: only when each member is one line holding one object."""
    import pyarrow.json as pajson

    kept = [(c, f) for c, f in kept if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)
            or pa.types.is_boolean(f.type)]
    if not kept:
        return {}
    try:  # UTF-8, as JSON must be (Arrow's reader lets bytes that are not pass), each an object
        # (Arrow's reader takes a document `null` for a row of nulls)
        if not pc.all(pc.match_substring_regex(raw.cast(pa.string()), "^\ufeff?[ \t\r\n]*[{]")).as_py():
            return {}
    except pa.ArrowInvalid:
        return {}
    docs = raw.to_pylist()
    lines = b"\n".join(docs)
    if lines.count(b"\n") != n - 1 or not all(docs):
        return {}
    schema = pa.schema([f for _, f in kept])
    try:
        table = pajson.read_json(io.BytesIO(lines), parse_options=pajson.ParseOptions(
            explicit_schema=schema, unexpected_field_behavior="ignore"))
    except (pa.ArrowException, ValueError):
        return {}
    if table.num_rows != n:
        return {}
    return {c.name: table.column(c.name).combine_chunks() for c, _ in kept}
