"""One function per loader, one signature: `runner(ctx, **options) -> iterator of batch sizes`.

A runner yields the number of samples in each batch it delivers (the harness times the first
yield, counts the samples and checks the total) and may record `ctx.extra["bytes_read"]` or
`ctx.extra["note"]`. A new peer is a new function and one line in `RUNNERS`; a peer whose
package is missing is listed in `REQUIRES` and reported as skipped with the install command.
Peers that conflict with this environment (Petastorm, Mosaic Streaming) run in venvs of their
own as subprocesses (`peer`, `peers.py`, `peer_scripts/`); `PEER_VENVS` names them.
"""

from __future__ import annotations

import io
import multiprocessing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.utils.data

from ..imagespec import dali_package
from . import datasets, remote

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
                      shuffle: bool = False) -> Iterator[int]:
    import sparkfeed

    workers = ctx.workers if num_workers is None else num_workers
    loader = sparkfeed.DataLoader(ctx.data.tabular, batch_size=ctx.batch_size, columns=TABULAR_COLUMNS,
                                  filter=filter, num_workers=workers, shuffle=shuffle)
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


# ----------------------------------------------------------------------------- images
def _pil_decode(raw: bytes, size: int) -> torch.Tensor:
    """What a torchvision-style pipeline does: decode, RGB, resize shorter side, centre crop."""
    from PIL import Image

    im = Image.open(io.BytesIO(raw)).convert("RGB")
    w, h = im.size
    scale = size / min(w, h)
    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    im = im.crop((left, top, left + size, top + size))
    return torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1)


def dali_device() -> str:
    return "gpu" if torch.cuda.is_available() else "cpu"


def sparkfeed_dali(ctx: Context) -> Iterator[int]:
    """Workers read the Parquet; DALI decodes on the prefetch thread (GPU where CUDA exists)."""
    import sparkfeed

    device = dali_device()
    loader = sparkfeed.DataLoader(
        ctx.data.images, batch_size=ctx.batch_size, columns=["image", "label"],
        num_workers=ctx.workers, device="cuda" if device == "gpu" else None,
        decode={"image": sparkfeed.ImageDecode(size=ctx.image_size, device=device)})
    for batch in loader:
        yield batch["image"].shape[0]
    ctx.extra["bytes_read"] = int(loader.stats()["bytes_read"])


class _ImageFiles(torch.utils.data.Dataset):
    def __init__(self, folder: str, size: int):
        self.paths, self.size = datasets.files(folder, ".jpg"), size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with open(self.paths[i], "rb") as f:
            image = _pil_decode(f.read(), self.size)
        return image, int(self.paths[i].split("/")[-2])


def torch_pil_files(ctx: Context) -> Iterator[int]:
    loader = torch.utils.data.DataLoader(_ImageFiles(ctx.data.image_folder, ctx.image_size),
                                         batch_size=ctx.batch_size, num_workers=ctx.workers)
    for images, _labels in loader:
        yield images.shape[0]


def webdataset_pil(ctx: Context) -> Iterator[int]:
    import webdataset as wds

    size = ctx.image_size
    urls = datasets.files(ctx.data.webdataset, ".tar")
    pipeline = (wds.WebDataset(urls, shardshuffle=False, empty_check=False,
                               nodesplitter=None, workersplitter=wds.split_by_worker)
                .to_tuple("jpg", "cls").map_tuple(lambda b: _pil_decode(b, size), lambda c: int(c))
                .batched(ctx.batch_size, partial=True))
    loader = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=ctx.workers)
    for images, _labels in loader:
        yield images.shape[0]


