"""Scenarios: which runners run on which data, and what count each must see (`timing.py`
times them)."""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable

from . import datasets, imagerunners
from .remote import remote_cases
from .timing import Case

SCENARIOS = ("tabular", "filter", "decode", "bytes", "train", "feed", "plan", "scaling", "remote",
             "mix")
IMAGE_SCENARIOS = ("decode", "bytes", "train", "remote")
SCALES = (1, 2, 4, 8)  # dataset sizes of the scaling study, in multiples of `scaling_base` rows
FLAT_RSS = 1.5  # "memory stays flat": peak RSS at 8x within this factor of 1x
PLAN_SHARDS = (100, 1_000, 10_000)  # shards in the synthetic manifests of the plan scenario
SELECTIVITIES = (1, 10, 50)  # percent of labels kept by the filter scenario


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
            Case("sparkfeed verify_checksums=False", "sparkfeed", p.samples, payload_bytes=size,
                 options={"verify_checksums": False},
                 note="extra row: Parquet pages not checked against their CRCs, as the ceiling "
                      "(pyarrow's default) reads them"),
            Case("pyarrow-scan (ceiling)", "pyarrow-scan", p.samples, payload_bytes=size,
                 note="Arrow's own threads; no tensors, no workers; pages not checked against their CRCs"),
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
    dev = imagerunners.dali_device()
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
    dev = imagerunners.dali_device()
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
