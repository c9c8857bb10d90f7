"""`sparkfeed bench`: sparkfeed side by side with the loaders people use, on one machine.

    from sparkfeed.bench import Params, run
    results = run(Params(quick=True, out="bench-out"))   # writes results.json/.md/.png

Scenarios (`scenarios.py`) pick runners (`runners.py`) over data built with Spark and cached
(`datasets.py`); `report.py` writes the results. Any runner that delivers the wrong number of
samples fails the run (`CountMismatch`, naming the runner) after the reports are written.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field

from .scenarios import SCENARIOS, CountMismatch

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
    typo, which would otherwise give an empty report and success. (Checked once the data are
    built: some scenarios' runners depend on them.)"""
    unmatched = [r for r in runners or () if not any(_keep(label, [r]) for label in labels)]
    if unmatched:
        raise ValueError(f"`runners` {', '.join(map(repr, unmatched))} match no runner of the scenarios "
                         f"run; their runners are: {list(dict.fromkeys(labels))}")


def run(params: Params) -> dict:
    """Build or reuse the data, run every scenario, write the reports; returns the results.

    Raises CountMismatch (after writing the reports) when a runner saw a wrong sample count or
    failed; a runner that raises NotImplementedError is reported as skipped. Interrupted
    (Ctrl-C), it writes the reports of the scenarios finished so far, marked as interrupted,
    then raises the KeyboardInterrupt: a long run's finished scenarios are not lost.
    """
    from tqdm import tqdm

    from ..index.gather import bar_options
    from . import datasets, report, scenarios
    from .runners import Context

    p = params
    os.makedirs(p.out, exist_ok=True)
    data = datasets.build(p.cache, p.samples, p.images, p.image_shape, max(1, p.workers),
                          tabular=bool({"tabular", "filter", "mix"} & set(p.scenarios)),
                          image=bool(set(scenarios.IMAGE_SCENARIOS) & set(p.scenarios)))
    p.data = data
    datasets.warm(datasets.files(data.tabular, ".parquet") + datasets.files(data.images, ".parquet")
                  + datasets.files(data.image_folder, ".jpg")
                  + (datasets.files(data.webdataset, ".tar") if data.webdataset else []))
    ctx = Context(data=data, batch_size=p.batch_size, workers=p.workers, image_size=p.image_size,
                  image_source=p.image_source)
    cases = {s: scenarios.CASES[s](p) for s in p.scenarios}
    _check_runners(p.runners, [c.label for listed in cases.values() for c in listed])
    plan = {s: [c for c in listed if _keep(c.label, p.runners)] for s, listed in cases.items()}
    plan = {s: [dataclasses.replace(c, expected=p.expect.get(c.label, c.expected)) for c in cases]
            for s, cases in plan.items()}
    results = {"hardware": report.hardware(),
               "params": {k: v for k, v in dataclasses.asdict(p).items() if k not in ("expect",)},
               "build_s": round(data.build_s, 1),
               "written_by": data.written_by,
               "webdataset": f"written by {data.written_by}" if data.webdataset else data.webdataset_note,
               "scenarios": {}}
    failures, started, interrupted = [], time.perf_counter(), None
    total = sum(len(c) for c in plan.values()) * p.repeats  # (warm-up runs not counted)
    with tqdm(total=total, desc="sparkfeed bench", unit="run", **bar_options(p.progress)) as bar:
        for name, cases in plan.items():
            bar.set_description(f"sparkfeed bench: {name}")
            try:
                rows, failed = scenarios.run_cases(cases, ctx, p.repeats, bar, p.min_seconds)
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
    report.write_json(results, p.out)
    report.write_markdown(results, p.out)
    report.write_png(results, p.out)
    if interrupted is not None:
        raise interrupted
    if failures:
        raise CountMismatch("; ".join(failures))
    return results
