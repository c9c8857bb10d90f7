"""Edges of sparkfeed on Spark Connect and on a standalone cluster (a master and one worker on
127.0.0.1): what a user sees when the executors' Python lacks a module or is set by conf, when
Spark has no sparkfeed jar, when an executor cannot read a footer; and that manifests count what
the files hold. The cluster's drivers run in subprocesses (this process may be in Connect mode),
each a script that prints one JSON line of results."""

import json
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import sparkfeed
from sparkfeed.index.gather import executor_failure
from test_cluster import WAIT_S, Cluster, _poll
import test_connect
from test_connect import _CONNECT_ENV

pytestmark = [pytest.mark.spark, pytest.mark.slow]
connect = test_connect.connect  # the module-scoped Connect server (a fixture)


# ---------------------------------------------------------------- no JVM: Spark's error texts

def test_executor_failures_are_told_as_sparkfeed_errors():
    """Invariant: a missing module names the module and the executors' Python (only a missing
    `sparkfeed` was told before; fsspec missing was a raw PythonException), and a sparkfeed error
    raised in a task comes back as itself; other failures are left alone."""
    worker = ("[PYTHON_EXCEPTION] An exception was thrown from the Python worker: Traceback (most "
              "recent call last):\n  File \"storage.py\", line 33\n    import fsspec\n"
              "ModuleNotFoundError: No module named 'fsspec'\n SQLSTATE: 38000")
    err = executor_failure(RuntimeError(worker), "the tar scan", "/d", "python3")
    assert isinstance(err, sparkfeed.SparkfeedError)
    assert str(err).startswith("dataset '/d': the Spark executors' Python (they run 'python3') "
                               "cannot import 'fsspec'")
    raised = worker.replace("ModuleNotFoundError: No module named 'fsspec'",
                            "sparkfeed.errors.ShardReadError: dataset '/d', shard 'a.tar': truncated")
    err = executor_failure(RuntimeError(raised), "the tar scan")
    assert type(err).__name__ == "ShardReadError" and str(err) == "dataset '/d', shard 'a.tar': truncated"
    assert executor_failure(RuntimeError("RuntimeError: boom"), "the tar scan") is None


def test_a_missing_jar_is_told_as_such_in_connect_text():
    """Invariant: the Connect client's text of DATA_SOURCE_NOT_FOUND (as a server without the
    jar answers) is the jar-missing SparkfeedError, naming the dataset and `--jars`."""
    from sparkfeed.writewebdataset import _jar_missing

    text = ("(org.apache.spark.SparkClassNotFoundException) [DATA_SOURCE_NOT_FOUND] Failed to find "
            "the data source: webdataset. Make sure the provider name is correct and the package "
            "is properly registered and compatible with your Spark version. SQLSTATE: 42K02")
    err = _jar_missing(RuntimeError(text), "/d")
    assert err is not None and "dataset '/d': Spark has no sparkfeed jar" in str(err)
    assert '--jars "$(sparkfeed jar)"' in str(err)
    assert _jar_missing(RuntimeError(text.replace("webdataset", "webdatasetx")), "/d") is None


# ---------------------------------------------------------------- Spark Connect

def _corrupt_dir(root: Path) -> Path:
    root.mkdir()
    pq.write_table(pa.table({"id": list(range(10))}), root / "a.parquet")
    (root / "zz.parquet").write_bytes(b"not a parquet file, no magic bytes at all\n")
    return root


def _tar_samples(path: Path) -> int:
    with tarfile.open(path) as t:
        return len({m.name.split(".", 1)[0] for m in t.getmembers() if m.isfile()})


def test_index_over_connect_names_the_file_whose_footer_it_cannot_read(connect, tmp_path):
    """Invariant: `index(spark=<Connect>)` over a corrupt Parquet file is the ShardReadError a
    local index gives, naming the dataset and the file. It was a PythonException carrying
    pyarrow's 'Parquet magic bytes not found in footer', naming neither."""
    from sparkfeed.errors import ShardReadError

    root = _corrupt_dir(tmp_path / "bad")
    with pytest.raises(ShardReadError, match=r"shard 'zz.parquet': cannot read the Parquet footer"):
        sparkfeed.index(str(root), manifest=str(tmp_path / "m.json"), spark=connect)
    with pytest.raises(ShardReadError, match=r"shard 'zz.parquet'"):  # the local index agrees
        sparkfeed.index(str(root), manifest=str(tmp_path / "l.json"), progress=False)


