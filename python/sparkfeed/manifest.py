"""The manifest `_sparkfeed.json`: the one contract between writer and loader.

Frozen dataclasses for what it holds; `read_manifest` parses and validates (version, paths that
cannot escape, counts that add up); `write_manifest` writes it last and atomically. A reader trusts
the manifest, never a directory listing.
"""

from __future__ import annotations

import contextlib
import gc
import json
import posixpath
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from . import binstats, storage
from .manifestdoc import _drop_none, _shard_to_dict
from .errors import ManifestError, PathEscapeError

__all__ = ["Manifest", "Shard", "RowGroup", "Column", "ColumnStats", "read_manifest",
           "parse_manifest", "write_manifest", "MANIFEST_NAME", "MANIFEST_VERSION"]

MANIFEST_NAME = "_sparkfeed.json"
MANIFEST_VERSION = 1
FORMATS = ("parquet", "webdataset")
_HOW_TO_MAKE = ("sparkfeed datasets are made with sparkfeed.write(df, path, ...) or "
                "df.write.format('webdataset').save(path), which write the manifest last")


@dataclass(frozen=True)
class Column:
    """One column: name, Arrow type string, what a binary column holds, and (tar) its member.

    `unsupported` says why a column cannot become a tensor (a struct, map, decimal or nested
    list in data that sparkfeed did not write; see `sparkfeed.index`): it stays in the manifest
    so a user sees it, is left out of the default columns, and selecting it is an error.
    """

    name: str
    type: str
    codec: str | None = None
    member: str | None = None
    unsupported: str | None = None


@dataclass(frozen=True)
class ColumnStats:
    """Min, max and null count of one column in a shard or row group (None when unknown)."""

    min: object = None
    max: object = None
    null_count: int | None = None


@dataclass(frozen=True)
class RowGroup:
    """A Parquet row group: its sample count and column statistics."""

    num_samples: int
    stats: Mapping[str, ColumnStats] = field(default_factory=dict)


@dataclass(frozen=True)
class Shard:
    """One data file of the dataset, with its counts and statistics."""

    path: str
    num_samples: int
    num_bytes: int
    stats: Mapping[str, ColumnStats] = field(default_factory=dict)
    row_groups: tuple[RowGroup, ...] | None = None
    members: tuple[str, ...] | None = None
    index: str | None = None
    # Data sparkfeed did not write (`sparkfeed.index`): the file's version when it was indexed
    # (a changed file is a ShardReadError, never wrong rows) and its Hive/Delta partition values.
    mtime: float | None = None
    etag: str | None = None
    partition: Mapping[str, object] | None = None


@dataclass(frozen=True)
class Manifest:
    """A whole dataset: format, schema, counts, shards. `root` is where it was read from."""

    format: str
    schema: tuple[Column, ...]
    num_samples: int
    num_bytes: int
    shards: tuple[Shard, ...]
    created_by: Mapping[str, str] = field(default_factory=dict)
    root: str = ""
    # Where the data lives when the manifest is kept apart from it (`index(..., manifest=URL)`),
    # stored as "root" in the document; None: beside the manifest.
    data_root: str | None = None

    def column(self, name: str) -> Column:
        """The column called `name`, or a ManifestError listing the columns there are."""
        for col in self.schema:
            if col.name == name:
                return col
        raise ManifestError(f"no column {name!r}; columns are {self.column_names}", dataset=self.root)

    @property
    def column_names(self) -> list[str]:
        """The columns a loader can deliver (unsupported ones are left out)."""
        return [c.name for c in self.schema if c.unsupported is None]

    def check_selectable(self, columns, argument: str = "columns") -> None:
        """A ValueError naming the first unsupported column in `columns` (and the way out);
        `argument` names what selected it (`columns`, or `filter`)."""
        for name in columns or ():
            col = next((c for c in self.schema if c.name == name), None)
            if col is not None and col.unsupported is not None:
                way_out = (f"leave it out with columns={self.column_names}" if argument == "columns"
                           else f"filter on other columns ({self.column_names})")
                raise ValueError(
                    f"`{argument}` names {name!r} of dataset {self.root!r}, a {col.unsupported} "
                    f"column ({col.type}) that cannot become a tensor; {way_out}")

    def to_dict(self) -> dict:
        """The JSON document, as written to `_sparkfeed.json`."""
        root = {} if self.data_root is None else {"root": self.data_root}
        return {
            "sparkfeed_manifest": MANIFEST_VERSION,
            "format": self.format,
            "created_by": dict(self.created_by),
            **root,
            "schema": [_drop_none(asdict(c)) for c in self.schema],
            "num_samples": self.num_samples,
            "num_bytes": self.num_bytes,
            "shards": [_shard_to_dict(s) for s in self.shards],
        }

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)


