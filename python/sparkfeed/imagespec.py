"""What the user asks of an image column (`ImageDecode`: its fields checked when built, `resolve()`
checking this machine's CUDA and DALI), and the one place DALI is imported (`_import_dali`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from . import forks

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

