"""Time to first batch: `sparkfeed.DataLoader(path, ...)` to its first batch, in a fresh process.

Each measurement runs in a new Python process (imports, ~7 s for torch on a busy machine, are
done before the clock starts; files in the page cache), so it includes reading the manifest, planning, starting the lanes and, with
shuffle, reading and mixing the first shuffle block: what a training job waits for at its start.

    python examples/first_batch.py PATH [--shuffle] [--workers 2] [--batch-size 256] [--repeats 5] [--columns a,b]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

_CHILD = """
import json, sys, time
from sparkfeed import DataLoader  # imports torch and pyarrow before the clock starts
args = json.loads(sys.argv[1])
start = time.perf_counter()
loader = DataLoader(args["path"], batch_size=args["batch_size"], shuffle=args["shuffle"],
                              num_workers=args["workers"], columns=args["columns"])
it = iter(loader)
next(it)
first = time.perf_counter() - start
for _ in it:
    pass
print(json.dumps({"first_batch_s": first, "epoch_s": time.perf_counter() - start}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="a sparkfeed dataset")
    parser.add_argument("--shuffle", action="store_true", help="shuffle=True (the default block)")
    parser.add_argument("--workers", type=int, default=2, help="num_workers (default 2)")
    parser.add_argument("--batch-size", type=int, default=256, help="batch size (default 256)")
    parser.add_argument("--columns", default=None, help="comma-separated columns (default: all)")
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes; the median is printed")
    a = parser.parse_args()
    args = {"path": a.path, "shuffle": a.shuffle, "workers": a.workers, "batch_size": a.batch_size,
            "columns": a.columns.split(",") if a.columns else None}
    runs = []
    for _ in range(a.repeats):
        out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], check=True,
                             capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    first = statistics.median(r["first_batch_s"] for r in runs)
    epoch = statistics.median(r["epoch_s"] for r in runs)
    each = ", ".join(f"{r['first_batch_s']:.3f}" for r in runs)
    print(f"first batch {first:.3f} s (median of {a.repeats} fresh processes; all: {each}); "
          f"whole epoch {epoch:.3f} s")


if __name__ == "__main__":
    main()
