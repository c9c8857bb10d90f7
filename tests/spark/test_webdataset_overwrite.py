"""mode("overwrite") of a webdataset keeps the old dataset until the job commits: tasks commit
their shards into the job's staging directory (_temporary/<job>/committed), and only the job
commit deletes the old dataset (its manifest first) and moves the new shards in. Before, the
old dataset was deleted before the tasks ran, so a write whose task failed (a UDF raising, a
bad image) left an empty directory: the old dataset was lost."""

import hashlib
import os
import sys

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

import sparkfeed
from sparkfeed.manifest import MANIFEST_NAME
from test_write_failures import _fails_at_37

pytestmark = pytest.mark.spark
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def _key_changing_at_37(marker: str):
    """A key UDF: str(id), but row 37 gets key "36" from its second computation on (O_EXCL on a
    marker file): the count job sees unique keys, the write job a key twice, which its task (or
    the job commit) refuses after the tasks started."""
    @F.udf(T.StringType())
    def udf(x):
        if x == 37:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return "36"
        return str(x)
    return udf


def _files(path) -> dict:
    """Every file under path (relative name -> sha256)."""
    out = {}
    for d, _, names in os.walk(path):
        for n in names:
            full = os.path.join(d, n)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _rows(spark, path) -> list:
    return sorted((r["key"], r["v"]) for r in spark.read.format("webdataset").load(str(path))
                  .collect())


def _old(spark, path, n=40):
    """An old dataset of n samples (keys o0.., v = id) in 10-sample shards."""
    df = spark.range(n).select(F.concat(F.lit("o"), F.col("id")).alias("key"),
                               F.col("id").cast("int").alias("v"))
    df.repartition(n // 10).write.format("webdataset").option("samplesPerShard", 10).save(str(path))
    return _files(path)


def test_a_failed_direct_overwrite_leaves_the_old_dataset_whole(spark, tmp_path):
    """Invariant: df.write.format("webdataset").mode("overwrite") whose task fails leaves every
    file of the old dataset as it was (manifest and shards, byte for byte, nothing more), and
    the old dataset reads in full."""
    path = tmp_path / "wds"
    before = _old(spark, path)
    df = spark.range(100).select(F.col("id").cast("string").alias("key"),
                                 _fails_at_37(F.col("id").cast("int")).alias("v"))
    with pytest.raises(Exception, match="user udf failed at row 37"):
        df.write.format("webdataset").mode("overwrite").save(str(path))
    assert _files(path) == before
    assert _rows(spark, path) == sorted((f"o{i}", i) for i in range(40))


def test_a_successful_overwrite_replaces_every_old_file(spark, tmp_path):
    """Invariant: a successful overwrite with fewer shards than the old dataset leaves only the
    new dataset: its manifest, its shards and indexes, no old shard and no _temporary."""
    path = tmp_path / "wds"
    _old(spark, path)
    (path / "notes.txt").write_text("a stray file, replaced with the dataset as before")
    new = spark.range(5).select(F.concat(F.lit("n"), F.col("id")).alias("key"),
                                F.col("id").cast("int").alias("v"))
    new.coalesce(1).write.format("webdataset").mode("overwrite").save(str(path))
    assert sorted(_files(path)) == [MANIFEST_NAME, "part-00000-0000.tar",
                                    "part-00000-0000.tar.idx"]
    m = sparkfeed.read_manifest(str(path))
    assert m.num_samples == 5 and [s.path for s in m.shards] == ["part-00000-0000.tar"]
    assert _rows(spark, path) == [(f"n{i}", i) for i in range(5)]


def test_sparkfeed_write_overwrite_failing_in_its_write_job_keeps_the_old_dataset(spark, tmp_path):
    """Invariant: sparkfeed.write(format="webdataset", mode="overwrite") whose write job fails
    (its count job passed: the DataFrame changed between the jobs) leaves the old dataset
    unchanged: every file as it was, read in full."""
    path = tmp_path / "wds"
    before = _old(spark, path)
    key = _key_changing_at_37(str(tmp_path / "seen-37"))
    df = spark.range(100).select(key(F.col("id")).alias("key"), F.col("id").cast("int").alias("v"))
    with pytest.raises(Exception, match=r'sample key|key "36"|keys in two shards'):
        sparkfeed.write(df, str(path), format="webdataset", mode="overwrite", samples_per_shard=10)
    assert os.path.exists(tmp_path / "seen-37")
    assert _files(path) == before
    assert sparkfeed.read_manifest(str(path)).num_samples == 40
    assert _rows(spark, path) == sorted((f"o{i}", i) for i in range(40))


def test_an_overwrite_of_leftovers_only_removes_them(spark, tmp_path):
    """Invariant: a path holding only a crashed job's _temporary (no dataset, nothing visible)
    is overwritten in place and ends with the new dataset's files only, as before staging."""
    path = tmp_path / "wds"
    (path / "_temporary" / "crashed-job" / "task-3").mkdir(parents=True)
    (path / "_temporary" / "crashed-job" / "task-3" / "part-00003-0000.tar").write_bytes(b"x")
    new = spark.range(5).select(F.concat(F.lit("n"), F.col("id")).alias("key"),
                                F.col("id").cast("int").alias("v"))
    new.coalesce(1).write.format("webdataset").mode("overwrite").save(str(path))
    assert sorted(_files(path)) == [MANIFEST_NAME, "part-00000-0000.tar",
                                    "part-00000-0000.tar.idx"]
