"""Ctrl-C during sparkfeed.write (pyspark cancels the jobs and raises KeyboardInterrupt), with a
real Spark write held in a task: no job is left running, and nothing passes for a dataset."""

import os
import sys
import threading
import time

import pytest

import sparkfeed
from sparkfeed.manifest import MANIFEST_NAME

pytestmark = pytest.mark.spark
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def test_ctrl_c_in_a_webdataset_write_cancels_its_job_and_leaves_no_dataset(spark, tmp_path):
    """The write job's tasks are held in a UDF until Ctrl-C: the KeyboardInterrupt reaches the
    caller, Spark runs no job of it afterwards (the held tasks were killed, not left writing
    shards), and the path holds no manifest and no shard."""
    import signal

    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    path, running = tmp_path / "wds", str(tmp_path / "running")

    def hold(x):
        open(running, "w").close()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not os.path.exists(running + ".never"):
            time.sleep(0.05)
        return x

    def interrupt():
        deadline = time.monotonic() + 120
        while not os.path.exists(running) and time.monotonic() < deadline:
            time.sleep(0.01)
        if os.path.exists(running):  # never a stray Ctrl-C into the rest of the run
            os.kill(os.getpid(), signal.SIGINT)

    df = spark.range(0, 40, numPartitions=2).select(
        F.format_string("k%d", "id").alias("key"), F.udf(hold, T.LongType())("id").alias("x"))
    threading.Thread(target=interrupt, daemon=True).start()
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