# ---------------------------------------------------------------- parsing and validation

def _need(cond: bool, message: str, dataset: str) -> None:
    if not cond:
        raise ManifestError(message, dataset=dataset)


# Counts past int64 are no file's (Parquet counts rows in int64) and would fail far from here, in
# numpy's arrays of counts ("Python int too large to convert to C long").
_COUNT_LIMIT = 2**63


def _is_count(value) -> bool:
    return type(value) is int and 0 <= value < _COUNT_LIMIT  # noqa: E721 - bool is not a count


def _count(value, what: str, dataset: str) -> int:
    if not _is_count(value):
        raise ManifestError(f"{what} should be a non-negative integer below 2**63, but got "
                            f"{_short(value)}", dataset=dataset)
    return value


def _short(value) -> str:
    """`repr(value)`, cut short: a hostile manifest's value may be megabytes long."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def _valid_column_stats(s) -> bool:
    return isinstance(s, dict) and (s.get("null_count") is None or _is_count(s["null_count"]))


def _parse_stats(raw, what, dataset: str) -> dict[str, ColumnStats]:
    """Column stats; `what` names the place (a string, or a callable making it: the message is
    only built when something is wrong, since a manifest holds thousands of these)."""
    if isinstance(raw, dict):
        out = {}
        for name, s in raw.items():  # one pass: a manifest holds thousands of these
            if not _valid_column_stats(s):
                break
            out[name] = ColumnStats(s.get("min"), s.get("max"), s.get("null_count")) if not (
                binstats.KEYS[0] in s or binstats.KEYS[1] in s) else ColumnStats(*binstats.bounds_from_json(s), s.get("null_count"))
        else:
            return out
    place = what() if callable(what) else what
    _need(isinstance(raw, dict), f"{place}: stats should be an object, but got {type(raw).__name__}", dataset)
    name, bad = next((n, s) for n, s in raw.items() if not _valid_column_stats(s))
    _need(isinstance(bad, dict), f"{place}: stats of {name!r} should be an object", dataset)
    raise ManifestError(f"{place}: null_count of {name!r} should be a non-negative integer below 2**63, "
                        f"but got {_short(bad['null_count'])}", dataset=dataset)


def _parse_row_group(rg, shard: str, i: int, dataset: str) -> RowGroup:
    n = rg.get("num_samples") if isinstance(rg, dict) else None
    if not _is_count(n):
        _count(n, f"shard {shard!r} row group {i}: num_samples", dataset)
    return RowGroup(n, _parse_stats(rg.get("stats", {}), lambda: f"shard {shard!r} row group {i}", dataset))


def _parse_row_groups(raw, shard: str, num_samples: int, dataset: str) -> tuple[RowGroup, ...]:
    _need(isinstance(raw, list), f"shard {shard!r}: row_groups should be a list", dataset)
    groups = tuple(_parse_row_group(rg, shard, i, dataset) for i, rg in enumerate(raw))
    total = sum(rg.num_samples for rg in groups)
    _need(total == num_samples, f"shard {shard!r}: row groups hold {total} samples but the shard "
          f"says num_samples={num_samples}; the manifest was altered or is corrupt", dataset)
    return groups


def _parse_shard(raw, i: int, dataset: str) -> Shard:
    _need(isinstance(raw, dict), f"shard {i} should be an object", dataset)
    path = raw.get("path")
    try:
        storage.check_relative(path, dataset)
    except PathEscapeError as exc:
        raise PathEscapeError(f"{exc} (manifest shard {i})") from None
    n = _count(raw.get("num_samples"), f"shard {path!r}: num_samples", dataset)
    rgs = raw.get("row_groups")
    members = raw.get("members")
    _need(members is None or (isinstance(members, list) and all(isinstance(m, str) for m in members)),
          f"shard {path!r}: members should be a list of extensions", dataset)
    index = raw.get("index")
    if index is not None:
        storage.check_relative(index, dataset)
    mtime, etag, part = raw.get("mtime"), raw.get("etag"), raw.get("partition")
    _need(mtime is None or (isinstance(mtime, (int, float)) and not isinstance(mtime, bool)),
          f"shard {path!r}: mtime should be a number, but got {mtime!r}", dataset)
    _need(etag is None or isinstance(etag, str), f"shard {path!r}: etag should be a string", dataset)
    _need(part is None or isinstance(part, dict), f"shard {path!r}: partition should be an object", dataset)
    return Shard(path=path, num_samples=n,
                 num_bytes=_count(raw.get("num_bytes"), f"shard {path!r}: num_bytes", dataset),
                 stats=_parse_stats(raw.get("stats", {}), f"shard {path!r}", dataset),
                 row_groups=None if rgs is None else _parse_row_groups(rgs, path, n, dataset),
                 members=None if members is None else tuple(members), index=index,
                 mtime=mtime, etag=etag, partition=part)


def _unsupported_kind(type_string: str) -> str | None:
    """Why a column of this type cannot become a tensor (None: it can), for manifests whose
    writer does not say: the JVM writer keeps decimals in `.json`, which a filter may read."""
    from .index.types import unsupported_kind  # here: index.types needs filters, which needs this module

    return unsupported_kind(type_string)


def _parse_schema(raw, dataset: str) -> tuple[Column, ...]:
    _need(isinstance(raw, list) and raw, "schema should be a non-empty list of columns", dataset)
    cols = []
    for i, c in enumerate(raw):
        _need(isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("type"), str),
              f"schema column {i} should have a string name and type, but got {c!r}", dataset)
        _need(c.get("unsupported") is None or isinstance(c["unsupported"], str),
              f"schema column {c['name']!r}: unsupported should be a string", dataset)
        cols.append(Column(c["name"], c["type"], c.get("codec"), c.get("member"),
                           c.get("unsupported") or _unsupported_kind(c["type"])))
    names = [c.name for c in cols]
    _need(len(set(names)) == len(names), f"schema has duplicate column names: {names}", dataset)
    return tuple(cols)


def parse_manifest(doc: str | bytes | dict, dataset: str = "") -> Manifest:
    """Parse and validate a manifest document; every problem is a ManifestError naming the dataset."""
    with collection_paused():
        return _parse_manifest(doc, dataset)


@contextlib.contextmanager
def collection_paused():
    """Python's cyclic garbage collector off while a manifest becomes objects (or a plan is made
    from one): the JSON of 10,000 shards makes about a million, none cyclic, and the full
    collections they set off (three of 0.12-0.18 s each) took more than the parse (0.45 s with
    them, 0.20 s without)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _parse_manifest(doc: str | bytes | dict, dataset: str) -> Manifest:
    if not isinstance(doc, dict):
        try:
            doc = json.loads(doc)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{MANIFEST_NAME} is not valid JSON ({exc})", dataset=dataset) from exc
        except RecursionError:  # arrays or objects nested thousands deep: no manifest is
            raise ManifestError(f"{MANIFEST_NAME} nests arrays or objects too deeply to be a manifest "
                                "(it is corrupt or was not written by sparkfeed)", dataset=dataset) from None
    _need(isinstance(doc, dict), f"{MANIFEST_NAME} should hold a JSON object", dataset)
    _need("sparkfeed_manifest" in doc, f"{MANIFEST_NAME} is not a sparkfeed manifest (it has no "
          f"'sparkfeed_manifest' version; its keys: {sorted(doc)[:8]}): write the data with "
          "sparkfeed.write, or index it with `sparkfeed index`", dataset)
    version = doc.get("sparkfeed_manifest")
    # (not `version == 1` alone: `true` and `1.0` are equal to 1 in Python)
    _need(type(version) is int and version == MANIFEST_VERSION,  # noqa: E721
          f"unknown manifest version {_short(version)}; this sparkfeed reads version "
          f"{MANIFEST_VERSION} (upgrade sparkfeed to read newer datasets)", dataset)
    fmt = doc.get("format")
    _need(fmt in FORMATS, f"format should be one of {FORMATS}, but got {fmt!r}", dataset)
    _need(isinstance(doc.get("shards"), list), "shards should be a list", dataset)
    shards = tuple(_parse_shard(s, i, dataset) for i, s in enumerate(doc["shards"]))
    _check_paths_unique(shards, dataset)
    created_by = doc.get("created_by") or {}
    _need(isinstance(created_by, dict), f"created_by should be an object, but got {_short(created_by)}", dataset)
    data_root = doc.get("root")
    _need(data_root is None or (isinstance(data_root, str) and data_root),
          f"root should be the data's path or URL, but got {data_root!r}", dataset)
    m = Manifest(format=fmt, schema=_parse_schema(doc.get("schema"), dataset),
                 num_samples=_count(doc.get("num_samples"), "num_samples", dataset),
                 num_bytes=_count(doc.get("num_bytes"), "num_bytes", dataset),
                 shards=shards, created_by=dict(created_by), root=dataset,
                 data_root=data_root)
    _check_totals(m, dataset)
    return m


