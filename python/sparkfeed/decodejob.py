"""One batch between the header check and the decode: its rows, its per-row draws (`_Draws`), and
the pipeline geometry it takes (`_kind`: a window, a resize, or a crop only)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .headers import _Encoded, resized_sizes

if TYPE_CHECKING:
    from .imagespec import ImageDecode

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

