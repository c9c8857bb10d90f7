"""Storage through fsspec: with `httpranges` (read-ahead ranges over plain HTTP(S) on the
standard library's client), the only modules that touch URLs.

Local paths, file://, s3://, gs://, hdfs://, http(s):// and anything else fsspec knows. Spark's
Hadoop schemes (s3a://, s3n://) are mapped to fsspec's. Reads retry transient failures with
exponential backoff and give up with an error that names what failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import io
import itertools
import logging
import os
import posixpath
import random
import re
import ssl
import threading
import time
import urllib.parse
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import fsspec
import fsspec.asyn
import fsspec.utils

from . import httpranges, recvbuffers
from .errors import PathEscapeError, redact

log = logging.getLogger(__name__)
T = TypeVar("T")

_HADOOP_SCHEMES = {"s3a": "s3", "s3n": "s3"}


class CorruptData(OSError):
    """Bytes that were read but do not parse (a corrupt Parquet footer: pyarrow's "Couldn't
    deserialize thrift"). An OSError, as pyarrow raises it, so every handler of those still
    catches it; but never transient: a retry reads the same bytes (`parsing`)."""


# Errors that mean "this will not get better by retrying". A certificate that fails
# verification is an OSError (aiohttp's certificate error is a subclass), but no retry cures it.
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
              ssl.SSLCertVerificationError, CorruptData)


def normalise_url(path: str) -> str:
    """Map Spark/Hadoop URL schemes to fsspec's and drop a trailing slash. An empty path is
    refused: fsspec takes it for the file system's root, where it was read or written."""
    if not str(path).strip():
        raise ValueError(f"a path should name a dataset, a file or a directory, but got {path!r} "
                         "(read as the file system's root '/')")
    scheme, sep, rest = str(path).partition("://")
    if sep and scheme in _HADOOP_SCHEMES:
        path = f"{_HADOOP_SCHEMES[scheme]}://{rest}"
    if sep and scheme.lower() in ("http", "https") and ("?" in rest or "#" in rest):
        _refuse_query(scheme, rest)
    return str(path).rstrip("/") or "/"


def _refuse_query(scheme: str, rest: str) -> None:
    """An http(s) URL with a query string or fragment (a signed or token URL): file names are
    joined to the dataset's URL, so the query would end up inside a path, not after each file's
    name (before: "the glob matches no files", `?` taken for a glob). The query is not repeated
    in the error: it may hold a signature or token."""
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    raise ValueError(f"an http(s) URL with a query string or fragment ({scheme}://{host}/...?...) "
                     "cannot name a dataset or a file in it: sparkfeed joins file names to the "
                     "dataset's URL and does not carry a query to each file; pass credentials as "
                     "headers (storage_options={'headers': {...}}) or use the store's own scheme "
                     "(s3://, gs://, az://) with its options")


# HTTP reads that stall: give up on a silent socket after this long (then retry), instead of
# aiohttp's 5-minute default. Override with storage_options={"client_kwargs": {"timeout": ...}}.
HTTP_SOCK_READ_S = 30.0


# aiohttp's read buffer per HTTP response (its default is 64 KiB): a response body of a few MB
# (a read-ahead fetch) then arrives without pausing and resuming the socket every 128 KiB, which
# cut the client's CPU per byte by ~15% in the `remote` bench (docs/deploy.md).
HTTP_READ_BUFSIZE = 4 << 20


def is_http_url(url: str) -> bool:
    """Whether `url` is an http(s):// URL (read-only storage, served range by range)."""
    scheme, sep, _ = str(url).partition("://")
    return bool(sep) and scheme.lower() in ("http", "https")


def _with_defaults(url: str, options: dict) -> dict:
    """Storage options with sparkfeed's defaults for the URL's protocol (user values win)."""
    if not is_http_url(url):
        return options
    client = dict(options.get("client_kwargs", {}))
    if "timeout" not in client:
        import aiohttp

        client["timeout"] = aiohttp.ClientTimeout(total=None, sock_connect=HTTP_SOCK_READ_S,
                                                  sock_read=HTTP_SOCK_READ_S)
    client.setdefault("read_bufsize", HTTP_READ_BUFSIZE)
    return {**options, "client_kwargs": client}


class _RedactedRecords(logging.Filter):
    """Log records with no URL credentials in them: fsspec's HTTP client logs each URL it
    fetches (`fsspec.http`, DEBUG) as given, `http://user:password@host/...` too, and sparkfeed
    promises `***` in every log line (`errors.redact`). Runs only for records that are made."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "@" in message:
            record.msg, record.args = redact(message), None
        return True


logging.getLogger("fsspec.http").addFilter(_RedactedRecords())


_INHERITED: list = []  # what a forked worker inherited and must never close (`_keep_inherited`)


def _keep_inherited() -> None:
    """In a forked worker process: never close the HTTP sessions inherited from the parent.

    Their sockets are the parent's, registered in the epoll set the child shares with the
    parent's event loop. fsspec closes a session when its filesystem is dropped (a
    `weakref.finalize`), and in the child that runs `epoll_ctl(DEL)` on the parent's
    connection: the parent never hears the next answer on it and waits for the socket time-out
    (30 s at each epoch after the first with num_workers=2 over HTTP, then a retry). So the
    finalisers are detached and the sessions held until the worker exits (with os._exit,
    which finalises nothing)."""
    registry = getattr(weakref.finalize, "_registry", {})  # CPython's table of live finalisers
    for finalizer, info in list(registry.items()):
        if getattr(info.func, "__qualname__", "").endswith("HTTPFileSystem.close_session"):
            _INHERITED.append(info.args)
            finalizer.detach()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_keep_inherited)


def check_options(storage_options) -> dict:
    """`storage_options` as a dict, or ValueError saying what was expected: the filesystem's
    keyword options (`{"anon": True}`), never a string or a number, which fsspec would
    misread or refuse with a bare TypeError far from the call."""
    if storage_options is None:
        return {}
    if not isinstance(storage_options, Mapping) or not all(isinstance(k, str) for k in storage_options):
        raise ValueError("`storage_options` should be a dict of the filesystem's options (e.g. "
                         f"{{'anon': True}}) or None, but got storage_options={storage_options!r}")
    return dict(storage_options)


def resolve(path: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, root path inside it) for a dataset path or URL."""
    url = normalise_url(path)
    options = _with_defaults(url, check_options(storage_options))
    if is_http_url(url) and "::" in url:
        # fsspec's url_to_fs reads "::" as a chain of filesystems ("simplecache::s3://..."),
        # which cuts an IPv6 host (http://[::1]:8000/ds) to "http://["; an http(s) URL names
        # one filesystem, made as url_to_fs would make it for a URL without "::"
        fs = fsspec.filesystem(url.partition("://")[0].lower(), **options)
        root = fs._strip_protocol(url)
    else:
        fs, root = fsspec.core.url_to_fs(url, **options)
    return fs, root.rstrip("/") or "/"


