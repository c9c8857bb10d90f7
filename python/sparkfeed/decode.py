"""Image decoding: `ImageDecode` (what the user asks for) -> `ImageDecoder` (DALI or PIL at run time).

A batch's encoded images arrive as one `BinaryColumn` (or a list of `bytes`). The decoder

1. checks every row's header cheaply on the host (empty, unknown format, more than `max_pixels`
   pixels: refused before any pixel is decoded);
2. decodes the rest in one DALI pipeline run (`fn.decoders.image` on the GPU with "mixed", or on
   the CPU), resizes the shorter side, crops, flips and normalises;
3. if DALI fails the batch (it fails whole batches), splits the rows in halves until the bad rows
   are found, so good rows still decode and each bad row is reported with its reason.

`decode` never raises for a bad image; it returns `DecodeResult.failures` and the loader applies
`on_error`. Random crops and flips are drawn on the host, one draw per input row, and handed to
DALI through `fn.external_source`. Given `keys` (the loader passes each row's unit and row
number) a row's draw is a function of `(seed, epoch, key)` alone: the same sample gets the same
crop whatever the batch it lands in, the workers, the ranks or a resume. Without keys, draws
follow one sequence per `(seed, epoch, rank)`. Either way re-runs, bisection and the PIL backend
use the same draws. DALI is imported only when `backend="dali"`.

Example::

    dec = ImageDecoder(ImageDecode(size=224, crop="random", mirror=True), max_batch_size=256)
    dec.set_epoch(3, rank=0)
    res = dec.decode(batch["image"])  # res.images: (n_ok, 3, 224, 224) uint8
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .batch import BinaryColumn

__all__ = ["ImageDecode", "ImageDecoder", "DecodeResult"]

_DTYPES = (torch.uint8, torch.float32, torch.float16)
_CHOICES = {"crop": ("center", "random"), "layout": ("NCHW", "NHWC"),
            "device": ("gpu", "cpu", "auto"), "backend": ("dali", "pil")}


def _fail(field: str, expected: str, value) -> None:
    raise ValueError(f"`{field}` should be {expected}, but got {field}={value!r}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class ImageDecode:
    """How to decode one image column: `decode={"image": ImageDecode(size=224, device="gpu")}`.

    Output is RGB. `size=S` resizes the shorter side to S (bilinear, antialiased) then crops SxS
    (centre, or a random position with `crop="random"`); `size=None` keeps native sizes (a batch
    must then be same-sized). uint8 in `layout` unless `mean`/`std` are given (float32, computed
    as `(x - mean) / std` in 0..255 units). See docs/decode.md for every field.
    """

    size: int | None = None
    crop: str = "center"
    mirror: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    dtype: torch.dtype | None = None
    layout: str = "NCHW"
    device: str = "auto"
    backend: str = "dali"
    max_pixels: int = 89_478_485

    def __post_init__(self):
        if self.size is not None and (not _is_int(self.size) or self.size <= 0):
            _fail("size", "a positive integer or None", self.size)
        for field, choices in _CHOICES.items():
            if getattr(self, field) not in choices:
                _fail(field, " or ".join(repr(c) for c in choices), getattr(self, field))
        if self.crop == "random" and self.size is None:
            _fail("crop", "'center' when size is None (a random crop needs a size)", self.crop)
        if not isinstance(self.mirror, bool):
            _fail("mirror", "True or False", self.mirror)
        self._check_norm()
        if self.dtype is not None and self.dtype not in _DTYPES:
            _fail("dtype", "torch.uint8, torch.float32, torch.float16 or None", self.dtype)
        if self.has_norm and self.out_dtype == torch.uint8:
            _fail("dtype", "a floating type when mean/std are given", self.dtype)
        if not _is_int(self.max_pixels) or self.max_pixels <= 0:
            _fail("max_pixels", "a positive integer", self.max_pixels)

    def _check_norm(self) -> None:
        if (self.mean is None) != (self.std is None):
            _fail("mean" if self.mean is None else "std", "given together with "
                  + ("std" if self.mean is None else "mean"), self.mean if self.mean is None else self.std)
        for field in ("mean", "std"):
            v = getattr(self, field)
            if v is None:
                continue
            if (not isinstance(v, (tuple, list)) or len(v) not in (1, 3)
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
                _fail(field, "a tuple of 1 or 3 numbers", v)
            object.__setattr__(self, field, tuple(float(x) for x in v))
        if self.std is not None and min(self.std) <= 0:
            _fail("std", "positive", self.std)

    def resolve(self) -> "ImageDecode":
        """This spec with its device made concrete ("gpu" or "cpu") and its backend checked, so
        that the loader fails when it is built, not at the first batch: device="gpu" needs CUDA,
        backend="dali" needs DALI importable."""
        if self.device == "gpu" and not torch.cuda.is_available():
            _fail("device", "'cpu' or 'auto' on a machine without CUDA (torch.cuda.is_available() "
                  "is False)", self.device)
        if self.backend == "dali":
            try:
                _import_dali()
            except ImportError as exc:
                raise ValueError(f"`backend` is 'dali' but NVIDIA DALI cannot be imported ({exc}); "
                                 "`pip install nvidia-dali-cuda120`, or pass backend='pil'") from exc
        device = "gpu" if self.device == "gpu" or (self.device == "auto" and torch.cuda.is_available()) else "cpu"
        return dataclasses.replace(self, device=device)

    @property
    def has_norm(self) -> bool:
        return self.mean is not None

    @property
    def out_dtype(self) -> torch.dtype:
        """The output dtype: `dtype`, else float32 with mean/std, else uint8."""
        return self.dtype or (torch.float32 if self.has_norm else torch.uint8)


@dataclass(frozen=True)
class DecodeResult:
    """One decoded batch: the good rows (in input order), their indices, and the refused rows."""

    images: torch.Tensor
    ok_rows: torch.Tensor
    failures: tuple[tuple[int, str], ...]


@dataclass(frozen=True)
class _Draws:
    """Per-row augmentation draws: crop position in [0, 1] and flip flag."""

    pos_x: np.ndarray
    pos_y: np.ndarray
    flip: np.ndarray

    def take(self, rows: Sequence[int]) -> "_Draws":
        return _Draws(self.pos_x[rows], self.pos_y[rows], self.flip[rows])


def _as_arrays(images) -> list[np.ndarray]:
    """Normalise the input to per-row uint8 numpy views (no copies, no bytes objects)."""
    if isinstance(images, BinaryColumn):
        data = images.data.contiguous().numpy()
        bounds = images.offsets.tolist()
        return [data[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise TypeError(f"`images` should be a BinaryColumn or a sequence of bytes, but got {type(images).__name__}")
    return [np.frombuffer(b, dtype=np.uint8) for b in images]


_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # JPEG start-of-frame markers
_PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


def _fast_size(mv: memoryview) -> tuple[int, int] | None:
    """(width, height) of a JPEG or PNG read from its markers (~10x cheaper than PIL), else None."""
    if mv[:16] == _PNG and len(mv) >= 24:
        return int.from_bytes(mv[16:20], "big"), int.from_bytes(mv[20:24], "big")
    if mv[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(mv)
    while i + 9 <= n and mv[i] == 0xFF:
        marker = mv[i + 1]
        if marker in _SOF:
            return int.from_bytes(mv[i + 7:i + 9], "big"), int.from_bytes(mv[i + 5:i + 7], "big")
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        i += 2 + int.from_bytes(mv[i + 2:i + 4], "big")
    return None


def _check_header(arr: np.ndarray, max_pixels: int) -> tuple[tuple[int, int] | None, str | None]:
    """(width, height) of this row from its header only (no pixel is decoded), or why it cannot
    be decoded: `(size, None)` or `(None, reason)`.

    JPEG and PNG dimensions come from their markers; anything else goes through PIL's lazy
    `Image.open`, which also reads only the header.
    """
    if arr.size == 0:
        return None, "empty image (0 bytes)"
    size = _fast_size(memoryview(arr))
    try:
        if size is None:
            with Image.open(io.BytesIO(arr)) as im:
                size = im.size
        w, h = size
    except Image.DecompressionBombError as e:
        return None, f"refused before decoding: {e}"
    except Image.UnidentifiedImageError:
        return None, "not a recognised image format"
    except Exception as e:  # noqa: BLE001 - any parse error means "not an image"
        return None, f"not a recognised image ({type(e).__name__}: {e})"
    if w * h > max_pixels:
        return None, f"image is {w}x{h} = {w * h} pixels, over max_pixels={max_pixels}; refused before decoding"
    return (w, h), None


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, elementwise on uint64: a counter-based hash, so every key gets its
    own well-spread draw without a generator per row."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _keyed_draws(seed: int, epoch: int, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop positions (2, n) in [0, 1) and flips (n,) as pure functions of (seed, epoch, key)."""
    base = _mix64(_mix64(np.array([seed], np.uint64)) ^ np.uint64(epoch))
    h = _mix64(keys.astype(np.uint64) ^ base)
    words = np.stack([_mix64(h ^ np.uint64(i)) for i in (1, 2, 3)])
    pos = (words[:2] >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)
    return pos, (words[2] & np.uint64(1)).astype(np.int32)


