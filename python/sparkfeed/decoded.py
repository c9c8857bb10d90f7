"""What every decoder returns for a batch (`decode.ImageDecoder`, `arrays.NpyDecoder`); kept
apart so that a loader decoding only arrays does not import PIL or DALI."""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
