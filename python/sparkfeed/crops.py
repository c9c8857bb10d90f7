"""Augmentation draws as pure functions of (seed, epoch, sample key), for whole batches in numpy.

A counter-based hash (SplitMix64's finaliser) turns each key into its own well-spread words, so
a sample's crop position, flip and RandomResizedCrop window do not depend on the batch it lands
in, the workers, the ranks or a resume; `_random_resized_windows` is torchvision's
`RandomResizedCrop.get_params` for a batch at once.
"""

from __future__ import annotations

import numpy as np


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, elementwise on uint64: a counter-based hash, so every key gets its
    own well-spread draw without a generator per row."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _keyed_words(seed: int, epoch: int, keys: np.ndarray, first: int, count: int) -> np.ndarray:
    """`count` 64-bit words (n, count) per key, numbered from `first`: pure functions of
    (seed, epoch, key, number)."""
    base = _mix64(_mix64(np.array([seed % 2**64], np.uint64)) ^ np.uint64(epoch))  # (a negative seed as torch maps it)
    h = _mix64(keys.astype(np.uint64) ^ base)
    return np.stack([_mix64(h ^ np.uint64(i)) for i in range(first, first + count)], 1)


def _uniform(words: np.ndarray) -> np.ndarray:
    """64-bit words -> float32 in [0, 1) (their top 24 bits)."""
    return (words >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)


def _keyed_draws(seed: int, epoch: int, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop positions (2, n) in [0, 1) and flips (n,) as pure functions of (seed, epoch, key)."""
    words = _keyed_words(seed, epoch, keys, 1, 3)
    return _uniform(words[:, :2]).T.copy(), (words[:, 2] & np.uint64(1)).astype(np.int32)


_RRC_TRIES = 10  # torchvision's attempts before the centre fallback


def _keyed_window_uniforms(seed: int, epoch: int, keys: np.ndarray) -> np.ndarray:
    """(n, tries, 4) uniforms for RandomResizedCrop: area, log-ratio, x, y per attempt."""
    words = _keyed_words(seed, epoch, keys, 4, 4 * _RRC_TRIES)
    return _uniform(words).astype(np.float64).reshape(len(keys), _RRC_TRIES, 4)


def _random_resized_windows(u: np.ndarray, sizes: np.ndarray, scale, ratio) -> np.ndarray:
    """torchvision's `RandomResizedCrop.get_params`, for a whole batch: (n, 4) windows
    (x0, y0, width, height) in stored pixels from uniforms `u` (n, tries, 4) and sizes (n, 2).

    Each attempt draws an area fraction in `scale` and a log-uniform aspect ratio in `ratio`;
    the first that fits wins, at a uniform position; if none fits, the centre crop of the
    whole image clamped to `ratio` (torchvision's fallback)."""
    w, h = sizes[:, :1].astype(np.float64), sizes[:, 1:].astype(np.float64)
    area = w * h * (scale[0] + u[..., 0] * (scale[1] - scale[0]))
    lo, hi = np.log(ratio[0]), np.log(ratio[1])
    aspect = np.exp(lo + u[..., 1] * (hi - lo))
    cw, ch = np.rint(np.sqrt(area * aspect)), np.rint(np.sqrt(area / aspect))
    fits = (cw > 0) & (ch > 0) & (cw <= w) & (ch <= h)
    pick = fits.argmax(1)
    rows = np.arange(len(u))
    cw, ch = cw[rows, pick], ch[rows, pick]
    w, h = w[:, 0], h[:, 0]
    x0 = np.floor(u[rows, pick, 2] * (w - cw + 1))
    y0 = np.floor(u[rows, pick, 3] * (h - ch + 1))
    # fallback: the whole image, clamped to the ratio range, centred
    in_ratio = w / np.maximum(h, 1)
    fw = np.where(in_ratio < ratio[0], w, np.where(in_ratio > ratio[1], np.rint(h * ratio[1]), w))
    fh = np.where(in_ratio < ratio[0], np.rint(w / ratio[0]), h)
    # at least a pixel: a 3 px wide image under ratio=(50, 100) got a window 0 high (torchvision's
    # too), which DALI failed ('#2') and PIL stretched from nothing
    fw, fh = np.clip(fw, 1, np.maximum(w, 1)), np.clip(fh, 1, np.maximum(h, 1))
    none = ~fits.any(1)
    cw, ch = np.where(none, fw, cw), np.where(none, fh, ch)
    x0 = np.where(none, (w - cw) // 2, x0)
    y0 = np.where(none, (h - ch) // 2, y0)
    return np.stack([x0, y0, cw, ch], 1).astype(np.int64)
