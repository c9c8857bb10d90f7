"""One function per loader, one signature: `runner(ctx, **options) -> iterator of batch sizes`.

A runner yields the number of samples in each batch it delivers (the harness times the first
yield, counts the samples and checks the total) and may record `ctx.extra["bytes_read"]` or
`ctx.extra["note"]`. A new peer is a new function and one line in `RUNNERS`; a peer whose
package is missing is listed in `REQUIRES` and reported as skipped with the install command.
Peers that conflict with this environment (Petastorm, Mosaic Streaming) run in venvs of their
own as subprocesses (`peer`, `peers.py`, `peer_scripts/`); `PEER_VENVS` names them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.utils.data

from ..imagespec import dali_package
from . import datasets, remote
from .imagerunners import (dali_webdataset, dali_webdataset_train, pil_ceiling, pyarrow_bytes, sparkfeed_bytes,
                           sparkfeed_dali, sparkfeed_train, torch_pil_files, torch_pil_train, webdataset_pil)

TABULAR_COLUMNS = ["id", "label"] + [f"f{i}" for i in range(datasets.NUM_FLOATS)]


@dataclass
class Context:
    """What every runner of one run shares: the data and the loading parameters."""

    data: datasets.Data
    batch_size: int
    workers: int
    image_size: int
    image_source: int | None = None  # shorter side of the stored JPEGs (None: image_size)
    extra: dict = field(default_factory=dict)  # per-run results a runner reports


# ----------------------------------------------------------------------------- tabular
def sparkfeed_tabular(ctx: Context, filter=None, num_workers: int | None = None,
                      shuffle: bool = False, verify_checksums: bool = True) -> Iterator[int]:
    import sparkfeed

    workers = ctx.workers if num_workers is None else num_workers
    loader = sparkfeed.DataLoader(ctx.data.tabular, batch_size=ctx.batch_size, columns=TABULAR_COLUMNS,
                                  filter=filter, num_workers=workers, shuffle=shuffle,
                                  verify_checksums=verify_checksums)
    for batch in loader:
        yield len(batch["id"])
    stats = loader.stats()
    ctx.extra["bytes_read"] = int(stats["bytes_read"])
    ctx.extra["stats"] = {k: stats.get(k, 0) for k in (
        "shards_planned", "shards_pruned", "row_groups_planned", "row_groups_pruned", "rows_filtered")}


def sparkfeed_mix(ctx: Context, sources: int = 2, shuffle: bool = False) -> Iterator[int]:
    """The tabular data as `sources` datasets mixed by weight (`sources=1`: the plain loader). The
    sources are manifests over consecutive shards of the same files, so the rows, the bytes and
    the work per row are the ones of the single dataset; only the mixing differs."""
    import dataclasses

    import sparkfeed

    whole = sparkfeed.read_manifest(ctx.data.tabular)
    kwargs = dict(batch_size=ctx.batch_size, columns=TABULAR_COLUMNS, num_workers=ctx.workers,
                  shuffle=shuffle, seed=0)
    if sources == 1:
        loader = sparkfeed.DataLoader(ctx.data.tabular, **kwargs)
    else:
        parts = []
        for k in range(sources):
            shards = whole.shards[k * len(whole.shards) // sources:(k + 1) * len(whole.shards) // sources]
            part = dataclasses.replace(whole, shards=shards, num_samples=sum(s.num_samples for s in shards),
                                       num_bytes=sum(s.num_bytes for s in shards))
            parts.append(sparkfeed.Source(ctx.data.tabular, weight=part.num_samples, manifest=part))
        loader = sparkfeed.DataLoader(parts, **kwargs)
    for batch in loader:
        yield len(batch["id"])
    ctx.extra["bytes_read"] = int(loader.stats()["bytes_read"])


def pyarrow_scan(ctx: Context) -> Iterator[int]:
    """The ceiling: Arrow's own multi-threaded scan of the same files, no tensors, no workers."""
    import pyarrow.dataset as pads

    dataset = pads.dataset(datasets.files(ctx.data.tabular, ".parquet"), format="parquet")
    for rb in dataset.to_batches(columns=TABULAR_COLUMNS, batch_size=ctx.batch_size):
        yield rb.num_rows


class _RowDataset(torch.utils.data.Dataset):
    """The usual map-style dataset: rows held in memory, one dict per `__getitem__`."""

    def __init__(self, path: str):
        import pyarrow.dataset as pads

        table = pads.dataset(datasets.files(path, ".parquet"), format="parquet").to_table(
            columns=TABULAR_COLUMNS)
        self.columns = {c: table.column(c).to_numpy() for c in TABULAR_COLUMNS}
        self.n = table.num_rows

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {c: v[i] for c, v in self.columns.items()}


def torch_map_style(ctx: Context) -> Iterator[int]:
    loader = torch.utils.data.DataLoader(_RowDataset(ctx.data.tabular), batch_size=ctx.batch_size,
                                         num_workers=ctx.workers)
    for batch in loader:
        yield len(batch["id"])


def peer(ctx: Context, venv: str, script: str, **args) -> Iterator[int]:
    """Run a peer in its own venv (`peers.py`): the script times itself and prints one JSON line.

    The harness's clock and RSS sampler would count the interpreter start and the imports, so
    the script's own figures replace them (`ctx.extra["measured"]`).
    """
    from . import peers

    python = peers.python_of(venv)
    if python is None:
        raise RuntimeError(f"no peer venv for {venv}; {peers.INSTALL_HINT}")
    yield _run_script(ctx, python, script, {"batch_size": ctx.batch_size, "workers": ctx.workers, **args})