_IGNORING_RANGES: set[tuple[str, str]] = set()  # (server, what instead) already logged


def ignores_ranges(exc: BaseException, url: str, instead: str) -> bool:
    """Whether `exc` is fsspec's report that the HTTP server of `url` answered a Range request
    with the whole file; the first time per server, log what is read whole `instead`."""
    if not isinstance(exc, ValueError) or "range requests" not in str(exc):
        return False
    key = (url.split("://", 1)[-1].split("/", 1)[0], instead)
    if key not in _IGNORING_RANGES:
        _IGNORING_RANGES.add(key)
        log.warning("%s: the server ignores Range requests; %s", redact(url), instead)
    return True


def is_transient(exc: BaseException) -> bool:
    """True for failures that retrying may cure: I/O and connection errors, time-outs, HTTP 5xx
    and 429. A missing file, a permission problem or corrupt data are not transient."""
    if isinstance(exc, FileNotFoundError) and exc.__cause__ is not None:
        return is_transient(exc.__cause__)  # fsspec's HTTP info() reports any failure as missing
    if isinstance(exc, _PERMANENT):
        return False
    if isinstance(exc, (OSError, TimeoutError, ConnectionError)):
        return True
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status >= 500 or status == 429
    return type(exc).__module__.split(".")[0] == "aiohttp"  # connection/payload errors