def _needs_resize(spec: ImageDecode, sizes) -> bool:
    """Whether any image's shorter side differs from `size`: images stored at the training size
    (a Spark job often resizes them) are only cropped, as Pillow skips an identity resize too.
    The shorter side does not change with an EXIF rotation, so header sizes are enough."""
    return spec.size is not None and any(min(w, h) != spec.size for w, h in sizes)


def _finish(spec: ImageDecode, hwc: torch.Tensor) -> torch.Tensor:
    """Normalise, cast and lay out a (N, H, W, 3) uint8 batch (the PIL path's last step)."""
    out = hwc
    if spec.has_norm:
        mean = torch.tensor(spec.mean, dtype=torch.float32)
        std = torch.tensor(spec.std, dtype=torch.float32)
        out = (out.float() - mean) / std
    out = out.to(spec.out_dtype)
    return out.permute(0, 3, 1, 2).contiguous() if spec.layout == "NCHW" else out


def _empty(spec: ImageDecode, device: str) -> torch.Tensor:
    s = spec.size or 0
    shape = (0, 3, s, s) if spec.layout == "NCHW" else (0, s, s, 3)
    return torch.empty(shape, dtype=spec.out_dtype, device=device)


def _same_shape(shapes) -> None:
    """With size=None images keep their size, so a batch must share one shape."""
    shapes = {tuple(s) for s in shapes}
    if len(shapes) > 1:
        raise ValueError(f"ImageDecode(size=None) needs same-sized images in a batch, but got shapes "
                         f"{sorted(shapes)}; pass size= to resize and crop")


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """Join per-chunk outputs (in row order)."""
    _same_shape(p.shape[1:] for p in parts)
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class _PilBackend:
    """PIL decode + torch ops, with the same geometry as the DALI pipeline."""

    def __init__(self, spec: ImageDecode, device: str):
        self.spec, self.device = spec, device

    def _one(self, arr: np.ndarray, px: float, py: float, flip: bool) -> torch.Tensor:
        with Image.open(io.BytesIO(arr)) as im:
            im = im.convert("RGB")
        s = self.spec.size
        if s is not None:
            w, h = im.size
            scale = s / min(w, h)
            im = im.resize((max(s, round(w * scale)), max(s, round(h * scale))), Image.BILINEAR)
        t = torch.from_numpy(np.array(im))
        if s is not None:
            h, w = t.shape[:2]
            y0, x0 = int(py * (h - s) + 0.5), int(px * (w - s) + 0.5)
            t = t[y0:y0 + s, x0:x0 + s]
        return t.flip(1) if flip else t

    def run(self, arrays, rows, draws: _Draws, resize: bool = True):
        """Decode `rows`; returns ([tensor], ok_rows, failures). An identity resize is free in
        Pillow already, so `resize` needs no branch here."""
        ok, imgs, failures = [], [], []
        for i, r in enumerate(rows):
            try:
                imgs.append(self._one(arrays[r], draws.pos_x[i], draws.pos_y[i], bool(draws.flip[i])))
                ok.append(r)
            except Exception as e:  # noqa: BLE001 - a bad image is reported, not raised
                failures.append((r, f"PIL could not decode the image ({type(e).__name__}: {e})"))
        if not imgs:
            return [], ok, failures
        _same_shape(t.shape for t in imgs)
        return [_finish(self.spec, torch.stack(imgs)).to(self.device)], ok, failures

    def close(self) -> None:
        pass


