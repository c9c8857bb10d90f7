"""Writer faults with real Spark in separate processes: a Python worker killed mid-shard is
retried by Spark and the dataset has exact counts (both formats, one job process); a job killed
before commit leaves no manifest, and a rerun with mode="overwrite" (in this process's session)
succeeds."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from pyspark.sql import functions as F

import sparkfeed

pytestmark = [pytest.mark.spark, pytest.mark.slow]  # each test runs Spark jobs in processes of their own
JOB = os.path.join(os.path.dirname(__file__), "write_job.py")


def run_job(out, fmt, mode, behaviour, rows, **popen):
    cmd = [sys.executable, JOB, str(out), fmt, mode, behaviour, str(rows)]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARKFEED_SPARK_LOG_LEVEL": "ERROR"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **popen)


def all_ids(path):
    return sorted(i for b in sparkfeed.DataLoader(str(path), batch_size=500, columns=["id"])
                  for i in b["id"].tolist())


def test_worker_killed_mid_shard_is_retried_with_exact_counts(tmp_path):
    """One job process writes both formats; in each write a Python worker dies mid-shard."""
    proc = run_job(tmp_path / "ds", "parquet,webdataset", "error", "kill-worker-once", 2000)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    killed = set(re.findall(r"Exception in task 1\.0 in stage (\d+)\.0", stderr))
    assert len(killed) >= 2, f"a worker should have died in each write's stage: {stderr[-3000:]}"
    _exact_in_both_formats(tmp_path, 2000)


def _exact_in_both_formats(tmp_path, rows):
    """Each format's dataset holds every row once, and its files are its manifest's shards."""
    for fmt in ("parquet", "webdataset"):
        out = tmp_path / f"ds-{fmt}"
        m = sparkfeed.read_manifest(str(out))
        assert (m.format, m.num_samples) == (fmt, rows)
        assert all_ids(out) == list(range(rows)), fmt
        data_files = sorted(f for f in os.listdir(out) if f.endswith((".parquet", ".tar")))
        assert data_files == sorted(s.path for s in m.shards), f"{fmt}: no stray or duplicate shard"
        assert not (out / "_temporary").exists()


def test_a_task_failing_once_under_committer_v2_is_retried_with_exact_counts(tmp_path):
    """FileOutputCommitter v2 moves each task's files into the root at task commit; a task whose
    first attempt raises (partition 1, once per stage) is retried, and each format's dataset holds
    every row once: no file of the failed attempt, no shard outside the manifest. (The UDF runs
    in the stage before the shuffle `write` adds; the write tasks themselves run no user code.)"""
    proc = run_job(tmp_path / "ds", "parquet,webdataset", "error", "raise-once-v2", 2000)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert "committer 2" in stdout, stdout
    raised = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".raised"))
    assert len(raised) >= 2 and stderr.count("failing row") >= 2, (raised, stderr[-3000:])
    _exact_in_both_formats(tmp_path, 2000)


def test_job_killed_before_commit_leaves_no_manifest_and_overwrite_recovers(spark, tmp_path):
    out = tmp_path / "ds"
    proc = run_job(out, "parquet", "error", "hang", 400)  # its write tasks block until killed
    writing = tmp_path / "ds.writing"
    while not writing.exists():  # a condition made by the job itself, not a guess at its timing
        assert proc.poll() is None, f"the job ended before writing: {proc.communicate()[1][-3000:]}"
        time.sleep(0.1)
    assert (out / "_temporary").is_dir()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (out / "_sparkfeed.json").exists()
    with pytest.raises(sparkfeed.ManifestError, match="not a sparkfeed dataset"):
        sparkfeed.read_manifest(str(out))
    df = spark.range(2000).select("id", F.col("id").cast("string").cast("binary").alias("blob"))
    m = sparkfeed.write(df, str(out), samples_per_shard=500, mode="overwrite", codecs={"blob": "bin"})
    assert m.num_samples == 2000 and not (out / "_temporary").exists()
    assert all_ids(out) == list(range(2000))
