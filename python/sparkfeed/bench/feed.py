"""Micro-benchmarks of the feed path, kept out of the library modules, and their command line.

- `h2d.py`: the prefetcher studies (`feed_benchmark`, the `feed` scenario of `sparkfeed bench`;
  `h2d_breakdown`, `ring_stages`: `python -m sparkfeed.bench.feed --prefetch | --h2d`);
- `decode_benchmark`: images/s of `ImageDecoder` with DALI (CPU) vs PIL, and the host costs of
  the header check and the hand-over (`python -m sparkfeed.bench.feed --decode`).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Sequence

import numpy as np
import torch

from .h2d import feed_benchmark, h2d_breakdown, ring_stages

__all__ = ["decode_benchmark", "decode_stages", "roi_benchmark", "ahead_benchmark", "epoch_starts_benchmark"]


# ----------------------------------------------------------------------------- decode
def decode_benchmark(n: int = 512, cases=((64, 56), (64, 64), (256, 224), (256, 256)), batch: int = 128,
                     repeat: int = 3) -> None:
    """Micro-benchmark: images/s of DALI CPU vs PIL for (stored side, output size) pairs (equal:
    images at the training size, only cropped), and the host costs: the header check of a whole
    batch (numpy), per row (the marker walk in Python; PIL's lazy open), and the hand-over."""
    def jpeg(side: int, i: int) -> bytes:
        y, x = np.mgrid[0:side, 0:side]
        a = np.stack([(x * 255 // side + i) % 256, y * 255 // side, (x + y) % 256], -1).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG", quality=90)
        return buf.getvalue()

    from PIL import Image

    from ..binarycols import BinaryColumn
    from ..decode import ImageDecoder
    from ..imagespec import ImageDecode
    from ..headers import _as_arrays, _check_header, _check_headers, _encoded

    def best(f) -> float:
        return min(_timed(f) for _ in range(repeat))

    print(f"{n} JPEGs, batch {batch}, {os.cpu_count()} CPU cores, torch {torch.__version__}\n")
    print("| image | output | DALI CPU img/s | PIL img/s | header check us/img: batch (per row; PIL open) "
          "| feed us/batch |")
    print("|---|---|---|---|---|---|")
    for side, size in cases:
        data = [jpeg(side, i) for i in range(n)]
        col = BinaryColumn(torch.from_numpy(np.frombuffer(b"".join(data), np.uint8).copy()),
                           torch.tensor(np.cumsum([0] + [len(d) for d in data]), dtype=torch.int64))
        chunks = [col.select(range(i, min(i + batch, n))) for i in range(0, n, batch)]
        rates = []
        for backend in ("dali", "pil"):
            dec = ImageDecoder(ImageDecode(size=size, device="cpu", backend=backend), max_batch_size=batch)
            dec.decode(chunks[0])  # warm up
            rates.append(n / best(lambda: [dec.decode(c) for c in chunks]))
            dec.close()
        arrays = _as_arrays(col)
        spec = ImageDecode(size=size, device="cpu")
        whole = best(lambda: [_check_headers(_encoded(c), spec) for c in chunks]) / n * 1e6
        check = best(lambda: [_check_header(a, 1 << 40) for a in arrays]) / n * 1e6
        lazy = best(lambda: [Image.open(io.BytesIO(a)).size for a in arrays]) / n * 1e6
        feed = best(lambda: [_as_arrays(c) for c in chunks]) / len(chunks) * 1e6
        print(f"| {side}x{side} | {size}x{size} | {rates[0]:.0f} | {rates[1]:.0f} "
              f"| {whole:.1f} ({check:.1f}; {lazy:.1f}) | {feed:.1f} |")


def _timed(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


# ----------------------------------------------------------------------------- decode stages
STAGES = ("read", "slice", "header check", "draws", "hand-over", "DALI run", "collect", "to torch")


def _read_batches(path: str, batch_size: int, column: str, repeats: int = 1) -> tuple[list, float]:
    """One epoch of the dataset's batches as the loader's decode stage sees them (a BinaryColumn
    of images and the row keys), read on this thread `repeats` times; returns the last epoch's
    (images, keys) pairs and the least CPU seconds an epoch's reading took (the first epoch
    also pays for opening files and warming pyarrow: 8.8 against 3.6 µs per image here)."""
    from ..dataset import Dataset

    ds = Dataset(path, batch_size=batch_size, columns=[column])
    spans = ds.engine.lanes(ds.rank_spans(), 1, batch_size)[0]
    best, batches = float("inf"), None
    for _ in range(max(1, repeats)):
        batches = None  # the previous epoch's buffers freed first, as a loader's consumer frees them
        cpu = time.process_time()
        batches = [(d.batch[column], d.keys) for d in ds.engine.deliveries(0, spans, 0, batch_size, row_ids=True)]
        best = min(best, time.process_time() - cpu)
    return batches, best


def decode_stages(path: str, size: int, batch_size: int = 256, column: str = "image",
                  crop: str = "center", repeats: int = 3, **spec) -> dict:
    """CPU microseconds per image of each stage of sparkfeed's decode path, run one after the
    other on this thread (DALI's own threads included: process CPU time), best of `repeats`
    epochs: read (Parquet -> batches), slice (one buffer -> row views), header check, draws,
    hand-over (`feed_input`), DALI run (decode, resize, crop; `schedule_run` + `outputs` on the
    decoder's asynchronous pipeline, one batch at a time), collect (`as_tensor`), to torch
    (`torch.from_dlpack` of DALI's buffer: the copy into torch it replaced cost ~10 µs/image). A stage's figure is the CPU it costs, whichever thread it later runs on.
    `spec`: more ImageDecode fields (`resize=None, mirror=True` for the `train` scenario's)."""
    from ..decode import ImageDecoder
    from ..decodejob import _kind
    from ..imagespec import ImageDecode
    from ..headers import _check_headers, _encoded

    batches, read_s = _read_batches(path, batch_size, column, repeats)
    n = sum(len(images) for images, _ in batches)
    dec = ImageDecoder(ImageDecode(size=size, crop=crop, device="cpu", **spec), max_batch_size=batch_size)
    backend, spec = dec._backend, dec.spec
    best = {}
    for _ in range(repeats):
        cpu = dict.fromkeys(STAGES[1:], 0.0)

        def timed(stage, f, *args):
            t = time.process_time()
            out = f(*args)
            cpu[stage] += time.process_time() - t
            return out
        for images, keys in batches:
            enc = timed("slice", _encoded, images)
            sizes, _ = timed("header check", _check_headers, enc, spec)
            draws = timed("draws", dec._draw, len(enc), keys.numpy(), sizes)
            rows = np.arange(len(enc))
            kind = _kind(spec, sizes)
            pipe = backend._pipe(kind)
            inputs = timed("slice", backend._inputs, enc, rows, draws, kind, sizes)
            timed("hand-over", lambda: [pipe.feed_input(k, v) for k, v in inputs.items()])
            timed("DALI run", pipe.schedule_run)
            (out,) = timed("DALI run", pipe.outputs)
            t = timed("collect", out.as_tensor)
            timed("to torch", torch.from_dlpack, t)  # the loader's hand-over: DALI's buffer, no copy
        for stage, s in cpu.items():
            best[stage] = min(best.get(stage, s), s)
    dec.close()
    result = {"images": n, "read": read_s / n * 1e6}
    result.update({stage: s / n * 1e6 for stage, s in best.items()})
    result["total"] = sum(result[s] for s in STAGES)
    return result


def roi_benchmark(path: str, crops=(128, 112), batch_size: int = 256, repeats: int = 3) -> dict:
    """CPU us per image of DALI decoding a random crop two ways on a dataset's images: the whole
    image then `crop_mirror_normalize`'s crop, or only the window (`fn.decoders.image_crop`)."""
    from nvidia import dali
    from nvidia.dali import fn, types

    from ..headers import _encoded

    batches, _ = _read_batches(path, batch_size, "image")
    views = [_encoded(images).views(np.arange(len(images))) for images, _ in batches]
    n = sum(len(v) for v in views)

    def build(roi: bool, side: int):
        pipe = dali.Pipeline(batch_size=batch_size, num_threads=min(8, os.cpu_count() or 1), device_id=None,
                             prefetch_queue_depth=1, exec_async=False, exec_pipelined=False, seed=1)
        with pipe:
            enc = fn.external_source(name="enc", batch=True, dtype=types.UINT8, ndim=1, no_copy=True)
            pos = dict(crop_pos_x=fn.random.uniform(range=(0.0, 1.0)), crop_pos_y=fn.random.uniform(range=(0.0, 1.0)))
            kw = dict(dtype=types.UINT8, output_layout="CHW", mirror=fn.random.coin_flip())
            if roi:
                img = fn.decoders.image_crop(enc, output_type=types.RGB, crop=(side, side), **pos)
            else:
                img = fn.decoders.image(enc, output_type=types.RGB)
                kw.update(crop=(side, side), **pos)
            pipe.set_outputs(fn.crop_mirror_normalize(img, **kw))
        pipe.build()
        return pipe
    out = {}
    for side in crops:
        for roi in (False, True, False, True):  # interleaved: drift on a shared machine hits both
            pipe, label = build(roi, side), f"{side} {'window' if roi else 'whole'}"
            for _ in range(repeats):
                t = time.process_time()
                for v in views:
                    pipe.run(enc=v)
                out[label] = min(out.get(label, 1e9), (time.process_time() - t) / n * 1e6)
            del pipe
    return out


def ahead_benchmark(path: str, size: int, train: bool = False, rounds: int = 8, workers: int = 2,
                    batch_size: int = 256, depths: Sequence[int] = (0, 1), device: str = "cpu") -> dict:
    """The loader's decode at each look-ahead depth (batches started decoding ahead of the one
    handed over; 0: one at a time), a loader per depth, their epochs alternated in one process
    (so a shared machine's load falls on all alike): per depth the median images/s and CPU
    µs/image over `rounds` epochs, and `ratio`, each depth's median per-round rate ratio to the
    first depth. `size`: the stored side; `train`: the `train` scenario's shuffle, 7/8 random
    crop of the stored pixels and flip, else the `decode` scenario's centre crop at `size`;
    `device`: "cpu", or "gpu" for DALI's "mixed" decoder (each epoch then ends synchronised)."""
    import statistics

    from ..imagespec import ImageDecode
    from ..loader import DataLoader

    if not depths or any(not isinstance(d, int) or d < 0 for d in depths):
        raise ValueError(f"`depths` should be non-negative integers, but got depths={depths!r}")
    spec = ImageDecode(size=size * 7 // 8, crop="random", resize=None, mirror=True, device=device) if train \
        else ImageDecode(size=size, device=device)
    loaders = {}
    for depth in depths:
        loader = DataLoader(path, batch_size=batch_size, columns=["image", "label"], num_workers=workers,
                            decode={"image": spec}, shuffle=train, seed=1)
        loader._work.ahead = depth  # before its first decode: the pipelines are sized for it
        loaders[depth] = loader
    sync = torch.cuda.synchronize if device == "gpu" else (lambda: None)
    runs: dict[int, list[tuple[float, float]]] = {depth: [] for depth in depths}
    for r in range(rounds + 1):  # round 0 warms up
        for depth, loader in loaders.items():
            wall, cpu = time.perf_counter(), time.process_time()
            n = sum(b["image"].shape[0] for b in loader)
            sync()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if r:
                runs[depth].append((n / wall, cpu / n * 1e6))
    out: dict = {depth: {"images_per_s": statistics.median(x for x, _ in v),
                         "cpu_us": statistics.median(c for _, c in v)} for depth, v in runs.items()}
    first = runs[depths[0]]
    out["ratio"] = {depth: statistics.median(a[0] / b[0] for a, b in zip(v, first)) for depth, v in runs.items()}
    return out


def epoch_starts_benchmark(path: str, step_s: float = 0.002, epochs: int = 6, shuffle: bool = True,
                           workers: int = 2, batch_size: int = 256, decode_size: int | None = None,
                           worker_type: str = "auto") -> dict:
    """The wait for each epoch's first batch with and without `persistent_workers=True` (the
    next epoch read ahead once this one is read, and with decoding its first batches decoded
    ahead while this one is delivered), under a training step of `step_s` per batch
    (a sleep), `set_epoch` before each epoch, loaders alternated epoch by epoch. Per mode: the
    median first-batch wait over the epochs after the first, and the median epoch time.
    `decode_size`: decode the `image` column on the CPU (DALI) at that size, else bytes;
    `worker_type`: the loaders' ("process": kept worker processes read the next epoch ahead)."""
    import statistics

    from ..dataset import Dataset
    from ..imagespec import ImageDecode
    from ..loader import DataLoader

    decode = {"image": ImageDecode(size=decode_size, device="cpu")} if decode_size else None
    columns = ["image", "label"] if "image" in Dataset(path).columns else None
    loaders = {mode: DataLoader(path, batch_size=batch_size, columns=columns, num_workers=workers, shuffle=shuffle,
                                decode=decode, persistent_workers=mode == "persistent_workers=True",
                                worker_type=worker_type)
               for mode in ("persistent_workers=False", "persistent_workers=True")}
    runs: dict[str, list[tuple[float, float]]] = {mode: [] for mode in loaders}
    for epoch in range(epochs + 1):  # epoch 0: nothing was read ahead of it
        for mode, loader in loaders.items():
            loader.set_epoch(epoch)
            start = time.perf_counter()
            first = None
            for _batch in loader:
                first = time.perf_counter() - start if first is None else first
                time.sleep(step_s)
            if epoch:
                runs[mode].append((first, time.perf_counter() - start))
    return {mode: {"first_batch_ms": round(statistics.median(f for f, _ in v) * 1e3, 2),
                   "epoch_s": round(statistics.median(e for _, e in v), 4)} for mode, v in runs.items()}


def main(argv=None) -> int:
    """`python -m sparkfeed.bench.feed --decode | --prefetch | --h2d | ...`: print micro-benchmarks."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m sparkfeed.bench.feed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decode", action="store_true", help="DALI CPU vs PIL decode rates and host costs")
    parser.add_argument("--prefetch", action="store_true", help="feed_benchmark with depth 0 and 4")
    parser.add_argument("--h2d", action="store_true", help="host-to-device GB/s of the prefetcher's parts "
                        "(thread, pinning, copy, depths) against plain pin_memory().to() loops; needs CUDA")
    parser.add_argument("--stages", metavar="DATASET", help="CPU us per image of each decode stage over "
                        "a dataset with an `image` column (e.g. one `sparkfeed bench` built)")
    parser.add_argument("--roi", metavar="DATASET", help="DALI CPU us per image: whole decode + crop vs "
                        "window decode (fn.decoders.image_crop), crops of 128 and 112")
    parser.add_argument("--size", type=int, default=None, help="output side for --stages, stored side for "
                        "--ahead (default 128); with --epoch-starts, decode at this side")
    parser.add_argument("--ahead", metavar="DATASET", help="the loader's decode at each --depths look-ahead "
                        "(batches decoded ahead of the one handed over; 0: one at a time), epochs "
                        "alternated (the decode and train scenarios' specs)")
    parser.add_argument("--depths", default="0,1", help="look-ahead depths for --ahead, the first the "
                        "baseline of the ratios (default 0,1)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"), help="where --ahead decodes "
                        "(gpu: DALI's \"mixed\" decoder; default cpu)")
    parser.add_argument("--workers", type=int, default=2, help="the loaders' num_workers for --ahead (default 2)")
    parser.add_argument("--rounds", type=int, default=8, help="epochs per mode for --ahead (default 8)")
    parser.add_argument("--epoch-starts", metavar="DATASET", help="the wait for each epoch's first batch "
                        "with and without persistent_workers=True (the next epoch read ahead), a "
                        "--step-ms step per batch, shuffled; with --size, the image column decoded on the CPU")
    parser.add_argument("--step-ms", type=float, default=2.0, help="the training step (a sleep) per batch "
                        "for --epoch-starts (default 2; longer than a batch's decode shows the decode "
                        "of the next epoch's first batches hidden)")
    parser.add_argument("--worker-type", default="auto", choices=("auto", "thread", "process"),
                        help="the loaders' worker_type for --epoch-starts (default auto)")
    args = parser.parse_args(argv)
    size = args.size or 128
    if not (args.decode or args.prefetch or args.h2d or args.stages or args.roi or args.ahead or args.epoch_starts):
        parser.error("choose --decode, --prefetch, --h2d, --stages DATASET, --roi DATASET, --ahead DATASET "
                     "and/or --epoch-starts DATASET")
    if args.epoch_starts:
        for mode, r in epoch_starts_benchmark(args.epoch_starts, step_s=args.step_ms / 1e3,
                                              decode_size=args.size, worker_type=args.worker_type).items():
            print(f"{mode}: first batch {r['first_batch_ms']:.2f} ms, epoch {r['epoch_s']:.3f} s "
                  "(medians of the epochs after the first)")
    if args.h2d and not torch.cuda.is_available():
        parser.error("--h2d needs CUDA (torch.cuda.is_available() is False)")
    if args.ahead:
        try:
            depths = [int(d) for d in args.depths.split(",")]
        except ValueError:
            parser.error(f"--depths should be comma-separated integers, but got {args.depths!r}")
        for train in (False, True):
            r = ahead_benchmark(args.ahead, size, train=train, rounds=args.rounds, workers=args.workers,
                                depths=depths, device=args.device)
            for depth in depths:
                print(f"{'train' if train else 'decode'} {depth} ahead: {r[depth]['images_per_s']:7.0f} images/s, "
                      f"{r[depth]['cpu_us']:6.1f} CPU us/image (medians of {args.rounds} epochs), "
                      f"{r['ratio'][depth]:.3f}x {depths[0]} ahead (median of per-epoch ratios)")
    if args.roi:
        for label, us in roi_benchmark(args.roi).items():
            print(f"crop {label}: {us:.1f} CPU us/img (best of 3, interleaved)")
    if args.stages:
        r = decode_stages(args.stages, size)
        print(f"{r['images']} images, batch 256, output {size} px, {os.cpu_count()} cores: "
              "CPU us per image (process time, DALI's threads included), best of 3 epochs\n")
        print("| " + " | ".join(STAGES) + " | total |\n|" + "---|" * (len(STAGES) + 1))
        print("| " + " | ".join(f"{r[s]:.1f}" for s in STAGES + ("total",)) + " |")
    if args.decode:
        decode_benchmark()
    if args.h2d:
        rates = h2d_breakdown()
        print(f"host to device, batches of {256 * 3 * 128 * 128:,} bytes, GB/s per round (interleaved)\n")
        print("| variant | GB/s |\n|---|---|")
        for name, values in rates.items():
            print(f"| {name} | {' / '.join(f'{v:.2f}' for v in values)} |")
        print("\n| ring depth | GB/s | pin ms/batch (slot + host copy) | copy ms/batch (side-stream .to()) |\n|---|---|---|---|")
        for depth, r in ring_stages().items():
            print(f"| {depth} | {r['gbps']:.2f} | {r['pin_ms']:.3f} | {r['copy_ms']:.3f} |")
    if args.prefetch:
        for depth in (0, 4):
            print(feed_benchmark(batches=100, batch_bytes=1 << 20, step_s=0.01, depth=depth,
                                 pin_memory=True, device=None, producer_s=0.01))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
