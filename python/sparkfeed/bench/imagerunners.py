"""The image runners (`decode`, `bytes` and `train` scenarios): sparkfeed with DALI, and the
peers people use for images (torch + PIL over files, webdataset + PIL, DALI's own WebDataset
reader, PIL on every core), each one `runner(ctx, **options) -> iterator of batch sizes`
(`runners.py` says what a runner is and lists them all in `RUNNERS`)."""

from __future__ import annotations

import io
import multiprocessing
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.utils.data

from . import datasets

if TYPE_CHECKING:  # (runners.py lists these runners: no import back at run time)
    from .runners import Context


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
