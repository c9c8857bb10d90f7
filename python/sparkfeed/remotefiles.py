"""Range reads of remote files: coalesced byte ranges fetched concurrently and checked against
the manifest's size (`fetch_ranges`), and a file over the ranges already fetched (`KnownRanges`).

Over object storage or HTTP every read is a request with 10-50 ms to the first byte. Three
things keep that off the critical path: one open per file (readers keep files open, and the
size comes from the manifest, so opening costs no HEAD request), coalesced range requests
(pyarrow's pre_buffer for the columns of a row group; `fetch_ranges` for read-ahead), and
`readahead.ReadAhead`: the next units' bytes fetched on a few threads while the current unit is
converted, bounded by bytes held.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import io
import logging
from collections.abc import Callable

import fsspec
import fsspec.asyn
import fsspec.utils

from . import httpranges, recvbuffers, retries
from .errors import redact
from .storage import HTTP_SOCK_READ_S

log = logging.getLogger(__name__)

# Ranges closer than this are fetched as one request (the gap is read and dropped): pyarrow's
# own default hole size for pre-buffering (CacheOptions.hole_size_limit), so filter columns of
# many row groups are not fetched together with the image columns between them.
COALESCE_GAP = 8 << 10


def open_remote(fs: fsspec.AbstractFileSystem, path: str, size: int | None = None, etag: str | None = None,
                cached: bool = False):
    """A remote file opened for exact range reads: no fsspec block cache (pyarrow asks for the
    ranges it needs, coalesced; `cached`: fsspec's own, for a reader of small pieces, a streamed
    tar), and no HEAD request when the manifest knows the size. Over HTTP or S3 with `etag`, each
    read is conditional on it (If-Match: a 412 for a file replaced)."""
    kwargs = {} if cached else {"cache_type": "none"}
    if size is not None:
        kwargs["size"] = size
    if etag and _is_http(fs) and httpranges.if_match(etag):
        kwargs["headers"] = {**fs.kwargs.get("headers", {}), **httpranges.if_match(etag)}
    f = fs.open(path, "rb", **kwargs)
    if _if_match_s3(fs, etag) and isinstance(getattr(f, "read_kw", None), dict):  # (s3fs's GetObject options)
        f.read_kw = {**f.read_kw, "IfMatch": httpranges.if_match(etag)["If-Match"]}
    return f


def fetch_ranges(fs: fsspec.AbstractFileSystem, path: str, ranges: list[tuple[int, int]],
                 size: int | None = None, retry: bool = True, probe: bool = False,
                 etag: str | None = None) -> dict[tuple[int, int], memoryview | bytes]:
    """{(start, end): bytes} for byte ranges of one file, adjacent ones merged into one request
    (fsspec's merge_offset_ranges) and the requests sent concurrently (over HTTP with the
    standard library's client, `httpranges`, or on fsspec's session, `_http_ranges`; else
    fsspec's cat_ranges). `size` (the manifest's) is checked where a range ends at it: over
    HTTP against the file's size the server reports (every answer), elsewhere by asking one
    byte more (an object store answers a range past the end with what is there), and with
    `probe` by asking for its last byte and the one after beside the ranges (one more request,
    where none ends there: a tar's first piece): `httpranges.SizeMismatch` when the file
    changed. Transient failures are retried (`with_retries`) unless `retry=False`, for a caller
    that retries the whole read itself. Over HTTP with `etag` (the one the file was indexed
    with), each request is conditional on it: `httpranges.VersionChanged` for a file replaced."""
    _, starts, ends = fsspec.utils.merge_offset_ranges(
        [path] * len(ranges), [a for a, _ in ranges], [b for _, b in ranges], max_gap=COALESCE_GAP)
    probing = False
    if _is_http(fs):
        fetch = functools.partial(_http_fetch, fs, path, starts, ends, size, etag)
    elif _if_match_s3(fs, etag) and not probe:
        fetch = functools.partial(fsspec.asyn.sync, fs.loop, _s3_ranges, fs, path, starts,
                                  [b + 1 if b == size else b for b in ends], etag)
    else:
        probing = probe and bool(size) and size not in ends
        asked = [b + 1 if b == size else b for b in ends]  # (the byte after the end: is there one?)
        fetch = functools.partial(_cat_ranges, fs, path, starts + [size - 1] * probing,
                                  asked + [size + 1] * probing, size if probing else None)
    blobs = retries.with_retries(fetch, f"reading ahead {path}") if retry else fetch()
    if probing and len(tail := blobs.pop()) != 1:
        raise _mismatch(fs, path, size, longer=len(tail) > 1)
    for a, b, blob in zip(starts, ends, blobs):
        if b == size and len(blob) > b - a:
            raise _mismatch(fs, path, size, longer=True)
        if len(blob) < b - a:  # the file ends first: shorter than asked, never "ignores Range"
            raise _ends_early(path, a, b, len(blob), size)
        if len(blob) > b - a:  # fsspec's HTTP cat does not check that the server honoured Range
            raise ValueError(httpranges.NO_RANGES.format(path=path, a=a, b=b - 1, n=len(blob)))
    return {(a, b): blob for a, b, blob in zip(starts, ends, blobs)}


def _cat_ranges(fs, path: str, starts: list[int], ends: list[int], size: int | None) -> list:
    """fsspec's cat_ranges; with `size` (a probe of the file's last byte among the ranges), an
    object store's refusal of a range past the end ("not satisfiable", EINVAL) is the file
    being shorter than `size`."""
    try:
        return fs.cat_ranges([path] * len(starts), starts, ends, on_error="raise")
    except OSError as exc:
        if size is None or exc.errno != errno.EINVAL or "satisfiable" not in str(exc):
            raise
        raise _mismatch(fs, path, size, longer=False) from exc


def _mismatch(fs, path: str, size: int, longer: bool) -> httpranges.SizeMismatch:
    """The error for a file found longer (or shorter) than the manifest's `size`, with its size
    now where storage says it (one more request, on the way to an error)."""
    try:
        now = int(fs.info(path)["size"])
    except Exception:  # noqa: BLE001 - only a better word for the error
        now = None
    return httpranges.SizeMismatch(path, size, now if now is not None and now != size else None, longer)


def _ends_early(path: str, start: int, end: int, got: int, size: int | None) -> ValueError:
    """The error for a range [start, end) of which only `got` bytes came: the file ends before
    `end`. Worded without "range requests", so that it is never taken for a server that ignores
    them (`ignores_ranges`): a Parquet file truncated after the manifest was written once
    turned its reader to whole-file reads and ended in pyarrow's "magic bytes not found"."""
    if size is not None:
        return httpranges.SizeMismatch(path, size, start + got)
    return ValueError(f"{path}: asked for bytes {start}-{end - 1}, the file ends at byte {start + got}")


