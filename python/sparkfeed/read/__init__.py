"""One reader per format: a work unit -> an Arrow table of its rows (projected and filtered).

A reader returns `UnitRows`: the requested columns of the rows that passed the filter, their row
numbers in the unit and which rows hold a sample. Converted to tensors (`stream.Block`), every
batch carries two bookkeeping columns that ride along through shuffling and batching and are
removed before the user sees a batch: `__unit__` (plan index) and `__row__` (row inside the
unit), which name a bad sample in error messages.
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
