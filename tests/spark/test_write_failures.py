"""A write that fails in Spark, or whose shards the driver cannot all see, with real Spark.

A user's UDF raising mid-write surfaced as pyspark's own PythonException naming no dataset; now
it is a WriteFailedError naming the dataset and the format, the UDF's message in it and the Spark
error its cause, and nothing at the path looks like a dataset. A write whose executors put shards
where the driver does not see them (a path local to one machine on a cluster) wrote a manifest
from the driver's listing, silently short of rows (Parquet), or one naming shards the driver's
path lacks (webdataset); now it fails naming the dataset and the shards missing.
"""

import os
import sys
import threading
import time

import dsutil
import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

import sparkfeed
from sparkfeed.manifest import MANIFEST_NAME
from sparkfeed.writecheck import WriteFailedError

pytestmark = pytest.mark.spark
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


@F.udf(T.IntegerType())
def _fails_at_37(x):
    if x == 37:
        raise RuntimeError("user udf failed at row 37")
    return x


def _data_files(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path)
                  for f in fs if f.startswith("part-") or "_temporary" in d)


@pytest.mark.parametrize("format", ["parquet", "webdataset"])
def test_a_udf_failing_mid_write_names_dataset_and_format_and_leaves_no_dataset(spark, tmp_path,
                                                                                 format):
    df = spark.range(100).select(F.col("id").cast("string").alias("key"),
                                 _fails_at_37(F.col("id").cast("int")).alias("v"))
    path = tmp_path / "ds"
    with pytest.raises(WriteFailedError) as info:
        sparkfeed.write(df, str(path), format=format, samples_per_shard=10)
    text = str(info.value)
    assert f"dataset {str(path)!r}: the {format} write failed in Spark" in text
    assert "RuntimeError: user udf failed at row 37" in text
    assert "no manifest was written" in text
    assert info.value.__cause__ is not None and "user udf failed" in str(info.value.__cause__)
    assert not (path / MANIFEST_NAME).exists()
    assert _data_files(path) == [] if path.exists() else True
    with pytest.raises(sparkfeed.ManifestError):
        sparkfeed.read_manifest(str(path))


@pytest.mark.parametrize("format", ["parquet", "webdataset"])
def test_a_failed_overwrite_leaves_the_old_dataset_whole_when_spark_had_not_replaced_it(
        spark, tmp_path, format):
    """A UDF fails before the write tasks run (in the count job, or in the stage before the
    shuffle): Spark has deleted nothing, and the old dataset is still a whole dataset (before,
    a Parquet overwrite had already removed its manifest, leaving bare part files)."""
    path = tmp_path / "ds"
    good = spark.range(20).select(F.col("id").cast("string").alias("key"), F.col("id").alias("v"))
    sparkfeed.write(good, str(path), format=format)
    ints = F.col("id").cast("int")
    filtered = spark.range(100).where(_fails_at_37(ints) >= 0).select(
        F.col("id").cast("string").alias("key"), F.col("id").alias("v"))
    with pytest.raises(WriteFailedError, match=r"nothing was written, and the path is as it was"):
        sparkfeed.write(filtered, str(path), format=format, mode="overwrite")
    assert sparkfeed.read_manifest(str(path)).num_samples == 20
    df = spark.range(100).select(F.col("id").cast("string").alias("key"),
                                 _fails_at_37(ints).alias("v"))
    with pytest.raises(WriteFailedError, match=r"the dataset that was at the path is unchanged"):
        sparkfeed.write(df, str(path), format=format, mode="overwrite")
    assert sparkfeed.read_manifest(str(path)).num_samples == 20
    got = sorted(v for b in sparkfeed.DataLoader(str(path), batch_size=8, columns=["v"])
                 for v in b["v"].tolist())
    assert got == list(range(20))


class _ShardThief(threading.Thread):
    """Deletes the first shard a write task commits (and its .idx) before the job commits: the
    driver then sees fewer shards than the executors wrote, as with a driver-local path."""

    def __init__(self, root, suffix):
        super().__init__(daemon=True)
        self.root, self.suffix, self.taken, self.stop = str(root), suffix, None, False
        self.old = set(os.listdir(root)) if os.path.isdir(root) else set()

    def _committed(self, d: str, name: str) -> bool:
        """A part file at its committed place: the root (webdataset's task commit moves it
        there), the webdataset overwrite's staging directory (_temporary/<job>/committed), or a
        Parquet task's directory (FileOutputCommitter's task commit)."""
        return name.startswith("part-") and name.endswith(self.suffix) and (
            d == self.root and name not in self.old or os.path.basename(d).startswith("task_")
            or os.path.basename(d) == "committed")

    def run(self):
        while not self.stop and self.taken is None:
            for d, _, files in os.walk(self.root):
                hits = sorted(f for f in files if self._committed(d, f))
                if hits:
                    self.taken = hits[0]
                    for f in files:
                        if f.startswith(hits[0]):
                            os.remove(os.path.join(d, f))
                    return
            time.sleep(0.001)