def _check_paths_unique(shards: tuple[Shard, ...], dataset: str) -> None:
    """Each file listed once: a path listed twice, also as `./x` beside `x`, would be read twice
    in an epoch; `.` names the dataset's directory, not a file."""
    seen: dict[str, str] = {}
    for s in shards:
        key = s.path
        if "." in key and (key == "." or key.startswith("./") or "/./" in key or key.endswith("/.")):
            key = posixpath.normpath(key)
            _need(key != ".", f"shard path {s.path!r} names the dataset's directory, not a file", dataset)
        if key in seen:
            same = "" if seen[key] == s.path else f" (as {seen[key]!r} and {s.path!r})"
            raise ManifestError(f"a shard path appears twice: {key!r}{same}; each file may be listed "
                                "once", dataset=dataset)
        seen[key] = s.path


def _check_totals(m: Manifest, dataset: str) -> None:
    samples = sum(s.num_samples for s in m.shards)
    _need(samples == m.num_samples, f"shards hold {samples} samples but num_samples={m.num_samples}; "
          "the manifest was altered or is corrupt", dataset)
    size = sum(s.num_bytes for s in m.shards)
    _need(size == m.num_bytes, f"shards hold {size} bytes but num_bytes={m.num_bytes}", dataset)
    names = {c.name for c in m.schema}
    for s in m.shards:
        unknown = set(s.stats) - names
        _need(not unknown, f"shard {s.path!r} has stats for unknown columns {sorted(unknown)}", dataset)


