"""Array decoding: `.npy` bytes (numpy's own format) -> one tensor per batch.

WebDataset tars keep precomputed features, embeddings and masks as `.npy` members (webdataset's
`TarWriter` writes a numpy array so), and Spark jobs keep them as binary columns with the codec
`npy`. `decode={"emb": sparkfeed.NpyDecode()}` delivers such a column as one tensor of shape
`(n, *shape)` per batch, as `ImageDecode` delivers pixels.

Only the format's header is parsed (`numpy.lib.format`, which reads it with `ast.literal_eval`),
never a pickle: arrays of objects are refused. When every row of a batch carries the same header
(the usual case: one dtype, one shape), the batch is converted at once, one copy out of the
buffer it arrived in; otherwise row by row. A row that is empty (no value), not an array,
cut short, of objects, or of another shape or dtype than the batch's first good row is a
failure of that sample, and the loader applies `on_error` (named, or skipped and counted).

Example::

    dec = NpyDecoder(NpyDecode())
    res = dec.decode(batch["emb"])   # res.images: (n_ok, 512) float32
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch

from .decoded import DecodeResult
from .headers import _encoded

__all__ = ["NpyDecode", "NpyDecoder"]

_MAGIC = b"\x93NUMPY"
_VERSIONS = (1, 2, 3)  # the .npy format versions numpy defines
_DTYPE_KINDS = "biuf"  # bool, signed, unsigned, float: what a tensor holds
_MAX_DIMS = 32  # dimensions of a tensor (numpy allows 64, torch fewer)
_MAX_BYTES = 1 << 63  # numpy refuses a shape whose nonzero dimensions span this many bytes,
# even with no element ((0, 2**61) of float32): refused in the header, as a bad row


@dataclass(frozen=True)
class NpyDecode:
    """Decode a binary column of `.npy` bytes into one tensor per batch.

    `dtype`: None keeps each array's own dtype; a torch dtype (e.g. `torch.float32`) casts to it.
    Every array of a batch must share a shape (and, without `dtype`, a dtype).
    """

    dtype: torch.dtype | None = None

    def __post_init__(self):
        if self.dtype is not None and not isinstance(self.dtype, torch.dtype):
            raise ValueError(f"`dtype` should be None or a torch dtype such as torch.float32, but got "
                             f"dtype={self.dtype!r}")

    def resolve(self) -> "NpyDecode":
        """Nothing to check against the machine (the loader calls this for every decode spec)."""
        return self


@dataclass(frozen=True)
class _Header:
    """What a row's header says: where the data starts, its dtype, shape and order."""

    start: int
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran: bool

    @property
    def nbytes(self) -> int:
        """Exact (Python integers): numpy's int64 product wraps around for a hostile shape,
        (2**32, 2**32) to 0 bytes, which an empty row then matched."""
        return math.prod(self.shape) * self.dtype.itemsize


def _header(row: np.ndarray) -> _Header:
    """Parse one row's header; ValueError with the reason when it is not a plain `.npy` array."""
    if len(row) == 0:
        raise ValueError("no value (an empty or null row)")
    if bytes(row[:6]) != _MAGIC or len(row) < 10:
        raise ValueError("not a .npy array (no \\x93NUMPY magic)")
    version = int(row[6])
    if version not in _VERSIONS:
        raise ValueError(f".npy format version {version}.{int(row[7])}, which numpy does not define")
    stream = io.BytesIO(bytes(row[:min(len(row), 65_536 + 12)]))
    try:
        np.lib.format.read_magic(stream)
        read = np.lib.format.read_array_header_1_0 if version == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(stream)
    except Exception as exc:  # numpy's own reasons, as they come: the row is what is bad
        raise ValueError(f"its .npy header cannot be read ({type(exc).__name__}: {exc})") from None
    if dtype.hasobject:
        raise ValueError(f"a .npy array of Python objects ({dtype}); these need unpickling, which "
                         "sparkfeed never does")
    if dtype.kind not in _DTYPE_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise ValueError(f"a .npy array of {dtype}, which is not a number type a tensor holds")
    if any(d < 0 for d in shape) or len(shape) > _MAX_DIMS or \
            math.prod(d for d in shape if d) * dtype.itemsize >= _MAX_BYTES:
        raise ValueError(f"a .npy shape {tuple(shape)} that no array can have")
    return _Header(stream.tell(), dtype, tuple(shape), bool(fortran))


def _array(row: np.ndarray, h: _Header) -> np.ndarray:
    """The row's array, in C order and the machine's byte order (torch knows no other)."""
    data = row[h.start:]
    if len(data) != h.nbytes:
        raise ValueError(f"the .npy data holds {len(data)} bytes where shape {h.shape} of {h.dtype} "
                         f"needs {h.nbytes} (cut short or padded)")
    arr = data.view(h.dtype).reshape(h.shape, order="F" if h.fortran else "C")
    return np.ascontiguousarray(arr, dtype=h.dtype.newbyteorder("="))


