"""Parquet work units (row groups) -> Arrow tables, filter columns first, heavy columns last.

For a row group that may match, the filter columns are read and evaluated first; the other
columns (images, features) are read only when some row survives, then only surviving rows are
kept. Bytes read are counted from the column-chunk sizes in the footer.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .. import filters, storage
from ..errors import ShardReadError
from ..plan import WorkUnit
from .base import Reader, UnitRows, apply_filter, with_bookkeeping

_ERRORS = (OSError, pa.ArrowException, ValueError, EOFError)
_OPEN_FILES = 16  # open Parquet files kept per reader
_RUN_BYTES = 16 << 20  # uncompressed bytes read as one run of row groups (`read_run`): a
# handful of runs per lane stay in memory (cache, queue), so this bounds what runs add to it


class ParquetReader(Reader):
    """Reads row groups of the dataset's Parquet shards; keeps the last `_OPEN_FILES` files open."""

    def __init__(self, ctx):
        super().__init__(ctx)
        self._pafs = _arrow_filesystem(ctx.fs)
        # The last files opened: with shuffle, units hop between files, and a footer is read,
        # parsed and checked once per file, not once per unit.
        self._files: OrderedDict[str, tuple[pq.ParquetFile, dict]] = OrderedDict()

    def _open_input(self, path: str):
        """A seekable file: pyarrow's native one for local files, fsspec's otherwise (fsspec's
        errors keep their cause, so transient failures are retried, not taken as 'missing')."""
        if self._pafs is not None:
            return self._pafs.open_input_file(path)
        return self.ctx.fs.open(path, "rb")

    def _retrying(self, fn, what: str):
        """Remote storage: retry transient errors (`storage.with_retries`). Local files: once; a
        local OSError out of pyarrow is corrupt data (a bad page, a short file), and retrying
        it would only delay the error by the whole backoff."""
        return fn() if self._pafs is not None else storage.with_retries(fn, what)

    def _file(self, unit: WorkUnit) -> pq.ParquetFile:
        if unit.path in self._files:
            self._files.move_to_end(unit.path)
            return self._files[unit.path][0]
        path = storage.join(self.ctx.root, unit.path, self.ctx.dataset)
        self._check_unchanged(unit, path)
        try:
            pf = self._retrying(lambda: pq.ParquetFile(self._open_input(path)), f"opening {path}")
        except FileNotFoundError as exc:
            raise self._error(unit, f"file missing: the manifest names {unit.path!r} but storage "
                              "has no such file") from exc
        except Exception as exc:
            if not isinstance(exc, _ERRORS) and not storage.is_transient(exc):
                raise
            raise self._error(unit, f"cannot open Parquet file ({type(exc).__name__}: {exc})") from exc
        self.ctx.stats.add("bytes_read", pf.metadata.serialized_size + 8)
        self._check_schema(unit, pf.schema_arrow)
        chunks_of: dict[str, list[int]] = {}  # top-level column -> indices of its column chunks
        for j in range(pf.metadata.num_columns):
            chunks_of.setdefault(pf.metadata.schema.column(j).path.split(".")[0], []).append(j)
        self._files[unit.path] = (pf, chunks_of)
        while len(self._files) > _OPEN_FILES:
            self._files.popitem(last=False)
        return pf

    def _read_columns(self, unit: WorkUnit, names: list[str], groups: list[int] | None = None) -> pa.Table:
        """Columns `names` of the unit's row groups; partition columns (not in the file) are
        made from the shard's partition values."""
        part = self.ctx.partition_of(unit.path)
        if not part or not set(names) & set(part):
            return self._read_file_columns(unit, names, groups)
        table = self._read_file_columns(unit, [n for n in names if n not in part], groups)
        types = {f.name: f.type for f in self.ctx.arrow_schema([n for n in names if n in part])}
        for name in names:
            if name in part:
                value = filters._scalar(part[name], types[name]) or pa.scalar(None, types[name])
                table = table.append_column(name, pa.repeat(value, table.num_rows))
        return table.select(names)

    def _read_file_columns(self, unit: WorkUnit, names: list[str], groups: list[int] | None = None) -> pa.Table:

        def attempt() -> list[pa.Table]:
            nonlocal groups
            pf = self._file(unit)
            if groups is None:
                groups = range(pf.metadata.num_row_groups) if unit.row_group is None else [unit.row_group]
            try:
                return [pf.read_row_group(g, columns=names, use_threads=False) for g in groups]
            except Exception:
                self._files.pop(unit.path, None)  # reopen on retry: the stream may be broken
                raise

        try:
            tables = self._retrying(attempt, f"reading {unit.path} row group {unit.row_group}")
        except _ERRORS as exc:
            raise self._error(unit, f"corrupt or truncated data ({type(exc).__name__}: {exc})") from exc
        except Exception as exc:
            if not storage.is_transient(exc):
                raise
            raise self._error(unit, f"storage kept failing ({type(exc).__name__}: {exc})") from exc
        self.ctx.stats.add("bytes_read", sum(self._chunk_bytes(unit.path, g, names) for g in groups))
        return pa.concat_tables(tables) if len(tables) != 1 else tables[0]

    def _chunk_bytes(self, path: str, group: int, names: list[str]) -> int:
        """Compressed bytes of the column chunks of `names` in row group `group` (what a read
        fetches), from the open file's footer."""
        pf, chunks_of = self._files[path]
        rg = pf.metadata.row_group(group)
        return sum(rg.column(j).total_compressed_size for n in names for j in chunks_of.get(n, ()))

    def _check_schema(self, unit: WorkUnit, schema: pa.Schema) -> None:
        """Once per file: the columns this dataset reads have the manifest's types."""
        present = [n for n in self.ctx.read_columns if n in schema.names]
        for want in self.ctx.arrow_schema(present):
            got = schema.field(want.name)
            if want.type != pa.null() and not got.type.equals(want.type):
                raise self._error(unit, f"schema drift: column {got.name!r} is {got.type} here but "
                                  f"{want.type} in the manifest")

    def _read(self, unit: WorkUnit) -> UnitRows:
        ctx = self.ctx
        wanted = ctx.read_columns
        if ctx.expr is None:
            table, rows = self._read_columns(unit, wanted), None
        else:
            light = self._read_columns(unit, list(ctx.filter_columns))
            light, rows = apply_filter(ctx, light)
            ctx.stats.add("rows_filtered", unit.num_rows - light.num_rows)
            heavy = [c for c in wanted if c not in ctx.filter_columns]
            if light.num_rows == 0 or not heavy:
                table = light
            else:
                table = self._read_columns(unit, heavy).take(pa.array(rows))
                for name in ctx.filter_columns:
                    table = table.append_column(name, light.column(name))
            table = table.select(wanted)
        return with_bookkeeping(table.select(list(ctx.columns)), unit, rows)

    def read_run(self, units, expected) -> UnitRows:
        """Consecutive row groups of one file read and checked as one table, up to `_RUN_BYTES`
        of uncompressed data: one read and, downstream, one conversion to tensors instead of one
        per row group (row groups are small, 1,024 rows by default, and the fixed cost per read
        would dominate). Without a filter only (a filter reads row group by row group, filter
        columns first). Anything wrong falls back to reading the first unit alone, which names
        the row group and applies `on_error` exactly."""
        if self.ctx.expr is not None or len(units) == 1:
            return self.read(units[0], expected[0])
        try:
            pf = self._file(units[0])
        except ShardReadError:
            return self.read(units[0], expected[0])
        md, groups, size = pf.metadata, [], 0
        for unit, n in zip(units, expected):
            if unit.path != units[0].path or unit.row_group is None or unit.row_group >= md.num_row_groups:
                break
            rg = md.row_group(unit.row_group)
            if rg.num_rows != n or (groups and size + rg.total_byte_size > _RUN_BYTES):
                break
            groups.append(unit.row_group)
            size += rg.total_byte_size
        if len(groups) < 2:
            return self.read(units[0], expected[0])
        try:
            table = self._read_columns(units[0], self.ctx.read_columns, groups)
        except ShardReadError:
            return self.read(units[0], expected[0])
        counts = expected[:len(groups)]
        if table.num_rows != sum(counts):
            return self.read(units[0], expected[0])
        rows = np.concatenate([np.arange(n, dtype=np.int32) for n in counts])
        return with_bookkeeping(table.select(list(self.ctx.columns)), units[0], rows,
                                run=tuple(zip(units[:len(groups)], counts)))

    def _count(self, unit: WorkUnit) -> int:
        light, _ = apply_filter(self.ctx, self._read_columns(unit, list(self.ctx.filter_columns)))
        return light.num_rows

    def close(self) -> None:
        self._files.clear()


def _arrow_filesystem(fs) -> pafs.FileSystem | None:
    """pyarrow's native filesystem for local files (the fast path), None for everything else."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return pafs.LocalFileSystem() if protocol in ("file", "local") else None
