"""The bench's timing harness: each case's runner run untimed once, then timed, and the row of
its median run.

Each runner first runs once untimed (imports, first worker start-up, page cache), then is timed
`repeats` times back to back (more for a runner whose runs are short: `min_seconds`), and the
run with the median wall time is reported. Peak RSS is sampled every
20 ms by a thread as the sum over this process and the children started during the run (loader
workers, looked for at every sample; the Spark JVM that built the data is left out; pages a
forked worker shares with this process count in both, and where there are children their summed
PSS is reported too, `_PeakRss`); CPU time is this process plus its reaped
children (workers are joined when an epoch ends), divided by the samples.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from . import runners
from .runners import Context

MAX_RUNS = 51  # timed runs of one runner at most, however short its runs (`min_seconds`); odd: see run_case


class CountMismatch(RuntimeError):
    """A runner delivered another number of samples than the data holds."""


@dataclass(frozen=True)
class Case:
    """One row of a scenario: a runner with its options and the count it must deliver."""

    label: str
    runner: str
    expected: int
    options: dict = field(default_factory=dict)
    baseline: bool = False
    warmup: bool = True  # an untimed run first (off where each run is a fresh process anyway)
    payload_bytes: int = 0  # on-disk bytes of what it reads, for MB/s where bytes_read is unknown
    note: str = ""


def _descendants(pid: int) -> set[int] | None:
    """The pids below `pid`, from /proc/<pid>/task/<tid>/children: only this process tree's files
    are read (~60 µs), where psutil's `children()` reads every process's /proc entry (~1.5 ms, under
    the GIL), so the sampler can look for new children at every sample. None where the kernel
    lacks those files (CONFIG_PROC_CHILDREN)."""
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            if parent == pid:
                return None
            continue  # exited meanwhile
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                if parent == pid and not found:
                    return None
                continue
            todo += [k for k in kids if k not in found]
            found.update(kids)
    return found


class _PeakRss:
    """Samples RSS of this process plus its children on a thread; `peak_mb` after `stop()`.

    The children are looked for at every sample (20 ms): before, the list was refreshed every
    10th sample only (200 ms), so a loader's worker processes were left out of runs shorter
    than 200 ms (a 0.16 s torch DataLoader epoch with 2 workers reported the main process alone)
    and out of every run's first 200 ms. Each process's RSS counts the pages it shares with the
    others (a forked worker's copy-on-write pages of the parent appear in both). So, where a run
    has child processes, `peak_pss` is the sum of their PSS (each shared page divided among its
    sharers; Linux's /proc/<pid>/smaps_rollup), read whenever the RSS sum reaches a new peak
    (`PSS_STEP` above the last reading): a reading costs 5-20 ms a process, too much every 20 ms."""

    PSS_STEP = 1.02

    def __init__(self, every: float = 0.02):
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self._proc = psutil.Process()
        # children alive before the run (the Spark JVM that built the data) are not the loader's
        self._before = self._children_now()
        self._children: dict[int, psutil.Process] = {}
        self._samples = 0
        self.peak_pss: int | None = None  # (None: no child process, or no smaps_rollup)
        self._pss_at = 0  # the RSS sum at the last PSS reading
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _children_now(self) -> set[int]:
        pids = _descendants(self._proc.pid)
        if pids is None:  # no /proc children files: psutil's walk of all of /proc, every 10th sample
            if getattr(self, "_samples", 0) % 10:
                return set(self._children)
            pids = {c.pid for c in self._proc.children(recursive=True)}
        return pids

    def _refresh(self) -> None:
        pids = self._children_now() - self._before
        for pid in pids - set(self._children):
            try:
                self._children[pid] = psutil.Process(pid)
            except psutil.Error:
                pass
        for pid in set(self._children) - pids:
            del self._children[pid]

    def _sample(self) -> None:
        self._refresh()
        self._samples += 1
        total = self._proc.memory_info().rss
        for child in list(self._children.values()):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        self.peak = max(self.peak, total)
        if self._children and total > self._pss_at * self.PSS_STEP:
            self._pss_at = total
            pss = _pss([self._proc.pid, *self._children])
            if pss is not None:
                self.peak_pss = max(self.peak_pss or 0, pss)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def __enter__(self):
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20

    @property
    def peak_pss_mb(self) -> float | None:
        return None if self.peak_pss is None else self.peak_pss / 2**20


def _pss(pids) -> int | None:
    """The summed PSS of `pids` in bytes (those gone meanwhile count 0); None without smaps_rollup."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
        except FileNotFoundError:
            if pid == os.getpid():
                return None
        except (OSError, StopIteration, ValueError):
            pass
    return total


def _cpu_s() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def measure(runner: Callable, ctx: Context, options: dict) -> dict:
    """Run one runner once: samples, seconds, time to first batch, peak RSS, CPU seconds."""
    ctx.extra = {}
    samples, ttfb, first = 0, None, 0
    gc.collect()  # every runner starts with the same clean heap (a full collection costs ~0.1 s here)
    cpu0 = _cpu_s()
    with _PeakRss() as rss:
        start = time.perf_counter()
        for n in runner(ctx, **options):
            if ttfb is None:
                ttfb, first = time.perf_counter() - start, int(n)
            samples += int(n)
        seconds = time.perf_counter() - start
    # the `remote` scenario's HTTP server runs on threads of this process: its CPU is the
    # storage's, not the loader's
    server_cpu = ctx.extra.pop("server_cpu_s", 0.0)
    m = {"samples": samples, "seconds": seconds, "ttfb_s": ttfb or seconds,
         "peak_rss_mb": rss.peak_mb, "cpu_s": _cpu_s() - cpu0 - server_cpu}
    measured = ctx.extra.pop("measured", {})  # a subprocess runner's own figures (peers)
    if rss.peak_pss_mb is not None and not measured:  # (worker processes: RSS counts shared pages in each)
        ctx.extra["peak_pss_mb"] = round(rss.peak_pss_mb, 1)
    m.update(measured)
    extra = dict(ctx.extra)
    if ttfb is not None and samples > first and seconds > ttfb and not measured:
        # the rate after the first batch, beside the whole run's: start-up (manifest, footers,
        # a first remote fetch, a GPU decoder's initialisation) apart from the steady state
        extra["steady_samples_per_s"] = round((samples - first) / (seconds - ttfb))
    return {**m, "extra": extra}


def _missing(runner: str) -> str:
    venv = runners.PEER_VENVS.get(runner)
    if venv is not None:
        from . import peers

        if peers.python_of(venv) is None:
            where = os.path.join(peers.peers_dir(), venv)
            if os.path.exists(os.path.join(where, "bin", "python")):  # made, never marked `.ok`
                return (f"skipped: the venv at {where} is incomplete (its install failed or was "
                        f"interrupted); run `python -m sparkfeed.bench.peers install --only {venv}`")
            return f"skipped: {peers.INSTALL_HINT} (no venv at {where})"
        return ""
    need = runners.REQUIRES.get(runner)
    if need and not _importable(need[0]):
        return f"skipped: not installed ({need[1]})"
    return ""


def _importable(module: str) -> bool:
    """Whether `module` (dotted: `nvidia.dali`) can be imported. Not its top package alone: CUDA
    torch wheels install an `nvidia` namespace (cuBLAS, cuDNN...) without DALI, which made the
    DALI rows FAILED (ModuleNotFoundError, exit 1) instead of skipped on a GPU machine."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing
        return False


def make_row(case: Case, m: dict | None, note: str) -> dict:
    row = {"runner": case.label, "samples": None, "expected": case.expected, "seconds": None,
           "samples_per_s": None, "mb_per_s": None, "ttfb_s": None, "peak_rss_mb": None,
           "cpu_s_per_sample": None, "bytes_read": None, "ratio_vs_baseline": None,
           "note": note, "baseline": case.baseline}
    if m is None:
        return row
    extra = m["extra"]
    bytes_read = extra.pop("bytes_read", None)
    moved = bytes_read if bytes_read is not None else case.payload_bytes
    row.update(samples=m["samples"], seconds=round(m["seconds"], 4),
               samples_per_s=round(m["samples"] / m["seconds"], 1),
               mb_per_s=round(moved / m["seconds"] / 1e6, 2) if moved else None,
               ttfb_s=round(m["ttfb_s"], 4), peak_rss_mb=round(m["peak_rss_mb"], 1),
               cpu_s_per_sample=round(m["cpu_s"] / max(1, m["samples"]), 8),
               bytes_read=bytes_read)
    row.update(extra)
    return row


def run_cases(cases: list[Case], ctx: Context, repeats: int, progress=None,
              min_seconds: float = 0.0) -> tuple[list[dict], list[str]]:
    """Time each case in turn (`run_case`); the rows in `cases` order, and the failures."""
    rows, failures = [], []
    for case in cases:
        if progress is not None:
            progress.set_postfix_str(case.label)
        row, failure = run_case(case, ctx, repeats, progress, min_seconds)
        rows.append(row)
        if failure is not None:
            failures.append(failure)
    return rows, failures


def _even_extra(runs: list, repeats: int) -> bool:
    """Whether runs were added beyond `repeats` and their count is even (one more makes it odd)."""
    return len(runs) > repeats and len(runs) % 2 == 0


def run_case(case: Case, ctx: Context, repeats: int, progress=None,
             min_seconds: float = 0.0) -> tuple[dict, str | None]:
    """An untimed warm-up, then `repeats` timed runs back to back, and more while they took less
    than `min_seconds` of wall time in all (start-up included; at most `MAX_RUNS` runs): a 50 ms
    epoch timed three times is mostly the machine's noise; runs added that way end on an odd count,
    so the median is a run of its own rather than the faster of the two middle ones. The row of the
    median run, and the failure (a wrong count, or what the runner raised) or None; a runner that
    raises NotImplementedError is a skipped row."""
    skipped = case.note if case.note.startswith("skipped") else _missing(case.runner)
    if skipped:
        return make_row(case, None, skipped), None
    runs, spent = [], 0.0
    try:
        if case.warmup:
            measure(runners.RUNNERS[case.runner], ctx, case.options)  # imports, caches: untimed
        while len(runs) < repeats or (len(runs) < MAX_RUNS and (spent < min_seconds or _even_extra(runs, repeats))):
            started = time.perf_counter()
            m = measure(runners.RUNNERS[case.runner], ctx, case.options)
            spent += time.perf_counter() - started
            if m["samples"] != case.expected:
                raise CountMismatch(f"runner {case.label!r} saw {m['samples']} samples, expected "
                                    f"{case.expected}: it lost or repeated samples")
            runs.append(m)
            if progress is not None and len(runs) <= repeats:  # the bar counts `repeats` per case
                progress.update(1)
    except CountMismatch as exc:
        return make_row(case, None, f"FAILED: {exc}"), str(exc)
    except NotImplementedError as exc:  # a peer whose runner is not written yet
        return make_row(case, None, f"skipped: {exc}"), None
    except Exception as exc:  # one broken runner must not hide the others' rows
        return (make_row(case, None, f"FAILED: {type(exc).__name__}: {exc}"),
                f"runner {case.label!r} raised {type(exc).__name__}: {exc}")
    median = statistics.median_low([r["seconds"] for r in runs])
    note = case.note
    if len(runs) > repeats:
        note = f"{note}; median of {len(runs)} runs" if note else f"median of {len(runs)} runs"
    row = make_row(case, next(r for r in runs if r["seconds"] == median), note)
    row["runs"] = len(runs)
    return row, None
