"""sparkfeed.write over Spark Connect: a Connect server on 127.0.0.1 started from pyspark's own
jars with the sparkfeed jar, a client session from `SparkSession.builder.remote`, both formats.
The footer-statistics job runs with DataFrame operations only (no sparkContext on Connect)."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

import sparkfeed
from deployutil import free_port

pytestmark = [pytest.mark.spark, pytest.mark.slow]
START_TIMEOUT_S = 180
_CONNECT_ENV = ("SPARK_CONNECT_MODE_ENABLED", "SPARK_REMOTE", "SPARK_LOCAL_REMOTE")


def _wait_for_port(port: int, proc: subprocess.Popen, log_path: str) -> None:
    """Until the server accepts connections; bounded, and fails fast if it exits."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Connect server exited with {proc.returncode}:\n"
                               + open(log_path).read()[-3000:])
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)  # polling a port for start-up, not timing a result
    raise TimeoutError(f"the Connect server did not listen on {port} within {START_TIMEOUT_S}s")


@pytest.fixture(scope="module")
def connect(spark_home, tmp_path_factory):
    pytest.importorskip("grpc", reason="pip install 'sparkfeed[connect]'")
    port = free_port()
    log_path = str(tmp_path_factory.mktemp("connect") / "server.log")
    repo_python = os.path.dirname(os.path.dirname(sparkfeed.__file__))
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_HOME": spark_home,
           "PYTHONPATH": os.pathsep.join([repo_python, os.environ.get("PYTHONPATH", "")])}
    cmd = [os.path.join(spark_home, "bin", "spark-submit"),
           "--class", "org.apache.spark.sql.connect.service.SparkConnectServer",
           "--master", "local[2]", "--driver-memory", "1g", "--jars", sparkfeed.jar_path(),
           "--conf", f"spark.connect.grpc.binding.port={port}",
           "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
           "--conf", "spark.ui.enabled=false", "--conf", "spark.sql.shuffle.partitions=4",
           "--conf", "spark.sql.session.timeZone=UTC", "spark-internal"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    session = None
    # pyspark marks the whole process as "Connect mode" in os.environ when a remote session is
    # made; every classic session (and every Spark subprocess) after this module would then
    # refuse to start, so the variables are put back as they were.
    saved = {k: os.environ.get(k) for k in _CONNECT_ENV}
    try:
        _wait_for_port(port, proc, log_path)
        from pyspark.sql import SparkSession

        classic = SparkSession.getActiveSession()
        if classic is not None:  # earlier tests' local session: pyspark refuses Connect beside it
            classic.stop()
        session = SparkSession.builder.remote(f"sc://127.0.0.1:{port}").getOrCreate()
        yield session
    finally:
        if session is not None:
            session.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def _frame(spark, n: int):
    return spark.range(n).selectExpr("id", "cast(id % 10 as int) as label",
                                     "cast(id as double) / 7 as score",
                                     "concat('caption ', cast(id as string)) as caption",
                                     "cast(repeat(char(65 + cast(id % 26 as int)), 16) as binary) as image")


def test_connect_session_is_connect(connect):
    from sparkfeed.write import _is_connect

    assert _is_connect(connect)


def test_write_parquet_over_connect(connect, tmp_path):
    out = str(tmp_path / "pq")
    m = sparkfeed.write(_frame(connect, 500), out, samples_per_shard=200,
                        samples_per_row_group=64, cluster_by="label", codecs={"image": "raw"})
    assert m.num_samples == 500 and len(m.shards) == 3
    assert sum(s.num_samples for s in m.shards) == 500
    doc = json.load(open(os.path.join(out, "_sparkfeed.json")))
    assert doc["created_by"]["spark"] == connect.version
    ids = [i for b in sparkfeed.DataLoader(out, batch_size=100) for i in b["id"].tolist()]
    assert sorted(ids) == list(range(500))


def test_classic_sessions_still_start_after_a_connect_session(connect):
    """The fixture's session leaves no "Connect mode" behind for the classic sessions after it:
    a Spark subprocess started from this process inherits os.environ."""
    assert "SPARK_CONNECT_MODE_ENABLED" in os.environ  # while the Connect session lives
    code = "import os; print(os.environ.get('SPARK_CONNECT_MODE_ENABLED'))"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if k not in _CONNECT_ENV})
    assert child.stdout.strip() == "None"


def test_write_webdataset_over_connect(connect, tmp_path):
    out = str(tmp_path / "wds")
    m = sparkfeed.write(_frame(connect, 300), out, format="webdataset", samples_per_shard=100,
                        codecs={"image": "raw"})
    assert m.num_samples == 300
    ids = [i for b in sparkfeed.DataLoader(out, batch_size=50) for i in b["id"].tolist()]
    assert sorted(ids) == list(range(300))


def test_write_options_and_key_errors_over_connect(connect, tmp_path):
    """Invariant: `options=` reach the webdataset source from a Connect session, and a task
    failing on a key is the same SampleKeyError as on a classic session (its text comes back in
    the Connect error, not a Py4JJavaError)."""
    from sparkfeed.write import SampleKeyError

    df = connect.range(6).selectExpr("concat('k.', cast(id as string)) as key", "cast(id as int) as label")
    m = sparkfeed.write(df, str(tmp_path / "ok"), format="webdataset",
                        options={"invalidKeys": "sanitize"})
    keys = [k for b in sparkfeed.DataLoader(str(tmp_path / "ok"), batch_size=6) for k in b["key"]]
    assert m.num_samples == 6 and sorted(keys) == [f"k_{i}" for i in range(6)]
    with pytest.raises(SampleKeyError, match=r"invalid sample key \"k\.\d\" in column \"key\".* "
                                             r"Pass options=\{'invalidKeys': 'sanitize'\} to sparkfeed.write"):
        sparkfeed.write(df, str(tmp_path / "bad"), format="webdataset")
    assert not (tmp_path / "bad" / "_sparkfeed.json").exists()


def test_overwriting_its_own_input_is_refused_over_connect(connect, tmp_path):
    """Invariant: an overwrite never deletes what the DataFrame reads, over Connect too (a
    Parquet dataset read back, and a webdataset one read as a table and written as Parquet)."""
    from sparkfeed.write import DatasetExistsError, OverwriteInputError

    pq, wds = str(tmp_path / "pq"), str(tmp_path / "wds")
    sparkfeed.write(_frame(connect, 40), pq, samples_per_shard=10)
    sparkfeed.write(_frame(connect, 40), wds, format="webdataset")
    with pytest.raises(DatasetExistsError, match="already exists"):
        sparkfeed.write(_frame(connect, 5), pq)
    for reads, target in [(connect.read.parquet(pq), pq),
                          (connect.read.format("webdataset").load(wds), wds)]:
        for format in ("parquet", "webdataset"):
            with pytest.raises(OverwriteInputError, match="the DataFrame being written reads from it"):
                sparkfeed.write(reads.where("label < 5"), target, format=format, mode="overwrite")
    assert sparkfeed.read_manifest(pq).num_samples == sparkfeed.read_manifest(wds).num_samples == 40
    m = sparkfeed.write(connect.read.parquet(pq).where("label < 5"), wds, mode="overwrite")
    assert m.format == "parquet" and m.num_samples == 20
