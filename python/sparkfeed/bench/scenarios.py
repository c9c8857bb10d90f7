"""Scenarios: which runners run on which data, what count each must see, and the timing harness.

Each runner first runs once untimed (imports, first worker start-up, page cache), then is timed
`repeats` times back to back (more for a runner whose runs are short: `min_seconds`), and the
run with the median wall time is reported. Peak RSS is sampled every
20 ms by a thread as the sum over this process and the children started during the run (loader
workers, looked for at every sample; the Spark JVM that built the data is left out; pages a
forked worker shares with this process count in both); CPU time is this process plus its reaped
children (workers are joined when an epoch ends), divided by the samples.
"""

from __future__ import annotations

import copy
import gc
import importlib.util
import math
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from . import datasets, runners
from .remote import remote_cases
from .runners import Context

SCENARIOS = ("tabular", "filter", "decode", "bytes", "train", "feed", "plan", "scaling", "remote",
             "mix")
IMAGE_SCENARIOS = ("decode", "bytes", "train", "remote")
SCALES = (1, 2, 4, 8)  # dataset sizes of the scaling study, in multiples of `scaling_base` rows
FLAT_RSS = 1.5  # "memory stays flat": peak RSS at 8x within this factor of 1x
PLAN_SHARDS = (100, 1_000, 10_000)  # shards in the synthetic manifests of the plan scenario
SELECTIVITIES = (1, 10, 50)  # percent of labels kept by the filter scenario
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
    others (a forked worker's copy-on-write pages of the parent appear in both)."""

    def __init__(self, every: float = 0.02):
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self._proc = psutil.Process()
        # children alive before the run (the Spark JVM that built the data) are not the loader's
        self._before = self._children_now()
        self._children: dict[int, psutil.Process] = {}
        self._samples = 0
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


# ----------------------------------------------------------------------------- the scenarios
def _size(paths: list[str]) -> int:
    return sum(os.path.getsize(p) for p in paths)


def tabular_cases(p) -> list[Case]:
    size = _size(datasets.files(p.data.tabular, ".parquet"))
    return [Case("sparkfeed", "sparkfeed", p.samples, payload_bytes=size),
            Case("sparkfeed shuffle=True", "sparkfeed", p.samples, payload_bytes=size,
                 options={"shuffle": True},
                 note="default shuffle: runs of row groups in random order, rows mixed across "
                      "blocks of runs (shuffle.py); same bytes read as unshuffled"),
            Case("sparkfeed, 0 workers", "sparkfeed", p.samples, options={"num_workers": 0},
                 note="extra row: reading in the main process (one background reader thread), as the ceiling does"),
            Case("pyarrow-scan (ceiling)", "pyarrow-scan", p.samples, payload_bytes=size,
                 note="Arrow's own threads; no tensors, no workers"),
            Case("torch-map-style", "torch-map-style", p.samples, baseline=True, payload_bytes=size,
                 note="rows read into memory first (not timed), dict per row, default collate"),
            Case("petastorm", "petastorm", p.samples, payload_bytes=size,
                 note="own venv (pyarrow<13); make_batch_reader, `workers` reader threads, "
                      "BatchedDataLoader; figures from inside its process"),
            Case("mosaic-streaming", "mosaic-streaming", p.samples, payload_bytes=size,
                 note="own venv; StreamingDataset over an MDS copy (written once, not timed) "
                      "in a torch DataLoader; figures from inside its process")]


def mix_cases(p) -> list[Case]:
    """Two sources mixed by weight against one source of the same rows (target: >= 90%)."""
    size = _size(datasets.files(p.data.tabular, ".parquet"))
    cases = []
    for shuffle in (False, True):
        how = "shuffled" if shuffle else "in order"
        cases += [Case(f"one source, {how}", "sparkfeed-mix", p.samples, baseline=not shuffle,
                       options={"sources": 1, "shuffle": shuffle}, payload_bytes=size),
                  Case(f"2-source mix, {how}", "sparkfeed-mix", p.samples,
                       options={"sources": 2, "shuffle": shuffle}, payload_bytes=size,
                       note="the same files as two Sources (half the shards each), weights = sizes")]
    return cases


def filter_cases(p) -> list[Case]:
    cases = [Case("sparkfeed no filter", "sparkfeed", p.samples, baseline=True)]
    for pct in SELECTIVITIES:
        kept = math.ceil(pct * p.samples / datasets.NUM_LABELS)  # label = floor(id * 100 / n)
        cases.append(Case(f"sparkfeed label<{pct} ({pct}%)", "sparkfeed", kept,
                          options={"filter": [("label", "<", pct)]}))
    return cases


def decode_cases(p) -> list[Case]:
    parquet = _size(datasets.files(p.data.images, ".parquet"))
    jpgs = _size(datasets.files(p.data.image_folder, ".jpg"))
    wds = p.data.webdataset
    dev = runners.dali_device()
    return [Case(f"sparkfeed-dali-{dev}", "sparkfeed-dali", p.images, payload_bytes=parquet,
                 note=f"DALI decodes on the {dev} in the main process; workers read Parquet"),
            Case("torch-pil-files", "torch-pil-files", p.images, baseline=True, payload_bytes=jpgs),
            Case("webdataset-pil", "webdataset-pil", p.images,
                 payload_bytes=_size(datasets.files(wds, ".tar")) if wds else 0,
                 note="" if wds else f"skipped: {p.data.webdataset_note}"),
            Case(f"dali-webdataset-{dev}", "dali-webdataset", p.images,
                 payload_bytes=_size(datasets.files(wds, ".tar")) if wds else 0,
                 note=f"DALI's own fn.readers.webdataset over the same tars (+ .idx), decoded on the "
                      f"{dev}, num_threads = workers" if wds else f"skipped: {p.data.webdataset_note}"),
            Case("pil-ceiling", "pil-ceiling", p.images, payload_bytes=jpgs,
                 note="in-memory JPEGs, a process pool of `workers`, no loader")]


def bytes_cases(p) -> list[Case]:
    """The encoded image column as batches, no decode: unshuffled and shuffled (the rate the loader
    could feed a GPU decoder at; target 50,000 images/s per process)."""
    parquet = _size(datasets.files(p.data.images, ".parquet"))
    return [Case("sparkfeed-bytes", "sparkfeed-bytes", p.images, payload_bytes=parquet, baseline=True,
                 note="image + label columns, no decode; `workers` lane threads"),
            Case("sparkfeed-bytes shuffle=True", "sparkfeed-bytes", p.images, payload_bytes=parquet,
                 options={"shuffle": True}),
            Case("pyarrow-scan (ceiling)", "pyarrow-bytes", p.images, payload_bytes=parquet,
                 note="Arrow's own threads; no tensors, no workers, no shuffle")]


def train_cases(p) -> list[Case]:
    """Training input: shuffle, a random crop of the stored pixels (7/8 of the side: 112 of 128)
    and a flip, decoded; each runner also reports the distinct labels per full batch (the image
    set is clustered by label, as `cluster_by` writes it)."""
    wds = p.data.webdataset
    crop = max(1, p.image_source * 7 // 8)
    n_labels = min(datasets.NUM_LABELS, p.images)
    uniform = n_labels * (1 - (1 - 1 / n_labels) ** p.batch_size)
    mix = f"a uniform shuffle gives {uniform:.1f} labels per batch of {p.batch_size} ({n_labels} labels)"
    dev = runners.dali_device()
    return [Case(f"sparkfeed-dali-{dev} train", "sparkfeed-train", p.images,
                 note=f"shuffle=True, ImageDecode(size={crop}, crop='random', resize=None, mirror=True); {mix}"),
            Case("torch-pil-files train", "torch-pil-train", p.images, baseline=True,
                 note=f"DataLoader(shuffle=True), PIL RandomCrop({crop}) + horizontal flip"),
            Case(f"dali-webdataset-{dev} train", "dali-webdataset-train", p.images,
                 note=f"fn.readers.webdataset(random_shuffle=True), crop {crop} at fn.random.uniform, "
                      "fn.random.coin_flip mirror" if wds else f"skipped: {p.data.webdataset_note}")]


def feed_cases(p) -> list[Case]:
    opts = dict(batches=p.feed_batches, batch_bytes=p.batch_size * 3 * p.image_size ** 2,
                step_s=0.01, producer_s=0.01)
    return [Case("no prefetch (depth 0)", "feed", p.feed_batches, options={**opts, "depth": 0},
                 baseline=True),
            Case("prefetch depth 4", "feed", p.feed_batches, options={**opts, "depth": 4})]


def _plan_label(shards: int) -> str:
    return f"plan {shards:,} shards"


def _scaling_label(factor: int, rows: int) -> str:
    return f"sparkfeed {factor}x ({rows:,} rows)"


def plan_cases(p) -> list[Case]:
    cases = []
    for n in PLAN_SHARDS:
        path = datasets.synthetic_manifest(p.cache, n)
        cases.append(Case(_plan_label(n), "plan", n * 4 * 256, options={"path": path},
                          payload_bytes=os.path.getsize(os.path.join(path, "_sparkfeed.json")),
                          note="manifest only (4 row groups per shard); seconds = time to plan"))
    return cases


def scaling_cases(p) -> list[Case]:
    """sparkfeed over the tabular data at 1x..8x `scaling_base` rows, a fresh process per size
    (peak RSS of the loader process: its VmHWM); plus the planning rows unless `plan` runs.
    Spark writes the largest size; the smaller ones are its leading shards (the same shard and
    row-group size at every scale: 8x is 8x the shards, not bigger ones)."""
    largest = scaling_data(p)
    cases = []
    for f in SCALES:
        n = f * p.scaling_base
        path = (largest if f == SCALES[-1] else
                datasets.leading_shards(p.cache, largest, n) or scaling_data(p, n))
        paths = datasets.files(path, ".parquet")
        datasets.warm(paths)
        cases.append(Case(_scaling_label(f, n), "sparkfeed-subprocess", n,
                          options={"path": path}, payload_bytes=_size(paths),
                          baseline=f == 1, warmup=False,
                          note="fresh process; peak RSS = the loader process's VmHWM"))
    if "plan" not in p.scenarios:
        cases += plan_cases(p)
    return cases


def scaling_data(p, rows: int | None = None) -> str:
    """The scaling study's tabular dataset of `rows` rows (default: its largest size), written
    by Spark unless cached; its shards hold `scaling_base / 8` rows (at least 1,000) at every size."""
    rows = rows or SCALES[-1] * p.scaling_base
    return datasets.build(p.cache, rows, p.images, p.image_shape, max(1, p.workers), image=False,
                          tabular_shard=max(1000, p.scaling_base // 8)).tabular


def scaling_summary(rows: list[dict]) -> str:
    """Whether peak RSS stayed flat from 1x to the largest size, in one sentence."""
    sized = [r for r in rows if r["runner"].startswith("sparkfeed ") and r["peak_rss_mb"]]
    if len(sized) < 2:
        return ""
    first, last = sized[0], sized[-1]
    ratio = last["peak_rss_mb"] / first["peak_rss_mb"]
    workers = [r.get("worker_peak_rss_mb") for r in (first, last)]
    if all(w for w in workers):  # worker processes (none where Parquet workers are threads)
        both = [r["peak_rss_mb"] + r["worker_peak_rss_mb"] for r in (first, last)]
        text_workers = (f"; loader + workers {both[0]:,.0f} -> {both[1]:,.0f} MB "
                        f"({both[1] / both[0]:.2f}x)")
    else:
        text_workers = ""
    verdict = "stayed flat" if ratio <= FLAT_RSS else "did NOT stay flat"
    text = (f"Peak RSS of the loader process {verdict}: {first['peak_rss_mb']:,.0f} MB at "
            f"{first['runner'].split()[1]} -> {last['peak_rss_mb']:,.0f} MB at {last['runner'].split()[1]} "
            f"({ratio:.2f}x for {last['samples'] / first['samples']:.0f}x the rows; flat = within "
            f"{FLAT_RSS}x)")
    text += text_workers
    rates = [r["samples_per_s"] for r in sized]
    text += f"; throughput {rates[0]:,.0f} -> {rates[-1]:,.0f} samples/s."
    return text


CASES: dict[str, Callable] = {"tabular": tabular_cases, "filter": filter_cases,
                              "decode": decode_cases, "bytes": bytes_cases, "train": train_cases,
                              "feed": feed_cases, "plan": plan_cases,
                              "scaling": scaling_cases, "remote": remote_cases, "mix": mix_cases}


# Data that are not there: enough for the case builders that only size files (none are found)
_NO_DATA = datasets.Data(tabular="", images="", image_folder="", webdataset=None, webdataset_note="",
                         build_s=0.0)


def labels(p) -> list[str]:
    """Every runner label of `p`'s scenarios, known before any data are built (a `--runners` or
    `--expect` typo is refused at once, not after minutes of building): the builders of the
    scenarios that make data of their own (plan, scaling) give theirs from the sizes alone."""
    dry = copy.copy(p)
    dry.data = _NO_DATA
    out = []
    for s in p.scenarios:
        if s == "plan":
            out += [_plan_label(n) for n in PLAN_SHARDS]
        elif s == "scaling":
            out += [_scaling_label(f, f * p.scaling_base) for f in SCALES]
            out += [] if "plan" in p.scenarios else [_plan_label(n) for n in PLAN_SHARDS]
        else:
            out += [c.label for c in CASES[s](dry)]
    return out


def finish(rows: list[dict]) -> list[dict]:
    """Fill `ratio_vs_baseline` (samples/s over the baseline's) and the filter bytes ratio."""
    base = next((r for r in rows if r["baseline"] and r["samples_per_s"]), None)
    for r in rows:
        if base and r["runner"].startswith("plan ") != base["runner"].startswith("plan "):
            continue  # the plan rows inside `scaling` are times to plan, not loader throughput
        if base and r["samples_per_s"]:
            r["ratio_vs_baseline"] = round(r["samples_per_s"] / base["samples_per_s"], 3)
        if base and base.get("stats") and base.get("bytes_read") and r.get("bytes_read") is not None:
            r["bytes_ratio"] = round(r["bytes_read"] / base["bytes_read"], 4)
    return rows
