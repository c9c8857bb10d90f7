"""Spark fixtures: one local-mode session for the whole test run (JVM start-up is slow)."""

import pytest


@pytest.fixture(scope="session")
def spark():
    import sparkfeed

    session = sparkfeed.spark_session(app_name="sparkfeed-tests", master="local[2]")
    yield session
