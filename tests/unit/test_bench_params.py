"""`sparkfeed bench` parameters: every value the user gives is checked, before any data is
built; only an absent one takes the default."""

import math
import subprocess
import sys

import pytest

from sparkfeed.bench import Params
from sparkfeed.bench.cli import main


@pytest.mark.parametrize("name", ["samples", "scaling_base", "images", "image_size", "image_source",
                                  "repeats"])
def test_zero_is_refused_not_taken_for_the_default(tmp_path, name):
    """`images=0` is an error naming it. Before, `value or default` read 0 as "not given":
    `--images 0` built and benchmarked 5,000 images, `--repeats 0` ran 3."""
    with pytest.raises(ValueError, match=rf"`{name}` should be a positive integer, but got {name}=0"):
        Params(**{name: 0}, out=str(tmp_path / "b"), cache=str(tmp_path / "c"))


def test_min_seconds_nan_is_refused(tmp_path):
    with pytest.raises(ValueError, match="`min_seconds` should be a non-negative number"):
        Params(min_seconds=math.nan, out=str(tmp_path / "b"), cache=str(tmp_path / "c"))


def test_absent_values_take_the_defaults(tmp_path):
    p = Params(quick=True, image_size=32, out=str(tmp_path / "b"), cache=str(tmp_path / "c"))
    assert (p.samples, p.images, p.image_source, p.repeats, p.min_seconds) == (20_000, 1_000, 32, 1, 0.0)


@pytest.mark.parametrize("flag", ["--images", "--repeats", "--image-size"])
def test_the_command_line_refuses_zero_in_one_line(tmp_path, flag):
    """As a user runs it: one line naming the flag, exit 2, nothing built."""
    r = subprocess.run([sys.executable, "-m", "sparkfeed.cli", "bench", flag, "0", "--scenarios", "plan",
                        "--out", str(tmp_path / "b"), "--cache", str(tmp_path / "c")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and f"error: {flag} should be a positive integer, but got {flag} 0" in r.stderr, r.stderr
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_runners_that_match_nothing_are_refused_naming_the_runners(tmp_path, capsys):
    """`--runners sparkfed` (a typo) kept no runner: before, an empty report and exit 0."""
    with pytest.raises(SystemExit) as exit_:
        main(["--quick", "--scenarios", "feed", "--runners", "sparkfed,prefetch", "--out", str(tmp_path / "out"),
              "--cache", str(tmp_path / "c"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2 and "--runners 'sparkfed' match no runner" in err and "'prefetch" not in err.split(";")[0]
    assert not (tmp_path / "out" / "results.json").exists()
