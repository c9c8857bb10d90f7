"""Where data are: URLs and paths to fsspec filesystems (Spark's schemes mapped, HTTP defaults),
the one rule for paths inside a dataset, and small whole-file reads and writes.

Local paths, file://, s3://, gs://, hdfs://, http(s):// and anything else fsspec knows. With
`remotefiles`, `readahead` and `httpranges`, the only modules that touch URLs; failures are
classified and retried in `retries`.
"""

from __future__ import annotations

import logging
import os
import posixpath
import random
import re
import urllib.parse
import weakref
from collections.abc import Mapping

import fsspec

from .errors import PathEscapeError, redact
from . import retries

_HADOOP_SCHEMES = {"s3a": "s3", "s3n": "s3"}


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


def check_relative(rel: str, dataset: str) -> str:
    """`rel` itself, or PathEscapeError naming the dataset when `path_problem` refuses it. Its
    %-escapes are characters of the name, under an http(s) dataset too: `join` escapes them, so
    a server never decodes "%2e%2e" to ".." (before, such names were refused, and with them
    Spark's own partition directories over HTTP: `ts=10%3A00` decoded starts with "ts=10:")."""
    problem = path_problem(rel)
    if problem is not None:
        raise PathEscapeError(
            f"dataset {dataset!r}: path {rel!r} could escape the dataset: it {problem}; manifest "
            "paths must be relative to the dataset root, without '..', absolute parts or URLs")
    return rel


# What a file name keeps as it is in an http(s) URL's path (RFC 3986's sub-delimiters, ":" and
# "@"); everything else, "%", "#", "?" and spaces among them, is %-escaped (`join`).
_URL_PATH_SAFE = "/!$&'()*+,;=:@~"


def join(root: str, rel: str, dataset: str) -> str:
    """`root/rel` after checking that `rel` stays inside the dataset. Under an http(s) root, `rel`
    (a file name, as the manifest records it) is %-escaped: a server decodes the URL's path, so
    Spark's own escapes in a partition directory (`ts=2024-01-01 10%3A00%3A00`) named another
    file, and a "#" or "?" cut the name short (each read as missing, or as the wrong file)."""
    rel = check_relative(rel, dataset)
    if is_http_url(root):
        rel = urllib.parse.quote(rel, safe=_URL_PATH_SAFE)
    return posixpath.join(root, rel)


def relative(root: str, path: str) -> str:
    """The manifest's name for `path`, a file `join` made under `root` (its escapes undone)."""
    rel = path[len(root):].lstrip("/")
    return urllib.parse.unquote(rel) if is_http_url(root) else rel


def exists(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """Whether `path` exists, transient failures retried: fsspec's own `exists` answers False
    to any error, so one HTTP 503 would read as "no such file or directory"."""
    try:
        retries.with_retries(lambda: fs.info(path), f"looking up {path}")
        return True
    except FileNotFoundError:
        return False


def read_bytes(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    """The whole file, with retries."""
    return retries.with_retries(lambda: fs.cat_file(path), f"reading {path}")


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



def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """True for the local filesystem (no request latency: no read-ahead, no coalescing)."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")
