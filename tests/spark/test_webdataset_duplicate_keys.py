"""`df.write.format("webdataset")` used directly (not through `sparkfeed.write`, whose count job
refuses duplicate keys up front): a sample key in two shards, of one task or of two, fails the
job commit naming the key and both shards, and leaves no manifest and no shard. Before, each
shard's writer checked its own keys only, and such a write committed two samples with one key."""

import os
import sys

import pytest

import sparkfeed

pytestmark = pytest.mark.spark
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def _keys(spark, keys, partitions=1):
    """Rows with these keys, in order, cut into `partitions` runs of equal length."""
    listed = ", ".join(f"'{k}'" for k in keys)
    return spark.range(len(keys)).repartitionByRange(partitions, "id").selectExpr(
        f"element_at(array({listed}), cast(id + 1 as int)) as key", "id as v")


def _refused(df, path, **options):
    writer = df.write.format("webdataset").option("keyColumn", "key")
    for k, v in options.items():
        writer = writer.option(k, v)
    with pytest.raises(Exception) as info:
        writer.save(str(path))
    return str(info.value)


def test_a_key_in_two_shards_of_one_task_fails_the_commit(spark, tmp_path):
    df = _keys(spark, ["k0", "k1", "k2", "k3", "k4", "k2"])
    text = _refused(df, tmp_path / "one", samplesPerShard=3)
    assert 'wrote sample keys in two shards: "k2" (in part-00000-0000.tar and ' \
           'part-00000-0001.tar)' in text, text[:2000]
    assert not [n for n in os.listdir(tmp_path / "one") if n.startswith("part-") or n.startswith("_sparkfeed")]


def test_a_key_in_shards_of_two_tasks_fails_the_commit(spark, tmp_path):
    df = _keys(spark, ["a", "b", "c", "d", "b", "e"], partitions=2)
    text = _refused(df, tmp_path / "two")
    assert 'wrote sample keys in two shards: "b" (in part-00000-0000.tar and ' \
           'part-00001-0000.tar)' in text, text[:2000]
    assert not [n for n in os.listdir(tmp_path / "two") if n.startswith("part-") or n.startswith("_sparkfeed")]
    with pytest.raises(sparkfeed.ManifestError):
        sparkfeed.read_manifest(str(tmp_path / "two"))


def test_unique_keys_over_many_shards_and_tasks_are_written(spark, tmp_path):
    df = spark.range(3000).selectExpr("concat('s', id) as key", "id as v").repartition(3)
    df.write.format("webdataset").option("keyColumn", "key").option("samplesPerShard", 100) \
        .save(str(tmp_path / "ok"))
    m = sparkfeed.read_manifest(str(tmp_path / "ok"))
    assert m.num_samples == 3000 and len(m.shards) >= 30


def test_keys_made_one_by_sanitizing_say_so(spark, tmp_path):
    df = _keys(spark, ["a.b", "c", "d", "a b"], partitions=2)
    text = _refused(df, tmp_path / "san", invalidKeys="sanitize")
    assert '"a_b" (in part-00000-0000.tar and part-00001-0000.tar)' in text, text[:2000]
    assert "invalidKeys=sanitize replaced" in text, text[:2000]
