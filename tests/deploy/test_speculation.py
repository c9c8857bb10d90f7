"""Speculative attempts of `df.write.format("webdataset")` on a standalone cluster whose two
workers are two hosts (127.0.0.1 and 127.0.0.2: Spark never starts a speculative copy on the
host that runs the original, so one host could not exercise it). One task's first attempt
stalls in the user's UDF; Spark speculates it on the other host, the copy commits, the stalled
attempt is killed, and the dataset holds every sample once with no file of the loser left."""

import json
import os
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest

import sparkfeed
from test_cluster import WAIT_S, Cluster, _poll

pytestmark = [pytest.mark.spark, pytest.mark.slow]
ROWS, PARTITIONS = 400, 4
STALL_S = 300  # far longer than the job: only a speculative copy can finish partition 0

JOB = textwrap.dedent("""\
    import json, os, sys, time
    from pyspark import TaskContext
    from pyspark.sql import SparkSession, functions as F, types as T

    out, marks, rows, parts, stall = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    spark = SparkSession.builder.getOrCreate()

    def image(i):
        tc = TaskContext.get()
        if i % (rows // parts) == 0:  # the first row of its partition: one mark per attempt
            name = f"p{tc.partitionId()}-a{tc.attemptNumber()}-{os.environ.get('SPARK_LOCAL_IP')}"
            open(os.path.join(marks, name), "w").close()
            if tc.partitionId() == 0 and tc.attemptNumber() == 0:
                time.sleep(stall)
        return b"\\xff\\xd8 sample %d \\xff\\xd9" % i

    df = (spark.range(0, rows, 1, parts)
          .select(F.format_string("k%05d", "id").alias("key"),
                  F.udf(image, T.BinaryType())("id").alias("image"), F.col("id").alias("label")))
    df.write.format("webdataset").option("samplesPerShard", 50).save(out)
    print("RESULT " + json.dumps({"ok": True}))
    """)


def _second_host_reachable() -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.2", 0))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def two_host_cluster(spark_home, tmp_path_factory):
    """A master and two one-core workers, one on 127.0.0.1 and one on 127.0.0.2."""
    if not _second_host_reachable():
        pytest.skip("127.0.0.2 cannot be bound here (a loopback of 127.0.0.1 only)")
    c = Cluster(spark_home, tmp_path_factory.mktemp("speculation"))
    try:
        c.master = c._start("master", "org.apache.spark.deploy.master.Master", "--host",
                            "127.0.0.1", "--port", str(c.port), "--webui-port", "0")
        _poll("master", lambda: "I have been elected leader" in c.log("master"), [c.master])
        for k, host in enumerate(("127.0.0.1", "127.0.0.2")):
            c.env["SPARK_LOCAL_IP"] = host
            c.workers.append(c._start(f"worker{k}", "org.apache.spark.deploy.worker.Worker", c.url,
                                      "--host", host, "--cores", "1", "--memory", "1g",
                                      "--webui-port", "0", "--work-dir", str(c.work / f"work{k}")))
        c.env["SPARK_LOCAL_IP"] = "127.0.0.1"  # the driver's
        _poll("two workers", lambda: c.log("master").count("Registering worker") >= 2,
              [c.master, *c.workers])
        yield c
    finally:
        c.stop()


def _submit(c: Cluster, job: Path, out: Path, marks: Path) -> str:
    cmd = [os.path.join(c.spark_home, "bin", "spark-submit"), "--master", c.url,
           "--jars", sparkfeed.jar_path(), "--conf", "spark.ui.enabled=false",
           "--conf", "spark.executor.memory=512m", "--conf", "spark.driver.memory=1g",
           "--conf", "spark.speculation=true", "--conf", "spark.speculation.interval=200ms",
           "--conf", "spark.speculation.quantile=0.5", "--conf", "spark.speculation.multiplier=1.5",
           "--conf", "spark.speculation.minTaskRuntime=1s",
           "--conf", f"spark.executorEnv.PYTHONPATH={c.env['PYTHONPATH']}",
           str(job), str(out), str(marks), str(ROWS), str(PARTITIONS), str(STALL_S)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=c.env, start_new_session=True)
    try:
        text, _ = proc.communicate(timeout=WAIT_S * 2)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        text, _ = proc.communicate()
        pytest.fail(f"the speculated write did not finish within {WAIT_S * 2}s "
                    f"(was partition 0 speculated?):\n{text[-4000:]}")
    assert proc.returncode == 0 and "RESULT" in text, text[-6000:]
    return text


def test_a_speculative_copy_commits_and_the_stalled_attempt_leaves_nothing(two_host_cluster, tmp_path):
    job, out, marks = tmp_path / "job.py", tmp_path / "out", tmp_path / "marks"
    job.write_text(JOB)
    marks.mkdir()
    _submit(two_host_cluster, job, out, marks)

    attempts = sorted(p.name for p in marks.iterdir() if p.name.startswith("p0-"))
    hosts = {name.split("-")[2] for name in attempts}
    assert len(attempts) >= 2 and len(hosts) == 2, \
        f"partition 0 was not speculated on the other host: attempts {attempts}"

    m = sparkfeed.read_manifest(str(out))
    assert m.num_samples == ROWS
    named = {s.path for s in m.shards}
    on_disk = {p.name for p in out.iterdir() if p.name.endswith(".tar")}
    assert on_disk == {os.path.basename(p) for p in named}, "a file the manifest does not name"
    assert not (out / "_temporary").exists()
    loader = sparkfeed.DataLoader(str(out), batch_size=64, columns=["key", "label"])
    seen = [k for b in loader for k in b["key"]]
    assert sorted(seen) == [f"k{i:05d}" for i in range(ROWS)]
    assert json.loads((out / "_sparkfeed.json").read_text())["num_samples"] == ROWS
