"""Image decoding: `ImageDecode` (what the user asks for) -> `ImageDecoder` (DALI or PIL at run time).

A batch's encoded images arrive as one `BinaryColumn`, as `BinaryChunks` (a batch cut across row
groups: each part's samples left in their own buffer), or as a list of `bytes`. The decoder

1. reads every row's size from its header, for the whole batch at once (`headers.py`), and
   refuses empty rows, unknown formats, more than `max_pixels` pixels and (resize=None) images
   smaller than the crop before any pixel is decoded;
2. draws crops, flips and RandomResizedCrop windows on the host as functions of
   `(seed, epoch, key)` (`crops.py`);
3. decodes the rest in one DALI pipeline run per batch (`fn.decoders.image`, or
   `fn.decoders.image_slice` for a random_resized window; "mixed" on the GPU, or on the CPU),
   resizes, crops, flips and normalises; row views of the one buffer and one array per
   parameter go in, one tensor comes out;
4. if DALI fails the batch (it fails whole batches), splits the rows in halves until the bad rows
   are found, so good rows still decode and each bad row is reported with its reason.

`decode` never raises for a bad image; it returns `DecodeResult.failures` and the loader applies
`on_error`. `decode` is `collect(submit(...))`: the pipelines run asynchronously, and the loader's
prefetch thread submits batch n+1 before it collects batch n, so DALI decodes while the thread
does the rest (docs/decode.md, "Decoding one batch ahead"). Given `keys` (the loader passes each row's unit and row number) a row's draws are a
function of `(seed, epoch, key)` alone: the same sample gets the same crop whatever the batch it
lands in, the workers, the ranks or a resume. Without keys, draws follow one sequence per
`(seed, epoch, rank)`. Either way re-runs, bisection and the PIL backend use the same draws.
`ImageDecode.resolve()` checks the spec against this machine (CUDA, DALI); DALI is imported only
when `backend="dali"`.

Example::

    dec = ImageDecoder(ImageDecode(size=224, crop="random", mirror=True), max_batch_size=256)
    dec.set_epoch(3, rank=0)
    res = dec.decode(batch["image"])  # res.images: (n_ok, 3, 224, 224) uint8
"""

from __future__ import annotations

import collections
import dataclasses
import io
import math
import os
import re
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from . import batch as batching
from . import forks
from .batch import BinaryChunks, BinaryColumn
from .crops import _RRC_TRIES, _keyed_draws, _keyed_window_uniforms, _random_resized_windows
from .decoded import DecodeResult, MixedSizes
from .headers import _check_headers, _Encoded, _encoded, resized_sizes
from .orientation import _marker_orientation
from .pilopen import Damaged, pixel_limit, png_for_pil

__all__ = ["ImageDecode", "ImageDecoder", "DecodeResult"]

_DTYPES = (torch.uint8, torch.float32, torch.float16)
_DEFAULT_RANGES = {"scale": (0.08, 1.0), "ratio": (3 / 4, 4 / 3)}  # torchvision's RandomResizedCrop
_CHOICES = {"crop": ("center", "random", "random_resized"), "layout": ("NCHW", "NHWC"),
            "device": ("gpu", "cpu", "auto"), "backend": ("dali", "pil")}


