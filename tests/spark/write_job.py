"""A Spark write run as its own process, so tests can kill it or give it task retries.

usage: write_job.py OUT FORMATS MODE BEHAVIOUR ROWS
FORMATS: parquet, webdataset, or both comma-separated (one job process writes OUT-<format> for
each, one after the other: a JVM start per test is the cost that matters here)
BEHAVIOUR: ok | kill-worker-once (a Python worker of partition 1 dies mid-task on its first
attempt; Spark retries the task) | raise-once-v2 (under FileOutputCommitter v2, which moves a
task's files into place at task commit, the UDF raises once in partition 1, guarded by a marker
file OUT-<stage>.raised; Spark retries the task) | hang (once the write stage runs, the first row of each task
creates OUT.writing and blocks forever, so the test kills a job that is surely mid-write)
"""

import os
import sys
import threading

from pyspark.sql import functions as F
from pyspark.sql import types as T

import sparkfeed


def main(out: str, formats: str, mode: str, behaviour: str, rows: int) -> None:
    conf = {"spark.hadoop.mapreduce.fileoutputcommitter.algorithm.version": "2"} \
        if behaviour == "raise-once-v2" else None
    spark = sparkfeed.spark_session(app_name="sparkfeed-write-job", master="local[2,4]", conf=conf)
    print("committer", spark.sparkContext._jsc.hadoopConfiguration()
          .get("mapreduce.fileoutputcommitter.algorithm.version"), flush=True)
    if behaviour == "hang":
        # Adaptive execution runs the shuffle's map stage (where the UDF runs) before the write
        # job sets up its _temporary directory; without it the UDF runs inside the write job.
        spark.conf.set("spark.sql.adaptive.enabled", "false")

    @F.udf(T.BinaryType())
    def payload(i):
        from pyspark import TaskContext

        ctx = TaskContext.get()
        if behaviour == "kill-worker-once" and ctx.partitionId() == 1 and ctx.attemptNumber() == 0 and i % 97 == 5:
            os._exit(1)  # the Python worker dies mid-task, mid-shard
        if behaviour == "raise-once-v2" and ctx.partitionId() == 1 and i % 97 == 5:
            try:  # the first attempt of each write's partition 1 to get here, of any stage
                os.close(os.open(f"{out}-{ctx.stageId()}.raised", os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                pass
            else:
                raise RuntimeError(f"failing row {i} once")
        if behaviour == "hang" and os.path.isdir(os.path.join(out, "_temporary")):  # the write stage
            open(out + ".writing", "a").close()
            threading.Event().wait()  # until the test kills the job
        return bytes([i % 256]) * 100

    df = (spark.range(rows).repartition(4)
          .select(F.col("id"), (F.col("id") % 10).cast("int").alias("label"), payload("id").alias("blob")))
    fmts = formats.split(",")
    for fmt in fmts:  # each write's stage has its own attempt 0 of partition 1 to kill
        m = sparkfeed.write(df, out if len(fmts) == 1 else f"{out}-{fmt}", format=fmt,
                            samples_per_shard=rows // 4, mode=mode, codecs={"blob": "bin"})
        print("manifest", fmt, m.num_samples, flush=True)
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
