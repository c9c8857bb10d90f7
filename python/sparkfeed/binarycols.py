"""Binary and text columns of a batch without one Python object per sample: `BinaryColumn`
(bytes and offsets as two tensors), `TextColumn` (UTF-8), `BinaryViews` (rows of Arrow buffers
not yet gathered) and `BinaryChunks` (a batch's rows left in their parts); Arrow binary arrays
become them here."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from .tensorcopies import cat


@dataclass(frozen=True)
class BinaryColumn:
    """A batch of variable-length byte strings: `data[offsets[i]:offsets[i+1]]` is sample i."""

    data: torch.Tensor     # uint8, 1-D
    offsets: torch.Tensor  # int64, len = samples + 1

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    def __getitem__(self, i: int) -> bytes:
        """Sample i (negative counts from the end), as users see it."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sample {i} of a column of {n}")
        return self.item_view(i % n).numpy().tobytes()

    def item_view(self, i: int) -> torch.Tensor:
        """Sample i as a uint8 tensor view (no copy)."""
        return self.data[int(self.offsets[i]):int(self.offsets[i + 1])]

    def to_list(self) -> list[bytes]:
        """The samples as `bytes` objects (what users see for undecoded binary columns)."""
        raw, bounds = memoryview(self.data.numpy()), self.offsets.tolist()  # one copy per sample
        return [raw[bounds[i]:bounds[i + 1]].tobytes() for i in range(len(bounds) - 1)]

    def slice(self, start: int, stop: int) -> "BinaryColumn":
        """Samples [start, stop) as views of this column's buffers (offsets rebased)."""
        offsets = self.offsets[start:stop + 1]
        if offsets.numel() == 0:
            return type(self)(self.data[:0], self.offsets[:1] * 0)
        base = int(offsets[0])
        return type(self)(self.data[base:int(offsets[-1])], offsets - base)

    @staticmethod
    def concat(columns: list["BinaryColumn"]) -> "BinaryColumn":
        """The samples of `columns` (all of one class), one after another."""
        return type(columns[0])(cat([c.data for c in columns]), BinaryColumn.joined_offsets(columns))

    @staticmethod
    def joined_offsets(columns: list["BinaryColumn"]) -> torch.Tensor:
        """The offsets of `columns` joined one after another (their data laid end to end)."""
        shifts = np.cumsum([0] + [c.data.numel() for c in columns[:-1]]).tolist()
        return cat([columns[0].offsets[:1]] + [c.offsets[1:] + s for c, s in zip(columns, shifts)])

    def select(self, rows) -> "BinaryColumn":
        """The samples at `rows` (an index list or tensor), in that order: Arrow's `take` over
        these buffers (one copy of the selected bytes, no per-sample Python)."""
        rows = torch.as_tensor(rows, dtype=torch.int64).numpy()
        if len(self) == 0 or rows.size == 0:
            return type(self)(self.data[:0], torch.zeros(rows.size + 1, dtype=torch.int64))
        arrow = pa.Array.from_buffers(pa.large_binary(), len(self), [
            None, pa.py_buffer(self.offsets.numpy()), pa.py_buffer(self.data.numpy())])
        taken = arrow.take(pa.array(rows))
        _, offsets, data = taken.buffers()
        bounds = np.frombuffer(offsets, dtype=np.int64, count=rows.size + 1)
        # Arrow's fresh buffers are mutable, so numpy (and torch) may use them without a copy
        data = np.frombuffer(data, dtype=np.uint8, count=int(bounds[-1])) if data is not None and bounds[-1] \
            else np.empty(0, dtype=np.uint8)
        return type(self)(torch.from_numpy(data), torch.from_numpy(bounds - bounds[0]))

    def arrow(self, kind: pa.DataType = pa.large_binary()) -> pa.Array:
        """The column as an Arrow array over the same buffers (no copy)."""
        return pa.Array.from_buffers(kind, len(self), [None, pa.py_buffer(self.offsets.numpy()),
                                                       pa.py_buffer(self.data.numpy())])


class TextColumn(BinaryColumn):
    """A batch of strings without nulls, as UTF-8 bytes: what `BinaryColumn` is for bytes (the
    same slicing, selecting and hand-over), a list of `str` at the user's door."""

    def __getitem__(self, i: int) -> str:
        return super().__getitem__(i).decode("utf-8")

    def to_list(self) -> list[str]:
        """The samples as `str` objects (Arrow makes them, one pass)."""
        return self.arrow(pa.large_string()).to_pylist() if len(self) else []