_NO_CREDENTIALS = ("pass them in storage_options ({'key': ..., 'secret': ...}), or "
                   "storage_options={'anon': True} for a public bucket")


def as_os_error(exc: BaseException, what: str) -> BaseException:
    """`exc` as the OSError it means where a storage client raises a type of its own, so that
    every caller tells a missing file, a refused access and a failing server apart without
    knowing aiohttp or botocore: fsspec's HTTP client raises aiohttp's ClientResponseError for
    any HTTP error status (FileNotFoundError for a 404, PermissionError for 401/403,
    ConnectionError for a 5xx or 429 that retries did not cure here; so does `httpranges`'
    HTTPStatusError, whose other statuses, a 416 say, once left the loader as they were),
    its own errors for a
    dropped connection or a cut body (ConnectionError), and calls any failure of
    `info` a missing file (an OSError here, or a PermissionError for a 401/403); s3fs passes
    botocore's own errors on for missing credentials (PermissionError here) and an endpoint it
    cannot reach (ConnectionError). Anything else is returned as it is. Messages never show a
    URL's credentials (`errors.redact`)."""
    what = redact(what)
    if isinstance(exc, FileNotFoundError) and exc.__cause__ is not None:  # fsspec's HTTP info()
        if is_transient(exc):
            plain = as_os_error(exc.__cause__, what)
            return plain if isinstance(plain, TimeoutError) else OSError(f"{what}: {exc.__cause__}")
        refused = as_os_error(exc.__cause__, what)
        return refused if isinstance(refused, PermissionError) else exc
    if isinstance(exc, TimeoutError):  # the socket's "timed out", or fsspec's empty FSTimeoutError
        return TimeoutError(f"{what}: no answer within the storage client's time-out "
                            f"({type(exc).__name__}: {exc or 'timed out'})")
    module = type(exc).__module__.split(".")[0]
    status = getattr(exc, "status", None)
    if (module == "aiohttp" or isinstance(exc, httpranges.HTTPStatusError)) and isinstance(status, int):
        kind = {404: FileNotFoundError, 401: PermissionError, 403: PermissionError}.get(
            status, ConnectionError if is_transient(exc) else OSError)
        return kind(f"{what}: HTTP {status} {getattr(exc, 'message', '')}".rstrip())
    if module == "aiohttp" and not isinstance(exc, OSError):  # a dropped connection, a cut body
        return ConnectionError(f"{what}: {type(exc).__name__}: {exc}")
    if module != "botocore":
        return exc
    from botocore import exceptions as boto

    if isinstance(exc, (boto.NoCredentialsError, boto.PartialCredentialsError,
                        boto.CredentialRetrievalError)):
        return PermissionError(f"{what}: {exc}; {_NO_CREDENTIALS}")
    if isinstance(exc, (boto.ConnectionError, boto.HTTPClientError)):
        return ConnectionError(f"{what}: {exc}")
    return OSError(f"{what}: {type(exc).__name__}: {exc}")


def failure_words(exc: BaseException) -> str | None:
    """What storage did, worded for an error message, for a failure `with_retries` gave up on:
    it refused access, or it kept failing; None for anything else (a missing file is worded by
    the caller, who knows which file it expected; corrupt bytes by the format's reader)."""
    if isinstance(exc, PermissionError):
        return f"storage refused access ({exc}); check the credentials in storage_options"
    if isinstance(exc, (ConnectionError, TimeoutError)) or (not isinstance(exc, OSError) and is_transient(exc)):
        return f"storage kept failing ({type(exc).__name__}: {exc})"
    return None


def _scrubbed(exc: BaseException) -> BaseException:
    """`exc` (and the errors it was raised from) with no URL credentials in its message: fsspec
    raises FileNotFoundError(url) with the URL as given, `http://user:password@host/...` too,
    and a traceback prints every error of the chain."""
    chain, at = set(), exc
    while at is not None and id(at) not in chain:
        chain.add(id(at))
        at.args = tuple(redact(a) if isinstance(a, str) else a for a in at.args)
        at = at.__cause__ or at.__context__
    return exc