def dali_webdataset(ctx: Context, train: bool = False) -> Iterator[int]:
    """DALI's own reader: `fn.readers.webdataset` over the same tars (with the `.idx` files
    sparkfeed's writer puts next to each shard), decoded where sparkfeed decodes (`dali_device`:
    "mixed" nvJPEG on a GPU, the CPU otherwise), the same resize and centre crop, the batch handed
    over as a torch tensor on that device; the resize is left out when the stored images are at
    the training size, as a DALI user who knows the data would (and as sparkfeed's decoder does
    from the headers)."""
    import json
    import math
    import os

    import numpy as np
    from nvidia.dali import fn, pipeline_def, types

    wds = ctx.data.webdataset
    with open(os.path.join(wds, "_sparkfeed.json")) as f:
        shards = json.load(f)["shards"]
    paths = [os.path.join(wds, s["path"]) for s in shards]
    index = [os.path.join(wds, s["index"]) for s in shards if s.get("index")]
    if len(index) != len(paths):
        raise RuntimeError("the WebDataset manifest names no `index` for some shards; DALI needs one per tar")
    size, batch = (train_crop(ctx) if train else ctx.image_size), ctx.batch_size
    resize = not train and (ctx.image_source or size) != size

    gpu = dali_device() == "gpu"

    @pipeline_def(batch_size=batch, num_threads=max(1, ctx.workers),
                  device_id=torch.cuda.current_device() if gpu else None, prefetch_queue_depth=2)
    def pipe_def():
        jpg, cls = fn.readers.webdataset(paths=paths, index_paths=index, ext=["jpg", "cls"],
                                         missing_component_behavior="error", random_shuffle=train,
                                         name="Reader")
        img = fn.decoders.image(jpg, device="mixed" if gpu else "cpu", output_type=types.RGB)
        if resize:
            img = fn.resize(img, resize_shorter=size, antialias=True)
        aug = dict(crop_pos_x=fn.random.uniform(range=(0.0, 1.0)), crop_pos_y=fn.random.uniform(range=(0.0, 1.0)),
                   mirror=fn.random.coin_flip()) if train else {}
        img = fn.crop_mirror_normalize(img, dtype=types.UINT8, output_layout="CHW", crop=(size, size), **aug)
        return img, cls

    pipe = pipe_def()
    pipe.build()
    n = pipe.epoch_size("Reader")
    left, mix = n, _LabelMix(batch)
    for _ in range(math.ceil(n / batch)):
        images, labels = pipe.run()
        t = _dali_to_torch(images.as_tensor())  # what a training loop would get
        take = min(left, t.shape[0])
        if train and take == batch:  # the .cls members hold the label as text
            mix.add([int(bytes(np.asarray(labels[i]))) for i in range(take)])
        left -= take
        yield take
    mix.report(ctx)
    del pipe


def _dali_to_torch(tensor) -> torch.Tensor:
    """A DALI batch tensor as a torch tensor on its device (a copy on the current stream for a
    GPU tensor, as DALI's own PyTorch plugin hands batches over)."""
    import numpy as np
    from nvidia.dali.backend import TensorGPU

    if not isinstance(tensor, TensorGPU):  # a CPU tensor: shared, no copy
        return torch.from_numpy(np.asarray(tensor))
    from nvidia.dali.plugin.pytorch import feed_ndarray

    out = torch.empty(tensor.shape(), dtype=torch.uint8, device="cuda")
    return feed_ndarray(tensor, out, cuda_stream=torch.cuda.current_stream())


def _decode_chunk(args) -> int:
    raws, size = args
    for raw in raws:
        _pil_decode(raw, size)
    return len(raws)


def pil_ceiling(ctx: Context) -> Iterator[int]:
    """The cores' raw PIL rate: in-memory JPEGs decoded and resized by `workers` processes."""
    import pyarrow.dataset as pads

    raws = pads.dataset(datasets.files(ctx.data.images, ".parquet"), format="parquet").to_table(
        columns=["image"]).column("image").to_pylist()
    chunks = [(raws[i:i + ctx.batch_size], ctx.image_size) for i in range(0, len(raws), ctx.batch_size)]
    with multiprocessing.get_context("fork").Pool(max(1, ctx.workers)) as pool:
        yield from pool.imap(_decode_chunk, chunks)


