"""Parquet work units (row groups) -> Arrow tables, filter columns first, heavy columns last.

For a row group that may match, the filter columns are read and evaluated first; the other
columns (images, features) are read only when some row survives, then only surviving rows are
kept. Bytes read are counted from the column-chunk sizes in the footer.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .. import storage
from ..plan import WorkUnit
from .base import Reader, apply_filter, with_bookkeeping

_ERRORS = (OSError, pa.ArrowException, ValueError, EOFError)


class ParquetReader(Reader):
    """Reads row groups of the dataset's Parquet shards; keeps the last file open."""

    def __init__(self, ctx):
        super().__init__(ctx)
        self._pafs = _arrow_filesystem(ctx.fs)
        self._open: tuple[str, pq.ParquetFile] | None = None

    def _file(self, unit: WorkUnit) -> pq.ParquetFile:
        if self._open is not None and self._open[0] == unit.path:
            return self._open[1]
        path = storage.join(self.ctx.root, unit.path, self.ctx.dataset)
        try:
            source = storage.with_retries(lambda: self._pafs.open_input_file(path), f"opening {path}")
            pf = pq.ParquetFile(source)
        except FileNotFoundError as exc:
            raise self._error(unit, f"file missing: the manifest names {unit.path!r} but storage "
                              "has no such file") from exc
        except _ERRORS as exc:
            raise self._error(unit, f"cannot open Parquet file ({type(exc).__name__}: {exc})") from exc
        self.ctx.stats.add("bytes_read", pf.metadata.serialized_size + 8)
        self._open = (unit.path, pf)
        return pf

    def _read_columns(self, unit: WorkUnit, names: list[str]) -> pa.Table:
        pf = self._file(unit)
        groups = range(pf.metadata.num_row_groups) if unit.row_group is None else [unit.row_group]
        try:
            tables = [pf.read_row_group(g, columns=names) for g in groups]
        except _ERRORS as exc:
            raise self._error(unit, f"corrupt or truncated data ({type(exc).__name__}: {exc})") from exc
        self.ctx.stats.add("bytes_read", _chunk_bytes(pf, groups, names))
        table = pa.concat_tables(tables) if len(tables) != 1 else tables[0]
        self._check_schema(unit, table)
        return table

    def _check_schema(self, unit: WorkUnit, table: pa.Table) -> None:
        expected = self.ctx.arrow_schema(table.column_names)
        for got, want in zip(table.schema, expected):
            if want.type != pa.null() and not got.type.equals(want.type):
                raise self._error(unit, f"schema drift: column {got.name!r} is {got.type} here but "
                                  f"{want.type} in the manifest")

    def _read(self, unit: WorkUnit) -> pa.Table:
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

    def _count(self, unit: WorkUnit) -> int:
        light, _ = apply_filter(self.ctx, self._read_columns(unit, list(self.ctx.filter_columns)))
        return light.num_rows

    def close(self) -> None:
        self._open = None


def _chunk_bytes(pf: pq.ParquetFile, groups, names: list[str]) -> int:
    """Compressed bytes of the column chunks of `names` in `groups` (what a read fetches)."""
    md, wanted, total = pf.metadata, set(names), 0
    for g in groups:
        rg = md.row_group(g)
        for j in range(rg.num_columns):
            col = rg.column(j)
            if col.path_in_schema.split(".")[0] in wanted:
                total += col.total_compressed_size
    return total


def _arrow_filesystem(fs) -> pafs.FileSystem:
    """pyarrow's native filesystem for local files (fast path), fsspec's handler otherwise."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))
