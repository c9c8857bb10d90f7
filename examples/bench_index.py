"""Figures for `sparkfeed index` (docs/open-data.md): indexing time for many small files, and the
loading rate of an indexed dataset next to the same rows written by `sparkfeed.write`.

    python examples/bench_index.py files  --out /tmp/bi --parquet 10000 --tars 1000 [--spark]
    python examples/bench_index.py loading --out /tmp/bi --rows 200000 [--repeats 3]

`files` makes N small Parquet files (pyarrow, 100 rows each) and M tars (webdataset's TarWriter,
10 samples each), then times `sparkfeed.index` on each, locally and with `--spark` on executors.
`loading` writes the same Spark DataFrame twice, with `sparkfeed.write` and with a plain
`df.write.parquet` (then indexed), and times a full tabular pass over each, alternating.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

import numpy as np


def _make_parquet(root: str, n: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(root, exist_ok=True)
    for k in range(n):
        ids = np.arange(k * 100, k * 100 + 100, dtype=np.int64)
        pq.write_table(pa.table({"id": ids, "label": (ids % 10).astype(np.int32), "x": ids * 0.5}),
                       f"{root}/part-{k:05d}.parquet")


def _make_tars(root: str, n: int) -> None:
    import webdataset as wds

    os.makedirs(root, exist_ok=True)
    for s in range(n):
        with wds.TarWriter(f"{root}/{s:05d}.tar") as w:
            for i in range(10):
                w.write({"__key__": f"k{s}_{i}", "cls": i, "jpg": b"\xff" * 2000, "txt": f"c {i}"})


def _time_index(path: str, spark, label: str) -> float:
    import sparkfeed

    started = time.perf_counter()
    m = sparkfeed.index(path, manifest=f"{path}.manifests/{label}.json", spark=spark,
                        mode="overwrite", progress=False)
    took = time.perf_counter() - started
    print(f"index {label:28s} {len(m.shards):6d} files {m.num_samples:9d} samples  {took:6.2f} s",
          flush=True)
    return took


def files(args) -> None:
    pq_root, tar_root = f"{args.out}/parquet{args.parquet}", f"{args.out}/tars{args.tars}"
    if not os.path.exists(pq_root):
        _make_parquet(pq_root, args.parquet)
    if not os.path.exists(tar_root):
        _make_tars(tar_root, args.tars)
    spark = None
    if args.spark:
        import sparkfeed

        spark = sparkfeed.spark_session(master=args.master)
        spark.sparkContext.parallelize(range(4), 4).count()  # start the Python workers first
    for mode, s in [("local", None)] + ([("spark", spark)] if spark else []):
        _time_index(pq_root, s, f"{args.parquet} parquet, {mode}")
        _time_index(tar_root, s, f"{args.tars} tars, {mode}")


def _pass(path: str, **kw) -> float:
    import sparkfeed

    loader = sparkfeed.DataLoader(path, batch_size=1024, columns=["id", "label", "x"], **kw)
    started = time.perf_counter()
    n = sum(len(b["id"]) for b in loader)
    return n / (time.perf_counter() - started)


def loading(args) -> None:
    import sparkfeed
    from pyspark.sql import functions as F

    spark = sparkfeed.spark_session(master=args.master)
    df = spark.range(args.rows).select(F.col("id"), (F.col("id") % 10).cast("int").alias("label"),
                                       (F.col("id") * 0.5).alias("x"))
    written, plain = f"{args.out}/written", f"{args.out}/plain"
    for p in (written, plain):
        shutil.rmtree(p, ignore_errors=True)
    sparkfeed.write(df, written, samples_per_shard=args.rows // 20)
    df.repartition(20).write.option("parquet.block.row.count.limit", 1024).parquet(plain)
    sparkfeed.index(plain, progress=False)
    rates = {"sparkfeed.write": [], "plain write + index": []}
    for _ in range(args.repeats):
        rates["sparkfeed.write"].append(_pass(written, num_workers=args.workers))
        rates["plain write + index"].append(_pass(plain, num_workers=args.workers))
    for name, r in rates.items():
        print(f"load {name:22s} median {np.median(r):12,.0f} samples/s  (runs: "
              f"{', '.join(f'{x:,.0f}' for x in r)})")
    print(f"ratio indexed / written: {np.median(rates['plain write + index']) / np.median(rates['sparkfeed.write']):.2f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    f = sub.add_parser("files", help="time indexing many small Parquet files and tars")
    f.add_argument("--parquet", type=int, default=10_000)
    f.add_argument("--tars", type=int, default=1_000)
    f.add_argument("--spark", action="store_true", help="also time the executors' footer job")
    lo = sub.add_parser("loading", help="loading rate: indexed vs written by sparkfeed.write")
    lo.add_argument("--rows", type=int, default=200_000)
    lo.add_argument("--repeats", type=int, default=3)
    lo.add_argument("--workers", type=int, default=2)
    for s in (f, lo):
        s.add_argument("--out", required=True)
        s.add_argument("--master", default="local[2]")
    args = p.parse_args(argv)
    files(args) if args.what == "files" else loading(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