def _fail(field: str, expected: str, value) -> None:
    raise ValueError(f"`{field}` should be {expected}, but got {field}={value!r}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class ImageDecode:
    """How to decode one image column: `decode={"image": ImageDecode(size=224, device="gpu")}`.

    Output is RGB. `size=S` resizes the shorter side to `resize` (default S; None: no resize,
    the crop is cut from the stored pixels) then crops SxS (centre, or a random position with
    `crop="random"`); `crop="random_resized"` is torchvision's RandomResizedCrop(S, scale, ratio).
    `size=None` keeps native sizes (a batch must then be same-sized). uint8 in `layout` unless
    `mean`/`std` are given (float32, computed as `(x - mean) / std` in 0..255 units). Fields are
    checked here; `resolve()` checks the machine (CUDA, DALI). See docs/decode.md for every field.

        ImageDecode(size=112, crop="random", resize=None, mirror=True)   # RandomCrop + flip
        ImageDecode(size=224, crop="random_resized", mirror=True)        # RandomResizedCrop + flip
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
    resize: int | str | None = "size"
    scale: tuple[float, float] = _DEFAULT_RANGES["scale"]
    ratio: tuple[float, float] = _DEFAULT_RANGES["ratio"]

    def __post_init__(self):
        if self.size is not None and (not _is_int(self.size) or self.size <= 0):
            _fail("size", "a positive integer or None", self.size)
        for field, choices in _CHOICES.items():
            if getattr(self, field) not in choices:
                _fail(field, " or ".join(repr(c) for c in choices), getattr(self, field))
        if self.crop != "center" and self.size is None:
            _fail("crop", "'center' when size is None (a random crop needs a size)", self.crop)
        if not isinstance(self.mirror, bool):
            _fail("mirror", "True or False", self.mirror)
        self._check_norm()
        self._check_crop()
        if self.dtype is not None and self.dtype not in _DTYPES:
            _fail("dtype", "torch.uint8, torch.float32, torch.float16 or None", self.dtype)
        if self.has_norm and self.out_dtype == torch.uint8:
            _fail("dtype", "a floating type when mean/std are given", self.dtype)
        if not _is_int(self.max_pixels) or self.max_pixels <= 0:
            _fail("max_pixels", "a positive integer", self.max_pixels)

    def _check_crop(self) -> None:
        """`resize`: "size" (the default), None (crop the stored pixels) or a shorter side >= size;
        `scale`/`ratio`: torchvision's RandomResizedCrop ranges (used by crop="random_resized")."""
        r = self.resize
        if r != "size" and r is not None:
            if not _is_int(r) or r <= 0:
                _fail("resize", "'size', None or a positive integer", r)
            if self.size is None:
                _fail("resize", "'size' or None when size is None (resize= is the shorter side "
                      "images are resized to before the crop to size)", r)
            if r < self.size:
                _fail("resize", f"at least size={self.size} (the crop is cut from the resized image)", r)
            if self.crop == "random_resized":
                _fail("resize", "'size' or None with crop='random_resized' (the crop is resized to size)", r)
        for field, low in (("scale", 0.0), ("ratio", 0.0)):
            v = getattr(self, field)
            if (not isinstance(v, (tuple, list)) or len(v) != 2
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
                    or not low < v[0] <= v[1]):
                _fail(field, "a (min, max) pair of positive numbers with min <= max", v)
            if v[1] == math.inf:  # log-uniform draws over an infinite range are NaN windows
                _fail(field, "a pair of finite numbers", v)
            object.__setattr__(self, field, (float(v[0]), float(v[1])))
        if self.scale[1] > 1.0:
            _fail("scale", "within (0, 1] (a fraction of the image's area)", self.scale)
        for field in ("scale", "ratio"):
            if self.crop != "random_resized" and getattr(self, field) != _DEFAULT_RANGES[field]:
                _fail(field, f"left at its default unless crop='random_resized' (crop={self.crop!r} "
                      "uses no area or aspect range)", getattr(self, field))

    @property
    def resize_to(self) -> int | None:
        """The shorter side images are resized to before a centre or random crop (None: not resized)."""
        if self.crop == "random_resized":
            return None
        return self.size if self.resize == "size" else self.resize

    def resolve(self) -> "ImageDecode":
        """A copy with `device` made concrete ("gpu" or "cpu"), checked on this machine: the loader
        calls it when it is built, so a spec that cannot run here fails before any reading.

        Raises ValueError for device="gpu" without CUDA and for backend="dali" without DALI."""
        if self.device not in _CHOICES["device"]:
            _fail("device", "'gpu', 'cpu' or 'auto'", self.device)
        cuda = torch.cuda.is_available()
        if self.device == "gpu" and not cuda:
            raise ValueError("`device` should be 'cpu' or 'auto' on a machine without CUDA (torch.cuda."
                             "is_available() is False), but got device='gpu'")
        if self.backend == "dali":
            try:
                _import_dali()
            except ImportError as e:
                raise ValueError(f"`backend` should be 'pil' where NVIDIA DALI is not installed "
                                 f"(`pip install {dali_package()}`), but got backend='dali' ({e.__cause__})") from e
        device = "gpu" if self.device == "gpu" or (self.device == "auto" and cuda) else "cpu"
        return dataclasses.replace(self, device=device)

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
            if not all(math.isfinite(x) for x in v):  # every output pixel would be NaN (or 0)
                _fail(field, "finite numbers", v)
            object.__setattr__(self, field, tuple(float(x) for x in v))
        if self.std is not None and min(self.std) <= 0:
            _fail("std", "positive", self.std)

    @property
    def has_norm(self) -> bool:
        return self.mean is not None

    @property
    def out_dtype(self) -> torch.dtype:
        """The output dtype: `dtype`, else float32 with mean/std, else uint8."""
        return self.dtype or (torch.float32 if self.has_norm else torch.uint8)


@dataclass(frozen=True)
class _Draws:
    """Per-row augmentation draws: crop position in [0, 1], flip flag, and for
    crop="random_resized" the window (x0, y0, width, height) in stored pixels."""

    pos_x: np.ndarray
    pos_y: np.ndarray
    flip: np.ndarray
    window: np.ndarray | None = None

    def take(self, rows) -> "_Draws":
        window = None if self.window is None else self.window[rows]
        return _Draws(self.pos_x[rows], self.pos_y[rows], self.flip[rows], window)


def _needs_resize(spec: ImageDecode, sizes) -> bool:
    """Whether any image's shorter side differs from the resize target (`resize`, default
    `size`): images stored at that size (a Spark job often resizes them) are only cropped, as
    Pillow skips an identity resize too. The shorter side does not change with an EXIF
    rotation, so header sizes are enough."""
    target = spec.resize_to
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    return target is not None and bool((sizes.min(1) != target).any())


def _crop_room(spec: ImageDecode, sizes) -> np.ndarray:
    """(2, n): how far a `size` crop can move along x and y in each image once resized (the
    shorter side to `resize_to`, rounded as the PIL path rounds; stored sizes with resize=None).
    From header sizes: for an image tagged EXIF 5-8 the axes are the stored ones."""
    w, h = np.asarray(sizes, dtype=np.int64).reshape(-1, 2).T
    if _needs_resize(spec, sizes):
        w, h = resized_sizes(w, h, spec.resize_to)
    return np.stack([w, h]) - spec.size


def _uniform_offsets(pos: np.ndarray, room: np.ndarray) -> np.ndarray:
    """Crop positions in [0, 1] that put a crop at each of its `room + 1` whole-pixel offsets
    equally often, as torchvision's RandomCrop does: a uniform position rounded to an offset
    (both backends round `pos * room`) gives the first and last offsets half as often. The
    uniform draw picks the offset; the position names it."""
    room = np.maximum(room, 0)
    offset = np.minimum(np.floor(pos * (room + 1)), room)
    return np.where(room > 0, offset / np.maximum(room, 1), 0.5).astype(np.float32)


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
        raise MixedSizes(f"ImageDecode(size=None) needs same-sized images in a batch, but got shapes "
                         f"{sorted(shapes)}; pass size= to resize and crop")


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """Join per-chunk outputs (in row order)."""
    _same_shape(p.shape[1:] for p in parts)
    return parts[0] if len(parts) == 1 else batching.cat(parts)


def _rgb(im: Image.Image) -> Image.Image:
    """The image as 8-bit RGB. 16-bit grayscale (PIL's "I;16*" and "I" modes) is scaled to 8 bits
    as DALI does; Pillow's own conversion would clip every value above 255 to white. Floating
    grayscale ("F", a float TIFF) is read as 0..1, as DALI reads it; Pillow would make it black."""
    if im.mode.startswith("I;16") or im.mode == "I":
        wide = np.asarray(im, dtype=np.uint32).clip(0, 65535)
        im = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))
    elif im.mode == "F":
        im = Image.fromarray(np.rint(np.asarray(im, dtype=np.float32).clip(0, 1) * 255).astype(np.uint8))
    return im.convert("RGB")


