"""Prefetcher on CUDA: content, pinned-ring reuse, held batches under a slow consumer, copy overlap."""

from __future__ import annotations

import time

import pytest
import torch

from sparkfeed import pinring
from sparkfeed.binarycols import BinaryColumn
from sparkfeed.bench.h2d import feed_benchmark
from sparkfeed.prefetch import Prefetcher

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def make_batch(i: int, n: int = 1 << 16) -> dict:
    data = torch.full((n,), i % 251, dtype=torch.uint8)
    return {"x": torch.full((n // 4,), float(i)), "image": BinaryColumn(data, torch.tensor([0, n])),
            "caption": [f"s{i}"], "i": i}


def spin_ms(ms: float) -> None:
    """Keep the current stream busy for about `ms` milliseconds."""
    torch.cuda._sleep(int(ms * 1e-3 * 1.4e9))  # ~1.4 GHz; only needs to be "slow"


@pytest.mark.parametrize("pin", [False, True])
@pytest.mark.parametrize("depth", [0, 3])
def test_content_on_cuda(depth, pin):
    for i, batch in enumerate(Prefetcher((make_batch(i) for i in range(20)), depth=depth,
                                         pin_memory=pin, device="cuda")):
        assert batch["x"].is_cuda and batch["image"].data.is_cuda and batch["image"].offsets.is_cuda
        assert torch.all(batch["x"] == i).item() and torch.all(batch["image"].data == i % 251).item()
        assert batch["caption"] == [f"s{i}"] and batch["i"] == i


def test_pin_memory_without_device_hands_out_pinned_tensors():
    for batch in Prefetcher((make_batch(i) for i in range(5)), depth=2, pin_memory=True):
        assert batch["x"].is_pinned() and batch["image"].data.is_pinned()


def test_pinned_ring_reuses_its_buffers():
    created = []
    real = pinring.pinned_empty

    def tracking(shape, dtype):
        t = real(shape, dtype)
        created.append(t.data_ptr())
        return t
    pinring.pinned_empty = tracking
    try:
        for batch in Prefetcher((make_batch(i) for i in range(200)), depth=2, pin_memory=True,
                                device="cuda"):
            spin_ms(1)
    finally:
        pinring.pinned_empty = real
    # 3 pinned tensors per batch (x, image.data, image.offsets), at most depth + 2 slots each
    assert 0 < len(created) <= 3 * 4


def test_held_batches_are_not_corrupted_by_later_copies():
    held = []
    for batch in Prefetcher((make_batch(i) for i in range(60)), depth=4, pin_memory=True,
                            device="cuda"):
        spin_ms(5)  # a slow consumer kernel while the next copies run
        held.append(batch)
    torch.cuda.synchronize()
    for i, batch in enumerate(held):
        assert torch.all(batch["x"] == i).item()
        assert torch.all(batch["image"].data == i % 251).item()


def test_held_pinned_host_batches_are_not_corrupted():
    held = [b for b in Prefetcher((make_batch(i) for i in range(60)), depth=4, pin_memory=True)]
    for i, batch in enumerate(held):
        assert torch.all(batch["x"] == i).item()


def test_copies_overlap_the_consumer_step():
    """With prefetch, a 20 ms GPU step hides a 20 ms producer: the consumer barely waits."""
    args = dict(batches=30, batch_bytes=8 << 20, step_s=0.02, pin_memory=True, device="cuda",
                producer_s=0.02)
    without = feed_benchmark(depth=0, **args)
    with_prefetch = feed_benchmark(depth=4, **args)
    assert with_prefetch["wait_fraction"] < 0.15 < without["wait_fraction"]
    assert with_prefetch["h2d_gbps"] > 0 and with_prefetch["plain_pinned_h2d_gbps"] > 0
    assert with_prefetch["pin_then_copy_h2d_gbps"] > 0


def test_copy_runs_on_the_side_stream_while_the_consumer_stream_is_busy():
    """A copy finishes on the side stream while a long kernel still runs on the consumer's."""
    big = [{"x": torch.ones(64 << 20, dtype=torch.uint8)} for _ in range(3)]
    with Prefetcher(iter(big), depth=1, pin_memory=True, device="cuda") as p:
        first = next(p)
        torch.cuda.synchronize()
        spin_ms(1000)      # the consumer's stream is busy for about a second
        # Meanwhile the thread pins and copies the next batch: wait for that copy to be queued
        # and finished (a condition, not a guessed sleep), or for the consumer's kernel to end.
        while not (p._queue.qsize() and p._work.stream.query()):
            if torch.cuda.current_stream().query():
                break
            time.sleep(0.001)
        assert p._work.stream.query(), "the copy waited for the consumer's kernel"
        assert not torch.cuda.current_stream().query()
        rest = list(p)
    torch.cuda.synchronize()
    assert all(int(b["x"].sum()) == 64 << 20 for b in [first, *rest])


def test_the_h2d_breakdown_times_every_part():
    """`bench.h2d.h2d_breakdown` (`python -m sparkfeed.bench.feed --h2d`) gives a positive rate
    for each part of the prefetcher and each plain loop, one per round."""
    from sparkfeed.bench.h2d import h2d_breakdown

    rates = h2d_breakdown(batch_bytes=1 << 20, batches=20, rounds=2)
    assert len(rates) == 12 and "ring depth 2" in rates and "pin_memory().to() loop" in rates
    assert all(len(v) == 2 and min(v) > 0 for v in rates.values())


def test_ring_stages_split_each_depth_into_pinning_and_copy():
    from sparkfeed.bench.h2d import ring_stages

    got = ring_stages(batch_bytes=1 << 20, batches=20, depths=(0, 2))
    assert set(got) == {0, 2}
    assert all(r["gbps"] > 0 and r["pin_ms"] > 0 and r["copy_ms"] > 0 for r in got.values())
