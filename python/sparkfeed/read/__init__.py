"""One reader per format: a work unit -> an Arrow table of its rows (projected and filtered).

A reader returns `UnitRows`: the requested columns of the rows that passed the filter, their row
numbers in the unit and which rows hold a sample. Converted to tensors (`segments.Block`), a block
can keep each row's key `(unit << 32) | row` (plan index, row inside the unit) beside its columns,
which names a bad sample in error messages and keys its augmentations; it leaves the block in
`engine.Delivery.keys`, never as a column of the user's batch.
"""

from __future__ import annotations

from .base import ReadContext, Reader, UnitRows, placeholder
from .parquet import ParquetReader
from .tar import TarReader

__all__ = ["ReadContext", "Reader", "UnitRows", "make_reader", "placeholder"]

_READERS = {"parquet": ParquetReader, "webdataset": TarReader}


def make_reader(format: str, ctx: ReadContext) -> Reader:
    """The reader registered for `format`."""
    return _READERS[format](ctx)