class _Watched:
    """A file object that remembers the error its own I/O raised, so that `parsing` tells the
    storage's failures (pyarrow re-raises a Python file's exception as it is) from pyarrow's."""

    def __init__(self, f):
        self._f = f
        self.failed: BaseException | None = None

    def __getattr__(self, name):
        return getattr(self._f, name)

    def _io(self, name: str, *args):
        try:
            return getattr(self._f, name)(*args)
        except BaseException as exc:
            self.failed = exc
            raise

    def read(self, *args):
        return self._io("read", *args)

    def readinto(self, *args):
        return self._io("readinto", *args)

    def seek(self, *args):
        return self._io("seek", *args)

    def tell(self):
        return self._io("tell")


@contextlib.contextmanager
def parsing(f=None):
    """Parse bytes (of file object `f`, or already in memory) inside this block: an OSError the
    parser raises itself (pyarrow's "Couldn't deserialize thrift", which is an OSError) becomes
    `CorruptData`, which `with_retries` does not retry, while an error of `f`'s own reads (a
    connection reset, an HTTP 503) passes as it is and is retried. Yields `f`, watched."""
    watched = None if f is None else _Watched(f)
    try:
        yield watched
    except CorruptData:
        raise
    except OSError as exc:
        if watched is not None and exc is watched.failed:
            raise
        raise CorruptData(str(exc)) from exc


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # what `path_problem` calls a control character


def path_problem(rel: object) -> str | None:
    """Why `rel` is not a safe path inside a dataset (a phrase after "it"), or None when it is.

    The one rule for manifest shard/index paths and tar member names, the same as the JVM's
    `io.sparkfeed.SafePath` (both sides run the cases in tests/data/path_cases.json): a path is
    split on "/" into parts, and it may not be empty, hold a control character (NUL included),
    be invalid UTF-8, hold a backslash, be absolute, start with a URL scheme or drive (":" in
    its first part), have an empty part ("a//b", "a/") or a ".." part. Dots inside a part
    (`a..b.jpg`) and "." parts (`./a.jpg`, as `tar -cf x.tar .` writes) are fine: they stay
    inside. The checks run in this order, so a path breaking several rules names the first.
    """
    if not isinstance(rel, str) or not rel:
        return "is empty or not a string"
    if _CONTROL.search(rel):
        return "holds a control character"
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if "\\" in rel:
        return "holds a backslash"
    if rel.startswith("/"):
        return "is absolute"
    parts = rel.split("/")
    if ":" in parts[0]:
        return "starts with a URL scheme or drive"
    if "" in parts:
        return "has an empty part"
    if ".." in parts:
        return "has a '..' part"
    return None


def check_relative(rel: str, dataset: str, root: str | None = None) -> str:
    """`rel` itself, or PathEscapeError naming the dataset when `path_problem` refuses it; under
    an http(s) dataset or `root`, also when it refuses `rel` with its %-escapes decoded."""
    problem = path_problem(rel)
    if problem is None and "%" in rel and (is_http_url(dataset) or is_http_url(root or "")):
        # an HTTP client decodes %2e%2e to ".." and then drops the dot segments: manifest path
        # "%2e%2e/other/x.parquet" under http://host/ds was fetched from http://host/other/
        problem = path_problem(urllib.parse.unquote(rel))
        problem = problem and f"{problem} once its %-escapes are decoded, as an HTTP URL is"
    if problem is not None:
        raise PathEscapeError(
            f"dataset {dataset!r}: path {rel!r} could escape the dataset: it {problem}; manifest "
            "paths must be relative to the dataset root, without '..', absolute parts or URLs")
    return rel


def join(root: str, rel: str, dataset: str) -> str:
    """`root/rel` after checking that `rel` stays inside the dataset."""
    return posixpath.join(root, check_relative(rel, dataset, root))