# ----------------------------------------------------------------------------- bytes
def sparkfeed_bytes(ctx: Context, shuffle: bool = False) -> Iterator[int]:
    """The encoded image column delivered as batches, no decode: what the loader could feed a
    GPU decoder at (`bytes` scenario)."""
    import sparkfeed

    loader = sparkfeed.DataLoader(ctx.data.images, batch_size=ctx.batch_size, columns=["image", "label"],
                                  num_workers=ctx.workers, shuffle=shuffle, seed=1)
    for batch in loader:
        yield len(batch["image"])
    ctx.extra["bytes_read"] = int(loader.stats()["bytes_read"])


def pyarrow_bytes(ctx: Context) -> Iterator[int]:
    """The ceiling of `bytes`: Arrow's own scan of the image column, no tensors, no workers."""
    import pyarrow.dataset as pads

    dataset = pads.dataset(datasets.files(ctx.data.images, ".parquet"), format="parquet")
    for rb in dataset.to_batches(columns=["image", "label"], batch_size=ctx.batch_size):
        yield rb.num_rows


# ----------------------------------------------------------------------------- train
def train_crop(ctx: Context) -> int:
    """The `train` scenario's crop out of the stored pixels (RandomCrop, no resize): 7/8 of the
    stored shorter side, 112 from 128 px images."""
    return max(1, (ctx.image_source or ctx.image_size) * 7 // 8)


class _LabelMix:
    """Distinct labels per full batch (how well a shuffle mixes data clustered by label)."""

    def __init__(self, batch_size: int):
        self.batch_size, self.counts = batch_size, []

    def add(self, labels) -> None:
        labels = torch.as_tensor(labels).reshape(-1)
        if labels.numel() == self.batch_size:
            self.counts.append(int(torch.unique(labels).numel()))

    def report(self, ctx: Context) -> None:
        if self.counts:
            ctx.extra["labels_per_batch"] = round(sum(self.counts) / len(self.counts), 1)


def sparkfeed_train(ctx: Context) -> Iterator[int]:
    """shuffle=True, a 112 random crop of the stored pixels (resize=None) and a flip, keyed by
    (seed, epoch, sample); DALI decodes on the prefetch thread."""
    import sparkfeed

    device = dali_device()
    spec = sparkfeed.ImageDecode(size=train_crop(ctx), crop="random", resize=None, mirror=True, device=device)
    loader = sparkfeed.DataLoader(ctx.data.images, batch_size=ctx.batch_size, columns=["image", "label"],
                                  num_workers=ctx.workers, shuffle=True, seed=1,
                                  device="cuda" if device == "gpu" else None, decode={"image": spec})
    mix = _LabelMix(ctx.batch_size)
    for batch in loader:
        mix.add(batch["label"])
        yield batch["image"].shape[0]
    mix.report(ctx)
    ctx.extra["bytes_read"] = int(loader.stats()["bytes_read"])


def _pil_random_crop(raw: bytes, size: int, rng) -> torch.Tensor:
    """torchvision's RandomCrop(size) + RandomHorizontalFlip() in PIL (torchvision is not needed)."""
    from PIL import Image

    im = Image.open(io.BytesIO(raw)).convert("RGB")
    w, h = im.size
    x0, y0 = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
    im = im.crop((x0, y0, x0 + size, y0 + size))
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    return torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1)


class _TrainFiles(_ImageFiles):
    def __getitem__(self, i: int):
        import numpy as np

        with open(self.paths[i], "rb") as f:
            image = _pil_random_crop(f.read(), self.size, np.random.default_rng())
        return image, int(self.paths[i].split("/")[-2])


def torch_pil_train(ctx: Context) -> Iterator[int]:
    loader = torch.utils.data.DataLoader(_TrainFiles(ctx.data.image_folder, train_crop(ctx)), shuffle=True,
                                         batch_size=ctx.batch_size, num_workers=ctx.workers)
    mix = _LabelMix(ctx.batch_size)
    for images, labels in loader:
        mix.add(labels)
        yield images.shape[0]
    mix.report(ctx)


def dali_webdataset_train(ctx: Context) -> Iterator[int]:
    """DALI's own reader with its shuffle buffer (random_shuffle, default initial_fill 1,024), the
    same random crop (`train_crop`) and a flip drawn by DALI's random operators, CPU decode."""
    yield from dali_webdataset(ctx, train=True)


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
