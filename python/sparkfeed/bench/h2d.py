"""The prefetcher studied apart from any data: how long a simulated training step waits behind
the `Prefetcher` (`feed_benchmark`, the `feed` scenario of `sparkfeed bench`), and its
host-to-device rate taken apart against plain copy loops, with the ring producer's time per batch
in its two parts (`h2d_breakdown`, `ring_stages`; `python -m sparkfeed.bench.feed --h2d`, CUDA only).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import torch

from .. import prefetch as prefetch_module
from ..checks import resolve_device
from ..prefetch import Batch, Prefetcher
from ..stats import Stats

__all__ = ["feed_benchmark", "h2d_breakdown", "ring_stages"]


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