def test_connect_writes_of_local_data_count_what_the_files_hold(connect, tmp_path):
    """Both formats from client-side rows (createDataFrame), shard sizes and maxShardBytes: each
    shard's count in the manifest is what the file holds, re-read with pyarrow and tarfile; the
    webdataset jar check before the count leaves nothing at the path."""
    rows = [(i, i % 3, f"c{i}", bytes([i % 256]) * 50) for i in range(53)]
    df = connect.createDataFrame(rows, "id long, label int, caption string, image binary")
    pq_m = sparkfeed.write(df, str(tmp_path / "pq"), samples_per_shard=20, samples_per_row_group=7)
    wds_m = sparkfeed.write(df, str(tmp_path / "wds"), format="webdataset", samples_per_shard=20,
                            options={"maxShardBytes": 12_000})
    assert pq_m.num_samples == wds_m.num_samples == 53
    for s in pq_m.shards:
        assert pq.ParquetFile(tmp_path / "pq" / s.path).metadata.num_rows == s.num_samples
    for s in wds_m.shards:
        assert _tar_samples(tmp_path / "wds" / s.path) == s.num_samples
    assert not list(tmp_path.rglob("_sparkfeed_no_such_dataset"))


# ---------------------------------------------------------------- a standalone cluster

_JOB_NO_JAR = """
import json, os, sys
from pyspark.sql import SparkSession
import sparkfeed
url, base = sys.argv[1], sys.argv[2]
spark = (SparkSession.builder.master(url).config("spark.executor.memory", "512m")
         .config("spark.ui.enabled", "false").getOrCreate())
out = {}
try:
    sparkfeed.write(spark.range(5).selectExpr("id", "cast(id as int) as label"), base + "/wds",
                    format="webdataset")
except Exception as exc:
    out["no_jar"] = [type(exc).__name__, str(exc)]
out["left"] = os.path.exists(base + "/wds")
print("RESULT " + json.dumps(out))
"""

