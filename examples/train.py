"""Train a small CNN on a preprocessed sparkfeed image dataset; one process or under torchrun.

    python examples/train.py --data ds/train --val ds/val --epochs 2 --checkpoint ckpt.pt
    python examples/train.py --data ds/train --checkpoint ckpt.pt --resume      # exact resume
    torchrun --nproc_per_node=2 examples/train.py --data ds/train --steps 20    # DDP, gloo on CPU
    python examples/train.py --mix laion/=0.7,cc/=0.3 --steps 20                 # a mix of datasets

The only data-loading line is `sparkfeed.DataLoader(...)`: it reads the columns `image` and
`label`, decodes the JPEGs (DALI, on the GPU with `--device cuda`), shuffles, splits the data
over ranks (taken from torch.distributed) and workers, and saves/restores its exact position
with `state_dict()` / `load_state_dict()`. The number of classes comes from the manifest's
statistics of `label` (max + 1), so nothing is read before training starts.

`--mix PATH=WEIGHT,PATH=WEIGHT` trains on several datasets at once: one `sparkfeed.Source` per
dataset, interleaved in those proportions (an epoch ends when the first source has given its
share; larger sources give a different subset each epoch), with exactly-once and resume as for
one dataset. The samples each source gave are printed at the end (`loader.stats()`).

Checkpoints (`--checkpoint`) hold the model, the optimizer, the epoch, the global step and the
loader's global state (`state_dict(all_ranks=True)`, loadable at any world size); they are
written every `--checkpoint-every` steps and at the end, by rank 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import sparkfeed

MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


class SmallCNN(nn.Module):
    """Three conv blocks, global average pooling, one linear layer."""

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width]
        self.features = nn.Sequential(*[
            layer for i in range(3) for layer in (
                nn.Conv2d(chans[i], chans[i + 1], 3, padding=1), nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(inplace=True), nn.MaxPool2d(2))])
        self.head = nn.Linear(chans[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help="training dataset (a sparkfeed dataset path/URL)")
    data.add_argument("--mix", type=parse_mix, metavar="PATH=WEIGHT,...",
                      help="train on several datasets mixed in these proportions, e.g. laion/=0.7,cc/=0.3")
    p.add_argument("--val", help="validation dataset, evaluated after each epoch")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--steps", type=int, help="stop after this many steps in all (global step count)")
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--workers", type=int, default=2, help="the loader's num_workers per rank (reading threads for Parquet and indexed tars, processes for tars without an index)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", help="checkpoint file to write (and read with --resume)")
    p.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    p.add_argument("--record-keys", metavar="PREFIX",
                   help="also load column `key` and append the keys each rank trains on to "
                        "PREFIX.rank<N>.txt (to check exactly-once and resume)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.resume and not args.checkpoint:
        p.error("--resume needs --checkpoint")
    if args.resume and not os.path.exists(args.checkpoint):
        p.error(f"--resume: no checkpoint at {args.checkpoint}")
    return args


def parse_mix(text: str) -> list:
    """"laion/=0.7,cc/=0.3" -> [Source("laion/", weight=0.7), Source("cc/", weight=0.3)]."""
    sources = []
    for item in text.split(","):
        path, sep, weight = item.rpartition("=")
        if not sep or not path:
            raise argparse.ArgumentTypeError(f"{item!r} should be PATH=WEIGHT, e.g. laion/=0.7")
        try:
            sources.append(sparkfeed.Source(path, weight=float(weight)))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{item!r} should be PATH=WEIGHT with a positive weight "
                                             f"({exc})") from None
    return sources


def init_distributed(device: str) -> tuple[int, int, torch.device]:
    """Join the torchrun process group if there is one (gloo on CPU, nccl on CUDA)."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1, torch.device(device)
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return dist.get_rank(), dist.get_world_size(), torch.device("cuda", local)
    return dist.get_rank(), dist.get_world_size(), torch.device("cpu")


def num_classes(data) -> int:
    """max(label) + 1 from the manifests' statistics (of every source of a mix)."""
    paths = [data] if isinstance(data, str) else [s.path for s in data]
    stats = [s.stats.get("label") for path in paths for s in sparkfeed.read_manifest(path).shards]
    highs = [s.max for s in stats if s is not None and s.max is not None]
    if not highs:
        raise SystemExit(f"{', '.join(paths)}: the manifest has no statistics for column 'label'")
    return int(max(highs)) + 1


def make_loader(path, args, device: torch.device, train: bool) -> "sparkfeed.DataLoader":
    decode = sparkfeed.ImageDecode(size=args.image_size, mean=MEAN, std=STD,
                                   crop="random" if train else "center", mirror=train,
                                   device="gpu" if device.type == "cuda" else "cpu")
    return sparkfeed.DataLoader(path, batch_size=args.batch_size, shuffle=train, seed=args.seed,
                                columns=["image", "label"] + (["key"] if train and args.record_keys else []),
                                decode={"image": decode},
                                num_workers=args.workers, pin_memory=device.type == "cuda",
                                device=device, drop_last=train,
                                # the training loader reads each next epoch while this one ends
                                persistent_workers=train and args.workers > 0)


