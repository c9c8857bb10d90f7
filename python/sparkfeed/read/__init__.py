"""One reader per format: a work unit -> an Arrow table of its rows (projected and filtered).

Every table a reader returns has the requested columns plus three bookkeeping columns that ride
along through shuffling and batching and are removed before the user sees a batch:
`__unit__` (plan index), `__row__` (row inside the unit, for error messages) and `__ok__` (False
for a row that stands in for a sample skipped under `on_error="skip"`).
"""

from __future__ import annotations

from .base import ReadContext, Reader, placeholder
from .parquet import ParquetReader
from .tar import TarReader

__all__ = ["ReadContext", "Reader", "make_reader", "placeholder", "BOOKKEEPING"]

BOOKKEEPING = ("__unit__", "__row__", "__ok__")
_READERS = {"parquet": ParquetReader, "webdataset": TarReader}


def make_reader(format: str, ctx: ReadContext) -> Reader:
    """The reader registered for `format`."""
    return _READERS[format](ctx)
