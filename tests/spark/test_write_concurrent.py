"""Two Parquet writes from threads of one process on one session. Each set the session conf
spark.sql.parquet.outputTimestampType for its write and put back what it had found, so the
first to end unset it under the other (a write planned then stores INT96 timestamps, without
statistics), and the last left the session with the value the other had set.

The writes run in a process of their own with a session of 4 cores: the two jobs must run at
once, which the shared test session (2 cores) cannot promise while a job another test left
behind still holds one of them."""

import json

import pytest

import dsutil

pytestmark = pytest.mark.spark

SCRIPT = r'''
import json, os, sys, threading, time
from pyspark.sql import functions as F, types as T
import sparkfeed

CONF = "spark.sql.parquet.outputTimestampType"
root = sys.argv[1]
spark = sparkfeed.spark_session(app_name="sparkfeed-concurrent-writes", master="local[4]")


def gate(touch, wait):
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


def frame(g):
    return spark.range(0, 5, numPartitions=1).select(g(F.col("id")).alias("id"),
                                                     F.timestamp_seconds(F.col("id")).alias("t"))


before = spark.conf.get(CONF, None)
a_running, b_running, a_done = (os.path.join(root, n) for n in ("a-running", "b-running", "a-done"))
results, errors = {}, []


def write(name, df):
    try:
        results[name] = sparkfeed.write(df, os.path.join(root, name))
    except Exception as exc:  # reported below
        errors.append(f"{type(exc).__name__}: {exc}")


a = threading.Thread(target=write, args=("a", frame(gate(a_running, b_running))))
b = threading.Thread(target=write, args=("b", frame(gate(b_running, a_done))))
a.start()
deadline = time.monotonic() + 300
while not os.path.exists(a_running) and a.is_alive() and time.monotonic() < deadline:
    time.sleep(0.01)  # a's write job runs: a has set the conf
b.start()
a.join(timeout=300)  # it ended while b's write job was running
open(a_done, "w").close()
b.join(timeout=300)
out = {"before": before, "after": spark.conf.get(CONF, None), "errors": errors, "shards": {}}
for name, m in results.items():
    (shard,) = m.shards
    out["shards"][name] = {"type": m.column("t").type, "min": shard.stats["t"].min is not None}
print("RESULT " + json.dumps(out), flush=True)
spark.stop()
'''


def test_concurrent_writes_keep_micros_until_the_last_ends_and_restore_the_users_conf(tmp_path):
    done = dsutil.run_script(SCRIPT, tmp_path, str(tmp_path), timeout=600)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert done.returncode == 0 and line is not None, done.stderr[-3000:]
    out = json.loads(line[len("RESULT "):])
    assert out["before"] is None  # the user's: unset
    assert not out["errors"], out["errors"]
    assert out["after"] is None, "the user's conf was not put back"
    for name in ("a", "b"):
        shard = out["shards"][name]
        assert shard["type"].startswith("timestamp[us"), (name, shard["type"])
        assert shard["min"], f"{name}: no timestamp statistics (INT96)"
