"""The command line's bad-input contract: a mistyped command lists every command, and an
argument the API refuses is one line on stderr naming the flag, exit code 2, no traceback."""

import importlib
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


# ---------------------------------------------------------------- arguments refused before any indexing
# Command-line arguments that used to do something else than asked, or fail late: an empty
# PATH or --manifest (storage reads "" as the file system's root, so the manifest went to
# /_sparkfeed.json), a manifest bound for read-only HTTP storage (a traceback after every file was
# read), an existing non-.json file as --manifest, a bad --version found only after indexing,
# --log-level after the command, --shards below 0. Each is refused before any indexing starts,
# as one line on stderr with exit code 2.

@pytest.fixture
def never_indexed(monkeypatch):
    """Fail the test if the command gets as far as indexing (and, without the checks, as far
    as writing a manifest at '/')."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"indexing started: {args} {kwargs}")

    monkeypatch.setattr(importlib.import_module("sparkfeed.index"), "index", refuse)


@pytest.mark.parametrize("argv, says", [
    (["index", "{root}", "--manifest", ""], "--manifest should be a directory or a .json path"),
    (["index", "", "--manifest", "{root}/m.json"], "PATH should be a directory"),
    (["index", "http://127.0.0.1:9/ds/"], "HTTP storage is read-only; pass --manifest"),
    (["index", "{root}", "--manifest", "https://example.invalid/m.json"], "HTTP storage is read-only"),
    (["index", "{root}", "--manifest", "{root}/a.parquet"], "is an existing file but no .json"),
    (["index", "{root}", "--version", "last week", "--manifest", "{root}/m.json"],
     "--version should be a Delta table version"),
])
def test_arguments_that_would_write_elsewhere_or_fail_late_are_refused_first(
        plain, never_indexed, capsys, argv, says):
    assert main([a.format(root=plain) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err


def test_inspect_of_an_empty_path_is_refused_not_the_root(capsys):
    assert main(["inspect", ""]) == 2
    assert "got an empty string" in capsys.readouterr().err


def test_index_prints_the_manifest_file_it_wrote(plain, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert main(["index", str(plain), "--manifest", str(out), "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert said.rstrip().endswith(f"-> {out}/_sparkfeed.json") and "1 column " in said, said
    assert (out / "_sparkfeed.json").is_file()


def test_log_level_goes_after_the_command_too(plain):
    """In its own process (pytest's logging handlers would keep basicConfig from acting)."""
    r = subprocess.run([sys.executable, "-m", "sparkfeed.cli", "index", str(plain), "--no-progress",
                        "--log-level", "info"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "INFO sparkfeed.index: indexed" in r.stderr, r.stderr


def test_a_negative_shard_count_is_a_usage_error(plain, capsys):
    with pytest.raises(SystemExit, match="^2$"):
        main(["inspect", str(plain), "--shards", "-1"])
    assert "should be an integer >= 0" in capsys.readouterr().err
