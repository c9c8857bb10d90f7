"""Checks of a Parquet file against the dataset's manifest, once per file and iteration when
`ParquetReader` opens it: a footer that pyarrow would abort on, the file being the one the
manifest recorded (size, row group counts and statistics), its columns' types."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from .. import arrowtypes, footer, footercheck
from ..errors import ShardReadError
from ..plan import WorkUnit
from .parquetcols import _int96_indexed_at_ns


class ParquetChecks:
    """`ParquetReader`'s checks of an opened file against the manifest (no I/O but a local stat)."""

    def _check_footer(self, unit: WorkUnit, md: pq.FileMetaData) -> None:
        """A footer pyarrow's metadata accessors would abort the process on (`footercheck.damage`) is
        an error naming the file, before any of them is called."""
        found = footercheck.damage(md)
        if found is not None:
            group, what = found
            raise ShardReadError(f"damaged Parquet footer: {what}", dataset=self.ctx.dataset,
                                 shard=unit.path, row_group=group)

    def _check_recorded(self, unit: WorkUnit, path: str, md: pq.FileMetaData, schema: pa.Schema) -> None:
        """The file is the one its manifest recorded: a local file's size (remote ones: the
        footer's fetch compares the server's), then its row groups' counts and statistics
        (`footer.difference`). Another file put in its place, one shard copied over another
        with the same size and counts, would otherwise deliver its rows instead, and pruning
        would go by the wrong statistics. Once per file and iteration, no I/O but a local stat."""
        shard = self.ctx.shards.get(unit.path)
        if shard is None:
            return
        if self._pafs is not None and shard.num_bytes:
            size = self._pafs.get_file_info(path).size
            if size != shard.num_bytes:
                raise self._error(unit, f"the file is {size} bytes but the manifest says "
                                  f"{shard.num_bytes}: truncated or replaced after the write")
        found = footer.difference(md, schema, shard)
        if found is not None:
            group, what = found
            raise ShardReadError(f"{what}: the file was replaced or changed after the manifest was "
                                 "written (write or index the dataset again if the change is wanted)",
                                 dataset=self.ctx.dataset, shard=unit.path, row_group=group)

    def _check_schema(self, unit: WorkUnit, schema: pa.Schema) -> dict[str, pa.DataType]:
        """Once per file: the columns this dataset reads have the manifest's types, or one that
        casts to it without loss (`arrowtypes.common_type`); those columns -> the manifest's type."""
        fields = {f.name: f for f in arrowtypes.leaf_fields(schema)}
        present = [n for n in self.ctx.read_columns if n in fields]
        casts = {}
        for want in self.ctx.arrow_schema(present):
            got = arrowtypes.delivered_type(fields[want.name].type)
            if want.type == pa.null() or got.equals(want.type):
                continue
            common = arrowtypes.common_type(got, want.type)
            if not _int96_indexed_at_ns(got, want.type) and (common is None or not common.equals(want.type)):
                raise self._error(unit, f"schema drift: column {want.name!r} is {got} here but "
                                  f"{want.type} in the manifest")
            casts[want.name] = want.type
        return casts
