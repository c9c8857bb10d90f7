"""The benchmark's figures mean what their columns say: what `measure`, `make_row` and `finish`
count, checked with tiny synthetic runners (no timing assertions)."""

from __future__ import annotations

import multiprocessing
import time

import psutil

from sparkfeed.bench import scenarios, timing
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
    m = timing.measure(_short_worker_runner, _ctx(), {})
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
    m = timing.measure(_child_cpu_runner, _ctx(), {})
    assert m["cpu_s"] >= 0.25


def test_feed_row_times_the_fed_loop_alone(monkeypatch):
    """The `feed` row's batches/s and CPU µs/batch are the prefetch loop's: before, the harness's
    clock around `feed_benchmark` also held what it does after the loop (on CUDA the three
    host-to-device studies, 3 x 520+ batches), which diluted both rows and their ratio."""
    from sparkfeed.bench import h2d as feed_module
    from sparkfeed.bench import runners

    real, seen = feed_module.feed_benchmark, {}

    def with_studies_after(**kwargs):
        result = real(**kwargs)
        _burn(0.3)  # what the CUDA studies add after the loop
        seen.update(result)
        return result

    monkeypatch.setattr(feed_module, "feed_benchmark", with_studies_after)
    case = timing.Case("prefetch depth 2", "feed", 5, options=dict(
        batches=5, batch_bytes=64, step_s=0.0, producer_s=0.0, depth=2))
    m = timing.measure(runners.RUNNERS["feed"], _ctx(), case.options)
    row = timing.make_row(case, m, "")
    assert m["seconds"] == seen["seconds"] and m["cpu_s"] == seen["cpu_s"]
    assert row["samples_per_s"] == round(5 / seen["seconds"], 1)
    assert row["ttfb_s"] is None


def test_remote_rows_leave_the_http_servers_cpu_out(tmp_path):
    """The `remote` scenario's latency server answers on threads of the bench's own process, so
    its CPU landed in the CPU µs/sample of the loaders run in that process (not in the Mosaic
    row, measured in its own process): a server that burns 0.3 s answering must not show."""
    import urllib.request

    from sparkfeed.bench import remote

    (tmp_path / "f.bin").write_bytes(b"x" * 1000)
    server = remote.LatencyServer(str(tmp_path), latency_s=0.0,
                                  hold=lambda *_: _burn(0.3))

    def fetch(ctx):
        before = remote._counts(server)
        with urllib.request.urlopen(f"{server.url}/f.bin") as r:
            n = len(r.read())
        remote._served(ctx, server, before)
        yield n

    try:
        m = timing.measure(fetch, _ctx(), {})
    finally:
        server.close()
    assert m["samples"] == 1000 and m["extra"]["requests"] == 1
    assert "server_cpu_s" not in m["extra"]
    assert m["cpu_s"] < 0.2, m["cpu_s"]  # the client's few ms, not the server's 0.3 s


def test_markdown_says_why_a_failed_baseline_gives_no_ratios():
    """A skipped or failed baseline leaves `vs baseline` empty: the table says why (before, only a
    baseline that `--runners` left out was explained)."""
    from sparkfeed.bench import report

    base = timing.make_row(timing.Case("torch-map-style", "torch-map-style", 5, baseline=True),
                              None, "FAILED: RuntimeError: boom")
    other = timing.make_row(timing.Case("sparkfeed", "sparkfeed", 5),
                               {"samples": 5, "seconds": 0.5, "ttfb_s": 0.1, "peak_rss_mb": 1.0,
                                "cpu_s": 0.5, "extra": {}}, "")
    rows = scenarios.finish([base, other])
    assert rows[1]["ratio_vs_baseline"] is None and rows[1]["samples_per_s"] == 10.0
    assert rows[1]["cpu_s_per_sample"] == 0.1
    results = {"hardware": {"cpu": "x", "cores": 2, "memory_gb": 1, "gpu": "none", "load_avg_1m": 0,
                            "page_cache": "warm"},
               "params": {"samples": 5, "images": 5, "image_size": 8, "batch_size": 1, "workers": 1,
                          "repeats": 1},
               "build_s": 0.0, "webdataset": "-", "scenarios": {"tabular": rows},
               "baselines": {"tabular": "torch-map-style"}}
    text = report.markdown(results)
    assert "the baseline row, `torch-map-style`, has no rate (FAILED: RuntimeError: boom)" in text