_JOB = """
import json, os, sys
import sparkfeed
from pyspark.sql import SparkSession
url, base, blocked = sys.argv[1], sys.argv[2], sys.argv[3]
out = {}
conf = {"spark.executor.memory": "512m", "spark.driver.memory": "1g"}

def frame(spark):
    return spark.range(200).selectExpr("id", "cast(id % 4 as int) as label",
                                       "cast(repeat('x', 64) as binary) as image")

def attempt(name, fn):
    try:
        out[name] = ["ok", fn()]
    except Exception as exc:
        out[name] = [type(exc).__name__, str(exc)[:2000]]

# 1. executors on a Python that cannot import fsspec (conf spark.pyspark.python)
spark = sparkfeed.spark_session(master=url, conf={**conf, "spark.pyspark.python": blocked})
attempt("blocked_parquet", lambda: sparkfeed.write(frame(spark), base + "/pq1").num_samples)
attempt("blocked_wds", lambda: sparkfeed.write(frame(spark), base + "/wds1", format="webdataset",
                                              samples_per_shard=70).num_samples)
spark.stop()
# 2. conf names the good Python while PYSPARK_PYTHON names the blocked one: the conf wins
os.environ["PYSPARK_PYTHON"] = blocked
spark = sparkfeed.spark_session(master=url, conf={**conf, "spark.pyspark.python": sys.executable})
attempt("conf_parquet", lambda: [s.num_samples for s in sparkfeed.write(
    frame(spark), base + "/pq2", samples_per_shard=70, cluster_by="label").shards])
attempt("corrupt_index", lambda: sparkfeed.index(base + "/bad", manifest=base + "/bad.json",
                                                 spark=spark).num_samples)
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def small_cluster(spark_home, tmp_path_factory):
    """A master and one worker (1 core), killed in teardown whatever happens."""
    c = Cluster(spark_home, tmp_path_factory.mktemp("edges"))
    try:
        c.master = c._start("master", "org.apache.spark.deploy.master.Master", "--host",
                            "127.0.0.1", "--port", str(c.port), "--webui-port", "0")
        _poll("master", lambda: "I have been elected leader" in c.log("master"), [c.master])
        c.workers.append(c._start("worker0", "org.apache.spark.deploy.worker.Worker", c.url,
                                  "--host", "127.0.0.1", "--cores", "1", "--memory", "1g",
                                  "--webui-port", "0", "--work-dir", str(c.work / "work0")))
        _poll("a worker", lambda: "Registering worker" in c.log("master"), [c.master, *c.workers])
        yield c
    finally:
        c.stop()


def _blocked_python(tmp_path: Path) -> str:
    """An executable that runs this Python with `fsspec` unimportable (as an executors' Python
    without sparkfeed's dependencies)."""
    block = tmp_path / "block"
    block.mkdir()
    (block / "fsspec.py").write_text("raise ModuleNotFoundError(\"No module named 'fsspec'\", name='fsspec')\n")
    exe = tmp_path / "python-without-fsspec"
    exe.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        PYTHONPATH={block}${{PYTHONPATH:+:$PYTHONPATH}} exec {sys.executable} "$@"
        """))
    exe.chmod(0o755)
    return str(exe)


def _run_driver(cluster, code: str, *args) -> dict:
    env = {k: v for k, v in cluster.env.items() if k not in (*_CONNECT_ENV, "PYSPARK_PYTHON")}
    run = subprocess.run([sys.executable, "-c", code, cluster.url, *map(str, args)], env=env,
                         capture_output=True, text=True, timeout=WAIT_S * 2)
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_cluster_session_without_the_jar_fails_before_any_job_and_says_so(small_cluster, tmp_path):
    """Invariant: a webdataset write on a session without the sparkfeed jar is one SparkfeedError
    naming the dataset and `--jars`, raised before the count job, leaving nothing at the path.
    It was Spark's DATA_SOURCE_NOT_FOUND ('make sure the provider name is correct'), after a
    count over the whole DataFrame."""
    out = _run_driver(small_cluster, _JOB_NO_JAR, tmp_path)
    kind, text = out["no_jar"]
    assert kind == "SparkfeedError" and f"dataset '{tmp_path}/wds': Spark has no sparkfeed jar" in text
    assert out["left"] is False


def test_cluster_executor_python_edges(small_cluster, tmp_path):
    """Invariants, on the cluster's executors: (1) executors whose Python lacks a dependency of
    sparkfeed fail the Parquet write with a SparkfeedError naming the module, the executors'
    Python and the dataset (it was a raw PythonException: only a missing `sparkfeed` was told),
    while a webdataset write (no Python on the executors) works; (2) `spark_session(conf=
    {"spark.pyspark.python": p})` runs the executors on p, as spark-submit's conf does, over
    PYSPARK_PYTHON (pyspark ignored the conf, so they ran PYSPARK_PYTHON's, or `python3`);
    (3) an executor that cannot read a footer names the dataset and the file."""
    blocked = _blocked_python(tmp_path)
    _corrupt_dir(tmp_path / "bad")
    out = _run_driver(small_cluster, _JOB, tmp_path, blocked)
    kind, text = out["blocked_parquet"]
    assert kind == "SparkfeedError", out
    assert text.startswith(f"dataset '{tmp_path}/pq1': the Spark executors' Python (they run "
                           f"{blocked!r}) cannot import 'fsspec'")
    assert out["blocked_wds"] == ["ok", 200]
    assert out["conf_parquet"][0] == "ok" and sum(out["conf_parquet"][1]) == 200, out
    m = sparkfeed.read_manifest(str(tmp_path / "pq2"))
    for s in m.shards:
        assert pq.ParquetFile(tmp_path / "pq2" / s.path).metadata.num_rows == s.num_samples
    kind, text = out["corrupt_index"]
    assert kind == "ShardReadError" and "shard 'zz.parquet': cannot read the Parquet footer" in text
