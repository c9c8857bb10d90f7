"""`sparkfeed bench`: sparkfeed side by side with the loaders people use, on one machine.

    from sparkfeed.bench import Params, run
    results = run(Params(quick=True, out="bench-out"))   # writes results.json/.md/.png

Scenarios (`scenarios.py`) pick runners (`runners.py`) over data built with Spark and cached
(`datasets.py`); `timing.py` times them; `report.py` writes the results. Any runner that delivers the wrong number of
samples fails the run (`CountMismatch`, naming the runner) after the reports are written.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field

from .scenarios import SCENARIOS
from .timing import CountMismatch

__all__ = ["Params", "run", "CountMismatch", "SCENARIOS"]


@dataclass
class Params:
    """Benchmark parameters; `None` sizes take the quick or the full default."""

    quick: bool = False
    scenarios: tuple[str, ...] = SCENARIOS
    runners: tuple[str, ...] | None = None  # runner labels (prefixes) to keep; None = all
    samples: int | None = None              # tabular rows (quick 20,000; full 200,000)
    scaling_base: int | None = None         # rows at 1x in `scaling` (quick 20,000; full 100,000)
    images: int | None = None               # JPEG images (quick 1,000; full 5,000)
    image_size: int | None = None           # px, decoded to (quick 64; full 128)
    image_source: int | None = None         # px, shorter side of the stored JPEGs (default: image_size)
    batch_size: int = 256
    workers: int = field(default_factory=lambda: min(2, os.cpu_count() or 1))
    repeats: int | None = None              # quick 1; full 3
    min_seconds: float | None = None        # more runs of a short runner until they took this long (quick 0; full 1)
    out: str = "sparkfeed-bench"
    cache: str = os.path.join(os.path.expanduser("~"), ".cache", "sparkfeed-bench")
    expect: dict = field(default_factory=dict)  # runner label -> count (tests the count check)
    progress: bool = True

    def __post_init__(self):
        q = self.quick
        # only None takes the default: 0 is checked (and refused) like any other value
        defaults = {"samples": 20_000 if q else 200_000, "scaling_base": 20_000 if q else 100_000,
                    "images": 1_000 if q else 5_000, "image_size": 64 if q else 128,
                    "repeats": 1 if q else 3, "min_seconds": 0.0 if q else 1.0}
        for name, default in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, default)
        self.image_source = self.image_size if self.image_source is None else self.image_source
        if isinstance(self.min_seconds, bool) or not isinstance(self.min_seconds, (int, float)) \
                or not self.min_seconds >= 0:  # NaN too
            raise ValueError(f"`min_seconds` should be a non-negative number, but got min_seconds={self.min_seconds!r}")
        for name in ("samples", "scaling_base", "images", "image_size", "image_source", "batch_size",
                     "repeats"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` should be a positive integer, but got {name}={value!r}")
        if self.runners is not None and not self.runners:  # `--runners ,`: before, an empty report
            raise ValueError("`runners` should name at least one runner (a label prefix), but got none")
        if self.workers < 0:
            raise ValueError(f"`workers` should be a non-negative integer, but got workers={self.workers!r}")
        unknown = [s for s in self.scenarios if s not in SCENARIOS]
        if unknown:
            raise ValueError(f"`scenarios` should be a subset of {list(SCENARIOS)}, but got unknown "
                             f"scenario(s) {unknown}")

    @property
    def image_shape(self) -> tuple[int, int]:
        """(width, height) of the stored JPEGs: square at the training size, else 4:3."""
        from .datasets import image_shape

        return image_shape(self.image_source, self.image_source == self.image_size)

    @property
    def feed_batches(self) -> int:
        return 30 if self.quick else 100


def _keep(label: str, runners) -> bool:
    return runners is None or any(label.startswith(r) for r in runners)


def _check_runners(runners, labels: list[str]) -> None:
    """Every `runners` prefix must keep a runner of the scenarios run: one that keeps none is a
    typo, which would otherwise give an empty report and success."""
    unmatched = [r for r in runners or () if not any(_keep(label, [r]) for label in labels)]
    if unmatched:
        raise ValueError(f"`runners` {', '.join(map(repr, unmatched))} match no runner of the scenarios "
                         f"run; their runners are: {list(dict.fromkeys(labels))}")


def check_out(out: str) -> None:
    """`out` must be (or become) a directory this user can write: a ValueError naming it
    otherwise, checked before any data is built (before, `--out results.json` or an unwritable
    directory failed with a bare OSError, or a traceback, after the arguments were accepted)."""
    path = os.path.abspath(out)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"`out` should be a directory for results.json, results.md and results.png, "
                         f"but {out!r} is a file")
    probe = path
    while not os.path.exists(probe):  # the nearest existing parent makes the rest
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"`out` cannot be made: {probe!r} is a file, not a directory (got {out!r})")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"`out` cannot be written: no write permission on {probe!r} (got {out!r})")


def check_expect(expect: dict, labels: list[str]) -> None:
    """Every `expect` label must name a runner that runs: a typo would otherwise test nothing."""
    unknown = [k for k in expect if k not in labels]
    if unknown:
        raise ValueError(f"`expect` names no runner that runs: {', '.join(map(repr, unknown))}; the "
                         f"runners are: {list(dict.fromkeys(labels))}")


def command(p: Params) -> str:
    """The command line that reruns `p` with the same sizes and settings (every value explicit,
    so that another machine's defaults, e.g. its cores for `--workers`, do not change it)."""
    import shlex

    args = ["sparkfeed", "bench"] + (["--quick"] if p.quick else [])  # --quick: feed's 30 batches
    args += ["--scenarios", ",".join(p.scenarios)]
    if p.runners is not None:
        args += ["--runners", ",".join(p.runners)]
    args += ["--samples", str(p.samples), "--images", str(p.images), "--image-size", str(p.image_size)]
    if p.image_source != p.image_size:
        args += ["--image-source", str(p.image_source)]
    if "scaling" in p.scenarios:
        args += ["--scaling-base", str(p.scaling_base)]
    args += ["--batch-size", str(p.batch_size), "--workers", str(p.workers), "--repeats", str(p.repeats),
             "--min-seconds", f"{p.min_seconds:g}", "--out", os.path.abspath(p.out),
             "--cache", os.path.abspath(p.cache)]
    for label, count in p.expect.items():
        args += ["--expect", f"{label}={count}"]
    return " ".join(shlex.quote(a) for a in args)


def _write_reports(results: dict, out: str) -> None:
    from . import report

    report.write_json(results, out)
    report.write_markdown(results, out)
    report.write_png(results, out)


def run(params: Params) -> dict:
    """Build or reuse the data, run every scenario, write the reports; returns the results.

    Raises CountMismatch (after writing the reports) when a runner saw a wrong sample count or
    failed; a runner that raises NotImplementedError is reported as skipped. Interrupted
    (Ctrl-C), it writes the reports of the scenarios finished so far, marked as interrupted,
    then raises the KeyboardInterrupt: a long run's finished scenarios are not lost (and one
    interrupted while its data are built writes reports that say so, rather than leaving an
    earlier run's in `out` to be taken for this one's).
    """
    from tqdm import tqdm

    from ..index.gather import bar_options
    from . import datasets, report, scenarios, timing
    from .runners import Context

    p = params
    check_out(p.out)
    known = scenarios.labels(p)  # before the data are built: a typo is refused at once
    _check_runners(p.runners, known)
    check_expect(p.expect, [label for label in known if _keep(label, p.runners)])
    try:
        os.makedirs(p.out, exist_ok=True)
    except OSError as exc:  # a read-only or special file system
        raise ValueError(f"`out` cannot be made: {exc.strerror} (got {p.out!r})") from exc
    results = {"command": command(p), "hardware": report.hardware(),
               "params": {k: v for k, v in dataclasses.asdict(p).items() if k not in ("expect",)},
               "expect": dict(p.expect), "build_s": None, "written_by": None, "webdataset": None,
               "scenarios": {}, "baselines": {}}
    building = time.perf_counter()
    try:
        data = datasets.build(p.cache, p.samples, p.images, p.image_shape, max(1, p.workers),
                              tabular=bool({"tabular", "filter", "mix"} & set(p.scenarios)),
                              image=bool(set(scenarios.IMAGE_SCENARIOS) & set(p.scenarios)))
        p.data = data
        datasets.warm(datasets.files(data.tabular, ".parquet") + datasets.files(data.images, ".parquet")
                      + datasets.files(data.image_folder, ".jpg")
                      + (datasets.files(data.webdataset, ".tar") if data.webdataset else []))
        cases = {s: scenarios.CASES[s](p) for s in p.scenarios}  # (scaling and plan build theirs)
    except KeyboardInterrupt:
        results.update(build_s=round(time.perf_counter() - building, 1), bench_s=0.0, failures=[],
                       interrupted=f"interrupted while building the data under {p.cache}; not run: "
                                   f"{', '.join(p.scenarios)}")
        _write_reports(results, p.out)
        raise KeyboardInterrupt(results["interrupted"]) from None
    if [c.label for listed in cases.values() for c in listed] != known:
        raise RuntimeError(f"the benchmark's runners changed once the data were built: {known} before")
    results["baselines"] = {s: next((c.label for c in listed if c.baseline), None) for s, listed in cases.items()}
    ctx = Context(data=data, batch_size=p.batch_size, workers=p.workers, image_size=p.image_size,
                  image_source=p.image_source)
    plan = {s: [c for c in listed if _keep(c.label, p.runners)] for s, listed in cases.items()}
    plan = {s: [dataclasses.replace(c, expected=p.expect.get(c.label, c.expected)) for c in cases]
            for s, cases in plan.items()}
    results.update(build_s=round(data.build_s, 1), written_by=data.written_by,
                   webdataset=f"written by {data.written_by}" if data.webdataset else data.webdataset_note)
    failures, started, interrupted = [], time.perf_counter(), None
    total = sum(len(c) for c in plan.values()) * p.repeats  # (warm-up runs not counted)
    with tqdm(total=total, desc="sparkfeed bench", unit="run", **bar_options(p.progress)) as bar:
        for name, cases in plan.items():
            bar.set_description(f"sparkfeed bench: {name}")
            try:
                rows, failed = timing.run_cases(cases, ctx, p.repeats, bar, p.min_seconds)
            except KeyboardInterrupt as exc:
                interrupted = exc
                results["interrupted"] = (f"interrupted during {name}; not run: "
                                          f"{', '.join(s for s in plan if s not in results['scenarios'])}")
                break
            failures += [f"{name}: {f}" for f in failed]
            results["scenarios"][name] = scenarios.finish(rows)
            if name == "scaling":
                results.setdefault("summaries", {})[name] = scenarios.scaling_summary(rows)
    results["bench_s"] = round(time.perf_counter() - started, 1)
    results["failures"] = failures
    _write_reports(results, p.out)
    if interrupted is not None:
        raise interrupted
    if failures:
        raise CountMismatch("; ".join(failures))
    return results
