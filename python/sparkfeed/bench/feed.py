"""Micro-benchmarks of the feed path, kept out of the library modules.

- `feed_benchmark`: how long a simulated training step waits for data behind the `Prefetcher`
  (the `feed` scenario of `sparkfeed bench`);
- `h2d_breakdown`, `ring_stages`: the prefetcher's host-to-device rate taken apart, against plain
  copy loops, and the ring producer's time per batch in its two parts (`python -m
  sparkfeed.bench.feed --h2d`, CUDA only);
- `decode_benchmark`: images/s of `ImageDecoder` with DALI (CPU) vs PIL, and the host costs of
  the header check and the hand-over (`python -m sparkfeed.bench.feed --decode`).
"""

from __future__ import annotations

import io
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .. import prefetch as prefetch_module
from ..checks import resolve_device
from ..prefetch import Batch, Prefetcher
from ..stats import Stats

__all__ = ["feed_benchmark", "decode_benchmark", "h2d_breakdown", "ring_stages"]


# ----------------------------------------------------------------------------- prefetch
def _synthetic_source(batches: int, batch_bytes: int, producer_s: float):
    """`batches` dicts of one uint8 tensor, each taking `producer_s` in all (mostly a sleep, which
    frees the GIL as I/O or DALI do; the tensor's making counts in it)."""
    for i in range(batches):
        start = time.perf_counter()
        x = torch.full((batch_bytes,), i % 251, dtype=torch.uint8)
        time.sleep(max(0.0, producer_s - (time.perf_counter() - start)))
        yield {"x": x, "index": i}


def _step_fn(step_s: float, device: torch.device | None) -> Callable[[Batch], None]:
    """A simulated training step of `step_s`: a GPU spin (then sync, as `loss.item()`) or a sleep."""
    if device is None:
        return lambda _batch: time.sleep(step_s) if step_s > 0 else None
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(10_000_000)
    end.record()
    end.synchronize()
    cycles = int(step_s * 10_000_000 / (start.elapsed_time(end) / 1e3))

    def step(_batch: Batch) -> None:
        if cycles > 0:
            torch.cuda._sleep(cycles)
        torch.cuda.synchronize()
    return step


def _host_batches(batch_bytes: int) -> list[torch.Tensor]:
    """Four ready host batches of distinct bytes, cycled by the host-to-device studies."""
    return [torch.full((batch_bytes,), i, dtype=torch.uint8) for i in range(4)]


def _drain(src: list[torch.Tensor], n: int, depth: int, pin: bool, device, stats: Stats | None = None) -> None:
    """`n` of the batches in `src` through a Prefetcher, dropped as they come (no step)."""
    with Prefetcher(({"x": src[i % len(src)]} for i in range(n)), depth=depth, pin_memory=pin,
                    device=device, stats=stats) as prefetcher:
        for _batch in prefetcher:
            pass


def _gbps(run: Callable[[int], None], count: int, batch_bytes: int, warm: int = 20) -> float:
    """GB/s of `run(count)` after an untimed `run(warm)`, the device synchronised around it."""
    if warm:
        run(warm)
    torch.cuda.synchronize()
    start = time.perf_counter()
    run(count)
    torch.cuda.synchronize()
    return count * batch_bytes / (time.perf_counter() - start) / 1e9


def _pin_then_copy(host: list[torch.Tensor], device) -> Callable[[int], None]:
    """The loop a training script writes without a ring: `pin_memory().to(device)` per batch."""
    def run(n: int) -> None:
        for i in range(n):
            host[i % len(host)].pin_memory().to(device, non_blocking=True)
    return run