def with_retries(fn: Callable[[], T], what: str, *, attempts: int = 8, base_delay: float = 0.2,
                 max_delay: float = 5.0) -> T:
    """Call `fn`, retrying transient I/O errors with jittered exponential backoff.

    Permanent errors (missing file, permission) raise at once; after `attempts` tries the last
    error propagates, so a permanent outage ends in an error, never a hang. A storage client's
    own error types leave as the OSError they mean (`as_os_error`).
    """
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                plain = as_os_error(_scrubbed(exc), what)
                if plain is exc:
                    raise
                raise plain from exc
            delay = min(max_delay, base_delay * 2 ** (attempt - 1)) * (0.5 + random.random())
            log.warning("%s failed (%s: %s); retry %d/%d in %.2fs", redact(what), type(exc).__name__,
                        redact(exc), attempt, attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def exists(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """Whether `path` exists, transient failures retried: fsspec's own `exists` answers False
    to any error, so one HTTP 503 would read as "no such file or directory"."""
    try:
        with_retries(lambda: fs.info(path), f"looking up {path}")
        return True
    except FileNotFoundError:
        return False


def read_bytes(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    """The whole file, with retries."""
    return with_retries(lambda: fs.cat_file(path), f"reading {path}")


def write_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write `data` so readers see either nothing or all of it (temp file, then rename).

    On object stores a single PUT is already atomic, and `mv` degrades to copy+delete of a
    temporary object the reader never trusts (it is not the manifest name).
    """
    tmp = f"{path}.tmp-{random.getrandbits(40):010x}"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    try:
        fs.mv(tmp, path)
    except Exception:
        fs.rm(tmp)
        raise


# ---------------------------------------------------------------- remote reads and read-ahead
#
# Over object storage or HTTP every read is a request with 10-50 ms to the first byte. Three
# things keep that off the critical path: one open per file (readers keep files open, and the
# size comes from the manifest, so opening costs no HEAD request), coalesced range requests
# (pyarrow's pre_buffer for the columns of a row group; `fetch_ranges` for read-ahead), and
# `ReadAhead`: the next units' bytes fetched on a few threads while the current unit is
# converted, bounded by bytes held.

# Bytes a reader may hold in fetched-but-unread units plus requests in flight (per lane).
# Configurable with the SPARKFEED_READ_AHEAD_BYTES environment variable; 0 turns it off.
READ_AHEAD_BYTES = int(os.environ.get("SPARKFEED_READ_AHEAD_BYTES", 64 << 20))
READ_AHEAD_THREADS = 6  # read-ahead tasks running at once per reader (fetches, footers, indexes)
ONCE_KEPT = 64  # `ReadAhead.once` results kept per reader (footers of the files ahead)
# Ranges closer than this are fetched as one request (the gap is read and dropped): pyarrow's
# own default hole size for pre-buffering (CacheOptions.hole_size_limit), so filter columns of
# many row groups are not fetched together with the image columns between them.
COALESCE_GAP = 8 << 10


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """True for the local filesystem (no request latency: no read-ahead, no coalescing)."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def open_remote(fs: fsspec.AbstractFileSystem, path: str, size: int | None = None):
    """A remote file opened for exact range reads: no fsspec block cache (pyarrow asks for the
    ranges it needs, coalesced), and no HEAD request when the manifest knows the size."""
    kwargs = {"cache_type": "none"}
    if size is not None:
        kwargs["size"] = size
    return fs.open(path, "rb", **kwargs)


def fetch_ranges(fs: fsspec.AbstractFileSystem, path: str, ranges: list[tuple[int, int]],
                 size: int | None = None, retry: bool = True) -> dict[tuple[int, int], memoryview | bytes]:
    """{(start, end): bytes} for byte ranges of one file, adjacent ones merged into one request
    (fsspec's merge_offset_ranges) and the requests sent concurrently (over HTTP with the
    standard library's client, `httpranges`, or on fsspec's session, `_http_ranges`; else
    fsspec's cat_ranges). `size` (the manifest's) is checked where a range ends at it: over
    HTTP against the file's size the server reports, elsewhere by asking one byte more (an
    object store answers a range past the end with what is there): a ValueError when the file
    changed. Transient failures are retried (`with_retries`) unless `retry=False`, for a caller
    that retries the whole read itself."""
    _, starts, ends = fsspec.utils.merge_offset_ranges(
        [path] * len(ranges), [a for a, _ in ranges], [b for _, b in ranges], max_gap=COALESCE_GAP)
    if _is_http(fs):
        fetch = functools.partial(_http_fetch, fs, path, starts, ends, size)
    else:
        asked = [b + 1 if b == size else b for b in ends]  # (the byte after the end: is there one?)
        fetch = functools.partial(fs.cat_ranges, [path] * len(starts), starts, asked, on_error="raise")
    blobs = with_retries(fetch, f"reading ahead {path}") if retry else fetch()
    for a, b, blob in zip(starts, ends, blobs):
        if b == size and len(blob) > b - a:
            raise ValueError(f"{path}: the file is more than {size} bytes (changed after the manifest was written)")
        if len(blob) < b - a:  # the file ends first: shorter than asked, never "ignores Range"
            raise ValueError(_ends_early(path, a, b, len(blob), size))
        if len(blob) > b - a:  # fsspec's HTTP cat does not check that the server honoured Range
            raise ValueError(httpranges.NO_RANGES.format(path=path, a=a, b=b - 1, n=len(blob)))
    return {(a, b): blob for a, b, blob in zip(starts, ends, blobs)}


def _ends_early(path: str, start: int, end: int, got: int, size: int | None) -> str:
    """The error for a range [start, end) of which only `got` bytes came: the file ends before
    `end`. Worded without "range requests", so that it is never taken for a server that ignores
    them (`ignores_ranges`): a Parquet file truncated after the manifest was written once
    turned its reader to whole-file reads and ended in pyarrow's "magic bytes not found"."""
    what = f"{path}: asked for bytes {start}-{end - 1}, the file ends at byte {start + got}"
    if size is None:
        return what
    return f"{what}, not at {size} as the manifest says (truncated or changed after the manifest was written)"


def fetch_whole(fs: fsspec.AbstractFileSystem, path: str, size: int, retry: bool = True):
    """The whole file of `size` bytes as one range (`fetch_ranges`: over HTTP into one pooled
    buffer, its size checked against the server's)."""
    return fetch_ranges(fs, path, [(0, size)], size, retry=retry)[(0, size)]


def _http_fetch(fs, path: str, starts: list[int], ends: list[int], size: int | None) -> list:
    """HTTP ranges with the standard library's client where it sends what fsspec's would
    (`httpranges`: one copy per byte, on the calling thread), else on fsspec's session."""
    if httpranges.usable(fs):
        try:
            return httpranges.fetch(fs, path, starts, ends, size, HTTP_SOCK_READ_S)
        except httpranges.NeedsFsspec as exc:
            log.debug("%s; fetching on fsspec's session", redact(exc))
    return fsspec.asyn.sync(fs.loop, _http_ranges, fs, path, starts, ends, size)


def _is_http(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("http", "https")


async def _http_ranges(fs, path: str, starts: list[int], ends: list[int],
                       size: int | None = None) -> list[memoryview]:
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
    return list(await asyncio.gather(*(_http_range(fs, session, path, a, b, size)
                                       for a, b in zip(starts, ends))))


async def _http_range(fs, session, path: str, start: int, end: int, size: int | None) -> memoryview:
    """Bytes [start, end) of the file at URL `path` (a shorter result: the caller reports it);
    a ValueError when the server reports a file size other than `size` (if given)."""
    kwargs = dict(fs.kwargs)
    headers = {**kwargs.pop("headers", {}), "Range": f"bytes={start}-{end - 1}"}
    view, held = recvbuffers.take(end - start)
    at = 0
    async with session.get(fs.encode_url(path), headers=headers, **kwargs) as r:
        if r.status == 404:
            raise FileNotFoundError(path)
        r.raise_for_status()
        problem = httpranges.answer_problem(path, r.status, r.headers.get("Content-Range", ""),
                                            r.content_length, start, end, size)
        if problem:
            raise ValueError(problem)
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


@dataclass(frozen=True)
class Deferred:
    """A read-ahead fetch made only when `ReadAhead.ahead` submits it: `make()` starts what the
    fetch needs (a file's version check and footer, a tar's index) and returns the fetch. So
    that work goes out only for units within the bytes kept ahead, not for every unit the
    reader was told of. `prepare()`, where given, starts that work alone: `ahead` calls it for
    the units in the next `max_bytes` past those kept ahead, so a unit's index or footer is in
    when its bytes' turn comes. `priority`: see `ReadAhead`."""

    make: Callable[[], Any]
    priority: tuple = ()
    prepare: Callable[[], None] | None = None  # only what the fetch needs (idempotent)


@dataclass(frozen=True)
class After:
    """A read-ahead task that needs another one's result (`future`: an index text for the piece
    ranges and the parse): queued only once that is done, so no thread sits waiting for it.
    `fn` reads the done future itself. `priority`: see `ReadAhead`.

    Unit fetches are not made so: a fetch waits for its ranges on its own thread and goes out
    the moment they are known. Queued behind other tasks instead, the 4-shard HTTP epoch took
    0.37-0.48 s against 0.24-0.27 (more fetched buffers landing at once, in fresh memory: the
    kernel zeroing fresh huge pages was a sixth of `perf`'s samples)."""

    future: Future | None
    fn: Callable[[], Any]
    priority: tuple = ()


class ReadAhead:
    """Fetches the next units' bytes on a few threads while the current unit is converted.

    `ahead(items)` is told the reader's upcoming units in order, as (keys, bytes, fetch): one
    fetch may serve several units (the row groups of one file, one request); a `Deferred` fetch
    is made when submitted. It keeps fetches in flight or done for the first of them up to
    `max_bytes` in all (at least one), and drops fetched units no longer ahead. `take(key)`
    hands a fetch's result to the reader (waiting for it if still in flight), or None: not
    fetched, or the fetch failed, in which case the reader reads the unit itself and its
    retries and errors apply as without read-ahead. `once(key, fetch)` runs a fetch that
    several unit fetches share (a file's footer) once, on the same threads; `fetch_of(key)`
    tells whether a unit's fetch is done (a run stops before one that is not,
    `read/parquet.py`).

    The threads take the task of the earliest unit first (`priority`, a tuple that starts with
    `order(file)`, the order in which the reader first named the file), whatever the order the
    tasks became ready in: the first unit's index, piece ranges and fetch go before the indexes
    of the units after it (told of 64 small shards, a reader once fetched 60 indexes before its
    first piece).
    """

    def __init__(self, max_bytes: int | None = None, threads: int = READ_AHEAD_THREADS):
        self.max_bytes = READ_AHEAD_BYTES if max_bytes is None else max_bytes
        self._threads = threads
        self._pool: _PriorityPool | None = None
        self._pending: dict = {}  # key -> (future, its share of the fetch's bytes)
        self._once: OrderedDict = OrderedDict()  # key -> future of a fetch made once (`once`)
        self._order: dict = {}  # file -> its rank in the order the reader named files

    def __contains__(self, key) -> bool:
        return key in self._pending

    def order(self, name) -> int:
        """The rank of file `name` in the order the reader first named it (priorities start with it)."""
        return self._order.setdefault(name, len(self._order))

    def _submit(self, fetch, priority: tuple = ()) -> Future:
        """Start `fetch` on the threads: a callable now, an `After` once its future is done;
        an `After`'s own priority, else `priority`, orders it among the waiting tasks."""
        if self._pool is None:
            self._pool = _PriorityPool(self._threads, "sparkfeed-ahead")
        if not isinstance(fetch, After):
            return self._pool.submit(priority, fetch)
        priority = fetch.priority or priority
        if fetch.future is None or fetch.future.done():
            return self._pool.submit(priority, fetch.fn)
        return _when_done(self._pool, priority, fetch.future, fetch.fn)

    def once(self, key, fetch, priority: tuple = ()) -> Future | None:
        """The future of `fetch`, started on the first call for `key` only: something several
        unit fetches need (a file's footer), fetched once and concurrently with the others.
        Not counted against `max_bytes` (small), the last `ONCE_KEPT` kept; None when off."""
        if self.max_bytes <= 0:
            return None
        if key not in self._once:
            self._once[key] = self._submit(fetch, priority)
            while len(self._once) > ONCE_KEPT:
                self._once.popitem(last=False)
        self._once.move_to_end(key)
        return self._once[key]

    def once_result(self, key):
        """The result of the `once` fetch for `key` (waiting for it), None if none or failed."""
        future = self._once.get(key)
        try:
            return None if future is None else future.result()
        except Exception:
            return None

    def fetch_of(self, key) -> Future | None:
        """The future of the fetch that holds `key` (several keys may share one), or None."""
        entry = self._pending.get(key)
        return None if entry is None else entry[0]

    def ahead(self, items) -> None:
        if self.max_bytes <= 0:
            return
        items = list(items)
        wanted = {key for keys, _, _ in items for key in keys}
        dropped = {self._pending.pop(k)[0] for k in [k for k in self._pending if k not in wanted]}
        for future in dropped - {f for f, _ in self._pending.values()}:
            future.cancel()
        held, beyond = sum(n for _, n in self._pending.values()), 0
        for keys, nbytes, fetch in items:
            keys = [k for k in keys if k not in self._pending]
            if not keys:
                continue
            if self._pending and held + nbytes > self.max_bytes:  # past the bytes kept ahead
                if not isinstance(fetch, Deferred) or fetch.prepare is None or beyond + nbytes > self.max_bytes:
                    break
                fetch.prepare()
                beyond += nbytes
                continue
            future = self._submit(fetch.make(), fetch.priority) if isinstance(fetch, Deferred) \
                else self._submit(fetch)
            for k in keys:
                self._pending[k] = (future, nbytes / len(keys))
            held += nbytes

    def take(self, key):
        entry = self._pending.pop(key, None)
        if entry is None:
            return None
        try:
            return entry[0].result()
        except Exception as exc:  # the reader's own read retries, or names the failure
            log.debug("read-ahead of %s failed (%s: %s); reading it in place", key,
                      type(exc).__name__, redact(exc))
            return None

    def close(self) -> None:
        for future in [f for f, _ in self._pending.values()] + list(self._once.values()):
            future.cancel()
        self._pending.clear()
        self._once.clear()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._order.clear()


class _PriorityPool:
    """Up to `threads` threads, started as tasks come, that run the waiting task of the lowest
    priority first (then the first submitted). `shutdown` cancels what waits and joins them."""

    def __init__(self, threads: int, name: str):
        self._threads, self._name = threads, name
        self._workers: list[threading.Thread] = []
        self._idle = 0
        self._heap: list = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._closed = False

    def submit(self, priority: tuple, fn: Callable[[], Any], future: Future | None = None) -> Future:
        future = Future() if future is None else future
        with self._cv:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            heapq.heappush(self._heap, (priority, next(self._seq), fn, future))
            if len(self._heap) > self._idle and len(self._workers) < self._threads:
                worker = threading.Thread(target=self._work, daemon=True,
                                          name=f"{self._name}_{len(self._workers)}")
                self._workers.append(worker)
                worker.start()
            self._cv.notify()
        return future

    def _work(self) -> None:
        while True:
            with self._cv:
                self._idle += 1
                while not self._heap and not self._closed:
                    self._cv.wait()
                self._idle -= 1
                if not self._heap:
                    return
                _, _, fn, future = heapq.heappop(self._heap)
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # noqa: BLE001 - handed to whoever takes the result
                    future.set_exception(exc)

    def shutdown(self) -> None:
        with self._cv:
            self._closed = True
            for *_, future in self._heap:
                future.cancel()
            self._heap.clear()
            self._cv.notify_all()
        for worker in self._workers:
            if worker is not threading.current_thread():
                worker.join()


def _when_done(pool: _PriorityPool, priority: tuple, upstream: Future, fn: Callable[[], Any]) -> Future:
    """A future of `fn()`, queued on `pool` when `upstream` is done; cancelled with it unrun, or
    when the pool has shut down by then (the reader closed)."""
    out: Future = Future()

    def queue(_done: Future) -> None:
        try:
            pool.submit(priority, fn, out)
        except RuntimeError:  # shut down: nobody will take it
            out.cancel()
    upstream.add_done_callback(queue)
    return out
