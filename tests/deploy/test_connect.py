"""sparkfeed.write over Spark Connect: a Connect server on 127.0.0.1 started from pyspark's own
jars with the sparkfeed jar, a client session from `SparkSession.builder.remote`, both formats.
The footer-statistics job runs with DataFrame operations only (no sparkContext on Connect)."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
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


def _start_server(spark_home: str, port: int, log_path: str) -> subprocess.Popen:
    """A Connect server on 127.0.0.1:port from pyspark's own jars plus the sparkfeed jar, in its
    own process group (killed with it); returns once it listens."""
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
    try:
        _wait_for_port(port, proc, log_path)
    except BaseException:
        _stop_server(proc)
        raise
    return proc


def _stop_server(proc: subprocess.Popen) -> None:
    """Kill the server's process group (spark-submit and its JVM) and wait for it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def connect(spark_home, tmp_path_factory):
    pytest.importorskip("grpc", reason="pip install 'sparkfeed[connect]'")
    port = free_port()
    log_path = str(tmp_path_factory.mktemp("connect") / "server.log")
    session = None
    # pyspark marks the whole process as "Connect mode" in os.environ when a remote session is
    # made; every classic session (and every Spark subprocess) after this module would then
    # refuse to start, so the variables are put back as they were.
    saved = {k: os.environ.get(k) for k in _CONNECT_ENV}
    proc = None
    try:
        proc = _start_server(spark_home, port, log_path)
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
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _stop_server(proc)


def _frame(spark, n: int):
    return spark.range(n).selectExpr("id", "cast(id % 10 as int) as label",
                                     "cast(id as double) / 7 as score",
                                     "concat('caption ', cast(id as string)) as caption",
                                     "cast(repeat(char(65 + cast(id % 26 as int)), 16) as binary) as image")


def test_connect_session_is_connect(connect):
    from sparkfeed.session import is_connect

    assert is_connect(connect)


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


def test_spark_session_returns_a_connect_session_where_pyspark_would(connect):
    """Invariant: `sparkfeed.spark_session()` gives the Connect session pyspark itself would: the
    active one as it is, or a new one for SPARK_REMOTE. It raised on both: the jar check read the
    active session's sparkContext, and a new session was forced to local[*], which pyspark refuses
    beside SPARK_REMOTE."""
    assert sparkfeed.spark_session() is connect
    url = f"sc://127.0.0.1:{connect.conf.get('spark.connect.grpc.binding.port')}"
    code = ("import sparkfeed; s = sparkfeed.spark_session(); "
            "print(type(s).__module__, s.range(7).count())")
    env = {k: v for k, v in os.environ.items() if k not in _CONNECT_ENV}
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**env, "SPARK_REMOTE": url}, timeout=START_TIMEOUT_S)
    assert child.returncode == 0, child.stderr[-3000:]
    assert child.stdout.split() == ["pyspark.sql.connect.session", "7"]


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


def test_index_with_a_connect_session_gives_the_local_manifest(connect, tmp_path):
    """Invariant: `sparkfeed.index(path, spark=<Connect session>)` scans tars and reads Parquet
    footers on the executors, with the manifest a local index gives. Before, the tar scan used
    sparkContext.parallelize and the argument check refused a Connect session."""
    wds = pytest.importorskip("webdataset")
    tars, plain = tmp_path / "tars", tmp_path / "plain"
    tars.mkdir()
    plain.mkdir()
    for s in range(3):
        with wds.TarWriter(str(tars / f"{s}.tar")) as w:
            for i in range(5):
                w.write({"__key__": f"k{s}_{i}", "cls": s * 5 + i, "txt": f"t{i}"})
        pq.write_table(pa.table({"id": list(range(s * 10, s * 10 + 10))}), str(plain / f"{s}.parquet"))
    for root in (tars, plain):
        local = sparkfeed.index(str(root), manifest=str(tmp_path / f"{root.name}-l.json"), progress=False)
        remote = sparkfeed.index(str(root), manifest=str(tmp_path / f"{root.name}-c.json"), spark=connect)
        assert remote.to_dict()["shards"] == local.to_dict()["shards"] and remote.num_samples in (15, 30)