def manifest_file(path: str, storage_options: dict | None = None) -> tuple[object, str]:
    """(filesystem, manifest file) for `path`: a dataset root (its `_sparkfeed.json`), or a
    path ending in `.json`, the manifest itself (kept apart from read-only data)."""
    fs, root = storage.resolve(path, storage_options)
    return fs, root if root.endswith(".json") else f"{root}/{MANIFEST_NAME}"


def read_manifest(path: str, storage_options: dict | None = None) -> Manifest:
    """Read and validate the manifest of the dataset at `path` (a local path or any fsspec URL;
    a path ending in `.json` is the manifest file itself).

    Example: `m = sparkfeed.read_manifest("s3://bucket/ds"); print(m.num_samples)`.
    """
    fs, name = manifest_file(path, storage_options)
    try:
        data = storage.read_bytes(fs, name)
    except FileNotFoundError:
        raise ManifestError(f"no {MANIFEST_NAME} here, so this is not a sparkfeed dataset (or its "
                            f"write did not finish); {_HOW_TO_MAKE}, or `sparkfeed index PATH` for "
                            "Parquet, WebDataset or Delta data written by other tools",
                            dataset=str(path)) from None
    except OSError as exc:
        raise ManifestError(f"cannot read {MANIFEST_NAME}: {exc}", dataset=str(path)) from exc
    return parse_manifest(data, dataset=str(path))


def write_manifest(manifest: Manifest, path: str, storage_options: dict | None = None) -> None:
    """Validate `manifest` and write it to `path/_sparkfeed.json` (or to `path` itself when it
    ends in `.json`) atomically."""
    text = manifest.to_json()
    parse_manifest(text, dataset=str(path))  # never write what we would refuse to read
    fs, name = manifest_file(path, storage_options)
    storage.write_atomic(fs, name, text.encode())