def _rows_as_table(data: np.ndarray, starts: np.ndarray, size: int) -> np.ndarray | None:
    """Rows of `size` bytes at `starts` as an (n, size) view of their buffer when they lie back
    to back (a column's rows do), else a copy of each (a shuffled block's rows); None for none."""
    if len(starts) == 0:
        return None
    first = int(starts[0])
    if np.array_equal(starts, first + size * np.arange(len(starts))):
        return data[first:first + size * len(starts)].reshape(len(starts), size)
    return np.stack([data[s:s + size] for s in starts.tolist()])


def _unlike(arr: np.ndarray, like: tuple) -> str:
    """Why a row cannot join its batch's tensor."""
    batch = f"shape {like[0]}" + (f" and {like[1]}" if like[1] is not None else "")
    return f"an array of shape {arr.shape} and {arr.dtype} in a batch of {batch}: one batch stacks into one tensor"


class NpyDecoder:
    """The runtime decoder of an `NpyDecode`; the interface of `decode.ImageDecoder` (the loader
    submits batch n+1 before collecting batch n; here the work is done at `submit`)."""

    def __init__(self, spec: NpyDecode):
        if not isinstance(spec, NpyDecode):
            raise TypeError(f"`spec` should be an NpyDecode, but got {type(spec).__name__}")
        self.spec = spec

    def set_epoch(self, epoch: int, rank: int = 0) -> None:
        """No draws to restart: decoding an array is the same in every epoch."""

    def decode(self, values, keys=None) -> DecodeResult:
        """A batch (BinaryColumn, BinaryChunks or a list of bytes) -> DecodeResult; never raises for
        a bad row."""
        return self.collect(self.submit(values, keys))

    def submit(self, values, keys=None) -> DecodeResult:
        enc = _encoded(values)  # the batch's rows as views of the buffers they arrived in
        return self._whole(enc) or self._rows([enc.row(r) for r in range(len(enc))])

    def collect(self, job: DecodeResult) -> DecodeResult:
        return job

    def cancel(self, job: DecodeResult) -> None:
        """Nothing runs in the background."""

    def close(self) -> None:
        """Nothing to release."""

    def _whole(self, enc) -> DecodeResult | None:
        """Every row with the first row's header and length: the data bytes cut out of the
        buffers at once and viewed as the dtype (one copy). None when the rows differ (`_rows`)."""
        try:
            h = _header(enc.row(0)) if len(enc) else None
        except ValueError:
            return None
        size = h.start + h.nbytes if h is not None else 0
        if h is None or h.fortran or np.any(enc.ends - enc.starts != size):
            return None
        head = enc.row(0)[:h.start]
        parts = []
        for data, where in enc.groups():  # one buffer, or one per part of a batch cut across row groups
            table = _rows_as_table(data, enc.starts[where], size)
            if table is None or not (table[:, :h.start] == head).all():
                return None
            parts.append((where, table[:, h.start:]))
        out = np.empty((len(enc), h.nbytes), np.uint8)
        for where, body in parts:
            out[where] = body
        arr = out.view(h.dtype).reshape((len(enc),) + h.shape)
        arr = arr.astype(h.dtype.newbyteorder("="), copy=False)
        return DecodeResult(self._tensor(arr), torch.arange(len(enc), dtype=torch.int64), ())

    def _rows(self, rows: list[np.ndarray]) -> DecodeResult:
        """Row by row: each header parsed; the first good row sets the shape and dtype."""
        good, ok, failures, like = [], [], [], None
        for r, row in enumerate(rows):
            try:
                arr = _array(row, _header(row))
                if like is not None and self._like(arr) != like:
                    raise ValueError(_unlike(arr, like))
            except ValueError as exc:
                failures.append((r, str(exc)))
                continue
            like = like or self._like(arr)
            good.append(arr)
            ok.append(r)
        if good:
            out = self._tensor(np.stack(good))
        else:
            out = torch.empty((0,), dtype=self.spec.dtype or torch.float32)
        return DecodeResult(out, torch.tensor(ok, dtype=torch.int64), tuple(failures))

    def _like(self, arr: np.ndarray) -> tuple:
        """What the rows of one batch must share: the shape, and the dtype unless cast to one."""
        return arr.shape, (arr.dtype if self.spec.dtype is None else None)

    def _tensor(self, arr: np.ndarray) -> torch.Tensor:
        out = torch.from_numpy(arr)
        return out if self.spec.dtype is None else out.to(self.spec.dtype)
