"""Spark fixtures: one local-mode session for the whole test run (JVM start-up is slow)."""

import pytest


@pytest.fixture(scope="module")
def spark():
    """The process's active local session (started once; `sparkfeed.spark_session` returns the
    active one). Asked for per module, not held for the whole run: under pytest-xdist a process
    may also run the Spark Connect tests, which stop the classic session to start theirs."""
    import sparkfeed

    session = sparkfeed.spark_session(app_name="sparkfeed-tests", master="local[2]")
    yield session
