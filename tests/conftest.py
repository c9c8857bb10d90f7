"""Shared pytest set-up: markers and tiny data made on the fly."""

import os

os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")


def pytest_configure(config):
    for marker, text in [("spark", "needs a local Spark session (JVM)"),
                         ("distributed", "starts torchrun ranks (gloo on CPU)"),
                         ("gpu", "needs CUDA; skipped where there is none"),
                         ("slow", "takes more than a few seconds")]:
        config.addinivalue_line("markers", f"{marker}: {text}")