def save(path: str, model, opt, loader, step: int, rank: int) -> None:
    """Every rank takes part (the loader state is gathered); rank 0 writes, atomically.

    The loader state holds the epoch in progress and the samples not yet delivered in it.
    """
    module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    state = {"model": module.state_dict(), "optimizer": opt.state_dict(), "step": step,
             "loader": loader.state_dict(all_ranks=True)}
    if rank == 0:
        tmp = f"{path}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, path)
        print(f"checkpoint {path}: step {step}, epoch {state['loader']['epoch']}, "
              f"{samples_left(state['loader'])} samples left in it", flush=True)


def samples_left(loader_state: dict) -> int:
    return sum(hi - lo for lo, hi in loader_state["remaining"])


@torch.no_grad()
def evaluate(model, loader, device) -> tuple[float, int]:
    model.eval()
    correct = total = 0
    for batch in loader:
        pred = model(batch["image"]).argmax(1)
        correct += int((pred == batch["label"].to(device).long()).sum())
        total += len(pred)
    model.train()
    if dist.is_initialized():
        t = torch.tensor([correct, total], device=device)
        dist.all_reduce(t)
        correct, total = int(t[0]), int(t[1])
    return correct / max(1, total), total


def train(args) -> dict:
    rank, world, device = init_distributed(args.device)
    torch.manual_seed(args.seed)
    data = args.data or args.mix  # a path, or a list of sparkfeed.Source
    classes = num_classes(data)
    model = SmallCNN(classes).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    loader = make_loader(data, args, device, train=True)
    start_epoch, step, resume_state = 0, 0, None
    if args.resume:
        ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        step, state = ckpt["step"], ckpt["loader"]
        if samples_left(state):  # mid-epoch: continue it with exactly the samples not yet seen
            start_epoch, resume_state = state["epoch"], state
        else:  # the saved epoch was finished
            start_epoch = state["epoch"] + 1
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    say = print if rank == 0 else (lambda *a, **k: None)
    say(f"rank 0 of {world}: {classes} classes, device {device}, batch {args.batch_size}/rank, "
        f"{args.workers} workers/rank, starting at epoch {start_epoch} step {step}", flush=True)

    keys = open(f"{args.record_keys}.rank{rank}.txt", "a") if args.record_keys else None
    run_steps = run_samples = saved_at = 0
    wait_s, began = 0.0, time.monotonic()
    for epoch in range(start_epoch, args.epochs):
        if resume_state is not None:
            loader.load_state_dict(resume_state)  # sets the epoch and what is left of it
            resume_state = None
        else:
            loader.set_epoch(epoch)
        say(f"epoch {epoch}: {len(loader)} batches for this rank", flush=True)
        stopped = False
        it, t0 = iter(loader), time.monotonic()
        for batch in it:
            wait_s += time.monotonic() - t0
            x, y = batch["image"], batch["label"].to(device, non_blocking=True).long()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step, run_steps, run_samples = step + 1, run_steps + 1, run_samples + len(y) * world
            if keys is not None:
                keys.writelines(f"{epoch} {k}\n" for k in batch["key"])
            say(f"epoch {epoch} step {step} loss {loss.item():.4f}", flush=True)
            if args.checkpoint and step % args.checkpoint_every == 0:
                save(args.checkpoint, model, opt, loader, step, rank)
                saved_at = step
            if args.steps is not None and step >= args.steps:
                stopped = True
                break
            t0 = time.monotonic()
        it.close()  # stops the loader's workers now, not at garbage collection
        if args.val and not stopped:
            # the unwrapped module: DDP's forward may sync buffers, and val batches are uneven
            plain = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
            acc, n = evaluate(plain, make_loader(args.val, args, device, train=False), device)
            say(f"epoch {epoch} val accuracy {acc:.3f} on {n} samples", flush=True)
        if stopped:
            break
    wall = time.monotonic() - began
    if keys is not None:
        keys.close()
    if args.checkpoint and run_steps and saved_at != step:
        save(args.checkpoint, model, opt, loader, step, rank)
    say(f"done: {run_steps} steps this run (global step {step}), {run_samples} samples in "
        f"{wall:.1f}s: {run_samples / max(wall, 1e-9):.1f} samples/s; rank 0 waited "
        f"{wait_s:.2f}s for data ({100 * wait_s / max(wall, 1e-9):.0f}% of the time)", flush=True)
    say(f"loader.stats(): {loader.stats()}", flush=True)
    if args.mix:
        stats = loader.stats()
        say("samples per source (rank 0): " + ", ".join(
            f"{s.path} {stats.get(f'source.{i}.samples', 0)}" for i, s in enumerate(args.mix)), flush=True)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return {"steps": run_steps, "samples": run_samples}


def main(argv=None) -> int:
    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