@dataclass(frozen=True)
class BinaryViews:
    """Samples of several `BinaryColumn`s, left in the buffers they were read into: an Arrow
    `binary_view` array (16 bytes per sample naming its buffer and offset; Arrow's casts share
    the data buffers). A shuffle block's binary columns: `select` gathers samples straight out of
    the parts into a column of their own, one copy, where joining the parts first copied the whole
    block once more into fresh memory (whose page zeroing took ~10% of the CPU of a shuffled
    image epoch, perf in docs/benchmark-studies.md)."""

    views: pa.Array  # binary_view, no nulls
    kind: type       # BinaryColumn or TextColumn: what `select` returns

    @staticmethod
    def join(columns: list) -> "BinaryViews | BinaryColumn":
        """The samples of `columns` (`BinaryColumn`s of one class, or `BinaryViews` or
        `BinaryChunks` of them) one after another, without copying their bytes; a joined
        `BinaryColumn` (a copy) where this pyarrow has no binary views (before 16) or a buffer
        exceeds what a view can address (2 GiB): `BinaryViews` exist only where the cast worked."""
        columns = [p for c in columns for p in (c.parts if isinstance(c, BinaryChunks) else (c,))]
        try:
            views = pa.concat_arrays([c.views if isinstance(c, BinaryViews) else c.arrow().cast(pa.binary_view())
                                      for c in columns])
        except (AttributeError, pa.ArrowException):
            return BinaryColumn.concat([c.select(np.arange(len(c))) if isinstance(c, BinaryViews) else c
                                        for c in columns])
        return BinaryViews(views, binary_kind(columns[0]))

    def __len__(self) -> int:
        return len(self.views)

    def slice(self, start: int, stop: int) -> "BinaryViews":
        """Samples [start, stop), the views sliced (no copy)."""
        return BinaryViews(self.views.slice(start, stop - start), self.kind)

    def joined(self) -> BinaryColumn:
        """The samples in one buffer (one copy), a column of the class they stand for."""
        return self.select(np.arange(len(self)))

    def to_list(self) -> list:
        """The samples as users see them (`bytes` or `str`)."""
        return self.joined().to_list()

    def select(self, rows) -> BinaryColumn:
        """The samples at `rows` (an index list or tensor), in that order: their 16-byte views
        gathered by numpy, then Arrow's cast copies the bytes they name into one buffer."""
        rows = torch.as_tensor(rows, dtype=torch.int64).numpy()
        _, views, *data = self.views.buffers()
        views = np.frombuffer(views, dtype=np.int64).reshape(-1, 2)[self.views.offset:self.views.offset + len(self.views)]
        picked = pa.Array.from_buffers(pa.binary_view(), rows.size, [None, pa.py_buffer(views[rows])] + data)
        column = binary_column(picked.cast(pa.large_binary()))
        return column if self.kind is BinaryColumn else self.kind(column.data, column.offsets)


@dataclass(frozen=True)
class BinaryChunks:
    """Samples of several `BinaryColumn`s of one class, one after another, each left in its own
    buffers: a batch cut across row groups (`concat_rows(chunks=True)`). The decoder reads each
    sample where it lies and users get `bytes` copies of each sample, so joining the parts into
    one buffer first would be a copy of every byte that nobody reads: with row groups of tens
    of images, a copy of each batch's bytes on the thread that feeds the decoder."""

    parts: tuple  # BinaryColumn (or TextColumn), at least one, all of one class

    @staticmethod
    def join(columns: list) -> "BinaryChunks":
        """`columns` (BinaryColumns of one class, or BinaryChunks of them) one after another."""
        parts = [p for c in columns for p in (c.parts if isinstance(c, BinaryChunks) else (c,))]
        return BinaryChunks(tuple(p for p in parts if len(p)) or (parts[0],))

    @property
    def kind(self) -> type:
        return type(self.parts[0])

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def _bounds(self) -> np.ndarray:
        return np.cumsum([0] + [len(p) for p in self.parts])

    def slice(self, start: int, stop: int) -> "BinaryChunks":
        """Samples [start, stop), the parts sliced (no copy)."""
        bounds, parts = self._bounds(), []
        for p, lo, hi in zip(self.parts, bounds[:-1], bounds[1:]):
            a, b = max(start, int(lo)), min(stop, int(hi))
            if a < b:
                parts.append(p.slice(a - int(lo), b - int(lo)))
        return BinaryChunks(tuple(parts) or (self.parts[0].slice(0, 0),))

    def joined(self) -> BinaryColumn:
        """The samples in one buffer (one copy), a column of the parts' class."""
        return self.parts[0] if len(self.parts) == 1 else BinaryColumn.concat(list(self.parts))

    def select(self, rows) -> BinaryColumn:
        """The samples at `rows`, in that order, gathered from the parts (one copy of them)."""
        if len(self.parts) == 1:
            return self.parts[0].select(rows)
        return BinaryViews.join(list(self.parts)).select(rows)

    def to_list(self) -> list:
        """The samples as users see them (`bytes` or `str`), part by part: no joined copy."""
        return [x for p in self.parts for x in p.to_list()]


def binary_kind(value) -> type | None:
    """The column class of a binary value (`BinaryViews` stand for the class they gather into,
    `BinaryChunks` for their parts'); None for anything else."""
    if isinstance(value, (BinaryViews, BinaryChunks)):
        return value.kind
    return type(value) if isinstance(value, BinaryColumn) else None


def own_memory(buf: pa.Buffer | None, dtype, count: int, offset: int) -> np.ndarray | None:
    """`count` values of `buf` from byte `offset` as a numpy view, where Arrow allocated the buffer
    for its array (decoded Parquet pages, computed columns); None for read-only memory (a file
    mapped, bytes fetched), which a tensor must not write to."""
    if buf is None or not buf.is_mutable:
        return None
    return np.frombuffer(buf, dtype=dtype, count=count, offset=offset)


def binary_column(arr: pa.Array) -> BinaryColumn:
    """A binary Arrow array as a BinaryColumn, no per-row objects: a view of the data buffer where
    it is Arrow's own (`own_memory`), else one copy. Always a view where it can be: users see a
    BinaryColumn only as `bytes` copies (`user_facing`) or through the decoder, never its buffer.
    Callers hand it arrays without nulls (columns with nulls are lists: `_binary`, `_strings`)."""
    if pa.types.is_large_binary(arr.type):
        off_dtype = np.int64
    else:
        off_dtype = np.int32
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=off_dtype, count=len(arr) + 1, offset=arr.offset * np.dtype(off_dtype).itemsize)
    start, end = int(offsets[0]), int(offsets[-1])
    if end <= start:
        data = np.empty(0, dtype=np.uint8)
    else:
        data = own_memory(bufs[2], np.uint8, end - start, start)
        if data is None:
            data = np.frombuffer(bufs[2], dtype=np.uint8, count=end - start, offset=start).copy()
    return BinaryColumn(torch.from_numpy(data), torch.from_numpy((offsets - start).astype(np.int64)))
