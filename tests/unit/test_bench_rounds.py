"""The bench's timing harness (`timing.run_cases`): each runner's runs back to back after its
warm-up, more of them for a runner whose runs are short, and a runner that fails or is not
written yet costs only its own row."""

import pytest

from sparkfeed.bench import runners, timing
from sparkfeed.bench.runners import Context
from sparkfeed.bench.timing import Case


@pytest.fixture
def calls(monkeypatch):
    log = []

    def runner(name, count=None, fail=None):
        def run(ctx, **options):
            log.append(name)
            if fail is not None:
                raise fail
            yield count if count is not None else 10
        return run
    monkeypatch.setitem(runners.RUNNERS, "a", runner("a"))
    monkeypatch.setitem(runners.RUNNERS, "b", runner("b", count=9))         # one sample short
    monkeypatch.setitem(runners.RUNNERS, "c", runner("c"))
    monkeypatch.setitem(runners.RUNNERS, "d", runner("d", fail=NotImplementedError("not yet")))
    monkeypatch.setitem(runners.RUNNERS, "e", runner("e", fail=OSError("disk gone")))
    return log


def test_each_runner_runs_back_to_back_and_a_failure_costs_only_its_row(calls):
    ctx = Context(data=None, batch_size=1, workers=0, image_size=1)
    cases = [Case(x, x, 10) for x in "abcde"]
    rows, failures = timing.run_cases(cases, ctx, repeats=3)
    # each: a warm-up, then its runs (b stops at its first wrong count, d and e in their warm-ups)
    assert calls == ["a"] * 4 + ["b"] * 2 + ["c"] * 4 + ["d", "e"]
    assert [r["runner"] for r in rows] == list("abcde")
    assert rows[0]["samples"] == rows[2]["samples"] == 10 and rows[0]["samples_per_s"] > 0
    assert rows[1]["note"].startswith("FAILED: runner 'b' saw 9 samples, expected 10")
    assert rows[3]["note"] == "skipped: not yet" and rows[3]["samples"] is None
    assert rows[4]["note"] == "FAILED: OSError: disk gone"
    assert failures == ["runner 'b' saw 9 samples, expected 10: it lost or repeated samples",
                        "runner 'e' raised OSError: disk gone"]


def test_a_case_without_warm_up_is_timed_from_its_first_run(calls):
    ctx = Context(data=None, batch_size=1, workers=0, image_size=1)
    rows, failures = timing.run_cases([Case("a", "a", 10, warmup=False), Case("c", "c", 10)], ctx, repeats=2)
    assert calls == ["a", "a", "c", "c", "c"] and not failures
    assert [r["samples"] for r in rows] == [10, 10]


def test_short_runners_get_more_rounds_until_min_seconds(calls, monkeypatch):
    """A runner whose timed runs took less than `min_seconds` runs again (a capped number of
    runs); one whose runs took that long stops at `repeats`."""
    import time

    def slow(ctx, **options):
        calls.append("slow")
        time.sleep(0.6)
        yield 10
    monkeypatch.setitem(runners.RUNNERS, "slow", slow)
    monkeypatch.setattr(timing, "MAX_RUNS", 6)
    monkeypatch.setattr(timing.gc, "collect", lambda: 0)  # each run's full collection: not this test's
    ctx = Context(data=None, batch_size=1, workers=0, image_size=1)
    rows, _ = timing.run_cases([Case("a", "a", 10, warmup=False), Case("slow", "slow", 10, warmup=False)],
                                  ctx, repeats=2, min_seconds=1.0)  # (far above 6 runs of "a", even under load)
    assert calls.count("slow") == 2 and calls.count("a") == 6  # 1.2 s reached; the cap reached
    assert calls == ["a"] * 6 + ["slow"] * 2
    assert rows[0]["runs"] == 6 and rows[0]["note"] == "median of 6 runs"
    assert rows[1]["runs"] == 2 and rows[1]["note"] == ""


def test_runs_added_for_min_seconds_end_on_an_odd_count(calls, monkeypatch):
    """Runs added beyond `repeats` stop on an odd count: with an even one the reported run would
    be the faster of the two middle ones (median_low), a bias towards speed."""
    clock = [0.0]  # the harness's clock, moved by the runner alone: no load can change the count

    def slowish(ctx, **options):
        calls.append("slowish")
        clock[0] += 0.6  # one run < 1 s, two runs >= 1 s: the time alone stops at 2 runs
        yield 10
    monkeypatch.setitem(runners.RUNNERS, "slowish", slowish)
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(timing.gc, "collect", lambda: 0)
    ctx = Context(data=None, batch_size=1, workers=0, image_size=1)
    rows, failures = timing.run_cases([Case("slowish", "slowish", 10, warmup=False)], ctx,
                                         repeats=1, min_seconds=1.0)
    assert not failures and calls == ["slowish"] * 3
    assert rows[0]["runs"] == 3 and rows[0]["note"] == "median of 3 runs"