def test_the_preprocessing_example_runs_under_spark_remote(connect, tmp_path):
    """Invariant: examples/preprocess_images.py, run with only SPARK_REMOTE set (the Connect
    client's way), writes its splits with every validated image once. It read sparkContext to
    size the shuffles, which a Connect session does not have."""
    examples = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "examples")
    raw, out = str(tmp_path / "raw"), str(tmp_path / "ds")
    subprocess.run([sys.executable, os.path.join(examples, "make_raw_corpus.py"), "--output", raw,
                    "--images", "40"], check=True, capture_output=True, timeout=120)
    url = f"sc://127.0.0.1:{connect.conf.get('spark.connect.grpc.binding.port')}"
    env = {k: v for k, v in os.environ.items() if k not in _CONNECT_ENV}
    child = subprocess.run([sys.executable, os.path.join(examples, "preprocess_images.py"), "--input", raw,
                            "--output", out], capture_output=True, text=True, timeout=600,
                           env={**env, "SPARK_REMOTE": url})
    assert child.returncode == 0, child.stderr[-3000:]
    counts = [sparkfeed.DataLoader(os.path.join(out, split), batch_size=64).dataset.plan().num_samples
              for split in ("train", "val")]
    assert sum(counts) == 40 and min(counts) > 0


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


def test_a_server_going_away_mid_write_is_one_clear_error_in_bounded_time(connect, spark_home, tmp_path):
    """Invariant: when the Connect server dies while `write` runs, `write` raises one
    SparkfeedError naming the dataset and saying the server stopped answering, after pyspark's
    retries once. The Parquet write used to wait them out twice (its `finally` put a session
    conf back over the dead connection: ten more minutes by default) and then raise a gRPC dump
    of that conf call. A server of its own (the module's stays up), with pyspark's own knob for
    short retries, so the test takes seconds."""
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F
    from pyspark.sql.connect.client.retries import DefaultPolicy

    port = free_port()
    proc = _start_server(spark_home, port, str(tmp_path / "server.log"))
    session = None
    try:
        session = SparkSession.builder.remote(f"sc://127.0.0.1:{port}").create()
        policy = DefaultPolicy(max_retries=3, initial_backoff=200, max_backoff=1000)
        session.client.set_retry_policies([policy])
        slow = F.udf(lambda x: time.sleep(0.05) or x, "long")  # the write lasts ~10 s
        df = _frame(session, 400).withColumn("id", slow("id")).withColumn("ts", F.current_timestamp())
        out = tmp_path / "ds"
        errors = []

        def run():
            try:
                sparkfeed.write(df, str(out), samples_per_shard=100)
            except BaseException as exc:  # handed to the test thread below
                errors.append(exc)

        writer = threading.Thread(target=run, daemon=True)
        writer.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (out / "_temporary").exists() and writer.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)  # polling for the write to begin, not timing a result
        assert (out / "_temporary").exists(), "the write never began"
        _stop_server(proc)
        killed = time.monotonic()
        writer.join(timeout=120)
        assert not writer.is_alive(), "write still running 120 s after the server died"
        # one retry cycle of the policy above is about 2.5 s (+ jitter); two would be the old bug
        assert time.monotonic() - killed < 20
        assert len(errors) == 1 and isinstance(errors[0], sparkfeed.SparkfeedError), errors
        assert str(errors[0]).startswith(f"dataset {str(out)!r}: the Spark Connect server stopped answering")
        assert not (out / "_sparkfeed.json").exists()
        # a server already gone when write is called: the same error, from its first call
        with pytest.raises(sparkfeed.SparkfeedError, match="the Spark Connect server stopped answering"):
            sparkfeed.write(df, str(tmp_path / "later"), format="webdataset")
    finally:
        _stop_server(proc)
        if session is not None:
            session.client.close()


@pytest.mark.parametrize("fmt", ["parquet", "webdataset"])
def test_ctrl_c_during_a_write_over_connect_interrupts_its_job_and_leaves_no_dataset(connect, tmp_path, fmt):
    """Ctrl-C while `write` waits on the Connect server: the KeyboardInterrupt reaches the
    caller, pyspark's client interrupts and releases the operation (there is no SparkContext
    for sparkfeed's own job group; a no-op `interrupt_operation` still passed: releasing an
    unfinished execution interrupts it on the server too), the held tasks are killed (the
    server's two cores run a new job at once, while the held UDF would hold them for 120 s),
    and the path holds no manifest."""
    from dsutil import sigint_once_exists
    from pyspark.sql import functions as F

    running = str(tmp_path / "running")

    def hold(x):
        open(running, "w").close()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.05)
        return x

    df = _frame(connect, 40).withColumn("id", F.udf(hold, "long")("id"))
    path = tmp_path / "ds"
    sigint_once_exists(running)
    with pytest.raises(KeyboardInterrupt):
        sparkfeed.write(df, str(path), format=fmt, samples_per_shard=10)
    assert os.path.exists(running), "the write's job never ran"
    counted = []
    follow_up = threading.Thread(target=lambda: counted.append(connect.range(0, 100, 1, 2).count()),
                                 daemon=True)
    follow_up.start()
    follow_up.join(timeout=60)
    assert counted == [100], "the interrupted write's tasks still hold the server's cores"
    assert not (path / "_sparkfeed.json").exists()
