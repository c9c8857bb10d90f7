"""Tensor copies done by numpy on the calling thread: torch runs large CPU copies on its OpenMP
threads, which then spin beside a loader's reading threads (`cat`, `empty_rows`, `copy_rows`)."""

from __future__ import annotations

import numpy as np
import torch

_SERIAL = 32_768  # elements: torch's grain size (at::internal::GRAIN_SIZE); smaller copies run inline


def cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """`torch.cat`, with large CPU copies done by numpy on the calling thread only: torch runs a
    copy of `_SERIAL` elements or more on its OpenMP threads, which then spin-wait for the next
    parallel region; on a loader's threads that spinning took 20-30% of a 2-core machine's CPU
    from the reading threads (perf, docs/benchmark-studies.md). Others (small, CUDA, mixed dtypes,
    types numpy lacks) go to torch."""
    first = tensors[0]
    if sum(t.numel() for t in tensors) >= _SERIAL and first.device.type == "cpu" and all(
            t.dtype == first.dtype and t.device == first.device and not t.requires_grad for t in tensors):
        try:
            return torch.from_numpy(np.concatenate([t.numpy() for t in tensors]))
        except (TypeError, RuntimeError):  # bfloat16 and the like: no numpy view
            pass
    return torch.cat(tensors)


def empty_rows(n: int, like: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor of `n` rows shaped and typed as `like`'s, allocated by numpy
    where it can: numpy asks the kernel for huge pages for large arrays, as `cat` gets them
    (fewer page faults while it is filled, fewer TLB misses when its rows are gathered)."""
    try:
        dtype = like[:0].numpy().dtype
    except (TypeError, RuntimeError):  # bfloat16 and the like: no numpy dtype
        return torch.empty((n, *like.shape[1:]), dtype=like.dtype)
    return torch.from_numpy(np.empty((n, *like.shape[1:]), dtype=dtype))


def copy_rows(out: torch.Tensor, at: int, rows: torch.Tensor) -> None:
    """`out[at:at + len(rows)] = rows`, by numpy on the calling thread where it can (as `cat`:
    no OpenMP threads left spinning beside the loader's), else by torch."""
    try:
        out.numpy()[at:at + len(rows)] = rows.numpy()
    except (TypeError, RuntimeError):  # bfloat16 and the like: no numpy view
        out[at:at + len(rows)].copy_(rows)
