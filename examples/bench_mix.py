"""Paired timing of a 2-source mix against one source of the same rows (the `mix` scenario of
`sparkfeed bench`, run as alternating pairs so that a busy machine slows both sides alike).

    python examples/bench_mix.py DATASET [--pairs 15] [--shuffle] [--workers 2] [--batch-size 256]

DATASET is any sparkfeed Parquet dataset, e.g. the benchmark's tabular data
(~/.cache/sparkfeed-bench/tabular-*). Each pair runs one epoch of the single dataset and one of
the same files as two `sparkfeed.Source`s (half the shards each, weights = sizes), in turn
order alternating; it prints the median over pairs of mix/one for wall time and for CPU time
(this process and its threads), which a loaded machine disturbs far less than wall time.
"""

from __future__ import annotations

import argparse
import statistics
import time

from sparkfeed.bench import runners
from sparkfeed.bench.datasets import Data


def one_epoch(ctx: runners.Context, sources: int, shuffle: bool) -> tuple[float, float, int]:
    wall, cpu = time.perf_counter(), time.process_time()
    samples = sum(runners.sparkfeed_mix(ctx, sources=sources, shuffle=shuffle))
    return time.perf_counter() - wall, time.process_time() - cpu, samples


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset")
    p.add_argument("--pairs", type=int, default=15)
    p.add_argument("--shuffle", action="store_true")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    args = p.parse_args(argv)
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
