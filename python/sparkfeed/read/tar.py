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
import pyarrow.compute as pc

from .. import storage
from ..errors import CorruptSampleError
from ..plan import WorkUnit
from .base import Reader, UnitRows, apply_filter, with_bookkeeping

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
        self._check_unchanged(unit, path)
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

    def _table(self, unit: WorkUnit, names: list[str]) -> tuple[pa.Table, np.ndarray]:
        """The shard's samples as a table of `names`, and which rows decoded cleanly.

        A sample whose member cannot be parsed (bad UTF-8, bad JSON, a value of the wrong type)
        raises CorruptSampleError naming the shard and key, or under on_error="skip" becomes a
        null row marked not-ok, so stream positions stay exact and the skip is counted.
        """
        cols = [c for c in self.ctx.schema if c.name in set(names)]
        members = {c.member or c.name for c in cols}
        keys, samples = self._samples(unit, members)
        bad: dict[int, str] = {}
        in_json = any((c.member or c.name) == "json" and c.type not in ("string", "large_string")
                      for c in cols)
        parsed = self._parse_json(samples, bad) if in_json else None
        arrays = {}
        for col, field in zip(cols, self.ctx.arrow_schema([c.name for c in cols])):
            values = self._column_values(col, keys, samples, parsed, bad)
            arrays[col.name] = self._to_array(col, values, field.type, bad)
        if bad:
            self._corrupt(unit, keys, bad)
        ok = np.ones(len(keys), dtype=bool)
        ok[list(bad)] = False
        table = pa.table(arrays) if arrays else pa.table({"n": np.zeros(len(keys))}).drop_columns(["n"])
        if bad:  # every value of a bad sample is null: no half-parsed sample leaks through
            mask = pa.array(~ok)
            table = pa.table({n: pc.if_else(mask, pa.nulls(len(keys), c.type), c) for n, c in
                              zip(table.column_names, table.columns)}) if arrays else table
        return table, ok

    def _corrupt(self, unit: WorkUnit, keys: list[str], bad: dict[int, str]) -> None:
        if self.ctx.on_error != "skip":
            row, reason = min(bad.items())
            raise CorruptSampleError(f"{reason} ({len(bad)} bad sample(s) in this shard; "
                                     "on_error='skip' skips and counts them)",
                                     dataset=self.ctx.dataset, shard=unit.path, key=keys[row])

    @staticmethod
    def _parse_json(samples: list[dict], bad: dict[int, str]) -> list[dict]:
        out = []
        for i, s in enumerate(samples):
            doc = {}
            if "json" in s:
                try:
                    doc = json.loads(s["json"])
                    if not isinstance(doc, dict):
                        raise ValueError(f"a JSON {type(doc).__name__}, not an object")
                except (ValueError, UnicodeDecodeError) as exc:
                    bad.setdefault(i, f"member .json cannot be parsed ({exc})")
                    doc = {}
            out.append(doc)
        return out

    @staticmethod
    def _column_values(col, keys, samples, parsed_json, bad: dict[int, str]) -> list:
        member = col.member or col.name
        if member == "__key__":
            return keys
        if member == "json" and col.type not in ("string", "large_string"):
            return [d.get(col.name) for d in parsed_json]  # scalars kept together (the JVM writer)
        raw = [s.get(member) for s in samples]
        if col.type in ("binary", "large_binary"):
            return raw
        values = []
        for i, r in enumerate(raw):
            try:
                text = None if r is None else r.decode("utf-8")
                values.append(text if text is None or col.type in ("string", "large_string")
                              else json.loads(text))
            except (ValueError, UnicodeDecodeError) as exc:
                bad.setdefault(i, f"member .{member} of column {col.name!r} cannot be parsed ({exc})")
                values.append(None)
        return values

    @staticmethod
    def _to_array(col, values: list, type_: pa.DataType, bad: dict[int, str]) -> pa.Array:
        """Values as an Arrow array of the column's type; values that do not fit are bad rows."""
        type_ = None if type_ == pa.null() else type_
        try:
            return pa.array(values, type=type_)
        except (pa.ArrowException, ValueError, TypeError, OverflowError):
            pass
        for i, v in enumerate(values):
            try:
                pa.array([v], type=type_)
            except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:
                bad.setdefault(i, f"column {col.name!r}: value does not fit {type_} ({exc})")
                values[i] = None
        return pa.array(values, type=type_)

    def _read(self, unit: WorkUnit) -> UnitRows:
        table, ok = self._table(unit, self.ctx.read_columns)
        n = table.num_rows
        table = table.append_column("__ok_in__", pa.array(ok))
        table, rows = apply_filter(self.ctx, table, keep_bad=True)
        self.ctx.stats.add("rows_filtered", n - table.num_rows)
        return with_bookkeeping(table.select(list(self.ctx.columns)), unit, rows,
                                ok=table.column("__ok_in__").to_numpy(zero_copy_only=False))

    def _count(self, unit: WorkUnit) -> int:
        table, ok = self._table(unit, list(self.ctx.filter_columns))
        table, _ = apply_filter(self.ctx, table.append_column("__ok_in__", pa.array(ok)), keep_bad=True)
        return table.num_rows
