"""A standalone Spark cluster on 127.0.0.1: a master and two workers started with `spark-class`
(each executor its own JVM and Python worker), `spark-submit --master spark://... --jars
"$(sparkfeed jar)" examples/preprocess_images.py` for both formats, and a worker killed while
the Parquet write runs: Spark reschedules its tasks and the manifest holds every sample once.
Every wait is bounded; the cluster is killed in the fixture's teardown whatever happens."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sparkfeed
from deployutil import free_port

pytestmark = [pytest.mark.spark, pytest.mark.slow]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
WAIT_S = 180


def _poll(what: str, ready, procs=()) -> None:
    """Until `ready()`; bounded by WAIT_S, and fails fast if a process it needs exited."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if ready():
            return
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what}: {p.args[:3]} exited with {p.returncode}")
        time.sleep(0.5)  # polling for a start-up condition, not timing a result
    raise TimeoutError(f"{what}: not ready within {WAIT_S}s")


class Cluster:
    def __init__(self, spark_home: str, work: Path):
        self.spark_home, self.work = spark_home, work
        self.port = free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        repo_python = os.path.dirname(os.path.dirname(sparkfeed.__file__))
        self.env = {**os.environ, "SPARK_HOME": spark_home, "SPARK_LOCAL_IP": "127.0.0.1",
                    "PYSPARK_PYTHON": sys.executable, "SPARK_NO_DAEMONIZE": "1",
                    "PYTHONPATH": os.pathsep.join([repo_python, os.environ.get("PYTHONPATH", "")])}
        self.master = None
        self.workers: list[subprocess.Popen] = []

    def _start(self, name: str, *args) -> subprocess.Popen:
        log = open(self.work / f"{name}.log", "w")
        return subprocess.Popen([os.path.join(self.spark_home, "bin", "spark-class"), *args],
                                stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                start_new_session=True)  # its own group: the worker and its executors

    def log(self, name: str) -> str:
        return (self.work / f"{name}.log").read_text(errors="replace")

    def start(self) -> None:
        self.master = self._start("master", "org.apache.spark.deploy.master.Master",
                                  "--host", "127.0.0.1", "--port", str(self.port),
                                  "--webui-port", str(free_port()))
        _poll("master", lambda: "Starting Spark master" in self.log("master")
              and "I have been elected leader" in self.log("master"), [self.master])
        for k in range(2):
            self.workers.append(self._start(
                f"worker{k}", "org.apache.spark.deploy.worker.Worker", self.url, "--host", "127.0.0.1",
                "--cores", "1", "--memory", "1g", "--webui-port", str(free_port()),
                "--work-dir", str(self.work / f"work{k}")))
        _poll("two workers", lambda: self.log("master").count("Registering worker") >= 2,
              [self.master, *self.workers])

    def kill_worker(self, k: int) -> None:
        os.killpg(self.workers[k].pid, signal.SIGKILL)  # the worker JVM and its executor JVM
        self.workers[k].wait(timeout=30)

    def stop(self) -> None:
        for p in [*self.workers, self.master]:
            if p is not None and p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=30)

    def submit(self, raw: Path, out: Path, fmt: str) -> subprocess.Popen:
        cmd = [os.path.join(self.spark_home, "bin", "spark-submit"), "--master", self.url,
               "--jars", sparkfeed.jar_path(), "--conf", "spark.log.level=WARN",
               "--conf", "spark.executor.memory=512m", "--conf", "spark.driver.memory=1g",
               "--conf", "spark.task.maxFailures=4", "--conf", "spark.ui.enabled=false",
               "--conf", f"spark.executorEnv.PYTHONPATH={self.env['PYTHONPATH']}",
               str(EXAMPLES / "preprocess_images.py"), "--input", str(raw), "--output", str(out),
               "--format", fmt, "--samples-per-shard", "10"]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=self.env, start_new_session=True)