def _run_script(ctx: Context, python: str, script: str, payload: dict) -> int:
    """Run a peer script in its own process; its own figures replace the harness's.

    The script prints one `SPARKFEED_PEER_RESULT {json}` line: samples, seconds, ttfb_s,
    peak_rss_mb, cpu_s and extras (versions, bytes read, ...). Returns the sample count.
    """
    import json
    import subprocess

    from . import peers

    proc = subprocess.run([python, peers.script(script), json.dumps(payload)], capture_output=True,
                          text=True, timeout=1800)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("SPARKFEED_PEER_RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{script} exited {proc.returncode}: {(proc.stderr or proc.stdout)[-1500:]}")
    result = json.loads(line.split(" ", 1)[1])
    ctx.extra["measured"] = {k: result.pop(k) for k in ("seconds", "ttfb_s", "peak_rss_mb", "cpu_s")}
    samples = result.pop("samples")
    ctx.extra.update(result)
    return samples


def petastorm_batched(ctx: Context) -> Iterator[int]:
    """Petastorm 0.13 `make_batch_reader` (file:// URLs, `workers` reader threads) + BatchedDataLoader."""
    yield from peer(ctx, "petastorm", "petastorm_tabular.py", path=ctx.data.tabular, columns=TABULAR_COLUMNS)


def mosaic_streaming(ctx: Context) -> Iterator[int]:
    """MosaicML Streaming: `StreamingDataset` over an MDS copy in a torch DataLoader, same workers."""
    yield from peer(ctx, "streaming", "streaming_tabular.py", path=ctx.data.tabular, columns=TABULAR_COLUMNS)


# ----------------------------------------------------------------------------- feed
def feed(ctx: Context, depth: int, **options) -> Iterator[int]:
    """`bench.h2d.feed_benchmark`: a simulated step waiting on a simulated source (no files)."""
    from .h2d import feed_benchmark

    device = "cuda" if torch.cuda.is_available() else None
    result = feed_benchmark(depth=depth, pin_memory=device is not None, device=device, **options)
    ctx.extra.update({k: v for k, v in result.items() if k in (
        "wait_fraction", "h2d_gbps", "pin_then_copy_h2d_gbps", "plain_pinned_h2d_gbps")})
    ctx.extra["ttfb_s"] = None  # one result at the end: no first batch to time
    # the fed loop's own time and CPU: the harness's clock would add the step's calibration and,
    # on CUDA, the host-to-device studies run after the loop to batches/s and CPU µs/batch
    ctx.extra["measured"] = {"seconds": result["seconds"], "cpu_s": result["cpu_s"]}
    yield result["batches"]


# ----------------------------------------------------------------------------- scaling
def sparkfeed_subprocess(ctx: Context, path: str) -> Iterator[int]:
    """One sparkfeed pass in a fresh `python` (this one): RSS not polluted by earlier sizes."""
    import sys

    yield _run_script(ctx, sys.executable, "sparkfeed_pass.py",
                      {"path": path, "batch_size": ctx.batch_size, "workers": ctx.workers,
                       "columns": TABULAR_COLUMNS})


# ----------------------------------------------------------------------------- planning
def plan_only(ctx: Context, path: str) -> Iterator[int]:
    """Read and parse a manifest and plan the epoch: what a first batch waits for before I/O."""
    from ..dataset import Dataset

    plan = Dataset(path, batch_size=ctx.batch_size).plan()
    yield plan.num_samples


# ----------------------------------------------------------------------------- registry
Runner = Callable[..., Iterator[int]]

RUNNERS: dict[str, Runner] = {
    "sparkfeed-remote": remote.sparkfeed_remote,
    "webdataset-remote": remote.webdataset_remote,
    "bytes-alone-remote": remote.bytes_alone,
    "mosaic-streaming-remote": remote.mosaic_remote,
    "sparkfeed": sparkfeed_tabular,
    "sparkfeed-mix": sparkfeed_mix,
    "pyarrow-scan": pyarrow_scan,
    "torch-map-style": torch_map_style,
    "petastorm": petastorm_batched,
    "mosaic-streaming": mosaic_streaming,
    "sparkfeed-dali": sparkfeed_dali,
    "torch-pil-files": torch_pil_files,
    "webdataset-pil": webdataset_pil,
    "pil-ceiling": pil_ceiling,
    "dali-webdataset": dali_webdataset,
    "sparkfeed-bytes": sparkfeed_bytes,
    "pyarrow-bytes": pyarrow_bytes,
    "sparkfeed-train": sparkfeed_train,
    "torch-pil-train": torch_pil_train,
    "dali-webdataset-train": dali_webdataset_train,
    "feed": feed,
    "plan": plan_only,
    "sparkfeed-subprocess": sparkfeed_subprocess,
}

# runner -> the peer venv it runs in (`python -m sparkfeed.bench.peers install`); checked first
PEER_VENVS: dict[str, str] = {"petastorm": "petastorm", "mosaic-streaming": "streaming",
                              "mosaic-streaming-remote": "streaming"}

_DALI_HINT = f"pip install {dali_package()}"
# runner -> (module it needs, how to install it); checked before the runner is timed
REQUIRES: dict[str, tuple[str, str]] = {
    "webdataset-pil": ("webdataset", "pip install webdataset"),
    "webdataset-remote": ("webdataset", "pip install webdataset"),
    "torch-pil-files": ("PIL", "pip install pillow"),
    "pil-ceiling": ("PIL", "pip install pillow"),
    "sparkfeed-dali": ("nvidia.dali", _DALI_HINT),
    "dali-webdataset": ("nvidia.dali", _DALI_HINT),
    "sparkfeed-train": ("nvidia.dali", _DALI_HINT),
    "dali-webdataset-train": ("nvidia.dali", _DALI_HINT),
}
