"""The bench harness times a scenario's runners in rounds (A B, A B, ...), not one runner's
repeats back to back, so that a slow stretch of the machine lands on every runner of a round."""

import pytest

from sparkfeed.bench import runners, scenarios
from sparkfeed.bench.scenarios import Case


@pytest.fixture
def calls(monkeypatch):
    """Two runners that record each run; 'fail' raises from its second run on."""
    seen: list[str] = []

    def counting(name, samples):
        def runner(ctx, **options):
            seen.append(name)
            if name == "fail" and seen.count("fail") > 1:
                raise OSError("disk gone")
            yield samples
        return runner

    for name, samples in (("a", 10), ("b", 10), ("fail", 10), ("short", 9)):
        monkeypatch.setitem(runners.RUNNERS, f"t-{name}", counting(name, samples))
    return seen


def _ctx():
    return runners.Context(data=None, batch_size=8, workers=0, image_size=8)


def test_warm_ups_then_rounds_of_every_runner_in_turn(calls):
    cases = [Case("a", "t-a", 10), Case("b", "t-b", 10, warmup=False)]
    rows, failures = scenarios.run_cases("s", cases, _ctx(), repeats=3)
    assert calls == ["a", "a", "b", "a", "b", "a", "b"]  # a's warm-up, then 3 rounds
    assert failures == []
    assert [r["runner"] for r in rows] == ["a", "b"]
    assert all(r["samples"] == 10 and r["samples_per_s"] > 0 for r in rows)


def test_a_failing_runner_leaves_the_rounds_and_the_others_finish(calls):
    cases = [Case("fail", "t-fail", 10, warmup=False), Case("short", "t-short", 10, warmup=False),
             Case("b", "t-b", 10, warmup=False)]
    rows, failures = scenarios.run_cases("s", cases, _ctx(), repeats=3)
    assert calls == ["fail", "short", "b", "fail", "b", "b"]
    by = {r["runner"]: r for r in rows}
    assert by["fail"]["note"] == "FAILED: OSError: disk gone"
    assert by["short"]["note"].startswith("FAILED: runner 'short' saw 9 samples, expected 10")
    assert by["b"]["samples"] == 10
    assert [f.split(":")[0] for f in failures] == ["s", "s"]
    assert "runner 'fail' raised OSError" in failures[1]
