"""Shared pytest set-up: markers, and JVM options for the short-lived JVMs the tests start."""

import os

import pytest

os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")

# Every JVM the tests start (the local Spark session, spark-submit drivers, a standalone
# cluster's master, workers and executors, the Spark Connect server, the benchmark's data
# builds) lives for seconds to a minute on tiny data, where the JIT's optimising compiler and
# the parallel collector's threads only cost CPU the 2-core CI machine does not have: C1 only
# and the serial collector take about a third off each Spark start and first job (the JVMs print
# "Picked up JAVA_TOOL_OPTIONS"). A JAVA_TOOL_OPTIONS already set is left as it is.
TEST_JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
os.environ.setdefault("JAVA_TOOL_OPTIONS", TEST_JVM_OPTIONS)


def pytest_configure(config):
    for marker, text in [("spark", "needs a local Spark session (JVM)"),
                         ("distributed", "starts torchrun ranks (gloo on CPU)"),
                         ("gpu", "needs CUDA; skipped where there is none"),
                         ("slow", "takes more than a few seconds")]:
        config.addinivalue_line("markers", f"{marker}: {text}")


@pytest.fixture(scope="module")
def spark():
    """The process's active local Spark session (started once per process, JVM start-up being
    slow; `sparkfeed.spark_session` returns the active one). Asked for per module, not held for
    the whole run: under pytest-xdist a process may also run the Spark Connect tests, which stop
    the classic session to start theirs."""
    import sparkfeed

    return sparkfeed.spark_session(app_name="sparkfeed-tests", master="local[2]")