def _h2d_gbps(batches: int, batch_bytes: int, depth: int, pin: bool, device) -> tuple[float, float, float]:
    """Prefetcher throughput on ready host batches, against two plain loops over the same bytes:
    `tensor.pin_memory().to(device, non_blocking=True)` per batch (what a training loop without a
    ring does) and one already-pinned tensor copied again and again (the link's own rate).

    Each is run once untimed first (pinned allocations, the side stream, the caching allocators'
    first blocks), then timed over at least 500 batches: on an H100, 100 batches (1.3 GB, about
    50 ms) measured the ring at 2.8-21.9 GB/s and the loop at 14.8-48.4 GB/s, start-up included."""
    host = _host_batches(batch_bytes)
    pinned = torch.empty(batch_bytes, dtype=torch.uint8, pin_memory=True)
    count = max(batches, 500)

    def plain(n: int) -> None:
        for _ in range(n):
            pinned.to(device, non_blocking=True)

    return (_gbps(lambda n: _drain(host, n, depth, pin, device), count, batch_bytes),
            _gbps(_pin_then_copy(host, device), count, batch_bytes), _gbps(plain, count, batch_bytes))


def _needs_cuda(study: str) -> None:
    """The host-to-device studies measure CUDA copies: a clear error where there is none."""
    if not torch.cuda.is_available():
        raise RuntimeError(f"{study} needs CUDA (torch.cuda.is_available() is False)")


def h2d_breakdown(batch_bytes: int = 256 * 3 * 128 * 128, batches: int = 500, rounds: int = 2,
                  device: str = "cuda") -> dict[str, list[float]]:
    """Host-to-device GB/s of the prefetcher's parts taken one by one, rounds interleaved, to
    place the gap between the pinned ring and a plain `pin_memory().to(device)` loop: the thread
    and queue alone, pinning alone, the copy alone (host batches already pinned), the ring with no
    thread (depth 0), the whole ring at depths 1, 2 and 4, the prefetcher pinning with torch's
    `pin_memory()` instead of its ring, and the plain loop on the main thread, on a thread handing
    over through a queue, and with the ring's side stream and event."""
    _needs_cuda("h2d_breakdown")
    target = resolve_device(device)
    host = _host_batches(batch_bytes)
    pinned = [t.pin_memory() for t in host]
    count = max(batches, 20)

    def prefetch(depth: int, pin: bool, dev, src: list[torch.Tensor]) -> Callable[[int], None]:
        return lambda n: _drain(src, n, depth, pin, dev)

    def loop_on_a_thread(n: int) -> None:
        handed: queue.Queue = queue.Queue(maxsize=2)

        def produce() -> None:
            for i in range(n):
                handed.put(host[i % 4].pin_memory().to(target, non_blocking=True))
            handed.put(None)
        thread = threading.Thread(target=produce, daemon=True)
        thread.start()
        while handed.get() is not None:
            pass
        thread.join()

    def prefetch_pinning_with_torch(n: int) -> None:
        """The prefetcher with each batch pinned by `pin_memory()` (torch's caching host allocator,
        which reuses a block once its copy's event has passed) in place of the ring's slots."""
        ring_pin = prefetch_module._Work._pin
        prefetch_module._Work._pin = lambda _work, _name, t, _slots: (
            t if t.device.type != "cpu" or t.is_pinned() else t.pin_memory())
        try:
            _drain(host, n, 2, True, target)
        finally:
            prefetch_module._Work._pin = ring_pin

    side = torch.cuda.Stream(target)

    def loop_on_a_side_stream(n: int) -> None:
        current = torch.cuda.current_stream(target)
        for i in range(n):
            src = host[i % 4].pin_memory()
            with torch.cuda.stream(side):
                out = src.to(target, non_blocking=True)
                event = torch.cuda.Event()
                event.record(side)
            current.wait_event(event)
            out.record_stream(current)

    variants: dict[str, Callable[[int], None]] = {
        "thread + queue only (no pin, no copy)": prefetch(2, False, None, host),
        "ring pinning only (depth 2, no device)": prefetch(2, True, None, host),
        "ring copy only (depth 2, batches already pinned)": prefetch(2, True, target, pinned),
        "ring, no thread (depth 0)": prefetch(0, True, target, host),
        "ring depth 1": prefetch(1, True, target, host),
        "ring depth 2": prefetch(2, True, target, host),
        "ring depth 4": prefetch(4, True, target, host),
        "prefetcher depth 2, torch's pin_memory() in place of the ring": prefetch_pinning_with_torch,
        "pin_memory().to() loop": _pin_then_copy(host, target),
        "pin_memory().to() on a thread, handed over a queue": loop_on_a_thread,
        "pin_memory().to() on a side stream + event": loop_on_a_side_stream,
        "one pinned tensor copied again": lambda n: [pinned[0].to(target, non_blocking=True) for _ in range(n)],
    }
    out: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            out[name].append(round(_gbps(run, count, batch_bytes, warm=4), 2))
    return out