def _dali_reason(e: Exception) -> str:
    """The useful line of a DALI pipeline error: the one after 'encountered:'."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    for i, line in enumerate(lines[:-1]):
        if line == "encountered:":
            return re.sub(r" sample #\d+ *:?", "", lines[i + 1]).strip()
    return lines[0] if lines else type(e).__name__


def _import_dali():
    try:
        from nvidia import dali  # noqa: F401
        from nvidia.dali import fn, types
        from nvidia.dali.plugin.pytorch import feed_ndarray
    except ImportError as e:
        raise ImportError("ImageDecode(backend='dali') needs NVIDIA DALI: `pip install nvidia-dali-cuda120`, "
                          "or pass ImageDecode(..., backend='pil')") from e
    return dali, fn, types, feed_ndarray


class _DaliBackend:
    """DALI pipelines fed whole batches: one that resizes, one that only crops (for images already
    at the training size), each built on first use and rebuilt after a failed run (DALI drops it)."""

    def __init__(self, spec: ImageDecode, device: str, max_batch_size: int, num_threads: int, seed: int):
        self.spec, self.device = spec, device
        self.dali, self.fn, self.types, self._feed_ndarray = _import_dali()
        self.args = dict(batch_size=max_batch_size, num_threads=num_threads, seed=seed,
                         device_id=torch.cuda.current_device() if device == "cuda" else None,
                         prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
        self.pipes: dict[bool, object] = {}
        self._pipe(spec.size is not None)  # build now: a DALI problem shows before any reading

    def _pipe(self, resize: bool):
        if resize not in self.pipes:
            self.pipes[resize] = self._build(resize)
        return self.pipes[resize]

    def _build(self, resize: bool):
        """decode -> (resize shorter side) -> crop, mirror, normalise, lay out; a DALI resize
        costs more than the decode of a small JPEG on the CPU, so it is left out when not needed."""
        fn, types, spec = self.fn, self.types, self.spec
        pipe = self.dali.Pipeline(**self.args)
        with pipe:
            enc = fn.external_source(name="enc", batch=True, dtype=types.UINT8, ndim=1, no_copy=True)
            img = fn.decoders.image(enc, device="mixed" if self.device == "cuda" else "cpu",
                                    output_type=types.RGB)
            kw = dict(dtype={torch.uint8: types.UINT8, torch.float32: types.FLOAT,
                             torch.float16: types.FLOAT16}[spec.out_dtype],
                      output_layout="CHW" if spec.layout == "NCHW" else "HWC")
            if spec.size is not None:
                if resize:
                    img = fn.resize(img, resize_shorter=spec.size, antialias=True)
                kw["crop"] = (spec.size, spec.size)
            if spec.crop == "random" and spec.size is not None:
                kw["crop_pos_x"] = fn.external_source(name="px", batch=True, dtype=types.FLOAT, ndim=0)
                kw["crop_pos_y"] = fn.external_source(name="py", batch=True, dtype=types.FLOAT, ndim=0)
            if spec.mirror:
                kw["mirror"] = fn.external_source(name="flip", batch=True, dtype=types.INT32, ndim=0)
            if spec.has_norm:
                kw["mean"] = list(spec.mean) * (3 // len(spec.mean))
                kw["std"] = list(spec.std) * (3 // len(spec.std))
            pipe.set_outputs(fn.crop_mirror_normalize(img, **kw))
        pipe.build()
        return pipe

    def _inputs(self, arrays, draws: _Draws) -> dict:
        inputs = {"enc": arrays}
        if self.spec.crop == "random" and self.spec.size is not None:
            inputs["px"], inputs["py"] = list(draws.pos_x), list(draws.pos_y)
        if self.spec.mirror:
            inputs["flip"] = list(draws.flip)
        return inputs

    def _to_torch(self, out) -> torch.Tensor:
        """DALI output -> torch, one copy straight into torch's memory (device-to-device on GPU)."""
        _same_shape(out.shape())
        t = out.as_tensor()
        dst = torch.empty(t.shape(), dtype=self.spec.out_dtype, device=self.device)
        stream = torch.cuda.current_stream() if self.device == "cuda" else None
        self._feed_ndarray(t, dst, cuda_stream=stream)
        return dst

    def run(self, arrays, rows, draws: _Draws, resize: bool = True):
        """Decode `rows`; on a failed batch, bisect to find the bad rows. Returns (parts, ok, failures)."""
        resize = resize and self.spec.size is not None
        try:
            (out,) = self._pipe(resize).run(**self._inputs([arrays[r] for r in rows], draws))
            return [self._to_torch(out)], list(rows), []
        except RuntimeError as e:
            self.pipes.pop(resize, None)
            if len(rows) == 1:
                return [], [], [(rows[0], f"DALI could not decode the image ({_dali_reason(e)})")]
        mid = len(rows) // 2
        left = self.run(arrays, rows[:mid], draws.take(slice(0, mid)), resize)
        right = self.run(arrays, rows[mid:], draws.take(slice(mid, None)), resize)
        return left[0] + right[0], left[1] + right[1], left[2] + right[2]

    def close(self) -> None:
        self.pipes.clear()