def fetch_whole(fs: fsspec.AbstractFileSystem, path: str, size: int, retry: bool = True,
                etag: str | None = None):
    """The whole file of `size` bytes as one range (`fetch_ranges`: over HTTP into one pooled
    buffer, its size checked against the server's, conditional on `etag`)."""
    return fetch_ranges(fs, path, [(0, size)], size, retry=retry, etag=etag)[(0, size)]


def _http_fetch(fs, path: str, starts: list[int], ends: list[int], size: int | None,
                etag: str | None = None) -> list:
    """HTTP ranges with the standard library's client where it sends what fsspec's would
    (`httpranges`: one copy per byte, on the calling thread), else on fsspec's session."""
    if httpranges.usable(fs):
        try:
            return httpranges.fetch(fs, path, starts, ends, size, HTTP_SOCK_READ_S, etag)
        except httpranges.NeedsFsspec as exc:
            log.debug("%s; fetching on fsspec's session", redact(exc))
    return fsspec.asyn.sync(fs.loop, _http_ranges, fs, path, starts, ends, size, etag)


def _if_match_s3(fs: fsspec.AbstractFileSystem, etag: str | None) -> bool:
    """Whether reads of an S3 object (s3fs) are made conditional on `etag`, its indexed ETag."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return bool(httpranges.if_match(etag)) and "s3" in protocols and hasattr(fs, "_call_s3")


async def _s3_ranges(fs, path: str, starts: list[int], ends: list[int], etag: str) -> list:
    """Byte ranges of one S3 object, each a GetObject conditional on its ETag (`IfMatch`, which
    s3fs's cat_ranges does not pass): `httpranges.VersionChanged` for an object replaced."""
    bucket, key, version = fs.split_path(path)

    async def one(a: int, b: int) -> bytes:
        resp = await fs._call_s3("get_object", Bucket=bucket, Key=key, Range=f"bytes={a}-{b - 1}",
                                 IfMatch=httpranges.if_match(etag)["If-Match"],
                                 **({"VersionId": version} if version else {}))
        try:
            return await resp["Body"].read()
        finally:
            resp["Body"].close()

    try:
        return list(await asyncio.gather(*(one(a, b) for a, b in zip(starts, ends))))
    except OSError as exc:
        if retries.precondition_failed(exc):
            raise httpranges.VersionChanged(path, etag) from exc
        raise


def _is_http(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("http", "https")


async def _http_ranges(fs, path: str, starts: list[int], ends: list[int],
                       size: int | None = None, etag: str | None = None) -> list[memoryview]:
    """The byte ranges of one file over HTTP on fsspec's session (where `httpranges` does not
    apply), concurrently, each read into one buffer from pyarrow's memory pool as it arrives.

    Why not fsspec's `cat_ranges`: its `cat_file` collects each body with aiohttp's `read()`,
    which joins the received chunks into a new bytes object (a fresh multi-MB allocation the
    kernel zeroes page by page, after a join of the chunks buffered between reads). Reading the
    chunks (`readchunk`) into a buffer from pyarrow's pool (mimalloc, which reuses freed pages)
    moves each byte once after the socket read: the event-loop thread's CPU per epoch fell by
    about a quarter and the page faults by 4x (`sparkfeed.bench.remote_epochs`,
    docs/deploy.md). The session, its client settings and the request options are fsspec's
    own."""
    session = await fs.set_session()
    return list(await asyncio.gather(*(_http_range(fs, session, path, a, b, size, etag)
                                       for a, b in zip(starts, ends))))


async def _http_range(fs, session, path: str, start: int, end: int, size: int | None,
                      etag: str | None = None) -> memoryview:
    """Bytes [start, end) of the file at URL `path` (a shorter result: the caller reports it);
    a ValueError when the server reports a file size other than `size` (if given)."""
    kwargs = dict(fs.kwargs)
    headers = {**kwargs.pop("headers", {}), **httpranges.if_match(etag), "Range": f"bytes={start}-{end - 1}"}
    view, held = recvbuffers.take(end - start)
    at = 0
    async with session.get(fs.encode_url(path), headers=headers, **kwargs) as r:
        if r.status == 404:
            raise FileNotFoundError(path)
        if r.status == 412 and httpranges.if_match(etag):
            raise httpranges.VersionChanged(path, etag)
        r.raise_for_status()
        problem = httpranges.answer_error(path, r.status, r.headers.get("Content-Range", ""),
                                          r.content_length, start, end, size)
        if problem is not None:
            raise problem
        while True:
            chunk, _ = await r.content.readchunk()
            if not chunk:
                break
            if at + len(chunk) > len(view):  # a whole file for a range at its start
                raise ValueError(httpranges.NO_RANGES.format(path=path, a=start, b=end - 1,
                                                             n=r.content_length or at + len(chunk)))
            view[at:at + len(chunk)] = chunk
            at += len(chunk)
    return held[:at]


class KnownRanges(io.RawIOBase):
    """A read-only, seekable file over byte ranges fetched ahead; a read outside them goes to the
    real file, opened on first need. (fsspec's "parts" cache zero-pads or raises on a miss, and
    a reader must never see invented bytes.)"""

    def __init__(self, parts: dict[tuple[int, int], bytes | memoryview], size: int, opener: Callable):
        super().__init__()
        self._parts = sorted(parts.items())
        self.size, self._opener, self._file, self._pos = size, opener, None, 0

    @property
    def opened(self) -> bool:
        """True once a read fell outside the fetched ranges and went to the real file."""
        return self._file is not None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, n: int = -1) -> bytes | memoryview:
        """Bytes [pos, pos + n): a read-only view into a fetched range (no copy: pyarrow takes
        any buffer), else bytes read from the real file."""
        end = self.size if n is None or n < 0 else min(self.size, self._pos + n)
        start, self._pos = self._pos, end
        pieces, at = [], start
        for (a, b), blob in self._parts:  # sorted: a read may span adjacent fetched ranges
            if a <= at < b:
                pieces.append(memoryview(blob)[at - a:min(end, b) - a])
                at = min(end, b)
            if at >= end:
                return pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if self._file is None:
            self._file = self._opener()
        self._file.seek(start)
        return self._file.read(end - start)

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()
