"""Remote read-ahead of tar shards: the next pieces (or whole unindexed shards) fetched while the current one is parsed; a stalled server is given up on at once."""

from __future__ import annotations

import functools
import logging
from concurrent.futures import CancelledError

from .. import readahead, remotefiles, retries, storage
from ..errors import redact
from ..plan import WorkUnit
from . import tarindex, tarinfo
from .tarinfo import split_name

log = logging.getLogger(__name__)
NO_RANGES_INSTEAD = "reading whole shards, without read-ahead"  # (`TarReader._no_ranges`' warning)


class TarReadAhead:
    """`TarReader`'s read-ahead (a mixin: it uses the reader's context, `_ahead`, `chunks` and
    index methods)."""

    def read_ahead(self, units) -> None:
        """Fetch the next shards' pieces (`chunks`), each after its shard's index (fetched once);
        an unindexed shard is fetched whole. What a fetch needs (the shard's version check,
        index, piece ranges and parsed index) is started just before it, in unit order, and only
        for the shards whose bytes are kept ahead (`readahead.Deferred`): told of 64 small shards,
        a reader does not fetch and parse 64 indexes before its first piece."""
        if self._ahead is None or self.ctx.shared.ranges_ignored.is_set():
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
                        readahead.Deferred(functools.partial(self._piece_fetch, unit, path, size, tuple(pieces),
                                                           (a, b)), (order, 2, a),
                                         functools.partial(self._piece_prepare, unit, size, tuple(pieces)))))
            elif unit.path in self._ahead:
                items.append(((unit.path,), 0, None))  # still wanted, fetched or in flight
            elif size is not None:
                items.append(((unit.path,), size, readahead.Deferred(functools.partial(
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
        if (index is not None and not index.done() and pieces[0][0] == 0 and pieces[-1][1] == unit.num_rows
                and self._ahead.once_future((unit.path, "spans")) is None):  # (a whole shard's first)
            self._ahead.once((unit.path, "head"), functools.partial(  # (beside the index: `_guess_head`)
                self._ranged, _guess_head, self.ctx.fs, storage.join(self.ctx.root, unit.path, self.ctx.dataset),
                size, pieces[0], unit.num_rows, self.etag(unit.path)), (self._ahead.order(unit.path), 0))
        spans = self._ahead.once((unit.path, "spans"), readahead.After(
            index, functools.partial(_piece_spans, index, pieces, size), (self._ahead.order(unit.path), 1)))
        self._parsed_ahead(unit, index)
        return spans

    def _piece_fetch(self, unit: WorkUnit, path: str, size: int, pieces: tuple, window: tuple[int, int]):
        """The fetch of one piece, made as read-ahead submits it. It waits for the piece's range
        on its thread (`readahead.After`'s note says why)."""
        spans = self._piece_prepare(unit, size, pieces)
        head = self._ahead.once_future((unit.path, "head"))
        return functools.partial(self._ranged, _fetch_rows, self.ctx.fs, path, size, spans, pieces, window,
                                 head, functools.partial(self._ahead.forget, (unit.path, "head")),
                                 self.etag(unit.path))

    def _ranged(self, fetch, *args):
        """`fetch(*args)` unless the server ignores Range requests (`SharedReads.ranged`)."""
        return self.ctx.shared.ranged(self.ctx.dataset, NO_RANGES_INSTEAD, fetch, *args)

    def _whole_fetch(self, unit: WorkUnit, path: str, size: int):
        """The fetch of a whole (unindexed) shard, made as read-ahead submits it."""
        self.check_ahead([unit])
        # the whole shard as one range; a file whose size is not the manifest's fails the fetch,
        # and the shard is then read in place, where the reader names the mismatch
        return functools.partial(_ahead_fetch, path, functools.partial(
            remotefiles.fetch_whole, self.ctx.fs, path, size, retry=False, etag=self.etag(unit.path)))

    def etag(self, rel: str) -> str | None:
        """The ETag the manifest recorded for shard `rel` (indexed data), which its version check
        compared once per iteration: every remote read of the shard is conditional on it
        (`remotefiles.fetch_ranges`), so a shard replaced during the epoch is an error, not
        samples cut from two versions' bytes."""
        shard = self.ctx.shards.get(rel)
        return None if shard is None else shard.etag

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
                (unit.path, "parsed"), readahead.After(index_text, functools.partial(_parse_text, index_text),
                                                     (self._ahead.order(unit.path), 1, 1))))

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
            return unread_index(path, exc)

    def _parse_index(self, unit: WorkUnit, text: str | None) -> tarindex.Index | None:
        """The shard's index parsed and checked; None when it is missing or malformed, or names
        unsafe members: the shard is then streamed."""
        index = None if not text else tarindex.Index.parse(text, split_name, tarinfo.MAX_MEMBER_BYTES)
        if text and index is None:
            log.info("%s: shard %s: its index is malformed or names unsafe members; streaming "
                     "the tar", self.ctx.dataset, unit.path)
        return index

    def _meta_ahead(self, units: list[WorkUnit]) -> None:
        """Each shard's index text, fetched once, concurrently (`_index_ahead`)."""
        for unit in {u.path: u for u in units}.values():
            self._index_ahead(unit)

    @property
    def runs_ahead(self) -> bool:
        """Shuffled shards are read in pieces (`chunks`), which read-ahead fetches, except with
        a filter (read whole, in place)."""
        return self._ahead is not None and self.ctx.expr is None


def _piece_spans(index_text, pieces: tuple, size: int) -> dict:
    """Read-ahead task, once per shard: the byte ranges of its pieces (`tarindex.window_ranges`)
    from its index text (`index_text`: the future of its fetch; queued once that is done,
    `readahead.After`)."""
    text = index_text.result() if index_text is not None else None
    return {} if not text else tarindex.window_ranges(text, pieces, size)


def _parse_text(index_text) -> tarindex.Index | None:
    """Read-ahead task, once per shard: its index parsed (`index_text`: the future of its
    fetch; queued once that is done, `readahead.After`); None when there is none or it does not
    parse."""
    text = index_text.result()
    return None if not text else tarindex.Index.parse(text, split_name, tarinfo.MAX_MEMBER_BYTES)


def _fetch_rows(fs, path: str, size: int, spans, pieces: tuple, window: tuple[int, int], head=None,
                forget=None, etag: str | None = None):
    """Read-ahead task: the bytes of samples `window` of a shard (the first of `pieces`: with
    the file's size checked, `remotefiles.fetch_ranges`' probe), the range its index names
    (`spans`: the future of `_piece_spans`, waited for here: a shard's ranges outrank its
    fetches on the read-ahead threads, so they are never queued behind them); what the
    shard's head holds of it (`head`: the future of `_guess_head`) taken from there, only the
    rest fetched (`forget()` once no piece after needs the head). None when the index cannot
    say, and the reader reads the shard whole. Each request is conditional on `etag`."""
    span = spans.result().get(window) if spans is not None else None
    if span is None:
        if forget is not None:
            forget()  # (the shard is read whole: its head is of no use)
        return None
    held = _head_part(path, head, span)
    if held is not None:
        part, end, whole = held
        if forget is not None and whole <= span[1]:  # the head's last bytes: no piece after needs it
            forget()
        if end >= span[1]:
            return part
        rest = _ahead_fetch(path, functools.partial(remotefiles.fetch_ranges, fs, path, [(end, span[1])], size,
                                                    retry=False, etag=etag))[(end, span[1])]
        return b"".join((part, rest))
    return _ahead_fetch(path, functools.partial(remotefiles.fetch_ranges, fs, path, [span], size, retry=False,
                                                probe=window == pieces[0], etag=etag))[span]


# a shard's head (`_guess_head`): its first piece's share of the shard's bytes by sample count,
# this much more, and one more block of bytes
GUESS_MARGIN, GUESS_SLACK = 0.125, 64 << 10


def _guess_head(fs, path: str, size: int, first: tuple[int, int], rows: int, etag: str | None = None):
    """Read-ahead task, once per shard, beside its index when that is not in yet: the bytes its
    first piece (`first`, samples from the shard's first) likely takes, so the first batch waits
    for one round trip, not two (the index, then the piece). Measured with the bench's HTTP
    server (20 ms a request, 2 shards of 4,000 10 KB samples, 40 runs each): the first batch at
    153 ms (median; first quartile 126) against 169 (141) without. The pieces take what they
    need of it (`_fetch_rows`): no byte is fetched twice. Conditional on `etag`."""
    guess = min(size, int(size * first[1] / rows * (1 + GUESS_MARGIN)) + GUESS_SLACK)
    return remotefiles.fetch_ranges(fs, path, [(0, guess)], size, retry=False, probe=True, etag=etag)[(0, guess)]


def _head_part(path: str, head, span: tuple[int, int]):
    """(what the shard's head holds of `span` from its start, where that part ends, where the
    head ends), or None: no
    head, it failed (the piece is fetched as without it, except after a time-out: it is then
    read in place, `_Stalled`), or it holds nothing of the span."""
    if head is None:
        return None
    try:
        data = head.result()
    except Exception as exc:  # noqa: BLE001 - only a head start: the piece's fetch says it
        if is_timeout(exc):
            raise _stalled(path, exc) from exc
        log.debug("%s: the head fetched beside the index failed (%s)", redact(path), redact(exc))
        return None
    if data is None or span[0] >= len(data):
        return None
    end = min(span[1], len(data))
    return memoryview(data)[span[0]:end], end, len(data)


# the end of the class names storage clients give their time-outs: botocore's ReadTimeoutError and
# ConnectTimeoutError (s3fs), urllib3's, requests' Timeout, Azure's ServiceResponseTimeoutError
_TIMEOUT_NAMES = ("Timeout", "TimeoutError")


def is_timeout(exc: BaseException) -> bool:
    """Whether a storage client's error is a time-out: Python's `TimeoutError` (aiohttp's and
    fsspec's are), one whose class or a base of it is named so (`_TIMEOUT_NAMES`: botocore's
    `ReadTimeoutError`, which s3fs raises, is none), or an error raised from one. By name: no
    client library is imported for the check."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, TimeoutError) or any(c.__name__.endswith(_TIMEOUT_NAMES) for c in type(exc).__mro__):
            return True
        exc = exc.__cause__
    return False


class IndexUnread(str):
    """The text of a shard's index that storage kept failing to give after its retries: "", so
    the tar is streamed, but with `tried` (what was asked, and the last failure): the tar then
    gets one try, not a retry budget of its own (`TarReader._members`)."""

    tried: str = ""


def unread_index(path: str, exc: BaseException) -> str:
    """"" for an index that could not be read (`_ahead_fetch` gave up with `exc`): an
    `IndexUnread` when retries gave up on a transient failure, which storage may give the tar too."""
    if not retries.is_transient(exc):
        return ""
    text = IndexUnread("")
    text.tried = f"its index {redact(path)} with retries ({type(exc).__name__}: {redact(exc)}), then the tar once"
    return text


def gave_up(future) -> BaseException | None:
    """The transient failure a read-ahead fetch (`future`) gave up on after its retries,
    else None (no fetch, cancelled, done, or a failure retries never cure or a time-out: the
    reader then reads in place with its own retries)."""
    if future is None or future.cancelled():
        return None
    try:
        exc = future.exception()  # (waits for it, as taking its result would)
    except CancelledError:
        return None
    return exc if exc is not None and retries.is_transient(exc) else None


class _Stalled(Exception):
    """A read-ahead fetch that timed out: not transient to `retries.with_retries`, so the fetch
    fails at once and the reader reads the bytes in place (`_ahead_fetch`)."""


def _ahead_fetch(path: str, fetch, what: str = "reading ahead", instead: str = "the reader reads it in place"):
    """A fetch that has another way if it fails (read-ahead: the reader reads the bytes in place;
    a shard's index: the shard is streamed), transient failures retried (`retries.with_retries`)
    except a time-out (`is_timeout`: a server silent for the client's whole time-out, 30 s by default), after
    which the other way is taken at once, with retries of its own. Retried here too, a stalled
    server cost the whole retry budget again for each way (8 time-outs ahead, 8 in place: 37 s
    with a 0.3 s time-out, over 8 minutes with the default) before an error."""
    def attempt():
        try:
            return fetch()
        except Exception as exc:
            if not is_timeout(exc):
                raise
            raise _stalled(path, exc, what, instead) from exc
    return retries.with_retries(attempt, f"{what} {path}")


def _stalled(path: str, exc: BaseException, what: str = "reading ahead",
             instead: str = "the reader reads it in place") -> _Stalled:
    """The `_Stalled` for a time-out of `what` (logged once, as a warning)."""
    log.warning("%s %s: no answer within the storage client's time-out (%s); %s", what,
                redact(path), type(exc).__name__, instead)
    return _Stalled(f"{what} {redact(path)}: no answer within the storage client's "
                    f"time-out ({type(exc).__name__}: {redact(exc)}); {instead}")
