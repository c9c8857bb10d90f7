"""How well does a shuffled batch mix data clustered by a label? Distinct labels per batch.

Writes (once) a dataset clustered by `label` with `sparkfeed.write(cluster_by="label")` (Spark,
local mode): `--rows` rows, `--labels` labels of equal size, default row groups and shards. Then,
for the default shuffle and a few `shuffle_buffer` sizes, prints the mean number of distinct
labels in a batch, next to what a uniform shuffle gives (exact expectation), and the bytes read.

    python examples/shuffle_mixing.py [--rows 20000] [--labels 1000] [--batch-size 256] [--out DIR]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile

import numpy as np


def uniform_distinct(rows: int, labels: int, batch: int) -> float:
    """Expected distinct labels in `batch` rows drawn without replacement (equal label sizes)."""
    per = rows // labels
    return labels * (1 - math.exp(math.lgamma(rows - per + 1) - math.lgamma(rows - per - batch + 1)
                                  - math.lgamma(rows + 1) + math.lgamma(rows - batch + 1)))


def build(path: str, rows: int, labels: int) -> None:
    import sparkfeed
    from pyspark.sql import functions as F

    spark = sparkfeed.spark_session()
    df = spark.range(rows).select(F.col("id"), (F.col("id") * labels / rows).cast("int").alias("label"))
    sparkfeed.write(df, path, cluster_by="label", mode="overwrite")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--labels", type=int, default=1_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "sparkfeed-mixing"))
    a = parser.parse_args()
    path = os.path.join(a.out, f"clustered-{a.rows}-{a.labels}")
    if not os.path.exists(os.path.join(path, "_sparkfeed.json")):
        build(path, a.rows, a.labels)
    import sparkfeed

    print(f"uniform shuffle: {uniform_distinct(a.rows, a.labels, a.batch_size):.1f} distinct labels per batch")
    for shuffle, buffer in [(True, None), (True, 10_000), (True, 2_048), (True, 1_024), (False, None)]:
        loader = sparkfeed.DataLoader(path, batch_size=a.batch_size, shuffle=shuffle, drop_last=True,
                                      num_workers=a.workers, shuffle_buffer=buffer)
        distinct = np.mean([len(set(b["label"].tolist())) for b in loader])
        stats = loader.stats()
        name = "unshuffled" if not shuffle else f"shuffle_buffer={buffer}"
        print(f"{name:24s} {distinct:6.1f} distinct labels per batch; bytes read {stats['bytes_read']:,}; "
              f"blocks {stats.get('shuffle_blocks', 0)} holding {stats.get('shuffle_block_rows', 0):,} rows; "
              f"largest block {loader.dataset.stream().max_block:,} samples")


if __name__ == "__main__":
    main()