class ImageDecoder:
    """The runtime decoder built once per loader from a spec; `decode` turns a batch into a tensor."""

    def __init__(self, spec: ImageDecode, *, max_batch_size: int, seed: int = 0, num_threads: int | None = None):
        if not isinstance(spec, ImageDecode):
            raise TypeError(f"`spec` should be an ImageDecode, but got {type(spec).__name__}")
        if not _is_int(max_batch_size) or max_batch_size <= 0:
            _fail("max_batch_size", "a positive integer", max_batch_size)
        if not _is_int(seed) or seed < 0:
            _fail("seed", "a non-negative integer", seed)
        if num_threads is not None and (not _is_int(num_threads) or num_threads <= 0):
            _fail("num_threads", "a positive integer or None", num_threads)
        self.spec, self.max_batch_size, self.seed = spec, max_batch_size, seed
        self.device = _resolve_device(spec.device)
        threads = num_threads or min(8, os.cpu_count() or 1)
        if spec.backend == "dali":
            self._backend = _DaliBackend(spec, self.device, max_batch_size, threads, seed)
        else:
            self._backend = _PilBackend(spec, self.device)
        self.set_epoch(0)

    def set_epoch(self, epoch: int, rank: int = 0) -> None:
        """Restart the augmentation draws from (seed, epoch, rank): reproducible, different per epoch."""
        self._epoch = epoch
        self._rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch, rank])))

    def _draw(self, n: int, keys) -> _Draws:
        if keys is None:
            pos = self._rng.random((2, n), dtype=np.float32)
            flip = self._rng.integers(0, 2, n, dtype=np.int32)
        else:
            pos, flip = _keyed_draws(self.seed, self._epoch, keys)
        if self.spec.crop == "center":
            pos[:] = 0.5
        if not self.spec.mirror:
            flip[:] = 0
        return _Draws(pos[0], pos[1], flip)

    def decode(self, images: "BinaryColumn | Sequence[bytes]", keys=None) -> DecodeResult:
        """Decode a batch; bad rows go to `failures` (never raised), good rows to `images` in order.

        `keys`: one integer per row naming the sample (int64 tensor or array); its crop and flip
        then depend only on (seed, epoch, key)."""
        arrays = _as_arrays(images)
        if len(arrays) > self.max_batch_size:
            raise ValueError(f"a batch of {len(arrays)} images is larger than max_batch_size={self.max_batch_size}")
        if keys is not None:
            keys = np.asarray(keys, dtype=np.int64)
            if keys.shape != (len(arrays),):
                raise ValueError(f"`keys` should hold one integer per image ({len(arrays)}), "
                                 f"but has shape {tuple(keys.shape)}")
        draws = self._draw(len(arrays), keys)
        failures, rows, sizes = [], [], []
        for r, arr in enumerate(arrays):
            size, reason = _check_header(arr, self.spec.max_pixels)
            if reason is None:
                rows.append(r)
                sizes.append(size)
            else:
                failures.append((r, reason))
        resize = _needs_resize(self.spec, sizes)
        parts, ok, bad = self._backend.run(arrays, rows, draws.take(rows), resize) if rows else ([], [], [])
        images = _cat(parts) if parts else _empty(self.spec, self.device)
        return DecodeResult(images, torch.tensor(ok, dtype=torch.int64),
                            tuple(sorted(failures + bad)))

    def close(self) -> None:
        """Release the pipeline (DALI memory); the decoder cannot be used afterwards."""
        self._backend.close()


