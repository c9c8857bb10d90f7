"""WebDataset tar shards -> Arrow tables, one row per sample (key), with hostile members refused.

A shard is streamed member by member with Python's `tarfile`; members `<key>.<ext>` are grouped
by key, and the manifest's schema says which member holds each column (`member`: an extension,
`json` for scalar columns kept together, `__key__` for the key). Member data is never
unpickled: `.pyd`/`.pickle` and other unknown members are ignored. Links, devices, absolute
names and `..` are refused with an error naming the shard and the tar offset.
"""

from __future__ import annotations

import json
import posixpath
import tarfile

import numpy as np
import pyarrow as pa

from .. import storage
from ..plan import WorkUnit
from .base import Reader, apply_filter, with_bookkeeping

MAX_MEMBER_BYTES = 1 << 30


def split_name(name: str) -> tuple[str, str]:
    """(key, extension) of a member name: the key ends at the first dot of the base name."""
    head, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(head, stem) if head else stem, ext


class TarReader(Reader):
    """Reads whole tar shards (a WebDataset work unit is one shard)."""

    def _check_member(self, unit: WorkUnit, info: tarfile.TarInfo) -> None:
        name = info.name
        where = info.offset
        if info.issym() or info.islnk():
            raise self._error(unit, f"member {name!r} is a link; links are refused", where)
        if not info.isreg():
            raise self._error(unit, f"member {name!r} is not a regular file (type {info.type!r})", where)
        if name.startswith("/") or ".." in name.split("/") or "\\" in name:
            raise self._error(unit, f"member name {name!r} escapes the dataset", where)
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise self._error(unit, f"member name {name!r} is not valid UTF-8", where) from None
        if info.size > MAX_MEMBER_BYTES:
            raise self._error(unit, f"member {name!r} is {info.size} bytes, over the "
                              f"{MAX_MEMBER_BYTES}-byte limit", where)

    def _samples(self, unit: WorkUnit, wanted_members: set[str]) -> tuple[list[str], list[dict]]:
        """Keys in shard order and, per key, the wanted members' bytes (retried as a whole)."""
        where = {"offset": 0}
        try:
            keys, samples = storage.with_retries(lambda: self._stream(unit, wanted_members, where),
                                                 f"reading {unit.path}")
        except FileNotFoundError as exc:
            raise self._error(unit, f"file missing: the manifest names {unit.path!r} but storage "
                              "has no such file") from exc
        except Exception as exc:
            if storage.is_transient(exc):
                raise self._error(unit, f"storage kept failing ({type(exc).__name__}: {exc})",
                                  where["offset"]) from exc
            if isinstance(exc, (tarfile.TarError, EOFError, ValueError)):
                raise self._error(unit, f"corrupt or truncated tar after the member at this offset "
                                  f"({type(exc).__name__}: {exc})", where["offset"]) from exc
            raise
        if len(set(keys)) != len(keys):
            raise self._error(unit, "a key appears in two places; members of a sample must be adjacent")
        return keys, samples

    def _stream(self, unit: WorkUnit, wanted_members: set[str], where: dict):
        """One pass over the shard's members; `where["offset"]` tracks the last member header."""
        path = storage.join(self.ctx.root, unit.path, self.ctx.dataset)
        keys: list[str] = []
        samples: list[dict] = []
        read = 0
        with self.ctx.fs.open(path, "rb") as f:
            self._check_size(unit, getattr(f, "size", None))
            with tarfile.open(fileobj=f, mode="r|", errorlevel=2) as tar:
                for info in tar:
                    where["offset"] = info.offset
                    if info.isdir():
                        continue
                    self._check_member(unit, info)
                    key, ext = split_name(info.name)
                    if not keys or keys[-1] != key:
                        keys.append(key)
                        samples.append({})
                    if ext in wanted_members:
                        samples[-1][ext] = tar.extractfile(info).read()
                    read += info.size + 512
        self.ctx.stats.add("bytes_read", read)
        return keys, samples

    def _check_size(self, unit: WorkUnit, size: int | None) -> None:
        """A shard whose size differs from the manifest's was truncated or replaced."""
        expected = self.ctx.manifest_bytes.get(unit.path)
        if size is not None and expected is not None and size != expected:
            raise self._error(unit, f"the file is {size} bytes but the manifest says {expected}: "
                              "truncated or replaced after the write", offset=min(size, expected))

    def _table(self, unit: WorkUnit, names: list[str]) -> pa.Table:
        cols = [c for c in self.ctx.schema if c.name in set(names)]
        members = {c.member or c.name for c in cols}
        keys, samples = self._samples(unit, members)
        parsed_json = [json.loads(s["json"]) if "json" in s else {} for s in samples] \
            if "json" in members else None
        arrays = {}
        schema = self.ctx.arrow_schema([c.name for c in cols])
        for col, field in zip(cols, schema):
            values = self._column_values(unit, col, keys, samples, parsed_json)
            try:
                arrays[col.name] = pa.array(values, type=None if field.type == pa.null() else field.type)
            except (pa.ArrowException, ValueError, TypeError) as exc:
                raise self._error(unit, f"column {col.name!r}: member values do not fit type "
                                  f"{field.type} ({exc})") from exc
        return pa.table(arrays) if arrays else pa.table({"__n__": np.zeros(len(keys))}).drop_columns(["__n__"])

    def _column_values(self, unit, col, keys, samples, parsed_json) -> list:
        member = col.member or col.name
        if member == "__key__":
            return keys
        if member == "json":
            return [d.get(col.name) for d in parsed_json]
        raw = [s.get(member) for s in samples]
        if col.type in ("binary", "large_binary"):
            return raw
        try:
            text = [None if r is None else r.decode("utf-8") for r in raw]
        except UnicodeDecodeError as exc:
            raise self._error(unit, f"column {col.name!r}: member .{member} is not UTF-8 text") from exc
        if col.type in ("string", "large_string"):
            return text
        return [None if t is None else json.loads(t) for t in text]

    def _read(self, unit: WorkUnit) -> pa.Table:
        table = self._table(unit, self.ctx.read_columns)
        n = table.num_rows
        table, rows = apply_filter(self.ctx, table)
        self.ctx.stats.add("rows_filtered", n - table.num_rows)
        return with_bookkeeping(table.select(list(self.ctx.columns)), unit, rows)

    def _count(self, unit: WorkUnit) -> int:
        table, _ = apply_filter(self.ctx, self._table(unit, list(self.ctx.filter_columns)))
        return table.num_rows
