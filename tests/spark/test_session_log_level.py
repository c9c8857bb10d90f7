"""`spark_session()` sets Spark's log level to WARN (or `SPARKFEED_SPARK_LOG_LEVEL`) unless the
user gave one as `spark.log.level` (by `conf=` or `spark-submit --conf`): it overrode theirs."""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, sys
    import sparkfeed
    spark = sparkfeed.spark_session(conf=json.loads(sys.argv[1]))
    jvm = spark.sparkContext._jvm
    print("ROOT", jvm.org.apache.logging.log4j.LogManager.getRootLogger().getLevel().toString(), flush=True)
    spark.stop()
""")


@pytest.mark.parametrize("conf,env,level", [('{"spark.log.level": "ERROR"}', None, "ERROR"),
                                            ("{}", None, "WARN"),
                                            ("{}", "INFO", "INFO")])
def test_a_log_level_the_user_gave_is_kept(tmp_path, conf, env, level):
    script = tmp_path / "s.py"
    script.write_text(SCRIPT)
    environ = {k: v for k, v in os.environ.items() if k != "SPARKFEED_SPARK_LOG_LEVEL"}
    if env:
        environ["SPARKFEED_SPARK_LOG_LEVEL"] = env
    environ["PYTHONPATH"] = os.pathsep.join(sys.path)
    done = subprocess.run([sys.executable, str(script), conf], capture_output=True, text=True,
                          timeout=300, env=environ)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"ROOT {level}\n" in done.stdout, (done.stdout, done.stderr[-2000:])
