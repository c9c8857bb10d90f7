"""`python -m sparkfeed.bench.remote_epochs`: its arguments are checked before any epoch runs.
(Its epochs over a server: tests/deploy/test_read_ahead.py.)"""

import pytest

import dsutil
from sparkfeed.bench import remote_epochs


@pytest.mark.parametrize("flags,says", [
    (["--epochs", "0"], "--epochs: should be an integer > 0"),
    (["--epochs", "-1"], "--epochs: should be an integer > 0"),
    (["--latency-ms", "-5"], "--latency-ms: should be a number >= 0"),
    (["--latency-ms", "inf"], "--latency-ms: should be a number >= 0"),
    (["--workers", "-1"], "--workers: should be an integer >= 0"),
    (["--batch-size", "0"], "--batch-size: should be an integer > 0"),
])
def test_a_bad_value_is_a_usage_error_before_any_epoch(tmp_path, capsys, flags, says):
    """One line naming the flag, exit 2, and no epoch run. Before, --epochs 0 ran the warm-up
    epoch and died with an IndexError, a negative or infinite --latency-ms made the server
    drop every request (the loader retried until aiohttp's error), and --workers -1 /
    --batch-size 0 were tracebacks of the loader's checks after the server started."""
    dsutil.write_parquet(str(tmp_path / "pq"), dsutil.table(20, image_bytes=8), 10, 10)
    with pytest.raises(SystemExit) as exited:
        remote_epochs.main([str(tmp_path / "pq"), *flags])
    assert exited.value.code == 2
    err = capsys.readouterr()
    assert says in err.err and "samples" not in err.out, err


def test_a_missing_dataset_directory_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        remote_epochs.main([str(tmp_path / "nothing"), "--local"])
    assert exited.value.code == 2 and "no such dataset directory" in capsys.readouterr().err
