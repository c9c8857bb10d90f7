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
import logging
import mmap
import os
import tarfile
from collections import OrderedDict

import numpy as np
import pyarrow as pa

from .. import httpranges, readahead, remotefiles, retries, storage
from ..errors import CorruptSampleError, redact
from ..plan import WorkUnit
from . import tarindex
from .base import Reader, UnitRows, apply_filter, placeholder
from .tarahead import NO_RANGES_INSTEAD, IndexUnread, TarReadAhead, gave_up
from .tarinfo import compressed_kind, compressed_words
from .tarkeys import KeyRule, key_problem, key_rules
from .tarprefix import TarPrefix
from .tarstream import TarStreaming, _repeated_key
from .tartable import TarTable

log = logging.getLogger(__name__)
CHUNK_BYTES = 32 << 20  # an indexed shard is read in pieces of about this many bytes (`chunks`)
FIRST_CHUNK_BYTES = 8 << 20  # ... the first one smaller: the first batches wait for it alone
MIN_CHUNK_ROWS = 64    # ... of at least this many samples
_INDEXES_KEPT = 16     # parsed shard indexes kept per reader


class TarReader(TarReadAhead, TarPrefix, TarStreaming, TarTable, Reader):
    """Reads tar shards (a WebDataset work unit is one shard). An indexed shard is read in
    pieces of about `CHUNK_BYTES` (`chunks`), each cut from the bytes that hold it alone; over
    remote storage the next pieces (or whole shards, unindexed) are fetched while the current
    one is parsed (`readahead.ReadAhead`)."""

    def __init__(self, ctx):
        super().__init__(ctx)
        self._ahead = None if storage.is_local(ctx.fs) else readahead.ReadAhead(ctx.read_ahead_bytes)
        self._indexes: OrderedDict[str, tuple] = OrderedDict()  # shard -> (index text, its parse)
        self._pieces_read: set = set()  # pieces read (a hint names its unit's pieces from the first)
        self._checked: set = set()  # shards whose indexed version was checked (`_check_unchanged`)
        self._key_rules: dict[str, KeyRule | None] | None = None  # shard -> its keys' rule (`key_rules`)
        self._tried: dict[str, str] = {}  # shard -> what storage's retries gave up on (`_storage_error`)
        self._whole_from: dict[str, int] = {}  # shard -> the piece read whole instead (`read_window`)
        self._verified: dict[str, int] = {}  # shard -> samples whose headers agree with its index (`TarPrefix`)

    def chunks(self, unit: WorkUnit, expected: int) -> list[tuple[int, int]] | None:
        """The pieces (rows [a, b)) this reader reads an indexed shard in: about `CHUNK_BYTES`
        each after a first of about `FIRST_CHUNK_BYTES`, within the rows the stream needs
        (`windows`); None: read it whole (no index, a filter, or no size in the manifest)."""
        size = self.ctx.manifest_bytes.get(unit.path)
        if (self._index_path(unit) is None or self.ctx.expr is not None or not size or expected <= 0
                or self.ctx.shared.ranges_ignored.is_set()):
            return None
        rows = max(MIN_CHUNK_ROWS, CHUNK_BYTES * expected // size)
        first = max(MIN_CHUNK_ROWS, FIRST_CHUNK_BYTES * expected // size)
        a, b = self.windows.get(unit, (0, expected))
        bounds = [a, *range(min(b, a + first), b, rows), b]
        return [(x, y) for x, y in zip(bounds, bounds[1:]) if y > x]

    def read_window(self, unit: WorkUnit, expected: int, start: int, stop: int) -> UnitRows | None:
        """Samples [start, stop) of an indexed shard from the bytes that hold them alone (a
        piece, `chunks`, or what a lane needs of a shard that a lane boundary splits). Anything
        unusual (no index, a filter, an index that does not match, a failed read) gives None,
        and the shard is read whole, where errors are named and retried (the stream takes the
        rows from `start` on from that read: `failed` says so)."""
        got = self._read_window(unit, expected, start, stop)
        if got is None:
            self._whole_from[unit.path] = start
        return got

    def read(self, unit: WorkUnit, expected: int) -> UnitRows:
        """`Reader.read`, the piece it is read for (`_whole_from`) forgotten after it."""
        try:
            return super().read(unit, expected)
        finally:
            self._whole_from.pop(unit.path, None)

    def failed(self, unit: WorkUnit, expected: int, exc) -> UnitRows:
        """`Reader.failed`, its warning naming the samples really skipped: the lane's (`windows`)
        from the piece that could not be read apart (`read_window`), not the shard's count (it
        said "skipping 300 samples" where the pieces before had delivered 192 and 108 were skipped)."""
        if self.ctx.on_error != "skip":
            raise exc
        a, b = self.windows.get(unit, (0, expected))
        first = max(a, self._whole_from.get(unit.path, a))
        before = f"; samples {a}-{first - 1} were read before, in pieces" if first > a else ""
        log.warning("skipping %d sample(s), %d-%d of the shard's %d%s: %s", b - first, first, b - 1, expected,
                    before, exc)
        return placeholder(self.ctx, unit, expected)

    def _read_window(self, unit: WorkUnit, expected: int, start: int, stop: int) -> UnitRows | None:
        if self._index_path(unit) is None or self.ctx.expr is not None or not 0 <= start < stop <= expected:
            return None
        if self.ctx.shared.ranges_ignored.is_set():  # (seen by a read-ahead task, or another lane)
            self._no_ranges(None)
            return None
        try:
            got = self._window_members(unit, (start, stop))
            if got is None:
                return None
            table, ok = self._table(unit, self.ctx.read_columns, got)
        except CorruptSampleError:
            raise
        except httpranges.SizeMismatch as exc:  # (the whole read would fetch the changed file whole)
            if self.ctx.on_error != "skip":
                raise self._error(unit, exc.words(), exc.offset()) from exc
            return None  # (the whole read names it, and skips the shard)
        except Exception as exc:  # noqa: BLE001 - the whole read names (or retries) it
            self._raise_gave_up(unit, exc, start)
            self._no_ranges(exc)
            log.debug("%s: shard %s: samples %d-%d not read apart (%s: %s); reading it whole",
                      self.ctx.dataset, unit.path, start, stop, type(exc).__name__, exc)
            return None
        self.ctx.stats.add("bytes_read", got.nbytes)
        return self._unit_rows(table, unit, np.arange(start, stop), ok=ok)

    def _no_ranges(self, exc: Exception | None) -> None:
        """An HTTP server that ignores Range requests (`exc`, `retries.ignores_ranges`; None: one
        that `ranges_ignored` says was met): shards are read whole from then on, by every lane,
        without read-ahead (before, every piece of every shard was asked for ahead and in place,
        each answered with the whole file)."""
        if exc is None or retries.ignores_ranges(exc, self.ctx.dataset, NO_RANGES_INSTEAD):
            self.ctx.shared.ranges_ignored.set()
            if self._ahead is not None:
                self._ahead.close()
                self._ahead = None

    def _raise_gave_up(self, unit: WorkUnit, exc: Exception, start: int) -> None:
        """Raise the named error for a remote window read that storage's retries gave up on
        (`retries.with_retries`: a server that kept failing or stalling, a missing file, refused
        access; a 412, the shard replaced during the read, named at this piece's offset): the
        whole read would spend the retry budget again on the same server, 8 more time-outs of a
        stalled one, before failing the same way."""
        stop = isinstance(exc, (OSError, httpranges.VersionChanged))  # (a shard replaced: the whole read's 412 too)
        if storage.is_local(self.ctx.fs) or not stop or self.ctx.on_error == "skip":
            return  # (skip: the whole read names it, with one try where the budget is spent, and skips it)
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
            # (read ahead before `_no_ranges` closed this reader's read-ahead: not fetched again)
            fetched = self.ctx.shared.fetched(("index", unit.path))
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
        ahead = self._ahead.fetch_of(key) if self._ahead is not None else None
        fetched = self._take_fetched(key)
        text, index, spans, wrong = self._index(unit)
        size = self.ctx.manifest_bytes.get(unit.path)
        if wrong is not None or index is None or size is None:
            return None  # (wrong: not the shard written, which the whole read names)
        if not self._prefix_agrees(unit, index, window[0], path, size):
            log.info("%s: shard %s: the headers before sample %d do not match its index; reading it "
                     "whole", self.ctx.dataset, unit.path, window[0])
            return None
        got = self._window_cut(unit, path, size, index, text, spans, window, wanted, fetched, ahead)
        if got is not None:
            self._agreed_to(unit, window)
        return got

    def _window_cut(self, unit: WorkUnit, path: str, size: int, index: tarindex.Index, text: str, spans: dict,
                    window: tuple[int, int], wanted: set, fetched, ahead) -> tarindex.Members | None:
        """`_window_members`' cut of the window's bytes: fetched ahead, or read in place."""
        if fetched is not None:
            got = index.members(fetched, wanted, window)
            if got is not None:
                self.ctx.stats.add("bytes_read_ahead", got.nbytes)  # of bytes_read: fetched ahead
            return got
        span = spans[window] if window in spans else tarindex.window_ranges(text, [window], size)[window]
        if span is None:
            return None
        if not storage.is_local(self.ctx.fs):
            return index.members(self._fetch_window(unit, path, size, span, window, gave_up(ahead)), wanted, window)
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            if len(mapped) != size:
                return None
            with memoryview(mapped) as view, view[span[0]:span[1]] as part:
                return index.members(part, wanted, window)

    def _fetch_window(self, unit: WorkUnit, path: str, size: int, span: tuple[int, int],
                      window: tuple[int, int], failed: BaseException | None):
        """The bytes of samples `window` fetched in place: one try after a read-ahead fetch of them that
        storage kept failing (`failed`; its retries were the shard's budget), else retried."""
        if failed is not None:
            self._tried[unit.path] = (f"samples {window[0]}-{window[1] - 1} read ahead with retries "
                                      f"({type(failed).__name__}: {redact(failed)}), then once in place")
        once = {} if failed is None else {"attempts": 1}  # (errors worded as after retries)
        first = window == (self.chunks(unit, unit.num_rows) or [None])[0]  # its size checked with it
        got = retries.with_retries(lambda: remotefiles.fetch_ranges(self.ctx.fs, path, [span], size, retry=False,
                                                                    probe=first, etag=self.etag(unit.path)),
                                   f"reading {path} bytes {span[0]}-{span[1] - 1}", **once)[span]
        self._tried.pop(unit.path, None)
        return got

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.close()

    @contextlib.contextmanager
    def _buffer(self, unit: WorkUnit, path: str, data: bytes | memoryview | None):
        """The whole shard as a buffer: bytes fetched ahead, a local file mapped into memory
        (pages read as they are cut), or a remote file read whole (with its indexed ETag and
        size, as one range conditional on that version: `remotefiles.fetch_whole`)."""
        size, etag = self.ctx.manifest_bytes.get(unit.path), self.etag(unit.path)
        if data is not None:
            yield data
        elif storage.is_local(self.ctx.fs) and os.path.getsize(path) > 0:
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                yield mapped
        elif etag and size:
            yield remotefiles.fetch_whole(self.ctx.fs, path, size, retry=False, etag=etag)
        else:
            yield self.ctx.fs.cat_file(path)

    def _members(self, unit: WorkUnit, wanted_members: set[str]) -> tarindex.Members:
        """Keys in shard order and the wanted members' bytes per sample (retried as a whole)."""
        where = {"offset": 0}
        text, index, _, wrong = self._index(unit)  # its own retries, once: not retried with the shard
        self._gave_up_before(unit, text)
        once = {"attempts": 1} if unit.path in self._tried else {}  # the shard's budget is spent
        try:
            found = retries.with_retries(lambda: self._read_members(unit, wanted_members, where, index, wrong),
                                         f"reading {unit.path}", **once)
        except Exception as exc:
            named = self._storage_error(unit, exc, where["offset"])
            if named is None and retries.is_transient(exc):
                named = self._error(unit, self._and_tried(unit, f"storage kept failing ({type(exc).__name__}: "
                                                          f"{exc})"), where["offset"])
            if named is not None:
                raise named from exc
            if isinstance(exc, httpranges.SizeMismatch):  # (a whole read of a changed file: `_buffer`)
                raise self._error(unit, exc.words(), exc.offset()) from exc
            kind = self._compressed(unit) if isinstance(exc, tarfile.ReadError) and where["offset"] == 0 else None
            if kind is not None:
                raise self._error(unit, compressed_words(kind)) from exc
            if isinstance(exc, (tarfile.TarError, EOFError, ValueError)):
                raise self._error(unit, f"corrupt or truncated tar after the member at this offset "
                                  f"({type(exc).__name__}: {exc})", where["offset"]) from exc
            raise
        self._tried.pop(unit.path, None)
        if len(set(found.keys)) != len(found.keys):
            raise self._error(unit, *_repeated_key(found))
        self.ctx.stats.add("bytes_read", found.nbytes)
        return found

    def _gave_up_before(self, unit: WorkUnit, text: str | None) -> None:
        """Note in `_tried` what storage's retries gave up on for the shard before its read in
        place (its index, or its whole fetch ahead): the read then has one try, not a budget."""
        if isinstance(text, IndexUnread):
            self._tried[unit.path] = text.tried
        failed = gave_up(self._ahead.fetch_of(unit.path)) if self._ahead is not None else None
        if failed is not None:
            self._tried[unit.path] = (f"the tar read ahead with retries ({type(failed).__name__}: "
                                      f"{redact(failed)}), then once in place")

    def _storage_error(self, unit: WorkUnit, exc: BaseException, offset: int | None = None):
        """`Reader._storage_error`, saying what was tried before where storage's retries had
        given up on the shard already (`_tried`) and the read in place had one try."""
        words = retries.failure_words(exc)
        if words is None or isinstance(exc, PermissionError):
            return super()._storage_error(unit, exc, offset)
        return self._error(unit, self._and_tried(unit, words), offset)

    def _and_tried(self, unit: WorkUnit, words: str) -> str:
        tried = self._tried.get(unit.path)
        return words if tried is None else f"{words}; tried: {tried}"

    def _compressed(self, unit: WorkUnit) -> str | None:
        """The compression whose stream the shard holds (`compressed_kind` of its first bytes)."""
        try:
            head = self.ctx.fs.cat_file(storage.join(self.ctx.root, unit.path, self.ctx.dataset), start=0, end=12)
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
            with self._buffer(unit, path, data) as buf:
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
        self._check_complete(unit, found, where["end"], path, data)
        self._check_present(unit, present, seen, index)
        wrong = self._keys_wrong(unit, found.keys, found.starts.__getitem__)
        if wrong is not None:
            raise self._error(unit, *wrong)
        return found

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

    def _read(self, unit: WorkUnit) -> UnitRows:
        table, ok = self._table(unit, self.ctx.read_columns)
        n = table.num_rows
        table, rows = apply_filter(self.ctx, table, ok=ok, unit=unit)
        self.ctx.stats.add("rows_filtered", n - table.num_rows)
        return self._unit_rows(table, unit, rows, ok=np.asarray(ok, bool)[rows])

    def _filter_input(self, unit: WorkUnit) -> tuple[pa.Table, np.ndarray]:
        return self._table(unit, list(self.ctx.filter_columns))
