"""Shuffled vs unshuffled vs the pyarrow scan on one tabular dataset, interleaved in one process.

Runs sparkfeed (2 workers and 0 workers, shuffle off and on) and a raw `pyarrow.dataset` scan of
the same files one after another, `repeats` rounds after one untimed round, and prints medians:
samples/s, time to first batch, the ratios, and the process CPU time per epoch (less sensitive
than wall time to other work on a shared machine). Columns: the bench's tabular ones.

    python examples/shuffle_speed.py PATH [REPEATS]
    python examples/shuffle_speed.py ~/.cache/sparkfeed-bench/tabular-<hash> 11
"""

from __future__ import annotations

import glob
import os
import statistics
import sys
import time

import pyarrow.dataset as pads

import sparkfeed

COLUMNS = ["id", "label"] + [f"f{i}" for i in range(8)]


def sparkfeed_run(path: str, shuffle: bool, workers: int):
    def run():
        loader = sparkfeed.DataLoader(path, batch_size=256, columns=COLUMNS, num_workers=workers, shuffle=shuffle)
        return _timed(len(b["id"]) for b in loader)
    return run


def scan_run(path: str):
    files = sorted(glob.glob(os.path.join(path, "*.parquet")))
    return lambda: _timed(rb.num_rows for rb in pads.dataset(files, format="parquet").to_batches(
        columns=COLUMNS, batch_size=256))


def _timed(sizes):
    cpu, start, n, first = time.process_time(), time.perf_counter(), 0, None
    for size in sizes:
        n += size
        first = first or time.perf_counter() - start
    return n, time.perf_counter() - start, first, time.process_time() - cpu


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return
    path, repeats = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 7
    runs = {"plain": sparkfeed_run(path, False, 2), "shuffle": sparkfeed_run(path, True, 2),
            "plain0": sparkfeed_run(path, False, 0), "shuffle0": sparkfeed_run(path, True, 0),
            "scan": scan_run(path)}
    results = {k: [] for k in runs}
    for run in runs.values():
        run()  # untimed: imports, page cache
    for _ in range(repeats):
        for k, run in runs.items():
            results[k].append(run())
    med = {k: statistics.median(r[1] for r in v) for k, v in results.items()}
    n = results["scan"][0][0]
    for k in runs:
        base = "plain0" if k.endswith("0") else "plain"
        first = statistics.median(r[2] for r in results[k])
        cpu = statistics.median(r[3] for r in results[k])
        print(f"{k:9s} {n / med[k]:>12,.0f} samples/s  median {med[k] * 1e3:.1f} ms  first batch "
              f"{first * 1e3:.1f} ms  vs scan {med['scan'] / med[k]:.0%}  vs unshuffled "
              f"{med[base] / med[k]:.0%}  cpu {cpu * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