@pytest.mark.parametrize("format, suffix", [("parquet", ".parquet"), ("webdataset", ".tar")])
def test_shards_the_driver_cannot_see_fail_the_write_naming_them(spark, tmp_path, format, suffix):
    """No manifest names shards that are not there. A Parquet overwrite's old dataset is gone
    (Spark deleted it before its tasks wrote); a webdataset overwrite's is kept whole (the job
    commit that refuses the write runs before it would delete the old dataset)."""
    path = tmp_path / "ds"
    sparkfeed.write(spark.range(5).selectExpr("cast(id as string) key", "id as v"), str(path),
                    format=format)
    df = spark.range(400).select(F.col("id").cast("string").alias("key"), F.col("id").alias("v"))
    thief = _ShardThief(path, suffix)
    thief.start()
    try:
        with pytest.raises(WriteFailedError) as info:
            sparkfeed.write(df, str(path), format=format, samples_per_shard=10, mode="overwrite")
    finally:
        thief.stop = True
        thief.join()
    assert thief.taken is not None
    text = str(info.value)
    assert f"dataset {str(path)!r}" in text and "no manifest was written" in text
    assert "do not see the same files" in text
    partition = thief.taken.split("-")[1]
    assert f"part-{partition}-" in text, (thief.taken, text)
    if format == "webdataset":
        assert "the dataset that was at the path is unchanged" in text
        assert sparkfeed.read_manifest(str(path)).num_samples == 5
        assert sorted(f for f in os.listdir(path) if f.startswith("part-")) == [
            "part-00000-0000.tar", "part-00000-0000.tar.idx"]
        return
    assert not (path / MANIFEST_NAME).exists()
    assert sorted(f for f in os.listdir(path) if f.startswith("part-")) == [], "a partial dataset"


def test_webdataset_rows_with_every_member_null_are_counted_where_the_caller_sees_it(
        spark, tmp_path, caplog):
    """Such rows write no tar sample; only the JVM's driver log said so (hidden at log level
    ERROR), and write() returned a manifest short of rows without a word."""
    df = spark.createDataFrame([("a", None, None), ("b", b"x", None), ("c", None, "t")],
                               "key string, img binary, cap string")
    with caplog.at_level("WARNING", logger="sparkfeed.writecheck"):
        m = sparkfeed.write(df, str(tmp_path / "wds"), format="webdataset")
    assert m.num_samples == 2
    said = [r.getMessage() for r in caplog.records if "every member null" in r.getMessage()]
    assert said and f"dataset {str(tmp_path / 'wds')!r}: 1 of the 3 rows" in said[0]


def test_a_failed_overwrite_of_data_without_a_manifest_says_the_files_are_still_there(spark, tmp_path):
    """Plain Spark Parquet output (no manifest) overwritten by a write whose UDF fails before
    Spark deleted it: the message said the part files were removed while they were all there."""
    path = tmp_path / "plain"
    spark.range(10).write.parquet(str(path))
    kept = sorted(f for f in os.listdir(path) if f.startswith("part-"))
    df = spark.range(100).select(F.col("id").cast("string").alias("key"),
                                 _fails_at_37(F.col("id").cast("int")).alias("v"))
    with pytest.raises(WriteFailedError, match=rf"{len(kept)} part file\(s\) are there without a "
                                               rf"manifest, such as '{kept[0]}'"):
        sparkfeed.write(df, str(path), mode="overwrite")
    assert sorted(f for f in os.listdir(path) if f.startswith("part-")) == kept
    assert not (path / MANIFEST_NAME).exists()


def held_until_ctrl_c(tmp_path):
    """A UDF that holds its task (up to 120 s) once it runs, and a thread that then sends this
    process SIGINT, as Ctrl-C does; (the UDF, the file whose presence says it ran)."""
    running = str(tmp_path / "running")

    def hold(x):
        open(running, "w").close()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not os.path.exists(running + ".never"):
            time.sleep(0.05)
        return x

    dsutil.sigint_once_exists(running)
    return F.udf(hold, T.LongType()), running


def test_an_overwrite_interrupted_before_spark_deleted_the_old_dataset_puts_its_manifest_back(
        spark, tmp_path):
    """Ctrl-C during a Parquet overwrite (write cancels its jobs, KeyboardInterrupt is raised)
    in the stage before the write tasks: the old files were all there, but its manifest, removed
    first, stayed removed."""
    path = tmp_path / "ds"
    sparkfeed.write(spark.range(20).selectExpr("id"), str(path))
    hold, running = held_until_ctrl_c(tmp_path)
    df = spark.range(0, 50, numPartitions=1).select(hold("id").alias("id"))
    with pytest.raises(KeyboardInterrupt):
        sparkfeed.write(df, str(path), mode="overwrite")
    assert os.path.exists(running), "the write's job never ran"
    assert sparkfeed.read_manifest(str(path)).num_samples == 20


def test_ctrl_c_in_a_webdataset_write_cancels_its_job_and_leaves_no_dataset(spark, tmp_path):
    """The write job's tasks are held in a UDF until Ctrl-C: the KeyboardInterrupt reaches the
    caller, Spark runs no job of it afterwards (the held tasks were killed, not left writing
    shards), and the path holds no manifest and no shard."""
    path = tmp_path / "wds"
    hold, running = held_until_ctrl_c(tmp_path)
    df = spark.range(0, 40, numPartitions=2).select(
        F.format_string("k%d", "id").alias("key"), hold("id").alias("x"))
    with pytest.raises(KeyboardInterrupt):
        sparkfeed.write(df, str(path), format="webdataset", samples_per_shard=10)
    assert os.path.exists(running), "the write's job never ran"
    tracker = spark.sparkContext.statusTracker()
    deadline = time.monotonic() + 60  # cancelling is asynchronous: wait for it, not a time limit
    while tracker.getActiveJobsIds() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tracker.getActiveJobsIds() == []
    assert not (path / MANIFEST_NAME).exists()
    left = [f for f in os.listdir(path) if f.startswith("part-")] if path.exists() else []
    assert left == []
