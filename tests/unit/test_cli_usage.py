"""The command line's bad-input contract: a mistyped command lists every command, and an
argument the API refuses is one line on stderr naming the flag, exit code 2, no traceback."""

import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sparkfeed.cli import main, usage_error


def test_a_mistyped_command_lists_every_command(capsys):
    with pytest.raises(SystemExit, match="^2$"):
        main(["idnex", "x"])
    err = capsys.readouterr().err
    for name in ("'inspect'", "'jar'", "'index'", "'bench'"):
        assert name in err, err


@pytest.fixture
def plain(tmp_path):
    root = tmp_path / "plain"
    root.mkdir()
    pq.write_table(pa.table({"id": [1, 2]}), root / "a.parquet")
    return root


@pytest.mark.parametrize("argv, says", [
    (["index", "--no-progress", "{root}/*.parquet"], "error: --manifest should say where"),
    (["index", "--no-progress", "{root}", "--version", "3"], "error: --version is for Delta tables"),
    (["bench", "--batch-size", "0", "--scenarios", "plan", "--out", "{root}/b"],
     "error: --batch-size should be a positive integer, but got --batch-size 0"),
    (["bench", "--workers", "-1", "--scenarios", "plan", "--out", "{root}/b"],
     "error: --workers should be a non-negative integer"),
    (["bench", "--scenarios", "bogus", "--out", "{root}/b"], "argument --scenarios: should be a comma"),
])
def test_bad_arguments_are_one_line_naming_the_flag_and_exit_2(plain, argv, says):
    """In its own process, as a user runs it: stderr holds the message and no traceback."""
    argv = [a.format(root=plain) for a in argv]
    r = subprocess.run([sys.executable, "-m", "sparkfeed.cli", *argv], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and says in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "manifest=" not in r.stderr
    assert not (plain / "b").exists()  # refused before any benchmark data is built


def test_only_argument_checks_become_usage_errors():
    """Other ValueErrors (pyarrow's, or ones naming no flag) keep their traceback."""
    flags = {"batch_size": "--batch-size"}
    usage = usage_error(ValueError("`batch_size` should be a positive integer, but got batch_size=0"), flags)
    assert str(usage) == "--batch-size should be a positive integer, but got --batch-size 0"
    assert usage_error(ValueError("`columns` should be a list"), flags) is None
    assert usage_error(pa.ArrowInvalid("`batch_size` bad bytes"), flags) is None
    assert usage_error(ValueError("could not convert string to float"), flags) is None
