"""Read-ahead byte ranges over plain HTTP(S) with the standard library's client, each body
received straight into one buffer from pyarrow's memory pool (`remotefiles.fetch_ranges`).

Why not fsspec's aiohttp session for these: every body then passes through fsspec's one
event-loop thread, which copies each received chunk twice (asyncio's receive buffer, the
parser's body chunk) and runs Python per chunk under the interpreter lock. On 2 cores that
thread was the remote read's bottleneck: 0.18-0.26 s of CPU per 160 MB epoch, longer than a
whole local epoch (docs/deploy.md). Here the read-ahead thread that asked for a range receives
its body itself, with `recv_into` into the buffer: one copy (the kernel's), the lock released.

Used only where it sends the request fsspec's client would: http(s) URLs without credentials in
them, request options that are at most `headers`, client options that are at most the time-out
and read buffer (sparkfeed's defaults, `storage._with_defaults`) and fsspec's own session
factory. Anything else (auth, proxies, SSL settings, a custom session) stays on fsspec's session
(`remotefiles._http_ranges`), as does a range the server answers with a redirect or a
Content-Encoding such as gzip (and from then on every range for that server).
`SPARKFEED_HTTP_DIRECT=0` in the environment turns this path off.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import ssl
import threading
import urllib.parse
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from . import recvbuffers

log = logging.getLogger(__name__)

DIRECT = os.environ.get("SPARKFEED_HTTP_DIRECT", "1") != "0"
IDLE_PER_HOST = 32  # keep-alive connections kept per server between requests
MAX_CONCURRENT = 8  # requests in flight for one call with several ranges

_REQUEST_OPTIONS = {"headers"}
_CLIENT_OPTIONS = {"timeout", "read_bufsize"}
_REDIRECTS = (301, 302, 303, 307, 308)

NO_RANGES = ("{path}: asked for bytes {a}-{b}, got {n} bytes; the server does not appear to "
             "support range requests")


class NeedsFsspec(Exception):
    """A request for fsspec's own client: the server redirected it (fsspec's client follows
    redirects), sent it with a Content-Encoding (fsspec's client decodes it; this one would
    hand over the encoded bytes as the file's), or its URL carries credentials."""


class VersionChanged(Exception):
    """A conditional range request (`If-Match` with the ETag the file was indexed with) that the
    server refused (412): the file was replaced since, and its bytes would mix two versions."""

    def __init__(self, path: str, etag: str | None = None):
        was = f" {etag!r}" if etag else ""
        super().__init__(f"{path}: HTTP 412, the file was replaced during the read (its ETag is no "
                         f"longer{was} the one it was indexed and first checked with)")


def if_match(etag: str | None) -> dict:
    """The header that makes a range request conditional on the file's ETag (none for a weak
    one, which If-Match never matches, or none known)."""
    return {} if not etag or etag.startswith("W/") else {"If-Match": f'"{etag}"'}


class HTTPStatusError(Exception):
    """An HTTP answer other than the range asked for; `status` says whether a retry may cure it
    (`retries.is_transient`: 5xx and 429 do)."""

    def __init__(self, status: int, message: str, reason: str = "", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message = status, reason  # `message`: the reason, as aiohttp's errors
        self.headers = headers or {}  # (as aiohttp's: `retries.retry_after` reads Retry-After)


def usable(fs) -> bool:
    """True when `fs` (fsspec's HTTPFileSystem) sends nothing this client would not: no request
    option but headers, no client option but sparkfeed's defaults, fsspec's session factory."""
    if not DIRECT:
        return False
    request, client = getattr(fs, "kwargs", None), getattr(fs, "client_kwargs", None)
    if not isinstance(request, dict) or not isinstance(client, dict):
        return False
    if set(request) - _REQUEST_OPTIONS or set(client) - _CLIENT_OPTIONS:
        return False
    headers = request.get("headers", {})
    if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        return False
    from fsspec.implementations.http import get_client

    return getattr(fs, "get_client", None) is get_client


class SizeMismatch(ValueError):
    """A file whose size storage reports (or shows) is not the manifest's `expected`: it was
    truncated or replaced after the write. `size`: its size, or None where only `longer` (or
    not) is known. A reader names it with the dataset and shard at once."""

    def __init__(self, path: str, expected: int, size: int | None, longer: bool = False):
        self.path, self.expected, self.size = path, expected, size
        self.longer = longer if size is None else size > expected
        said = f"{size} bytes" if size is not None else f"{'more' if longer else 'fewer'} than {expected} bytes"
        super().__init__(f"{path}: the file is {said}, not {expected} (changed after the manifest was written)")

    def words(self) -> str:
        """What is wrong, as a reader says it after the dataset and shard."""
        if self.size is None:
            said = f"{'longer' if self.longer else 'shorter'} than the {self.expected} bytes the manifest says"
        else:
            said = f"{self.size} bytes but the manifest says {self.expected}"
        return f"the file is {said}: truncated or replaced after the write"

    def offset(self) -> int | None:
        """Where the file and the manifest part: the end of the shorter, where known."""
        return self.expected if self.size is None and self.longer else (
            None if self.size is None else min(self.size, self.expected))


def answer_error(path: str, status: int, content_range: str, length: int | None, start: int,
                 end: int, size: int | None) -> ValueError | None:
    """Why a 200/206 answer to a request for bytes [start, end) cannot be used, or None: a whole
    file where a range not at its start was asked (a server that ignores Range), a range other
    than the one asked (less of it than the file holds too: a server's own limit, never taken
    for a shorter file), a body longer than asked, or a file size other than the manifest's
    `size` (`SizeMismatch`: the file changed after the write). Both HTTP clients check their
    answers here."""
    if status == 200:
        if start > 0 or (length is not None and length > end - start):
            return ValueError(NO_RANGES.format(path=path, a=start, b=end - 1, n=length))
        total = "" if length is None else str(length)
    else:
        got = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", content_range.strip())
        short = got is not None and got.group(3).isdigit() and int(got.group(2)) + 1 < min(end, int(got.group(3)))
        if got is None or int(got.group(1)) != start or short or (length is not None and length > end - start):
            return ValueError(f"{path}: asked for bytes {start}-{end - 1}, the server answered "
                              f"{content_range or 'without a Content-Range'} ({length} bytes)")
        total = got.group(3)
    if size is not None and total.isdigit() and int(total) != size:
        return SizeMismatch(path, size, int(total))
    return None


def fetch(fs, path: str, starts: list[int], ends: list[int], size: int | None,
          default_timeout: float, etag: str | None = None) -> list[memoryview]:
    """Bytes [start, end) of the file at URL `path` for each range (a shorter result where the
    file ends first; the caller reports it), several ranges concurrently. Raises NeedsFsspec
    when the server redirects, FileNotFoundError, PermissionError, HTTPStatusError,
    ConnectionError (a connection cut mid-body) or ValueError (`answer_error`: a server that
    ignored the range or answered another one, a file whose size is not `size`), VersionChanged
    (with `etag`: the file is no longer that version)."""
    url = str(fs.encode_url(path))
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.username or parts.password:
        raise NeedsFsspec(f"{path}: not a plain http(s) URL")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    key = (parts.scheme, parts.hostname, parts.port, _timeout(fs, default_timeout))
    if key[:3] in _REDIRECTING:
        raise NeedsFsspec(f"{path}: its server redirects or encodes range answers")
    headers = {**fs.kwargs.get("headers", {}), **if_match(etag)}

    def one(a: int, b: int) -> memoryview:
        try:
            return _get_range(key, target, headers, path, a, b, size)
        except NeedsFsspec:
            _REDIRECTING.add(key[:3])  # its next ranges go to fsspec's session at once
            raise

    if len(starts) == 1:
        return [one(starts[0], ends[0])]
    with ThreadPoolExecutor(min(MAX_CONCURRENT, len(starts)), thread_name_prefix="sparkfeed-http") as pool:
        return list(pool.map(one, starts, ends))


def _timeout(fs, default: float) -> float:
    """Seconds a socket may stay silent: aiohttp's `sock_read` (or `total`) time-out from the
    client options, as fsspec's session would use it."""
    timeout = fs.client_kwargs.get("timeout")
    for name in ("sock_read", "total"):
        value = getattr(timeout, name, None)
        if value:
            return float(value)
    return default


def _get_range(key: tuple, target: str, headers: dict, path: str, start: int, end: int,
               size: int | None) -> memoryview:
    """One range on a pooled keep-alive connection. A connection the server closed while it was
    idle fails before any answer: that request is sent once more on a new connection."""
    request_headers = {**headers, "Range": f"bytes={start}-{end - 1}"}
    for attempt in (1, 2):
        conn, reused = _POOL.take(key)
        try:
            conn.request("GET", target, headers=request_headers)
            response = conn.getresponse()
        except (ConnectionError, http.client.BadStatusLine) as exc:  # RemoteDisconnected is both
            conn.close()
            if reused and attempt == 1:
                log.debug("%s: idle connection closed by the server (%s); sending again", path, exc)
                continue
            raise ConnectionError(f"{path}: GET bytes {start}-{end - 1}: {exc}") from exc
        except http.client.HTTPException as exc:
            conn.close()
            raise ConnectionError(f"{path}: GET bytes {start}-{end - 1}: {exc!r}") from exc
        except BaseException:
            conn.close()
            raise
        try:
            view = _receive(response, path, start, end, size, headers.get("If-Match"))
        except BaseException:
            conn.close()
            raise
        _POOL.give(key, conn)
        return view
    raise AssertionError("unreachable")  # pragma: no cover


def _receive(response: http.client.HTTPResponse, path: str, start: int, end: int,
             size: int | None, etag: str | None = None) -> memoryview:
    """The body of a range answer, checked (status, range honoured, file size, `etag`: the
    If-Match it was asked with) and read into a buffer from pyarrow's pool."""
    _check_status(response, path, start, end, etag)
    problem = answer_error(path, response.status, response.getheader("Content-Range", ""),
                           response.length, start, end, size)  # length: None when chunked
    if problem is not None:
        raise problem
    view, held = recvbuffers.take(end - start)
    at = 0
    while at < len(view):
        n = response.readinto(view[at:])
        if not n:
            break
        at += n
    if response.length:  # bytes announced and never sent: the connection was cut
        raise ConnectionError(f"{path}: the connection closed after {at} of {at + response.length} "
                              f"bytes (range {start}-{end - 1})")
    if not response.isclosed() and response.read(1):  # a chunked body longer than asked
        raise ValueError(NO_RANGES.format(path=path, a=start, b=end - 1, n=f"more than {at}"))
    return held[:at]


def _check_status(response: http.client.HTTPResponse, path: str, start: int, end: int,
                  etag: str | None = None) -> None:
    status, what = response.status, f"{path}: HTTP {response.status} {response.reason} for bytes {start}-{end - 1}"
    if status in (200, 206):
        encoding = response.getheader("Content-Encoding", "identity").strip().lower()
        if encoding not in ("identity", ""):  # (this client asks for identity): fsspec's decodes
            raise NeedsFsspec(f"{what}: a body in Content-Encoding {encoding!r}")
        return
    if status in _REDIRECTS:
        raise NeedsFsspec(what)
    if status == 404:
        raise FileNotFoundError(path)
    if status in (401, 403):
        raise PermissionError(what)
    if status == 412 and etag:
        raise VersionChanged(path, etag.strip('"'))
    asked = response.getheader("Retry-After")
    raise HTTPStatusError(status, what, response.reason, {"Retry-After": asked} if asked else None)


class _Pool:
    """Idle keep-alive connections per (scheme, host, port, time-out), shared by all readers."""

    def __init__(self):
        self._idle: dict[tuple, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._ssl: ssl.SSLContext | None = None

    def take(self, key: tuple) -> tuple[http.client.HTTPConnection, bool]:
        """(connection, whether it served a request before)."""
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop(), True
        scheme, host, port, timeout = key
        if scheme == "http":
            return http.client.HTTPConnection(host, port, timeout=timeout), False
        if self._ssl is None:
            self._ssl = ssl.create_default_context()  # the system's CAs, as aiohttp's default
        return http.client.HTTPSConnection(host, port, timeout=timeout, context=self._ssl), False

    def give(self, key: tuple, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < IDLE_PER_HOST:
                idle.append(conn)
                return
        conn.close()

    def forget(self) -> None:
        """In a forked child: drop the parent's connections without closing them (their sockets
        stay the parent's; closing the child's copy of the descriptor would not end them, but
        sending on them would mix two processes' requests on one connection)."""
        self._idle = {}
        self._lock = threading.Lock()


_POOL = _Pool()
_REDIRECTING: set[tuple] = set()  # (scheme, host, port) of servers that redirected or encoded a range
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL.forget)
