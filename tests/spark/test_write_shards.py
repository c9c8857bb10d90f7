"""How sparkfeed.write fills shards and what it refuses about sample keys, with real Spark writes:
shard sizes read from the manifest and from the tars themselves.
"""

import os
import sys
import tarfile

import pytest

import sparkfeed
from sparkfeed.writeoptions import SampleKeyError

pytestmark = pytest.mark.spark
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def _tar_samples(path) -> dict[str, int]:
    """shard name -> samples in the tar, counted from its members (one key per sample)."""
    out = {}
    for name in sorted(os.listdir(path)):
        if name.endswith(".tar"):
            with tarfile.open(os.path.join(path, name)) as t:
                out[name] = len({m.name.split(".", 1)[0] for m in t.getmembers()})
    return out


def _sizes(manifest) -> list[int]:
    return sorted((s.num_samples for s in manifest.shards), reverse=True)


@pytest.mark.parametrize("partitions", [300, 2])
def test_tiny_partitions_give_full_webdataset_shards(spark, tmp_path, partitions):
    """300 rows at 7 a shard are ceil(300/7) = 43 shards, 42 of 7 and one of 6, whether the input
    is 300 one-row partitions or 2 large ones (round robin gave 60 shards from the 300)."""
    df = spark.range(300).selectExpr("cast(id as string) as key", "id as x") \
        .repartition(partitions)
    path = tmp_path / "wds"
    m = sparkfeed.write(df, str(path), format="webdataset", samples_per_shard=7)
    assert _sizes(m) == [7] * 42 + [6]
    in_tars = _tar_samples(path)
    assert sorted(in_tars.values(), reverse=True) == [7] * 42 + [6]
    assert in_tars == {s.path: s.num_samples for s in m.shards}
    back = spark.read.format("webdataset").load(str(path)).select("key").collect()
    assert sorted(int(r.key) for r in back) == list(range(300))  # each row once


def test_tiny_partitions_give_full_parquet_shards(spark, tmp_path):
    """The Parquet write cuts its files by the same plan: 100 one-row partitions at 8 a shard
    are 13 files (12 of 8, one of 4), and every row is there once."""
    df = spark.range(100).repartition(100)
    m = sparkfeed.write(df, str(tmp_path / "pq"), samples_per_shard=8, samples_per_row_group=3)
    assert _sizes(m) == [8] * 12 + [4]
    import pyarrow.parquet as pq
    ids = sorted(v for s in m.shards for v in pq.read_table(tmp_path / "pq" / s.path)["id"].to_pylist())
    assert ids == list(range(100))


def test_each_shard_has_a_partition_of_its_own(spark):
    """Shard p goes to partition p: the keys the repartition hashes are chosen by Spark's own
    Murmur3 (checked here against Spark's hash()), so no partition holds two shards or none."""
    import numpy as np
    from pyspark.sql import functions as F

    from sparkfeed.writeshards import _murmur3_int, count_rows, even_shards

    ids = spark.range(-500, 500).select(F.hash(F.col("id").cast("int")).alias("h")).collect()
    assert [r.h for r in ids] == _murmur3_int(np.arange(-500, 500)).tolist()
    df = spark.range(20).repartition(4)
    shuffled = even_shards(df, count_rows(df)[0], 3, 7)
    per_part = shuffled.groupBy(F.spark_partition_id().alias("p")).count().collect()
    assert sorted((r.p, r["count"]) for r in per_part) == [(p, 3) for p in range(6)] + [(6, 2)]
    assert sorted(r.id for r in shuffled.collect()) == list(range(20))


def test_the_rows_are_numbered_after_a_sort_within_each_input_partition(spark):
    """A retried task must number its rows as the first attempt did, or a row could land in two
    shards (or none): each input partition is sorted by a hash of its rows before numbering."""
    from sparkfeed.writeshards import even_shards

    shuffled = even_shards(spark.range(20).repartition(4), [5, 5, 5, 5], 3, 7)
    plan = shuffled._jdf.queryExecution().executedPlan().toString()
    assert "xxhash64" in plan and "Sort [" in plan, plan
    # the offsets and keys are one array literal each (split once when planned): 100,000 shards
    # took 38 s to plan as array(lit, ...), one py4j call and one expression per element
    assert "split(" not in plan, plan



def test_a_sample_key_in_two_shards_is_refused_before_anything_is_written(spark, tmp_path):
    """Two rows with one key, which the shuffle puts in different shards, were both written
    (and in one shard the task failed): now the write fails naming the key and its count."""
    rows = [(f"k{i}", i) for i in range(40)] + [("k7", 100), ("k7", 101), ("k3", 102)]
    df = spark.createDataFrame(rows, "key string, x long").repartition(5)
    path = tmp_path / "wds"
    with pytest.raises(SampleKeyError, match=r"'k7' \(3 rows\), 'k3' \(2 rows\)") as info:
        sparkfeed.write(df, str(path), format="webdataset", samples_per_shard=4)
    assert str(path) in str(info.value) and "'key'" in str(info.value)
    assert not path.exists() or not os.listdir(path)


def test_keys_equal_once_sanitised_are_refused(spark, tmp_path):
    """With invalidKeys=sanitize, 'a.b' and 'a b' both write 'a_b': one key for two samples."""
    df = spark.createDataFrame([("a.b", 1), ("a b", 2), ("c", 3)], "name string, x long")
    with pytest.raises(SampleKeyError, match=r"'a_b' \(2 rows\)"):
        sparkfeed.write(df, str(tmp_path / "wds"), format="webdataset",
                        options={"keyColumn": "name", "invalidKeys": "sanitize"})


def test_the_key_check_computes_no_member(spark, tmp_path):
    """The count job reads the key column only: a member column that a UDF computes (an image
    decoded, say) is not computed for the key check, only by the write."""
    from pyspark.sql import functions as F

    calls = spark.sparkContext.accumulator(0)

    def member(i):
        calls.add(1)
        return bytes([i % 256])

    df = spark.range(30).select(F.format_string("k%d", "id").alias("key"),
                                F.udf(member, "binary")("id").alias("img"))
    m = sparkfeed.write(df, str(tmp_path / "wds"), format="webdataset", samples_per_shard=4)
    assert m.num_samples == 30
    assert calls.value == 30  # once per row, by the write; none by the count job
