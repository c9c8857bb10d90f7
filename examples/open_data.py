"""Load data sparkfeed did not write (`make demo`): a plain Spark `partitionBy` write, indexed.

    python examples/open_data.py --output build/demo/open
    spark-submit examples/open_data.py --output s3a://bucket/open     # same, on a cluster

1. Spark writes a table the ordinary way, `df.write.partitionBy("split").parquet(PLAIN)`:
   no sparkfeed in the write, no manifest.
2. `sparkfeed.index(PLAIN)` reads the footers (never a data page) and writes
   `PLAIN/_sparkfeed.json`; `split` becomes a column with per-file min = max.
3. `sparkfeed.DataLoader(PLAIN, filter=[("split", "==", "val")])` prunes the train files and
   delivers exactly the val rows, which are checked against Spark's own count.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="directory for the plain Spark write")
    p.add_argument("--rows", type=int, default=20_000)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import sparkfeed
    from pyspark.sql import functions as F

    spark = sparkfeed.spark_session(app_name="sparkfeed-open-data")
    plain = f"{args.output.rstrip('/')}/plain"
    df = spark.range(args.rows).select(
        F.col("id"), (F.col("id") % 10).cast("int").alias("label"), F.rand(0).alias("score"),
        F.when(F.col("id") % 10 == 0, "val").otherwise("train").alias("split"))
    df.repartition(4).write.mode("overwrite").partitionBy("split").parquet(plain)
    val_rows = df.filter(F.col("split") == "val").count()
    print(f"Spark wrote {args.rows} rows with df.write.partitionBy('split').parquet({plain!r})")

    started = time.perf_counter()
    m = sparkfeed.index(plain, mode="overwrite", progress=False)
    print(f"sparkfeed.index: {len(m.shards)} files, {m.num_samples} samples, columns "
          f"{m.column_names} in {time.perf_counter() - started:.2f}s")

    loader = sparkfeed.DataLoader(plain, batch_size=512, shuffle=True, num_workers=2,
                                  filter=[("split", "==", "val")])
    started = time.perf_counter()
    got = sum(len(batch["id"]) for batch in loader)
    took = time.perf_counter() - started
    stats = loader.stats()
    print(f"DataLoader(filter split == 'val'): {got} samples in {took:.2f}s; "
          f"{stats['shards_pruned']}/{stats['shards_planned']} files pruned")
    if got != val_rows:
        print(f"error: expected {val_rows} val rows (Spark's count), got {got}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
