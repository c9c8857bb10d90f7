"""What every decoder returns for a batch (`decode.ImageDecoder`, `arrays.NpyDecoder`), and the
one-shape-per-batch check both image backends apply; kept
apart so that a loader decoding only arrays does not import PIL or DALI."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .tensorcopies import cat

__all__ = ["DecodeResult", "MixedSizes"]


@dataclass(frozen=True)
class DecodeResult:
    """One decoded batch: the good rows (in input order), their indices, and the refused rows."""

    images: torch.Tensor
    ok_rows: torch.Tensor
    failures: tuple[tuple[int, str], ...]


class MixedSizes(ValueError):
    """Images of more than one size in a batch decoded with `ImageDecode(size=None)`, which keeps
    each image's size (the loader adds the dataset, column and shard to the message)."""


def _same_shape(shapes) -> None:
    """With size=None images keep their size, so a batch must share one shape."""
    shapes = {tuple(s) for s in shapes}
    if len(shapes) > 1:
        raise MixedSizes(f"ImageDecode(size=None) needs same-sized images in a batch, but got shapes "
                         f"{sorted(shapes)}; pass size= to resize and crop")



def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """Join per-chunk outputs (in row order)."""
    _same_shape(p.shape[1:] for p in parts)
    return parts[0] if len(parts) == 1 else cat(parts)

