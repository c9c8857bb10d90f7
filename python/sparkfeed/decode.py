"""Image decoding: `ImageDecode` (what the user asks for, `imagespec.py`) -> `ImageDecoder` (here:
the backend chosen at run time, `dalidecode.py` or `pildecode.py`, fed one `decodejob._Job` a batch).

A batch's encoded images arrive as one `BinaryColumn`, as `BinaryChunks` (a batch cut across row
groups: each part's samples left in their own buffer), or as a list of `bytes`. The decoder

1. reads every row's size from its header, for the whole batch at once (`headers.py`), and
   refuses empty rows, unknown formats, more than `max_pixels` pixels and (resize=None) images
   smaller than the crop before any pixel is decoded;
2. draws crops, flips and RandomResizedCrop windows on the host as functions of
   `(seed, epoch, key)` (`crops.py`);
3. decodes the rest in one DALI pipeline run per batch (`dalidecode.py`) (`fn.decoders.image`, or
   `fn.decoders.image_slice` for a random_resized window; "mixed" on the GPU, or on the CPU),
   resizes, crops, flips and normalises; row views of the one buffer and one array per
   parameter go in, one tensor comes out (or with PIL, row by row: `pildecode.py`);
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

import os
from typing import Sequence

import numpy as np
import torch

from .binarycols import BinaryChunks, BinaryColumn
from .crops import _RRC_TRIES, _keyed_draws, _keyed_window_uniforms, _random_resized_windows
from .dalidecode import _QUEUE_DEPTH, _DaliBackend
from .decoded import DecodeResult, _cat
from .decodejob import _crop_room, _Draws, _Job, _kind, _uniform_offsets
from .encoded import _encoded
from .headers import _check_headers
from .imagespec import ImageDecode, _fail, _is_int
from .pildecode import _PilBackend

__all__ = ["ImageDecode", "ImageDecoder", "DecodeResult"]


def _empty(spec: ImageDecode, device: str) -> torch.Tensor:
    s = spec.size or 0
    shape = (0, 3, s, s) if spec.layout == "NCHW" else (0, s, s, 3)
    return torch.empty(shape, dtype=spec.out_dtype, device=device)



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
        sizes, failures = _check_headers(enc, self.spec)
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
