"""`spark_session()` with a session already active returns it; the `conf=` and `master=` given
were ignored without a word (a notebook calling it twice with a new shuffle-partition count got
the old one)."""

import logging

import pytest

import sparkfeed

pytestmark = pytest.mark.spark


def test_conf_given_to_an_active_session_is_applied_or_said_to_be_ignored(spark, caplog):
    key = "spark.sql.shuffle.partitions"
    before = spark.conf.get(key)
    try:
        with caplog.at_level(logging.WARNING, logger="sparkfeed.session"):
            again = sparkfeed.spark_session(master="local[1]",
                                            conf={key: 7, "spark.executor.memory": "3g"})
        assert again is spark
        assert spark.conf.get(key) == "7"  # a runtime SQL setting: applied
        said = " ".join(r.getMessage() for r in caplog.records)
        assert "master='local[1]' (it runs on 'local[2]')" in said
        assert "spark.executor.memory" in said and key not in said
    finally:
        spark.conf.set(key, before)
