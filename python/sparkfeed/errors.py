"""One error family for everything sparkfeed raises on purpose.

Every error that concerns data names the dataset and, where known, the shard and the row group
or tar offset, so a user can find the bad bytes without a debugger.
"""

from __future__ import annotations

import re

__all__ = [
    "SparkfeedError",
    "ManifestError",
    "ShardReadError",
    "CorruptSampleError",
    "PathEscapeError",
    "WorkerError",
]


def _where(dataset: str | None, shard: str | None, row_group: int | None, offset: int | None) -> str:
    """A short 'where' phrase: dataset, shard, then row group or tar offset."""
    parts = []
    if dataset:
        parts.append(f"dataset {dataset!r}")
    if shard:
        parts.append(f"shard {shard!r}")
    if row_group is not None:
        parts.append(f"row group {row_group}")
    if offset is not None:
        parts.append(f"tar offset {offset}")
    return ", ".join(parts)


# The user part of a URL (`https://user:password@host/`, `https://token@host/`): credentials
_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@'\"]+@")


def redact(text: object) -> str:
    """`text` (as a string) with the credentials of any URL in it replaced by `***`
    (`http://***@host/ds`): a dataset URL may carry them, and messages and logs name the
    dataset and its files."""
    return _USERINFO.sub(r"\1***@", str(text))


class SparkfeedError(Exception):
    """Base of every error sparkfeed raises on purpose. Its message never shows the credentials
    of a URL (`redact`), whatever was put in it."""

    def __init__(self, *args):
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class ManifestError(SparkfeedError):
    """The manifest is missing, unreadable, of an unknown version, or inconsistent."""

    def __init__(self, message: str, *, dataset: str | None = None):
        self.dataset = dataset
        prefix = f"{_where(dataset, None, None, None)}: " if dataset else ""
        super().__init__(prefix + message)


class ShardReadError(SparkfeedError):
    """A shard could not be read: missing, truncated, corrupt, or hostile."""

    def __init__(self, message: str, *, dataset: str | None = None, shard: str | None = None,
                 row_group: int | None = None, offset: int | None = None):
        self.dataset, self.shard, self.row_group, self.offset = dataset, shard, row_group, offset
        where = _where(dataset, shard, row_group, offset)
        super().__init__(f"{where}: {message}" if where else message)


class CorruptSampleError(ShardReadError):
    """One sample could not be decoded (for example an undecodable or oversized image)."""

    def __init__(self, message: str, *, dataset: str | None = None, shard: str | None = None,
                 row_group: int | None = None, offset: int | None = None, key: str | None = None):
        self.key = key
        if key is not None:
            message = f"sample {key!r}: {message}"
        super().__init__(message, dataset=dataset, shard=shard, row_group=row_group, offset=offset)


class PathEscapeError(SparkfeedError):
    """A manifest path or tar member name tries to leave the dataset (absolute, `..`, link)."""


class WorkerError(SparkfeedError):
    """A loader worker died or failed; the message keeps where it happened."""
