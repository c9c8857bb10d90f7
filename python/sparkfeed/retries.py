"""Storage failures: which are transient (retried with jittered backoff by `with_retries`), which
are corrupt bytes (`parsing`), and the OSError each storage client's own error means, worded with
no URL credentials, so that a permanent outage ends in an error that names what failed."""

from __future__ import annotations

import contextlib
import email.utils
import errno
import logging
import random
import ssl
import time
from collections.abc import Callable
from typing import TypeVar

from . import httpranges
from .errors import redact

log = logging.getLogger(__name__)
T = TypeVar("T")


class CorruptData(OSError):
    """Bytes that were read but do not parse (a corrupt Parquet footer: pyarrow's "Couldn't
    deserialize thrift"). An OSError, as pyarrow raises it, so every handler of those still
    catches it; but never transient: a retry reads the same bytes (`parsing`)."""


# Errors that mean "this will not get better by retrying". A certificate that fails
# verification is an OSError (aiohttp's certificate error is a subclass), but no retry cures it.
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
              ssl.SSLCertVerificationError, CorruptData)



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
    if precondition_failed(exc):  # a file replaced since: retrying would not bring it back
        return False
    if isinstance(exc, _PERMANENT) or (isinstance(exc, OSError) and exc.errno == errno.EINVAL):
        return False  # (EINVAL: s3fs's word for a request S3 refused as invalid, a range past the end)
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
        return _timed_out(exc, what)
    module = type(exc).__module__.split(".")[0]
    status = getattr(exc, "status", None)
    if (module == "aiohttp" or isinstance(exc, httpranges.HTTPStatusError)) and isinstance(status, int):
        if status == 412:  # a read conditional on the file's indexed ETag (`httpranges.if_match`)
            return httpranges.VersionChanged(what)
        kind = {404: FileNotFoundError, 401: PermissionError, 403: PermissionError}.get(
            status, ConnectionError if is_transient(exc) else OSError)
        return kind(f"{what}: HTTP {status} {getattr(exc, 'message', '')}".rstrip())
    if module == "aiohttp" and not isinstance(exc, OSError):  # a dropped connection, a cut body
        return ConnectionError(f"{what}: {type(exc).__name__}: {exc}")
    if precondition_failed(exc):  # s3fs's EINVAL for a GetObject conditional on the ETag
        return httpranges.VersionChanged(what)
    if module != "botocore":
        return exc
    from botocore import exceptions as boto

    if isinstance(exc, (boto.NoCredentialsError, boto.PartialCredentialsError,
                        boto.CredentialRetrievalError)):
        return PermissionError(f"{what}: {exc}; {_NO_CREDENTIALS}")
    # s3fs's time-outs: no TimeoutError (they were worded as a ConnectionError, "kept failing")
    if isinstance(exc, (boto.ReadTimeoutError, boto.ConnectTimeoutError)):
        return _timed_out(exc, what)
    if isinstance(exc, (boto.ConnectionError, boto.HTTPClientError)):
        return ConnectionError(f"{what}: {exc}")
    return OSError(f"{what}: {type(exc).__name__}: {exc}")


def precondition_failed(exc: BaseException) -> bool:
    """Whether `exc` (or the error it was raised from) is S3's refusal of a conditional request
    (botocore's PreconditionFailed: an object no longer of the ETag asked for; s3fs's own file
    checks its ETag so, and raises FileExpired, an OSError it once retried 7 times)."""
    for at in (exc, exc.__cause__):
        if type(at).__name__ == "FileExpired":
            return True
        response = getattr(at, "response", None)
        if isinstance(response, dict) and response.get("Error", {}).get("Code") == "PreconditionFailed":
            return True
    return False


def _timed_out(exc: BaseException, what: str) -> TimeoutError:
    return TimeoutError(f"{what}: no answer within the storage client's time-out "
                        f"({type(exc).__name__}: {exc or 'timed out'})")


def failure_words(exc: BaseException) -> str | None:
    """What storage did, worded for an error message, for a failure `with_retries` gave up on:
    it refused access, or it kept failing; None for anything else (a missing file is worded by
    the caller, who knows which file it expected; corrupt bytes by the format's reader)."""
    if isinstance(exc, PermissionError):
        return f"storage refused access ({exc}); check the credentials in storage_options"
    if isinstance(exc, httpranges.VersionChanged):
        return (f"{exc}; its rows are not delivered as a mix of two versions: run `sparkfeed index "
                "... --overwrite` for the new data")
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



MAX_RETRY_AFTER_S = 60.0  # the longest wait a server's Retry-After gets before a retry


def retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked to wait before the next request (the Retry-After header of a 429
    or 503, in seconds or as an HTTP date) on `exc` or an error it was raised from; None where
    none was asked."""
    at, seen = exc, set()
    while at is not None and id(at) not in seen:
        seen.add(id(at))
        headers = getattr(at, "headers", None)
        value = headers.get("Retry-After") if hasattr(headers, "get") else None
        if value:
            return _seconds(str(value).strip())
        at = at.__cause__ or at.__context__
    return None


def _seconds(value: str) -> float | None:
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # not a Retry-After value: the usual backoff
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def with_retries(fn: Callable[[], T], what: str, *, attempts: int = 8, base_delay: float = 0.2,
                 max_delay: float = 5.0) -> T:
    """Call `fn`, retrying transient I/O errors with jittered exponential backoff, or after the
    wait a server asked for (`retry_after`, up to `MAX_RETRY_AFTER_S`), whichever is longer.

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
            asked = retry_after(exc)
            if asked is not None and asked > delay:
                delay = min(asked, MAX_RETRY_AFTER_S)
            log.warning("%s failed (%s: %s); retry %d/%d in %.2fs%s", redact(what), type(exc).__name__,
                        redact(exc), attempt, attempts - 1, delay,
                        "" if asked is None else " (the server asked for %gs)" % asked)
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
