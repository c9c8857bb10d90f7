"""How much of a real training step waits for sparkfeed: torchvision's ResNet-50 trained with
mixed precision on batches from `sparkfeed.DataLoader` (DALI "mixed" decoding, RandomResizedCrop
+ flip + normalise on the GPU), against the same steps on one batch held on the GPU (the step's
own cost, no loader).

    python -m sparkfeed.bench.model_step DATASET [--steps 60] [--batch-size 256] [--workers 8]

Every step ends with a device synchronise (as a `loss.item()` would), so the time blocked in the
loader's `next()` is time the GPU had no work: `wait_fraction` = that time / the step's wall time,
over the steps after `--warmup`; `wait_fraction_within_epochs` leaves out the steps that began an
epoch (their waits are `epoch_start_wait_s`, `epoch_starts` of them). `loader_vs_synthetic`
compares the two rates. Needs CUDA and DALI; the model is built untrained (no download). Prints
one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import torch

MEAN, STD = (0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)


def _model(name: str, classes: int):
    import torchvision

    model = getattr(torchvision.models, name)(weights=None, num_classes=classes)
    model = model.cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    return model, opt


def _step(model, opt, images: torch.Tensor, labels: torch.Tensor) -> None:
    """One optimiser step under bf16 autocast, then a device synchronise."""
    images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    torch.cuda.synchronize()


def _loader(path: str, batch: int, size: int, workers: int, persistent_workers: bool = False):
    import sparkfeed

    spec = sparkfeed.ImageDecode(size=size, crop="random_resized", mirror=True, mean=MEAN, std=STD,
                                 device="gpu")
    return sparkfeed.DataLoader(path, batch_size=batch, columns=["image", "label"], shuffle=True,
                                drop_last=True, num_workers=workers, device="cuda",
                                decode={"image": spec}, persistent_workers=persistent_workers)


def _batches(loader, steps: int, starts: list[int]):
    """Batches of as many epochs as `steps` needs (`set_epoch` between them); the index of each
    epoch's first batch is appended to `starts`."""
    epoch, index = 0, 0
    while True:
        loader.set_epoch(epoch)
        starts.append(index)
        for batch in loader:
            yield batch
            index += 1
            if index == steps:
                return
        epoch += 1


def split_waits(waits: list[float], walls: list[float], starts: list[int], warmup: int) -> dict:
    """The timed steps' waits, with the steps that began an epoch (the loader restarting: a new
    plan, lanes, and a first batch read and decoded from nothing) apart from the rest. A short
    benchmark epoch weighs that restart far more than a training run's epoch would: 10,000 images
    at batch 256 restart every 39 steps, ImageNet's every 5,000."""
    begins = {i - warmup for i in starts if i >= warmup}
    within = [i for i in range(len(walls)) if i not in begins]
    inside_walls = sum(walls[i] for i in within)
    return {"wait_fraction": round(sum(waits) / sum(walls), 4), "max_wait_s": round(max(waits), 4),
            "epoch_starts": len(begins), "epoch_start_wait_s": round(sum(waits[i] for i in begins), 4),
            "wait_fraction_within_epochs": round(sum(waits[i] for i in within) / inside_walls, 4)
            if inside_walls else None}


def measure(path: str, steps: int = 60, warmup: int = 10, batch: int = 256, size: int = 224,
            workers: int = 8, model_name: str = "resnet50", classes: int = 1000,
            persistent_workers: bool = False) -> dict:
    """The loader-fed and the synthetic runs of `steps` steps each; seconds and fractions.
    `persistent_workers`: the loader reads each next epoch ahead and decodes and copies its first
    batches while this one ends (the restart's wait hidden)."""
    if not torch.cuda.is_available():
        raise RuntimeError("bench.model_step needs CUDA (torch.cuda.is_available() is False)")
    torch.backends.cudnn.benchmark = True
    model, opt = _model(model_name, classes)
    fixed = torch.randn(batch, 3, size, size, device="cuda")
    fixed_labels = torch.randint(0, classes, (batch,), device="cuda")
    for _ in range(warmup):
        _step(model, opt, fixed, fixed_labels)
    start = time.perf_counter()
    for _ in range(steps):
        _step(model, opt, fixed, fixed_labels)
    synthetic_s = (time.perf_counter() - start) / steps

    waits, walls, starts = [], [], []
    loader = _loader(path, batch, size, workers, persistent_workers)
    it = _batches(loader, steps + warmup, starts)
    last = time.perf_counter()
    for batch_ in _wait_timed(it, waits):
        _step(model, opt, batch_["image"], batch_["label"].cuda(non_blocking=True).long())
        now = time.perf_counter()
        walls.append(now - last)
        last = now
    waits, walls = waits[warmup:], walls[warmup:]
    step_s = sum(walls) / len(walls)
    return {"model": model_name, "batch": batch, "size": size, "workers": workers,
            "persistent_workers": persistent_workers, "steps": len(walls),
            "gpu": torch.cuda.get_device_name(), "synthetic_step_s": round(synthetic_s, 4),
            "loader_step_s": round(step_s, 4), **split_waits(waits, walls, starts, warmup),
            "loader_images_per_s": round(batch / step_s, 1),
            "synthetic_images_per_s": round(batch / synthetic_s, 1),
            "loader_vs_synthetic": round(synthetic_s / step_s, 3)}


def _wait_timed(it, waits: list):
    """`it`'s items, the time blocked in each `next()` appended to `waits`."""
    while True:
        start = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        waits.append(time.perf_counter() - start)
        yield item


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sparkfeed.bench.model_step", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", help="a sparkfeed image dataset (columns image: JPEG bytes, label)")
    ap.add_argument("--steps", type=int, default=60, help="timed steps of each run (default 60)")
    ap.add_argument("--warmup", type=int, default=10, help="steps left out of the figures (default 10)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--size", type=int, default=224, help="crop side (default 224)")
    ap.add_argument("--workers", type=int, default=8, help="loader worker processes (default 8)")
    ap.add_argument("--model", default="resnet50", help="a torchvision.models name (default resnet50)")
    ap.add_argument("--persistent-workers", action="store_true", help="DataLoader(persistent_workers=True): "
                    "each next epoch is read ahead and its first batches decoded and copied, so its "
                    "first batch does not wait for the restart")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(json.dumps(measure(args.dataset, args.steps, args.warmup, args.batch_size, args.size,
                             args.workers, args.model, persistent_workers=args.persistent_workers)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
