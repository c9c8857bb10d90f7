"""Delta time travel as users write it: a version number (also as text), a timestamp in any
ISO-8601 form (a date alone, a space, no zone: UTC, as deltalake takes a naive datetime), and
versions the table cannot give refused in the table's terms before anything is read."""

import datetime as dt
import time

import numpy as np
import pyarrow as pa
import pytest

import sparkfeed
from sparkfeed.errors import ManifestError
from sparkfeed.index import delta
from sparkfeed.manifest import parse_manifest

deltalake = pytest.importorskip("deltalake")


def _ids(lo, hi):
    return pa.table({"id": pa.array(np.arange(lo, hi), pa.int64())})


@pytest.fixture
def table(tmp_path):
    """Versions 0 (ids 0..9) and 1 (ids 10..19 appended); the UTC time between their commits."""
    root = str(tmp_path / "t")
    deltalake.write_deltalake(root, _ids(0, 10))
    time.sleep(0.05)
    between = dt.datetime.now(dt.timezone.utc)
    time.sleep(0.05)
    deltalake.write_deltalake(root, _ids(10, 20), mode="append")
    return root, between


def _version_of(root, tmp_path, version):
    m = sparkfeed.index(root, version=version, manifest=str(tmp_path / "m.json"), mode="overwrite",
                        progress=False)
    return int(m.created_by["delta_version"]), m.num_samples


@pytest.mark.parametrize("form", [
    lambda t: t.isoformat(),                                        # with its zone: worked before
    lambda t: t.replace(tzinfo=None).isoformat(),                   # no zone: UTC
    lambda t: t.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f"),  # a space, as SQL writes it
    lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),                  # Z
])
def test_a_timestamp_in_any_iso_form_travels_to_the_version_then(table, tmp_path, form):
    root, between = table
    assert _version_of(root, tmp_path, form(between)) == (0, 10)


def test_a_version_given_as_text_is_that_version(table, tmp_path):
    """`--version 1` reaches the API as text in scripts that pass argv on: a number, not a time."""
    root, _ = table
    assert _version_of(root, tmp_path, "1") == (1, 20)
    assert _version_of(root, tmp_path, " 0 ") == (0, 10)


def test_a_version_past_the_latest_names_the_latest(table, tmp_path):
    root, _ = table
    with pytest.raises(ManifestError, match="has no version 5: its latest is 1"):
        _version_of(root, tmp_path, 5)


def test_a_time_before_the_first_commit_is_refused_not_read_as_version_0(table, tmp_path):
    """deltalake loads the first version for any earlier time: indexing the table "as of 2020"
    delivered rows that did not exist then (Spark refuses such a time)."""
    root, _ = table
    with pytest.raises(ManifestError, match=r"has no version at 2020-01-01T00:00:00\+00:00: its first "
                                            r"commit in the log \(version 0\) is at "):
        _version_of(root, tmp_path, "2020-01-01")
    assert _version_of(root, tmp_path, dt.datetime.now(dt.timezone.utc)) == (1, 20)


@pytest.mark.parametrize("version", [-1, "yesterday", "2024-13-01"])
def test_a_version_that_is_no_version_is_a_value_error_naming_version(table, tmp_path, version):
    root, _ = table
    with pytest.raises(ValueError, match=r"^`version` should be a Delta table version"):
        _version_of(root, tmp_path, version)


def test_format_delta_on_plain_parquet_says_it_is_no_delta_table(tmp_path):
    import pyarrow.parquet as pq

    (tmp_path / "p").mkdir()
    pq.write_table(_ids(0, 3), tmp_path / "p" / "a.parquet")
    with pytest.raises(ManifestError, match="is not a Delta table: it has no _delta_log/"):
        sparkfeed.index(str(tmp_path / "p"), "delta", progress=False)


def test_a_delta_table_over_http_is_refused_naming_what_deltalake_reads():
    """deltalake has no HTTP store: say so, not its list of 50 schemes (checked before any
    request, so no server is needed)."""
    with pytest.raises(ManifestError, match="served over HTTP") as info:
        delta.open_table("http://127.0.0.1:9/t", None, None, "http://127.0.0.1:9/t")
    assert "opendal" not in str(info.value)


def test_inspect_version_shows_that_version_and_the_default_the_latest(table, capsys):
    """`sparkfeed inspect TABLE --version N`: what version N holds, as `index --version` would
    save it; without --version the latest."""
    from sparkfeed.cli import main

    root, between = table
    for argv, samples, version in ([root, "--version", "0"], 10, "0"), ([root], 20, "1"), \
                                  ([root, "--version", between.isoformat()], 10, "0"):
        assert main(["inspect", *argv, "--json"]) == 0
        shown = parse_manifest(capsys.readouterr().out)
        assert (shown.num_samples, str(shown.created_by["delta_version"])) == (samples, version)


@pytest.mark.parametrize("version, said", [("yesterday", "--version should be a Delta table version"),
                                           ("0", "--version is for Delta tables, but")])
def test_inspect_version_refuses_what_is_no_version_or_no_delta_table(tmp_path, capsys, version, said):
    import pyarrow.parquet as pq

    from sparkfeed.cli import main

    (tmp_path / "p").mkdir()
    pq.write_table(_ids(0, 3), tmp_path / "p" / "a.parquet")
    assert main(["inspect", str(tmp_path / "p"), "--version", version]) == 2
    assert said in capsys.readouterr().err


def test_a_time_before_the_first_commit_left_in_a_cleaned_log_is_refused(tmp_path):
    """A log cleaned up to a checkpoint (delta.logRetentionDuration) starts after version 0: a
    time before its first commit is refused naming that commit; a time after it loads it."""
    import os

    root = str(tmp_path / "t")
    times = []
    for i in range(3):
        deltalake.write_deltalake(root, _ids(10 * i, 10 * i + 10), mode="append")
        time.sleep(0.05)
        times.append(dt.datetime.now(dt.timezone.utc))
        time.sleep(0.05)
    deltalake.DeltaTable(root, version=1).create_checkpoint()
    os.remove(os.path.join(root, "_delta_log", f"{0:020d}.json"))
    assert _version_of(root, tmp_path, times[1].isoformat()) == (1, 20)
    assert _version_of(root, tmp_path, times[2].isoformat()) == (2, 30)
    with pytest.raises(ManifestError, match=r"its first commit in the log \(version 1\) is at "):
        _version_of(root, tmp_path, times[0].isoformat())
