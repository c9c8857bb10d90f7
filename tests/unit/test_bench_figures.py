"""The benchmark's figures mean what their columns say: what `measure`, `make_row` and `finish`
count, checked with tiny synthetic runners (no timing assertions)."""

from __future__ import annotations

import multiprocessing
import time

import psutil

from sparkfeed.bench import scenarios
from sparkfeed.bench.runners import Context

MB = 2**20


def _ctx() -> Context:
    return Context(data=None, batch_size=1, workers=1, image_size=1)


def _hold(nbytes: int, seconds: float) -> None:
    """A worker's private memory: `nbytes` written (so resident), held for `seconds`."""
    block = b"\x01" * nbytes
    time.sleep(seconds)
    del block


def _short_worker_runner(ctx):
    """A loader whose worker process holds 100 MB for 0.1 s of a run shorter than 200 ms."""
    child = multiprocessing.get_context("fork").Process(target=_hold, args=(100 * MB, 0.1))
    child.start()
    child.join()
    yield 10


def test_peak_rss_counts_a_short_runs_worker_process():
    """Before, the child list was refreshed every 10th sample (200 ms): a worker of a shorter run
    was never seen, and the row showed the main process alone."""
    own = psutil.Process().memory_info().rss / MB
    m = scenarios.measure(_short_worker_runner, _ctx(), {})
    assert m["samples"] == 10
    assert m["peak_rss_mb"] >= own + 90, (own, m["peak_rss_mb"])


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def _child_cpu_runner(ctx):
    child = multiprocessing.get_context("fork").Process(target=_burn, args=(0.3,))
    child.start()
    child.join()
    yield 10


def test_cpu_counts_a_worker_process():
    """CPU µs/sample: a runner whose work is in a (joined) child process does not look cheap."""
    m = scenarios.measure(_child_cpu_runner, _ctx(), {})
    assert m["cpu_s"] >= 0.25
