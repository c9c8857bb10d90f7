"""`sparkfeed bench` interrupted (Ctrl-C): the scenarios that finished are reported, not lost."""

import json

import pytest

from sparkfeed.bench import Params, run, timing
from sparkfeed.bench.cli import main


@pytest.fixture
def ctrl_c_in_plan(monkeypatch):
    """Ctrl-C as the `plan` scenario starts (after `feed` finished): the KeyboardInterrupt that
    SIGINT raises in the bench's main thread, raised where its runs begin."""
    real = timing.run_cases

    def run_cases(cases, *args, **kwargs):
        if cases and cases[0].runner == "plan":
            raise KeyboardInterrupt
        return real(cases, *args, **kwargs)
    monkeypatch.setattr(timing, "run_cases", run_cases)


def test_an_interrupted_run_writes_the_finished_scenarios_then_raises(tmp_path, ctrl_c_in_plan):
    """Before, an interrupted run wrote nothing: a long bench stopped in its last scenario lost
    every figure of the others."""
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run(Params(quick=True, scenarios=("feed", "plan"), out=str(out), cache=str(tmp_path / "c"),
                   progress=False))
    results = json.loads((out / "results.json").read_text())
    assert list(results["scenarios"]) == ["feed"] and len(results["scenarios"]["feed"]) == 2
    assert results["interrupted"] == "interrupted during plan; not run: plan"
    assert "interrupted during plan" in (out / "results.md").read_text()
    assert (out / "results.png").exists()


def test_the_command_line_says_where_the_finished_scenarios_are_and_exits_130(tmp_path, capsys, ctrl_c_in_plan):
    out = tmp_path / "out"
    code = main(["--quick", "--scenarios", "feed,plan", "--out", str(out), "--cache", str(tmp_path / "c"),
                 "--no-progress"])
    assert code == 130
    assert f"interrupted; the scenarios that finished are in {out}/results.md" in capsys.readouterr().err