def _resolve_device(device: str) -> str:
    """'gpu' | 'cpu' | 'auto' -> 'cuda' | 'cpu'; 'gpu' without CUDA is a clear error."""
    if device == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("ImageDecode(device='gpu') needs CUDA, but torch.cuda.is_available() is False; "
                           "pass device='cpu' or device='auto' to decode on the CPU")
    return "cuda" if device == "gpu" or (device == "auto" and torch.cuda.is_available()) else "cpu"


def _bench(n: int = 512, cases=((64, 56), (64, 64), (256, 224), (256, 256)), batch: int = 128,
           repeat: int = 3) -> None:
    """Micro-benchmark: images/s of DALI CPU vs PIL for (stored side, output size) pairs (equal:
    images at the training size, only cropped), and the host costs (header check, feeding)."""
    def jpeg(side: int, i: int) -> bytes:
        y, x = np.mgrid[0:side, 0:side]
        a = np.stack([(x * 255 // side + i) % 256, y * 255 // side, (x + y) % 256], -1).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG", quality=90)
        return buf.getvalue()

    def best(f) -> float:
        return min(_timed(f) for _ in range(repeat))

    print(f"{n} JPEGs, batch {batch}, {os.cpu_count()} CPU cores, torch {torch.__version__}\n")
    print("| image | output | DALI CPU img/s | PIL img/s | header check us/img (PIL open) | feed us/batch |")
    print("|---|---|---|---|---|---|")
    for side, size in cases:
        data = [jpeg(side, i) for i in range(n)]
        col = BinaryColumn(torch.from_numpy(np.frombuffer(b"".join(data), np.uint8).copy()),
                           torch.tensor(np.cumsum([0] + [len(d) for d in data]), dtype=torch.int64))
        chunks = [col.select(range(i, min(i + batch, n))) for i in range(0, n, batch)]
        rates = []
        for backend in ("dali", "pil"):
            dec = ImageDecoder(ImageDecode(size=size, device="cpu", backend=backend), max_batch_size=batch)
            dec.decode(chunks[0])  # warm up
            rates.append(n / best(lambda: [dec.decode(c) for c in chunks]))
            dec.close()
        arrays = _as_arrays(col)
        check = best(lambda: [_check_header(a, 1 << 40) for a in arrays]) / n * 1e6
        lazy = best(lambda: [Image.open(io.BytesIO(a)).size for a in arrays]) / n * 1e6
        feed = best(lambda: [_as_arrays(c) for c in chunks]) / len(chunks) * 1e6
        print(f"| {side}x{side} | {size}x{size} | {rates[0]:.0f} | {rates[1]:.0f} | {check:.1f} ({lazy:.1f}) | {feed:.1f} |")


def _timed(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


if __name__ == "__main__":
    import sys

    if "--bench" not in sys.argv:
        sys.exit("usage: python -m sparkfeed.decode --bench")
    _bench()
