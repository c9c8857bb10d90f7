"""Two Parquet writes from threads of one process on one session. Each set the session conf
spark.sql.parquet.outputTimestampType for its write and put back what it had found, so the
first to end unset it under the other (a write planned then stores INT96 timestamps, without
statistics), and the last left the session with the value the other had set."""

import os
import sys
import threading
import time

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

import sparkfeed

pytestmark = pytest.mark.spark
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
CONF = "spark.sql.parquet.outputTimestampType"


def _gate(touch: str | None, wait: str | None):
    """A UDF that creates the file `touch`, then waits for the file `wait` (in the Python worker
    of the write job: conditions made by the test, not guesses at timing)."""
    def pass_through(x):
        if touch:
            open(touch, "w").close()
        deadline = time.monotonic() + 120
        while wait and not os.path.exists(wait):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{wait} never appeared")
            time.sleep(0.01)
        return x
    return F.udf(pass_through, T.LongType())


def _frame(spark, gate):
    return spark.range(0, 5, numPartitions=1).select(
        gate(F.col("id")).alias("id"), F.timestamp_seconds(F.col("id")).alias("t"))


def test_concurrent_writes_keep_micros_until_the_last_ends_and_restore_the_users_conf(spark, tmp_path):
    assert spark.conf.get(CONF, None) is None  # the user's: unset
    a_running, b_running = str(tmp_path / "a-running"), str(tmp_path / "b-running")
    a_done = str(tmp_path / "a-done")
    results, errors = {}, []

    def write(name, df):
        try:
            results[name] = sparkfeed.write(df, str(tmp_path / name))
        except Exception as exc:  # told by the assertion below
            errors.append(exc)

    a = threading.Thread(target=write, args=("a", _frame(spark, _gate(a_running, b_running))))
    b = threading.Thread(target=write, args=("b", _frame(spark, _gate(b_running, a_done))))
    a.start()
    deadline = time.monotonic() + 300
    while not os.path.exists(a_running):  # a's write job runs: a has set the conf
        assert a.is_alive() and time.monotonic() < deadline, errors
        time.sleep(0.01)
    b.start()
    a.join(timeout=300)  # it ended while b's write job was running
    open(a_done, "w").close()
    b.join(timeout=300)
    assert not errors, errors
    assert spark.conf.get(CONF, None) is None, "the user's conf was not put back"
    for name in ("a", "b"):
        t = results[name].column("t")
        assert t.type.startswith("timestamp[us"), (name, t.type)
        (shard,) = results[name].shards
        assert shard.stats["t"].min is not None, f"{name}: no timestamp statistics (INT96)"
