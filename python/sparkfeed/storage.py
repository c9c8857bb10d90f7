"""Storage through fsspec: the only module that touches URLs.

Local paths, file://, s3://, gs://, hdfs://, http(s):// and anything else fsspec knows. Spark's
Hadoop schemes (s3a://, s3n://) are mapped to fsspec's. Reads retry transient failures with
exponential backoff and give up with an error that names what failed.
"""

from __future__ import annotations

import logging
import posixpath
import random
import time
from collections.abc import Callable
from typing import TypeVar

import fsspec

from .errors import PathEscapeError

log = logging.getLogger(__name__)
T = TypeVar("T")

_HADOOP_SCHEMES = {"s3a": "s3", "s3n": "s3"}
# Errors that mean "this will not get better by retrying".
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def normalise_url(path: str) -> str:
    """Map Spark/Hadoop URL schemes to fsspec's and drop a trailing slash."""
    scheme, sep, rest = str(path).partition("://")
    if sep and scheme in _HADOOP_SCHEMES:
        path = f"{_HADOOP_SCHEMES[scheme]}://{rest}"
    return str(path).rstrip("/") or "/"


# HTTP reads that stall: give up on a silent socket after this long (then retry), instead of
# aiohttp's 5-minute default. Override with storage_options={"client_kwargs": {"timeout": ...}}.
HTTP_SOCK_READ_S = 30.0


def _with_defaults(url: str, options: dict) -> dict:
    """Storage options with sparkfeed's defaults for the URL's protocol (user values win)."""
    if url.startswith(("http://", "https://")) and "timeout" not in options.get("client_kwargs", {}):
        import aiohttp

        client = dict(options.get("client_kwargs", {}))
        client["timeout"] = aiohttp.ClientTimeout(total=None, sock_connect=HTTP_SOCK_READ_S,
                                                  sock_read=HTTP_SOCK_READ_S)
        options = {**options, "client_kwargs": client}
    return options


def resolve(path: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, root path inside it) for a dataset path or URL."""
    url = normalise_url(path)
    fs, root = fsspec.core.url_to_fs(url, **_with_defaults(url, dict(storage_options or {})))
    return fs, root.rstrip("/") or "/"


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
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in rel):
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


def check_relative(rel: str, dataset: str) -> str:
    """`rel` itself, or PathEscapeError naming the dataset when `path_problem` refuses it."""
    problem = path_problem(rel)
    if problem is not None:
        raise PathEscapeError(
            f"dataset {dataset!r}: path {rel!r} could escape the dataset: it {problem}; manifest "
            "paths must be relative to the dataset root, without '..', absolute parts or URLs")
    return rel


def join(root: str, rel: str, dataset: str) -> str:
    """`root/rel` after checking that `rel` stays inside the dataset."""
    return posixpath.join(root, check_relative(rel, dataset))


def with_retries(fn: Callable[[], T], what: str, *, attempts: int = 8, base_delay: float = 0.2,
                 max_delay: float = 5.0) -> T:
    """Call `fn`, retrying transient I/O errors with jittered exponential backoff.

    Permanent errors (missing file, permission) raise at once; after `attempts` tries the last
    error propagates, so a permanent outage ends in an error, never a hang.
    """
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                if isinstance(exc, FileNotFoundError) and is_transient(exc):
                    raise OSError(f"{what}: {exc.__cause__}") from exc  # not a missing file
                raise
            delay = min(max_delay, base_delay * 2 ** (attempt - 1)) * (0.5 + random.random())
            log.warning("%s failed (%s: %s); retry %d/%d in %.2fs", what, type(exc).__name__, exc,
                        attempt, attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


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