def ring_stages(batch_bytes: int = 256 * 3 * 128 * 128, batches: int = 500,
                depths: tuple[int, ...] = (0, 1, 2, 4)) -> dict[int, dict[str, float]]:
    """The pinned ring at each depth: GB/s, and the producer's milliseconds per batch in its two
    parts (the prefetcher's own `pin_s`, slot choice and host copy into the slot; `copy_s`, the
    side-stream `.to()`), after an untimed pass of 20 batches. CUDA only."""
    _needs_cuda("ring_stages")
    target = resolve_device("cuda")
    host = _host_batches(batch_bytes)
    out = {}
    for depth in depths:
        _drain(host, 20, depth, True, target)  # untimed: the ring's slots, the side stream
        stats = Stats()
        gbps = _gbps(lambda n: _drain(host, n, depth, True, target, stats), batches, batch_bytes, warm=0)
        counters = stats.snapshot()
        out[depth] = {"gbps": round(gbps, 2),
                      "pin_ms": round(counters.get("pin_s", 0) * 1e3 / batches, 3),
                      "copy_ms": round(counters.get("copy_s", 0) * 1e3 / batches, 3)}
    return out


def feed_benchmark(batches: int, batch_bytes: int, step_s: float, depth: int, pin_memory: bool,
                   device: str | None, producer_s: float) -> dict:
    """How long a simulated training step waits for data, with and without prefetch.

    A source takes `producer_s` per batch of `batch_bytes`; the consumer's step takes `step_s`.
    `wait_fraction` is the share of wall time the consumer spent blocked in `__next__` (the time
    a GPU would starve). On CUDA it also reports `h2d_gbps` (the prefetcher moving ready host
    batches to the device), `pin_then_copy_h2d_gbps` (a plain `pin_memory().to(device,
    non_blocking=True)` loop over the same host tensors) and `plain_pinned_h2d_gbps` (one pinned
    tensor copied the same way: the link's rate, no host copy), measured after the loop.

        feed_benchmark(100, 1 << 20, 0.01, depth=4, pin_memory=True, device=None, producer_s=0.01)
    """
    target = resolve_device(device)
    step, stats = _step_fn(step_s, target), Stats()
    start, cpu = time.perf_counter(), time.process_time()
    with Prefetcher(_synthetic_source(batches, batch_bytes, producer_s), depth=depth,
                    pin_memory=pin_memory, device=target, stats=stats) as prefetcher:
        for batch in prefetcher:
            step(batch)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    counters = stats.snapshot()
    # `seconds` and `cpu_s` (this process, the prefetch thread included) cover the fed loop alone:
    # the bench's row takes them, not its own clock around the call, which on CUDA also held the
    # host-to-device studies below (3 x 520+ more batches)
    result = {"batches": batches, "batch_bytes": batch_bytes, "depth": depth, "seconds": wall,
              "cpu_s": cpu, "wall_s": round(wall, 3), "wait_fraction": round(counters["wait_s"] / wall, 4),
              "batches_per_s": round(batches / wall, 2)}
    if target is not None:
        ours, pin_then_copy, plain = _h2d_gbps(batches, batch_bytes, max(depth, 1), pin_memory, target)
        result.update(h2d_gbps=round(ours, 2), pin_then_copy_h2d_gbps=round(pin_then_copy, 2),
                      plain_pinned_h2d_gbps=round(plain, 2))
    return result


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

    from ..batch import BinaryColumn
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
