"""Write throughput of format("webdataset") against Spark's own format("parquet").

Both write the same cached DataFrame (random, incompressible ~10 KB binary like a JPEG, an int
label and a caption); each is timed best of --repeat; MB/s counts the DataFrame's payload bytes.

    python examples/bench_write.py --rows 20000 --bytes 10240 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import sparkfeed


def _frame(spark, rows: int, size: int, partitions: int):
    def gen(it):
        for r in it:
            yield (f"s{r.id:08d}", os.urandom(size), int(r.id % 1000),
                   f"a photo of thing number {r.id}")

    rdd = spark.range(rows, numPartitions=partitions).rdd.mapPartitions(gen)
    df = spark.createDataFrame(rdd, "key string, image binary, label int, caption string")
    return df.cache()


def _best(write, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        write()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--bytes", type=int, default=10_240, help="binary bytes per row")
    p.add_argument("--partitions", type=int, default=os.cpu_count() or 2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default=None, help="scratch directory (default: a temporary one)")
    args = p.parse_args()

    spark = sparkfeed.spark_session(app_name="bench_write")
    df = _frame(spark, args.rows, args.bytes, args.partitions)
    df.count()
    payload = df.selectExpr("sum(length(image) + length(caption) + length(key) + 4)").first()[0]
    out = args.out or tempfile.mkdtemp(prefix="sparkfeed-bench-")
    results = {}
    try:
        writers = {
            "webdataset": lambda path: (df.write.format("webdataset").mode("overwrite")
                                        .option("codecs", json.dumps({"image": "jpeg"})).save(path)),
            "parquet": lambda path: df.write.format("parquet").mode("overwrite").save(path),
        }
        for name, write in writers.items():
            path = os.path.join(out, name)
            seconds = _best(lambda: write(path), args.repeat)
            results[name] = {"seconds": round(seconds, 3),
                             "MB_per_s": round(payload / seconds / 1e6, 1),
                             "samples_per_s": round(args.rows / seconds)}
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    ratio = results["webdataset"]["seconds"] / results["parquet"]["seconds"]
    print(f"{args.rows} rows, {payload / 1e6:.1f} MB payload, {args.partitions} partitions, "
          f"best of {args.repeat}, Spark {spark.version}")
    for name, r in results.items():
        print(f"  {name:<11} {r['seconds']:7.2f} s  {r['MB_per_s']:7.1f} MB/s  "
              f"{r['samples_per_s']:8d} samples/s")
    print(f"  webdataset time / parquet time = {ratio:.2f}")


if __name__ == "__main__":
    main()
