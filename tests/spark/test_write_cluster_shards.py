"""Shard sizes of `sparkfeed.write(..., cluster_by=...)` with real Spark writes: a skewed key (70%
of the rows share one value) and an even one both give n = ceil(rows / samples_per_shard) shards
of nearly equal size, none above samples_per_shard, still sorted and clustered; so do rows alike
as a whole. Before, the range
partitions followed Spark's small sample and could not split a value, so 5,000 rows at 500 a shard
made 16 shards (seven of 100 rows), and an even key 14 (shards of 10, 20, 25 rows)."""

import math
import os
import sys

import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

import sparkfeed

pytestmark = pytest.mark.spark
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
ROWS = 5000


def _frames(spark):
    skewed = F.when(F.col("id") % 10 < 7, 0).otherwise(F.col("id") % 50 + 1)
    return {"skewed": spark.range(ROWS).select("id", skewed.cast("int").alias("label")).repartition(7),
            "even": spark.range(ROWS).select("id", (F.col("id") * 7919 % 1000).cast("int")
                                             .alias("label")).repartition(3),
            # rows alike as a whole (no hash tells them apart): 12 shards of 500, 500, 500, 167
            "identical": spark.range(ROWS).select((F.col("id") % 3).cast("int").alias("label"))
            .repartition(4)}


@pytest.mark.parametrize("format", ["parquet", "webdataset"])
@pytest.mark.parametrize("per_shard", [500, 777])
def test_cluster_by_gives_ceil_shards_of_nearly_equal_size(spark, tmp_path, format, per_shard):
    n = math.ceil(ROWS / per_shard)
    for name, df in _frames(spark).items():
        path = str(tmp_path / f"{name}-{format}")
        m = sparkfeed.write(df, path, format=format, samples_per_shard=per_shard, cluster_by="label")
        sizes = [s.num_samples for s in m.shards]
        assert sum(sizes) == ROWS and len(sizes) == n, (name, sizes)
        assert max(sizes) <= per_shard and max(sizes) - min(sizes) <= 1, (name, sizes)
        ranges = [(s.stats["label"].min, s.stats["label"].max) for s in m.shards]
        assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:])), (name, ranges)  # in order
        if format == "parquet":
            for s in m.shards:
                labels = pq.read_table(os.path.join(path, s.path), columns=["label"]).column("label")
                assert labels.to_pylist() == sorted(labels.to_pylist())
        if name != "identical":
            ids = sorted(i for b in sparkfeed.DataLoader(path, batch_size=1000, columns=["id"])
                         for i in b["id"].tolist())
            assert ids == list(range(ROWS)), name
