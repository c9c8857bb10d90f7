"""The webdataset job commit checks each committed shard's size against what its task wrote,
with a real Spark write: a shard cut short after its task committed, before the job commits."""

import os
import sys
import threading

import pytest

pytestmark = pytest.mark.spark
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def test_a_shard_cut_short_before_the_job_commit_fails_the_write(spark, tmp_path):
    """Partition 1 waits (in a UDF) for a flag file; meanwhile partition 0's shard, committed,
    is cut short, then the flag is set. The job commit used to check only that each shard is
    listed, and wrote a manifest naming a tar of the wrong size; now it fails naming the shard
    and both sizes, with no manifest."""
    from pyspark.sql import functions as F

    from sparkfeed.manifest import MANIFEST_NAME

    path, flag = tmp_path / "wds", tmp_path / "flag"
    shard = path / "part-00000-0000.tar"

    @F.udf("binary")
    def payload(i):
        import os
        import time
        if i >= 10:  # partition 1's rows: hold the task until the shard of partition 0 is cut
            deadline = time.monotonic() + 120
            while not os.path.exists(str(flag)) and time.monotonic() < deadline:
                time.sleep(0.05)
        return bytes(100)

    def cut_when_committed():
        for _ in range(2400):
            if shard.exists():
                with open(shard, "r+b") as f:
                    f.truncate(512)
                break
            threading.Event().wait(0.05)
        flag.touch()

    df = spark.range(0, 20, 1, 2)  # rows 0-9 in partition 0, 10-19 in partition 1
    df = df.select(F.format_string("k%d", "id").alias("key"), payload("id").alias("img"))
    cutter = threading.Thread(target=cut_when_committed, daemon=True)
    cutter.start()
    with pytest.raises(Exception, match=r"part-00000-0000\.tar \(512 bytes, its task wrote \d+\)"):
        df.write.format("webdataset").option("samplesPerShard", 100).save(str(path))
    cutter.join(5)
    assert not (path / MANIFEST_NAME).exists()
