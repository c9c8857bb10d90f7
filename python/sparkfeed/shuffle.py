"""(seed, epoch, dataset) -> the epoch's order. Pure functions; never of ranks or workers.

The shuffle works on *runs*: consecutive work units of one shard (row groups, in file order),
so that reading a run is one call that reads consecutive row groups. Runs are permuted with
(seed, epoch); the permuted sequence is cut into *blocks* of whole runs, and the rows of each
block are permuted with (seed, epoch, block), as Mosaic Streaming's shuffle-block algorithms
(py1b) do. A block is read once, held while its positions are delivered, and then dropped: the
memory is one block of the projected columns per lane, and the mixing is uniform inside a block.

Worked example: 6 runs of 1,000 rows, block=3,000. Runs permuted (say 4 0 5 2 1 3); blocks
{4 0 5} and {2 1 3}; positions 0..2,999 are the 3,000 rows of runs 4, 0 and 5 in an order drawn
with (seed, epoch, 0). A batch of 256 positions is then a uniform draw from 3,000 rows, whatever
the order the rows were written in (data clustered by label included).

Algorithms (`ALGORITHMS`, chosen by name with `shuffle_algo`), one signature:
`algo(run_sizes, seed, epoch, block, max_runs) -> (run order, block bounds in that order)`.

The default block also holds at most `MAX_BLOCK_RUNS` runs. A block is read whole before its
first position is delivered, so a block of many tiny runs (10,000 files of 10 rows: one block of
all 100,000 rows at the default size) makes the first batch wait for every file of it (14.5 s
there); 512 runs read in well under a second and still mix a batch of 256 across up to 512
stretches of the data.

* "block" (default): runs permuted, cut into balanced blocks of at most `block` samples plus
  one run, and (`max_runs`) of at most that many runs; rows mixed across the whole block.
* "unit": runs permuted, each run its own block (rows mixed within a run only). Cheaper in
  memory, poor on clustered data: kept as the reference the mixing tests must beat.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["ALGORITHMS", "DEFAULT_ALGORITHM", "BLOCK_BYTES", "MIN_BLOCK", "MAX_BLOCK", "RUN_UNITS", "MAX_BLOCK_RUNS",
           "default_block", "runs", "runs_in_order", "block_layout", "block_permutation"]

DEFAULT_ALGORITHM = "block"
BLOCK_BYTES = 256 << 20  # default block: about this many bytes of stored data (see default_block)
MIN_BLOCK = 2_048         # ... but never fewer samples than this
MAX_BLOCK = 1 << 18       # ... nor more (Mosaic's smallest default shuffle block)
RUN_UNITS = 16            # units in one run at most (what `Reader.read_run` reads in one call)
MAX_BLOCK_RUNS = 1024     # runs in one default block at most (see the module docstring)

Layout = tuple[np.ndarray, np.ndarray]


_WIDE_KEYS = 0x77696465  # "wide": marks the words of keys outside [0, 2**32) (`key_words`)


def key_words(key: Sequence[int]) -> list[int]:
    """The 32-bit words that seed numpy from integer keys (seed, epoch, ...). Keys in
    [0, 2**32) give their own words, as they always did (saved orders stay); any other key (a
    64-bit seed such as `torch.initial_seed()`, a negative one, as torch maps it: modulo 2**64)
    adds the high words and a tag: before, only the low 32 bits counted, so seeds 0 and 2**32
    gave the same order without a word."""
    if all(0 <= k < 2**32 for k in key):
        return [*key, len(key)]
    wide = [k % 2**64 for k in key]
    return [w & 0xFFFFFFFF for w in wide] + [w >> 32 for w in wide] + [len(key), _WIDE_KEYS]


def narrow_seed(seed: int) -> bool:
    """Whether `seed` orders as it did before 64-bit seeds counted whole (`key_words`)."""
    return 0 <= seed < 2**32


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(key_words(key))


def default_block(sample_bytes: float) -> int:
    """The default block, in samples: `BLOCK_BYTES` of the dataset's stored bytes per sample
    (the manifest's `num_bytes / num_samples`), clamped to [MIN_BLOCK, MAX_BLOCK]. It depends on
    the dataset only, so the order stays a function of (seed, epoch, dataset)."""
    if not sample_bytes or sample_bytes <= 0:
        return MAX_BLOCK
    return int(min(MAX_BLOCK, max(MIN_BLOCK, BLOCK_BYTES // sample_bytes)))


def runs(shards: Sequence[int], counts: Sequence[int], block: int) -> np.ndarray:
    """Bounds of the runs over plan units (plan order is shard by shard, row groups ascending):
    consecutive units of one shard, at most `RUN_UNITS` units, whose first rows fall in one
    stretch of block/8 samples of the shard (so a run holds at most block/8 samples plus one
    unit, and a block at least ~8 runs). Vectorised: plans have tens of thousands of units."""
    shards, counts = np.asarray(shards, dtype=np.int64), np.asarray(counts, dtype=np.int64)
    n = len(counts)
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    index = np.arange(n, dtype=np.int64)
    new_shard = np.ones(n, dtype=bool)
    new_shard[1:] = shards[1:] != shards[:-1]
    first = np.maximum.accumulate(np.where(new_shard, index, 0))   # first unit of each unit's shard
    before = np.cumsum(counts) - counts                            # rows before each unit
    key_rows = (before - before[first]) // max(1, block // 8)
    key_units = (index - first) // RUN_UNITS
    starts = new_shard.copy()
    starts[1:] |= (key_rows[1:] != key_rows[:-1]) | (key_units[1:] != key_units[:-1])
    return np.append(np.flatnonzero(starts), n).astype(np.int64)


def _balanced_cuts(sizes: np.ndarray, block: int, max_runs: int | None = None) -> np.ndarray:
    """Block bounds (indices into `sizes`) for blocks of whole runs: ceil(total / block) blocks,
    each ending at the last run boundary before its share of the total, so every block holds at
    most total/blocks <= `block` samples plus one run; then a block of more than `max_runs` runs
    is split into equal parts of at most that many."""
    ends = np.cumsum(sizes)
    total = int(ends[-1]) if len(ends) else 0
    n = max(1, -(-total // max(1, block)))
    targets = [total * i // n for i in range(1, n)]
    cuts = np.searchsorted(ends, targets, side="right")
    cuts = np.unique(np.concatenate([[0], cuts, [len(sizes)]])).astype(np.int64)
    return _split_runs(cuts, max_runs) if max_runs else cuts


def _split_runs(cuts: np.ndarray, max_runs: int) -> np.ndarray:
    """`cuts` with every block of more than `max_runs` runs split into equal parts."""
    out = [cuts[:1]]
    for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
        parts = -(-(b - a) // max_runs)
        out.append(a + (b - a) * np.arange(1, parts + 1, dtype=np.int64) // parts)
    return np.concatenate(out).astype(np.int64)


def _block_algo(sizes: np.ndarray, seed: int, epoch: int, block: int, max_runs: int | None) -> Layout:
    order = _rng(seed, epoch).permutation(len(sizes))
    return order, _balanced_cuts(sizes[order], block, max_runs)


def _unit_algo(sizes: np.ndarray, seed: int, epoch: int, block: int, max_runs: int | None) -> Layout:
    order = _rng(seed, epoch).permutation(len(sizes))
    return order, np.arange(len(sizes) + 1, dtype=np.int64)


ALGORITHMS: dict[str, Callable[[np.ndarray, int, int, int, int | None], Layout]] = {
    "block": _block_algo,
    "unit": _unit_algo,
}


def block_layout(algo: str, sizes: Sequence[int], seed: int, epoch: int, block: int,
                 max_runs: int | None = None) -> Layout:
    """(run order, block bounds) for runs of `sizes` samples under algorithm `algo`, blocks of at
    most `block` samples (plus one run) and, where given, `max_runs` runs."""
    if algo not in ALGORITHMS:
        raise ValueError(f"`shuffle_algo` should be one of {sorted(ALGORITHMS)}, but got "
                         f"shuffle_algo={algo!r}")
    return ALGORITHMS[algo](np.asarray(sizes, dtype=np.int64), seed, epoch, block, max_runs)


def runs_in_order(bounds: np.ndarray, run_order: np.ndarray) -> np.ndarray:
    """The unit indices of the runs (`bounds`) taken in `run_order`, one after another."""
    lengths = np.diff(bounds)[run_order]
    offsets = np.cumsum(lengths) - lengths
    return (np.arange(int(lengths.sum()), dtype=np.int64)
            + np.repeat(bounds[:-1][run_order] - offsets, lengths))


def block_permutation(seed: int, epoch: int, block: int, length: int) -> np.ndarray:
    """The order of the `length` samples of block `block` (positions -> rows of the block)."""
    return _rng(seed, epoch, block, 1).permutation(length)