@pytest.fixture(scope="module")
def cluster(spark_home, tmp_path_factory):
    c = Cluster(spark_home, tmp_path_factory.mktemp("cluster"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "raw"
    subprocess.run([sys.executable, EXAMPLES / "make_raw_corpus.py", "--output", out, "--images",
                    "40", "--bad", "2"], check=True, timeout=120, capture_output=True)
    return out


def _finish(proc: subprocess.Popen) -> str:
    try:
        text, _ = proc.communicate(timeout=WAIT_S * 2)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        text, _ = proc.communicate()
        pytest.fail(f"spark-submit did not finish within {WAIT_S * 2}s:\n{text[-4000:]}")
    assert proc.returncode == 0, text[-6000:]
    return text


def _check_counts(raw: Path, out: Path) -> None:
    """The manifests hold exactly the good records, each once (no duplicate from a retried task)."""
    expected = json.loads((raw / "_expected.json").read_text())
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["train"] + summary["val"] == expected["good"]
    keys = []
    for split in ("train", "val"):
        m = sparkfeed.read_manifest(str(out / split))
        assert m.num_samples == summary[split]
        loader = sparkfeed.DataLoader(str(out / split), batch_size=16, columns=["key"])
        keys += [k for b in loader for k in b["key"]]  # sha256 of the image: unique per sample
    assert len(keys) == expected["good"] and len(set(keys)) == len(keys)


def test_spark_submit_webdataset_on_a_standalone_cluster(cluster, raw, tmp_path):
    """WebDataset through the JVM source on the cluster's executors (the Parquet run is the
    worker-kill test below: one spark-submit per format keeps this file short)."""
    out = tmp_path / "ds"
    text = _finish(cluster.submit(raw, out, "webdataset"))
    assert "preprocessed" in text
    _check_counts(raw, out)
    apps = list((cluster.work / "work0").glob("app-*")) + list((cluster.work / "work1").glob("app-*"))
    assert apps, "no executor ran on the cluster's workers"


def test_spark_submit_parquet_survives_a_worker_killed_during_the_write(cluster, raw, tmp_path):
    out = tmp_path / "ds"
    proc = cluster.submit(raw, out, "parquet")
    try:  # the Parquet write has begun when its committer's staging directory appears
        _poll("the write", lambda: any(out.glob("*/_temporary")), [proc])
    finally:
        cluster.kill_worker(0)
    assert "preprocessed" in _finish(proc)
    _check_counts(raw, out)
    assert "Removing worker" in cluster.log("master") or "lost" in cluster.log("master").lower()


def _apps(cluster) -> set:
    return {p.name for k in (0, 1) for p in (cluster.work / f"work{k}").glob("app-*")}


def test_sparkfeed_index_spark_runs_on_the_master_pyspark_is_configured_with(cluster, tmp_path):
    """Invariant: `sparkfeed index --spark` runs its job on the master that pyspark's own
    configuration names (`--master` in PYSPARK_SUBMIT_ARGS), as `pyspark` itself would; it
    always started local[*], so the cluster's executors never read a footer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        pq.write_table(pa.table({"id": list(range(i * 10, i * 10 + 10))}), data / f"f{i}.parquet")
    before = _apps(cluster)
    env = {**cluster.env, "PYSPARK_SUBMIT_ARGS": f"--master {cluster.url} --conf "
           "spark.executor.memory=512m --conf spark.ui.enabled=false pyspark-shell"}
    run = subprocess.run([sys.executable, "-m", "sparkfeed.cli", "--log-level", "INFO", "index",
                          str(data), "--spark", "--no-progress"], env=env, capture_output=True,
                         text=True, timeout=WAIT_S * 2)
    assert run.returncode == 0, run.stderr[-4000:]
    assert f"session 'sparkfeed' on {cluster.url}" in run.stderr
    assert sparkfeed.read_manifest(str(data)).num_samples == 30
    assert _apps(cluster) - before, "the index job ran no executor on the cluster's workers"