# What each EXIF orientation asks for, as `ImageOps.exif_transpose` does it
_TURNS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
          5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
          8: Image.Transpose.ROTATE_90}


def _upright(im: Image.Image, arr: np.ndarray) -> Image.Image:
    """The image turned by its EXIF orientation tag (2-8: mirrored and/or rotated), as DALI's
    decoders do (and torchvision's `decode_jpeg(apply_exif_orientation=True)`); a phone photo
    stored sideways comes out the way it is shown. A JPEG's or PNG's tag is read from its
    markers as DALI reads it (PIL also takes a malformed tag that DALI ignores: a LONG, a
    directory running past its block); other formats' from PIL."""
    orientation = _marker_orientation(memoryview(arr))
    if orientation is None:
        orientation = im.getexif().get(0x0112, 1)
    turn = _TURNS.get(orientation)
    return im if turn is None else im.transpose(turn)


class _PilBackend:
    """PIL decode + torch ops, with the same geometry as the DALI pipeline."""

    def __init__(self, spec: ImageDecode, device: str):
        self.spec, self.device = spec, device

    def _geometry(self, im: Image.Image, kind: str, window) -> Image.Image:
        """"resize": shorter side to `resize_to`; "slice": the window resized to size x size."""
        s = self.spec.size
        if kind == "slice":
            x0, y0, cw, ch = (int(v) for v in window)
            return im.crop((x0, y0, x0 + cw, y0 + ch)).resize((s, s), Image.BILINEAR)
        if kind == "resize":
            (w,), (h,) = resized_sizes([im.size[0]], [im.size[1]], self.spec.resize_to)
            return im.resize((int(w), int(h)), Image.BILINEAR)
        return im

    def _opened(self, arr: np.ndarray) -> Image.Image:
        """The image decoded as DALI would judge it: a damaged PNG refused (`pilopen.png_for_pil`),
        every pixel check PIL makes under `max_pixels` (`pilopen.pixel_limit`)."""
        im = Image.open(io.BytesIO(png_for_pil(arr)))
        im.load()
        return im

    def _one(self, arr: np.ndarray, draws: _Draws, i: int, kind: str) -> torch.Tensor:
        with pixel_limit(self.spec.max_pixels), self._opened(arr) as im:
            im = self._geometry(_rgb(_upright(im, arr)), kind, None if draws.window is None else draws.window[i])
        t = torch.from_numpy(np.array(im))
        s = self.spec.size
        if s is not None and kind != "slice":
            h, w = t.shape[:2]
            # in double precision, as DALI places its crop: float32 products rounded 11.4999998 up to
            # 11.5, a pixel right of DALI's crop (an image turned by EXIF, whose room is not the drawn one)
            y0, x0 = int(float(draws.pos_y[i]) * (h - s) + 0.5), int(float(draws.pos_x[i]) * (w - s) + 0.5)
            t = t[y0:y0 + s, x0:x0 + s]
        return t.flip(1) if draws.flip[i] else t

    def run(self, enc: _Encoded, rows, draws: _Draws, kind: str, sizes=None):
        """Decode `rows`; returns ([tensor], ok_rows, failures). An identity resize is free in
        Pillow already, so "crop" and "resize" give the same pixels."""
        ok, imgs, failures = [], [], []
        for i, (r, arr) in enumerate(zip(rows, enc.views(rows))):
            try:
                imgs.append(self._one(arr, draws, i, kind))
                ok.append(int(r))
            except Image.UnidentifiedImageError:  # its message names a BytesIO's address
                failures.append((int(r), "PIL could not decode the image (not a recognised image: "
                                         "its header reads, its data does not)"))
            except Damaged as e:
                failures.append((int(r), f"PIL could not decode the image ({e})"))
            except Image.DecompressionBombError as e:  # max_pixels, of a size found while decoding
                failures.append((int(r), f"{e}; refused while decoding"))
            except Exception as e:  # noqa: BLE001 - a bad image is reported, not raised
                failures.append((int(r), f"PIL could not decode the image ({type(e).__name__}: {e})"))
        if not imgs:
            return [], ok, failures
        _same_shape(t.shape for t in imgs)
        return [_finish(self.spec, torch.stack(imgs)).to(self.device)], ok, failures

    def submit(self, job: "_Job") -> None:
        """Nothing starts early: PIL decodes on the caller's thread in `collect`."""

    def collect(self, job: "_Job"):
        return self.run(job.enc, job.rows, job.draws, job.kind, job.sizes) if job.rows.size else ([], [], [])

    def discard(self, job: "_Job") -> None:
        pass

    def close(self) -> None:
        pass


