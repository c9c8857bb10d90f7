"""Paired timing of a 2-source mix against one source of the same rows (the `mix` scenario of
`sparkfeed bench`, run as alternating pairs so that a busy machine slows both sides alike).

    python examples/bench_mix.py DATASET [--pairs 15] [--shuffle] [--workers 2] [--batch-size 256]
    python examples/bench_mix.py DATASET --stages [--shuffle] [--repeats 15]

DATASET is any sparkfeed Parquet dataset, e.g. the benchmark's tabular data
(~/.cache/sparkfeed-bench/tabular-*). Each pair runs one epoch of the single dataset and one of
the same files as two `sparkfeed.Source`s (half the shards each, weights = sizes), in turn
order alternating; it prints the median over pairs of mix/one for wall time and for CPU time
(this process and its threads), which a loaded machine disturbs far less than wall time.

`--stages` says where the mix's extra time goes instead: one lane on the calling thread (no
worker threads), the CPU time of one epoch of each side and of each stage the mix adds, each the
least over `--repeats` epochs (the least is what a busy machine disturbs least).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np

from sparkfeed.bench import runners
from sparkfeed.bench.datasets import Data


def one_epoch(ctx: runners.Context, sources: int, shuffle: bool) -> tuple[float, float, int]:
    wall, cpu = time.perf_counter(), time.process_time()
    samples = sum(runners.sparkfeed_mix(ctx, sources=sources, shuffle=shuffle))
    return time.perf_counter() - wall, time.process_time() - cpu, samples


def _least_ms(rows: dict, repeats: int) -> dict:
    """The least CPU ms of each row over `repeats` rounds, the rows taking turns in each round
    (so that a busy spell of the machine falls on all of them alike)."""
    least = dict.fromkeys(rows, float("inf"))
    for _ in range(repeats):
        for name, f in rows.items():
            start = time.process_time()
            f()
            least[name] = min(least[name], (time.process_time() - start) * 1e3)
    return least


def _laid_out(mixrows, parts):
    """The first step of `mixrows._mixed`: the sources' rows one after another (shuffle pieces
    gathered into place)."""
    flat = [b for blocks in parts for b in blocks]
    from sparkfeed.segments import Block

    return Block.concat([mixrows._gathered(b) for b in flat])


def stages(path: str, shuffle: bool, batch_size: int, repeats: int) -> None:
    """CPU ms per epoch of one source, of the 2-source mix, and of each stage the mix adds."""
    import sparkfeed
    from sparkfeed import mix, mixrows, mixshares
    from sparkfeed.bench.runners import TABULAR_COLUMNS
    from sparkfeed.stats import Stats
    from sparkfeed.segments import Block

    whole = sparkfeed.read_manifest(path)
    kwargs = dict(batch_size=batch_size, columns=TABULAR_COLUMNS, shuffle=shuffle, seed=0)
    halves = [dataclasses.replace(whole, shards=shards, num_samples=sum(s.num_samples for s in shards),
                                  num_bytes=sum(s.num_bytes for s in shards))
              for shards in (whole.shards[:len(whole.shards) // 2], whole.shards[len(whole.shards) // 2:])]
    one = sparkfeed.DataLoader(path, **kwargs)._engine
    two = sparkfeed.DataLoader([sparkfeed.Source(path, weight=m.num_samples, manifest=m) for m in halves],
                               **kwargs)._engine
    n = two.plan().num_samples
    pieces, real = [], mix._mixed
    mix._mixed = lambda parts, labels, present: pieces.append((parts, labels, present)) or real(parts, labels, present)
    for _ in two.segments(0, [(0, n)], Stats()):  # one epoch's pieces, kept to time the stages alone
        pass
    mix._mixed = real
    grid, account = two._grid(0), two._accounting(0, [(0, n)])
    empty = Block({}, batch_size)
    rows = {
        "one source, one epoch": lambda: [None for _ in one.deliveries(0, [(0, n)], 0, batch_size)],
        "2-source mix, one epoch": lambda: [None for _ in two.deliveries(0, [(0, n)], 0, batch_size)],
        "  labels of every block (grid)": lambda: [mixshares.block_labels(grid.counts, grid.plan.blocks, g, seed=0, epoch=0,
                                                                         shuffle=shuffle) for g in range(grid.plan.blocks)],
        "  gather index of every piece": lambda: [mixrows._gather_index(labels, present) for _, labels, present in pieces],
        "  laying out the parts (as blocks)": lambda: [_laid_out(mixrows, parts) for parts, _, _ in pieces],
        "  lay-out + index + gather (the copy)": lambda: [real(*piece) for piece in pieces],
        "  per-piece label counts": lambda: [np.flatnonzero(mixrows._label_counts(labels, 2)) for _, labels, _ in pieces],
        "  per-batch source counts": lambda: [account(empty, s, {}, {}) for s in range(0, n - batch_size, batch_size)],
    }
    print(f"{n:,} rows, shuffle={shuffle}, batch {batch_size}, one lane on this thread, {len(pieces)} pieces mixed; "
          f"CPU ms per epoch, least of {repeats}:")
    for name, ms in _least_ms(rows, repeats).items():
        print(f"{name:40s} {ms:7.2f}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset")
    p.add_argument("--pairs", type=int, default=15)
    p.add_argument("--shuffle", action="store_true")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--stages", action="store_true", help="where the mix's time goes (one lane, no threads)")
    p.add_argument("--repeats", type=int, default=15, help="epochs per --stages row (the least is kept)")
    args = p.parse_args(argv)
    if args.stages:
        stages(args.dataset, args.shuffle, args.batch_size, args.repeats)
        return
    data = Data(tabular=args.dataset, images="", image_folder="", webdataset=None, webdataset_note="",
                build_s=0)
    ctx = runners.Context(data=data, batch_size=args.batch_size, workers=args.workers, image_size=0)
    one_epoch(ctx, 1, args.shuffle), one_epoch(ctx, 2, args.shuffle)  # warm-up
    walls, cpus, rates = [], [], []
    for k in range(args.pairs):
        order = (1, 2) if k % 2 == 0 else (2, 1)
        runs = {n: one_epoch(ctx, n, args.shuffle) for n in order}
        assert runs[1][2] == runs[2][2], runs
        walls.append(runs[1][0] / runs[2][0])
        cpus.append(runs[1][1] / runs[2][1])
        rates.append((runs[1][2] / runs[1][0], runs[2][2] / runs[2][0]))
    print(f"{runs[1][2]:,} rows, shuffle={args.shuffle}, {args.workers} workers, batch {args.batch_size}, "
          f"{args.pairs} pairs")
    print(f"one source: median {statistics.median(r[0] for r in rates):,.0f} samples/s; "
          f"2-source mix: median {statistics.median(r[1] for r in rates):,.0f} samples/s")
    print(f"mix / one source, median over pairs: wall {statistics.median(walls):.2f}, "
          f"CPU {statistics.median(cpus):.2f}")


if __name__ == "__main__":
    main()