def _dali_reason(e: Exception) -> str:
    """The useful line of a DALI pipeline error: the one after 'encountered:'."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    for i, line in enumerate(lines[:-1]):
        if line == "encountered:":
            return re.sub(r" sample #\d+ *:?", "", lines[i + 1]).strip()
    return lines[0] if lines else type(e).__name__


def dali_package() -> str:
    """The DALI wheel for this torch's CUDA: `nvidia-dali-cuda130` for CUDA 13 (torch +cu130),
    `nvidia-dali-cuda120` otherwise (CUDA 12, or a CPU-only torch)."""
    cuda = torch.version.cuda or ""
    return "nvidia-dali-cuda130" if cuda.split(".")[0] == "13" else "nvidia-dali-cuda120"


def _import_dali():
    try:
        from nvidia import dali  # noqa: F401
        from nvidia.dali import fn, types
        from nvidia.dali.plugin.pytorch import feed_ndarray
    except ImportError as e:
        raise ImportError(f"ImageDecode(backend='dali') needs NVIDIA DALI: `pip install {dali_package()}`, "
                          "or pass ImageDecode(..., backend='pil')") from e
    forks.never_collect_inherited()  # a forked worker must never destroy a pipeline it inherited
    return dali, fn, types, feed_ndarray


@dataclass(eq=False)
class _Job:
    """One batch between `submit` and `collect`: what DALI was given (kept, so that a failed or
    dropped run can be redone) and whether its run is scheduled on the live pipeline."""

    enc: _Encoded
    rows: np.ndarray
    draws: _Draws
    kind: str
    sizes: np.ndarray
    header_failures: list = dataclasses.field(default_factory=list)
    scheduled: bool = False


# Runs of one pipeline DALI's executor may hold at once, by default: with 2, the host stage of
# batch n+1 (parsing, the Huffman decoding that "mixed" does on host threads) overlaps the GPU
# stage of n. A caller that submits k batches ahead of the one it collects asks for k+1
# (`ImageDecoder(runs_in_flight=)`; the loader does).
_QUEUE_DEPTH = 2


def _one_run_per_batch(pipe) -> bool:
    """Make every `schedule_run` start exactly one run, of the batch just fed; False where this
    DALI offers no way to. Its first `schedule_run` would otherwise "prefetch": start
    `prefetch_queue_depth` runs at once, each wanting a batch fed ahead, where `submit` feeds one
    batch per run. The switch is DALI's own flag (`Pipeline._first_iter`, which `schedule_run`
    reads in DALI 2.4), private to DALI, so it is checked, not assumed."""
    if not isinstance(getattr(pipe, "_first_iter", None), bool):
        return False
    pipe._first_iter = False
    return True


# The TensorList hand-over gives "mixed" (GPU) decoders the same pixels as a list (checked on an
# H200 by tests/gpu/test_decode_gpu.py), but measured no faster there: 10,000 500x375 JPEGs to 224
# px, 9,221 and 9,279 images/s after the first batch against 9,175 and 11,903 as a list. So GPU
# batches still go as a list, the path every earlier GPU figure was taken on.
_TENSORLIST_ON_GPU = False


def _dali_batch(views: list[np.ndarray]):
    """The encoded images as one DALI `TensorListCPU` over their own memory (no copy): handed a
    list of arrays, `feed_input` checks and wraps every sample in Python (~5 µs each, a third of
    the per-image cost outside the decoder); a TensorList goes in as it is. A list where this
    DALI cannot make a TensorList without copying."""
    from nvidia.dali import backend

    try:
        return backend.TensorListCPU([backend.TensorCPU(v, "") for v in views], None, False)
    except TypeError:  # a DALI without the `contiguous` argument
        return views


class _DaliBackend:
    """DALI pipelines fed whole batches, one per geometry `kind`: "resize" (shorter side, then
    crop), "crop" (images already at the resize target, or resize=None), "slice" (a window
    decoded by `fn.decoders.image_slice`, resized to size x size: crop="random_resized"). Each is
    built on first use and rebuilt after a failed run (DALI drops it).

    The pipelines run asynchronously (DALI's dynamic executor, `exec_async`/`exec_pipelined`):
    `submit` feeds a batch and schedules its run, `collect` waits for it, so the caller can
    submit batch n+1 before collecting batch n and DALI decodes it meanwhile. DALI returns the
    runs of one pipeline in order (`inflight`); a run settled before its own `collect` waits in
    `done`. A failed run invalidates the pipeline and every run queued behind it: the failed
    batch is redone alone and bisected, the ones behind it are fed again to a fresh pipeline. On the CPU the output is DALI's own buffer
    wrapped by DLPack (no copy): the dynamic executor never reuses a buffer that is still
    referenced, so the tensor stays valid as long as the user holds it.

    "crop" decodes whole images: decoding only the window (`fn.decoders.image_crop`) measured no
    faster on 128 px images, and it accepts a truncated JPEG whenever the window lies in the
    part that is there, so whether a bad image is reported would depend on its crop."""

    def __init__(self, spec: ImageDecode, device: str, max_batch_size: int, num_threads: int, seed: int,
                 runs_in_flight: int = _QUEUE_DEPTH):
        self.spec, self.device = spec, device
        self.dali, self.fn, self.types, self._feed_ndarray = _import_dali()
        self.args = dict(batch_size=max_batch_size, num_threads=num_threads, seed=seed % 2**63,  # (DALI's: int64)
                         device_id=torch.cuda.current_device() if device == "cuda" else None,
                         prefetch_queue_depth=runs_in_flight, exec_async=True, exec_pipelined=True)
        self.pipes: dict[str, object] = {}
        self.inflight: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self.done: dict[_Job, object] = {}  # runs settled ahead of their collect
        self.lock = threading.RLock()  # one caller at a time on the pipelines
        self._pipe(_default_kind(spec))  # build now: a DALI problem shows before any reading

    def _pipe(self, kind: str):
        if kind not in self.pipes:
            self.pipes[kind] = self._build(kind)
            # DALI's dynamic executor (its default with exec_async and exec_pipelined) never
            # reuses a buffer still referenced; older DALIs recycle outputs: those are copied out
            self.shares_outputs = bool(getattr(self.pipes[kind], "exec_dynamic", False))
        return self.pipes[kind]

    def _decoded(self, kind: str):
        """The decode (+ geometry) part of the graph; a DALI resize costs more than the decode of
        a small JPEG on the CPU, so it is left out where it is not needed."""
        fn, types, spec = self.fn, self.types, self.spec
        device = "mixed" if self.device == "cuda" else "cpu"
        enc = fn.external_source(name="enc", batch=True, dtype=types.UINT8, ndim=1, no_copy=True)
        if kind == "slice":
            anchor = fn.external_source(name="anchor", batch=True, dtype=types.FLOAT, ndim=1)
            shape = fn.external_source(name="shape", batch=True, dtype=types.FLOAT, ndim=1)
            img = fn.decoders.image_slice(enc, anchor, shape, device=device, output_type=types.RGB)
            return fn.resize(img, resize_x=spec.size, resize_y=spec.size, antialias=True)
        img = fn.decoders.image(enc, device=device, output_type=types.RGB)
        if kind == "resize":
            img = fn.resize(img, resize_shorter=spec.resize_to, antialias=True)
        return img

    def _positions(self) -> dict:
        """Crop positions: the host's keyed draws for crop="random", the centre otherwise."""
        if self.spec.crop != "random":
            return dict(crop_pos_x=0.5, crop_pos_y=0.5)
        fn, types = self.fn, self.types
        return dict(crop_pos_x=fn.external_source(name="px", batch=True, dtype=types.FLOAT, ndim=0),
                    crop_pos_y=fn.external_source(name="py", batch=True, dtype=types.FLOAT, ndim=0))

    def _build(self, kind: str):
        """decode -> geometry -> crop, mirror, normalise, lay out."""
        pipe = self._graph(kind)
        if self.args["prefetch_queue_depth"] > 1 and not _one_run_per_batch(pipe):
            self.args["prefetch_queue_depth"] = 1  # one run at a time: no prefetch to avoid
            pipe = self._graph(kind)
        return pipe

    def _graph(self, kind: str):
        """One built pipeline of `kind` with the backend's arguments."""
        fn, types, spec = self.fn, self.types, self.spec
        pipe = self.dali.Pipeline(**self.args)
        with pipe:
            img = self._decoded(kind)
            kw = dict(dtype={torch.uint8: types.UINT8, torch.float32: types.FLOAT,
                             torch.float16: types.FLOAT16}[spec.out_dtype],
                      output_layout="CHW" if spec.layout == "NCHW" else "HWC")
            if spec.size is not None and kind != "slice":  # whole images, cropped here
                kw.update(crop=(spec.size, spec.size), **self._positions())
            if spec.mirror:
                kw["mirror"] = fn.external_source(name="flip", batch=True, dtype=types.INT32, ndim=0)
            if spec.has_norm:
                kw["mean"] = list(spec.mean) * (3 // len(spec.mean))
                kw["std"] = list(spec.std) * (3 // len(spec.std))
            pipe.set_outputs(fn.crop_mirror_normalize(img, **kw))
        pipe.build()
        return pipe

    def _inputs(self, enc: _Encoded, rows, draws: _Draws, kind: str, sizes) -> dict:
        views = enc.views(rows)
        inputs = {"enc": _dali_batch(views) if self.device != "cuda" or _TENSORLIST_ON_GPU else views}
        # per-row parameters go in as one dense array per batch (DALI splits the outer axis)
        if kind == "slice":  # windows relative to the image: they fit whatever DALI's EXIF turn
            wh = np.tile(sizes[rows].astype(np.float32), 2)
            rel = draws.window.astype(np.float32) / wh
            inputs["anchor"], inputs["shape"] = np.ascontiguousarray(rel[:, :2]), np.ascontiguousarray(rel[:, 2:])
        elif self.spec.crop == "random" and self.spec.size is not None:
            inputs["px"], inputs["py"] = np.ascontiguousarray(draws.pos_x), np.ascontiguousarray(draws.pos_y)
        if self.spec.mirror:
            inputs["flip"] = np.ascontiguousarray(draws.flip)
        return inputs

    def _to_torch(self, out) -> torch.Tensor:
        """DALI output -> torch: on the CPU DALI's buffer itself through DLPack (the tensor keeps
        it alive; the dynamic executor allocates the next run's output elsewhere), on the GPU one
        device-to-device copy on torch's current stream."""
        _same_shape(out.shape())
        t = out.as_tensor()
        if self.device != "cuda" and self.shares_outputs:
            return torch.from_dlpack(t)
        dst = torch.empty(t.shape(), dtype=self.spec.out_dtype, device=self.device)
        self._feed_ndarray(t, dst, cuda_stream=torch.cuda.current_stream() if self.device == "cuda" else None)
        return dst

    def _start(self, enc: _Encoded, rows, draws: _Draws, kind: str, sizes):
        """Feed a batch to its kind's pipeline and schedule its run; the pipeline."""
        pipe = self._pipe(kind)
        for name, value in self._inputs(enc, rows, draws, kind, sizes).items():
            pipe.feed_input(name, value)
        pipe.schedule_run()
        return pipe

    def _schedule(self, job: _Job) -> None:
        """Feed `job` to its kind's pipeline and start its run (DALI decodes it in the background).
        Behind a run that must be redone it waits unscheduled: the runs queued on a pipeline are
        either all on it or none, so a run redone alone never meets another one's output."""
        queue = self.inflight[job.kind]
        if queue and not queue[0].scheduled:
            queue.append(job)
            return
        try:
            self._start(job.enc, job.rows, job.draws, job.kind, job.sizes)
            job.scheduled = True
        except RuntimeError:  # redone alone (and bisected) when collected
            self._drop(job.kind)
        queue.append(job)

    def _drop(self, kind: str) -> None:
        """Forget a pipeline DALI gave up on; the runs queued on it are redone by `collect`."""
        self.pipes.pop(kind, None)
        for job in self.inflight[kind]:
            job.scheduled = False

    def submit(self, job: _Job) -> None:
        """Start decoding `job` (nothing to do for a batch with no rows left)."""
        if job.rows.size:
            with self.lock:
                self._schedule(job)

    def collect(self, job: _Job):
        """Wait for `job` and return (parts, ok, failures). DALI hands runs back in the order
        they were scheduled, so older runs of the kind are settled first and kept for their own
        `collect` (two iterators of one loader may hold runs on the same pipeline)."""
        if not job.rows.size:
            return [], [], []
        with self.lock:
            while job not in self.done:
                if job not in self.inflight[job.kind]:
                    raise RuntimeError("ImageDecoder.collect: this batch was not submitted, or was "
                                       "already collected or cancelled")
                self._advance(job.kind)
            result = self.done.pop(job)
        if isinstance(result, Exception):
            raise result
        return result

    def _advance(self, kind: str, unwanted: _Job | None = None) -> None:
        """Settle the oldest run of `kind` into `done`: its output, or after a failed run its rows
        redone alone and bisected, then the runs lost with the pipeline fed again in order. The
        `unwanted` run (being cancelled) is only waited for."""
        queue = self.inflight[kind]
        head = queue.popleft()
        out = None
        if head.scheduled:
            try:
                (out,) = self.pipes[kind].outputs()
            except RuntimeError:
                self._drop(kind)
        if head is not unwanted:
            try:
                self.done[head] = ([self._to_torch(out)], head.rows.tolist(), []) if out is not None \
                    else self.run(head.enc, head.rows, head.draws, kind, head.sizes)
            except ValueError as e:  # mixed shapes with size=None: raised by this batch's collect
                self.done[head] = e
        if out is None:
            for later in [queue.popleft() for _ in range(len(queue))]:
                self._schedule(later)

    def discard(self, job: _Job) -> None:
        """Drop a submitted batch that will not be collected; a run already scheduled is waited
        for (a pipeline is never left with an output nobody takes)."""
        with self.lock:
            if self.done.pop(job, None) is not None:
                return
            queue = self.inflight[job.kind]
            if job in queue and not job.scheduled:  # none of the kind is on the pipeline
                queue.remove(job)
            while job in queue:
                self._advance(job.kind, unwanted=job)

    def run(self, enc: _Encoded, rows, draws: _Draws, kind: str, sizes=None):
        """Decode `rows` (an index array) now, alone on the pipeline; on a failed batch, bisect to
        find the bad rows. Returns (parts, ok, failures)."""
        try:
            (out,) = self._start(enc, rows, draws, kind, sizes).outputs()
            return [self._to_torch(out)], rows.tolist(), []
        except RuntimeError as e:
            self.pipes.pop(kind, None)
            if len(rows) == 1:
                return [], [], [(int(rows[0]), f"DALI could not decode the image ({_dali_reason(e)})")]
        mid = len(rows) // 2
        left = self.run(enc, rows[:mid], draws.take(slice(0, mid)), kind, sizes)
        right = self.run(enc, rows[mid:], draws.take(slice(mid, None)), kind, sizes)
        return left[0] + right[0], left[1] + right[1], left[2] + right[2]

    def close(self) -> None:
        """Wait for the runs still in flight, then release the pipelines."""
        with self.lock:
            for kind, queue in self.inflight.items():
                while queue:
                    self._advance(kind, unwanted=queue[0])
            self.inflight.clear()
            self.done.clear()
            self.pipes.clear()


def _default_kind(spec: ImageDecode) -> str:
    """The pipeline built up front: the one most batches of this spec take."""
    if spec.crop == "random_resized":
        return "slice"
    return "resize" if spec.resize_to is not None else "crop"


def _kind(spec: ImageDecode, sizes) -> str:
    """This batch's geometry: a window, a resize, or a crop only (nothing to resize)."""
    if spec.crop == "random_resized":
        return "slice"
    return "resize" if _needs_resize(spec, sizes) else "crop"


class ImageDecoder:
    """The runtime decoder built once per loader from a spec; `decode` turns a batch into a tensor.
    `num_threads`: DALI's host threads (every core for "mixed" decoding, at most 8 on the CPU);
    `runs_in_flight`: the runs each DALI pipeline holds at once, one more than the batches a
    caller submits ahead of the one it collects."""

    def __init__(self, spec: ImageDecode, *, max_batch_size: int, seed: int = 0, num_threads: int | None = None,
                 runs_in_flight: int = _QUEUE_DEPTH):
        if not isinstance(spec, ImageDecode):
            raise TypeError(f"`spec` should be an ImageDecode, but got {type(spec).__name__}")
        if not _is_int(max_batch_size) or max_batch_size <= 0:
            _fail("max_batch_size", "a positive integer", max_batch_size)
        if not _is_int(seed) or not 0 <= seed < 2**64:
            _fail("seed", "an integer in [0, 2**64)", seed)
        if num_threads is not None and (not _is_int(num_threads) or num_threads <= 0):
            _fail("num_threads", "a positive integer or None", num_threads)
        if not _is_int(runs_in_flight) or runs_in_flight <= 0:
            _fail("runs_in_flight", "a positive integer", runs_in_flight)
        self.spec, self.max_batch_size, self.seed = spec, max_batch_size, seed
        self.device = _resolve_device(spec)
        self._gpu_dali = self.device == "cuda" and spec.backend == "dali"  # nvJPEG: see _truncated_jpegs
        threads = num_threads or _default_threads(self.device)
        if spec.backend == "dali":
            self._backend = _DaliBackend(spec, self.device, max_batch_size, threads, seed, runs_in_flight)
        else:
            self._backend = _PilBackend(spec, self.device)
        self.set_epoch(0)

    def set_epoch(self, epoch: int, rank: int = 0) -> None:
        """Restart the augmentation draws from (seed, epoch, rank): reproducible, different per epoch."""
        self._epoch = epoch
        self._rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed % 2**64, epoch, rank])))

    def _draw(self, n: int, keys, sizes: np.ndarray) -> _Draws:
        """This batch's crops and flips: keyed by (seed, epoch, key) when keys are given, else the
        next draws of the (seed, epoch, rank) sequence."""
        rrc = self.spec.crop == "random_resized"
        if keys is None:
            pos = self._rng.random((2, n), dtype=np.float32)
            flip = self._rng.integers(0, 2, n, dtype=np.int32)
            u = self._rng.random((n, _RRC_TRIES, 4)) if rrc else None
        else:
            pos, flip = _keyed_draws(self.seed, self._epoch, keys)
            u = _keyed_window_uniforms(self.seed, self._epoch, keys) if rrc else None
        if self.spec.crop == "center":
            pos[:] = 0.5
        elif self.spec.crop == "random":
            pos = _uniform_offsets(pos, _crop_room(self.spec, sizes))
        if not self.spec.mirror:
            flip[:] = 0
        window = _random_resized_windows(u, sizes, self.spec.scale, self.spec.ratio) if rrc else None
        return _Draws(pos[0], pos[1], flip, window)

    def decode(self, images: "BinaryColumn | BinaryChunks | Sequence[bytes]", keys=None) -> DecodeResult:
        """Decode a batch; bad rows go to `failures` (never raised), good rows to `images` in order.

        `keys`: one integer per row naming the sample (int64 tensor or array); its crop and flip
        then depend only on (seed, epoch, key)."""
        return self.collect(self.submit(images, keys))

    def submit(self, images: "BinaryColumn | BinaryChunks | Sequence[bytes]", keys=None) -> _Job:
        """Check the headers, draw the augmentations and start decoding a batch (DALI decodes it
        in the background); `collect(job)` returns its `DecodeResult`. Submitting batch n+1
        before collecting batch n overlaps n+1's decode with the caller's work on n. Jobs are
        collected (or `cancel`led) in the order they were submitted. Raises ValueError (too large
        a batch, bad `keys`) before anything starts."""
        enc = _encoded(images)
        n = len(enc)
        if n > self.max_batch_size:
            raise ValueError(f"a batch of {n} images is larger than max_batch_size={self.max_batch_size}")
        if keys is not None:
            keys = np.asarray(keys, dtype=np.int64)
            if keys.shape != (n,):
                raise ValueError(f"`keys` should hold one integer per image ({n}), "
                                 f"but has shape {tuple(keys.shape)}")
        sizes, failures = _check_headers(enc, self.spec, complete_jpeg=self._gpu_dali)
        draws = self._draw(n, keys, np.maximum(sizes, 1))
        keep = np.ones(n, bool)
        keep[[r for r, _ in failures]] = False
        rows = np.flatnonzero(keep)
        job = _Job(enc, rows, draws.take(rows), _kind(self.spec, sizes[rows]), sizes, failures)
        self._backend.submit(job)
        return job

    def collect(self, job: _Job) -> DecodeResult:
        """Wait for a submitted batch: its good rows decoded in order, its bad rows in `failures`."""
        parts, ok, bad = self._backend.collect(job)
        images = _cat(parts) if parts else _empty(self.spec, self.device)
        return DecodeResult(images, torch.tensor(ok, dtype=torch.int64),
                            tuple(sorted(job.header_failures + bad)))

    def cancel(self, job: _Job) -> None:
        """Drop a submitted batch that will not be collected (waits for DALI to finish it)."""
        self._backend.discard(job)

    def close(self) -> None:
        """Release the pipeline (DALI memory); the decoder cannot be used afterwards."""
        self._backend.close()


def _default_threads(device: str) -> int:
    """DALI's host threads: every core for "mixed" decoding on a GPU (nvJPEG's host stage, the
    Huffman decoding of all but the largest images, runs on them), at most 8 on the CPU."""
    cores = os.cpu_count() or 1
    return cores if device == "cuda" else min(8, cores)


def _resolve_device(spec: ImageDecode) -> str:
    """The torch device of the output ("cuda" | "cpu"), through `ImageDecode.resolve` (its errors)."""
    return "cuda" if spec.resolve().device == "gpu" else "cpu"
