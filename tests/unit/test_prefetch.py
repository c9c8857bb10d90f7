"""Prefetcher: order and content, errors at their position, shutdown without leaks, the pinned ring."""

from __future__ import annotations

import _thread
import gc
import signal
import threading
import traceback

import psutil
import pytest
import torch

from sparkfeed import pinring
from sparkfeed import prefetch as pf
from sparkfeed import threads as protocol
from sparkfeed.binarycols import BinaryColumn
from sparkfeed.errors import WorkerError
from sparkfeed.bench.h2d import feed_benchmark
from sparkfeed.prefetch import Prefetcher
from sparkfeed.stats import Stats


@pytest.fixture(autouse=True)
def _bounded():
    """A hang is a failure, not a stuck CI job. The bound is far above any test's run time even
    on two busy cores (it only catches hangs; no test asserts on how long it took)."""
    def on_alarm(signum, frame):
        raise TimeoutError("test exceeded 300 s: a hang")
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(300)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def plain_ring(monkeypatch):
    """Run the pinned-ring path on CPU: pinning 'enabled', buffers from plain torch.empty."""
    monkeypatch.setattr(pf, "_pin_enabled", lambda pin_memory: bool(pin_memory))
    monkeypatch.setattr(pinring, "pinned_empty", lambda shape, dtype: torch.empty(shape, dtype=dtype))


def make_batch(i: int) -> dict:
    data = torch.arange(i, i + 2 + i % 3, dtype=torch.uint8)
    offsets = torch.tensor([0, 1, data.numel()], dtype=torch.int64)
    return {"x": torch.full((4, 3), float(i)), "label": torch.tensor([i, -i]),
            "image": BinaryColumn(data, offsets), "caption": [f"s{i}", "t"], "meta": ("m", i)}


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(got[key], value), key
        elif isinstance(value, BinaryColumn):
            assert torch.equal(got[key].data, value.data) and torch.equal(got[key].offsets, value.offsets)
        else:
            assert got[key] == value, key


def threads_named(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


def wait_gone(name: str, hang_guard_s: float = 60.0) -> bool:
    """Join the threads called `name` (returns as soon as they end; the guard only stops a hang)."""
    for t in threads_named(name):
        t.join(hang_guard_s)
    return not threads_named(name)


def counting(n: int, fail_at: int | None = None, exc: Exception | None = None):
    for i in range(n):
        if i == fail_at:
            raise exc
        yield make_batch(i)


# ----------------------------------------------------------------------------- order and content
@pytest.mark.parametrize("depth", [0, 1, 4])
def test_same_order_and_content_at_every_depth(depth):
    got = list(Prefetcher(counting(20), depth=depth, name=f"pf-order-{depth}"))
    assert len(got) == 20
    for i, batch in enumerate(got):
        assert_same(batch, make_batch(i))
    assert wait_gone(f"pf-order-{depth}")


@pytest.mark.parametrize("depth", [0, 3])
def test_pin_memory_on_cpu_only_is_a_no_op(depth):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only behaviour")
    got = list(Prefetcher(counting(5), depth=depth, pin_memory=True))
    for i, batch in enumerate(got):
        assert_same(batch, make_batch(i))
        assert not batch["x"].is_pinned()


def test_cuda_device_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only behaviour")
    before = set(threads_named("sparkfeed-prefetch"))  # earlier tests' threads not yet collected
    with pytest.raises(ValueError, match="CUDA is not available"):
        Prefetcher(counting(1), device="cuda")
    assert not set(threads_named("sparkfeed-prefetch")) - before


@pytest.mark.parametrize("kwargs, match", [({"depth": -1}, "non-negative"), ({"depth": 1.5}, "depth=1.5"),
                                           ({"stage": 3}, "callable"), ({"device": "meta"}, "device=")])
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Prefetcher([], **kwargs)


def test_stage_runs_on_the_background_thread_in_order():
    seen = []

    def stage(batch):
        seen.append(threading.current_thread().name)
        return {**batch, "x": batch["x"] * 2}
    got = list(Prefetcher(counting(6), depth=2, stage=stage, name="pf-stage"))
    assert [int(b["x"][0, 0]) for b in got] == [2 * i for i in range(6)]
    assert set(seen) == {"pf-stage"}


def test_stats_are_counted(plain_ring):
    stats = Stats()
    list(Prefetcher(counting(7), depth=2, stage=lambda b: b, pin_memory=True, stats=stats))
    snap = stats.snapshot()
    assert snap["pin_s"] > 0
    assert snap["prefetch_batches"] == 7
    assert snap["wait_s"] > 0 and snap["stage_s"] >= 0
    assert 0 <= snap["prefetch_queue_depth"] <= 2


# ----------------------------------------------------------------------------- shutdown
def test_early_break_and_close_stop_the_thread():
    source_closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield make_batch(i)
                i += 1
        finally:
            source_closed.set()
    p = Prefetcher(endless(), depth=3, name="pf-break")
    for i, _batch in enumerate(p):
        if i == 5:
            break
    p.close()
    p.close()  # idempotent
    assert wait_gone("pf-break")
    assert source_closed.is_set()
    with pytest.raises(StopIteration, match="^$"):  # plain exhaustion, no message
        next(p)


def test_garbage_collected_prefetcher_stops_its_thread():
    p = Prefetcher(counting(10_000), depth=2, name="pf-gc")
    next(p)
    assert threads_named("pf-gc")
    del p
    gc.collect()
    assert wait_gone("pf-gc")


def test_source_blocked_forever_does_not_block_close(monkeypatch):
    monkeypatch.setattr(protocol, "JOIN_S", 0.5)
    release = threading.Event()

    def stuck():
        yield make_batch(0)
        release.wait()  # "forever", until the test lets it go
        yield make_batch(1)
    p = Prefetcher(stuck(), depth=2, name="pf-stuck")
    next(p)
    p.close()  # returns although the source still blocks: the thread is left behind, alive
    assert threads_named("pf-stuck") and not release.is_set()
    release.set()  # the daemon thread then sees `stop` and leaves
    assert wait_gone("pf-stuck")


def test_keyboard_interrupt_in_the_consumer_loop_cleans_up():
    with pytest.raises(KeyboardInterrupt, match="Ctrl-C at batch 3"):
        with Prefetcher(counting(10_000), depth=2, name="pf-kbd") as p:
            for i, _batch in enumerate(p):
                if i == 3:
                    raise KeyboardInterrupt("Ctrl-C at batch 3")
    assert wait_gone("pf-kbd")


@pytest.fixture
def python_sigint():
    """Python's own Ctrl-C handler for the test: `_thread.interrupt_main` does nothing where
    SIGINT is ignored or left to the OS, and code run earlier in a shared test process may have
    set either (the suite once failed with "DID NOT RAISE" under load; not reproduced alone)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_while_blocked_waiting_for_a_batch_cleans_up(python_sigint):
    started, consuming, release = threading.Event(), threading.Event(), threading.Event()

    def blocked():
        started.set()
        release.wait()  # the consumer is left waiting for batch 0 until Ctrl-C has been sent
        yield from counting(100)

    def ctrl_c():  # once the producer is stuck and the consumer is in its loop
        started.wait()
        consuming.wait()
        _thread.interrupt_main()
        release.set()
    sender = threading.Thread(target=ctrl_c)
    sender.start()
    with pytest.raises(KeyboardInterrupt, match="^$"):  # what Ctrl-C raises: no message
        with Prefetcher(blocked(), depth=2, name="pf-sigint") as p:
            consuming.set()
            for _batch in p:
                pass
    sender.join()
    assert wait_gone("pf-sigint")


def test_dead_producer_is_an_error_not_a_hang(monkeypatch):
    monkeypatch.setattr(pf, "_prefetch_loop", lambda *args: None)  # a thread that dies silently
    p = Prefetcher(counting(3), depth=2, name="pf-dead")
    with pytest.raises(WorkerError, match="pf-dead.*batch 0"):
        next(p)
    assert wait_gone("pf-dead")


# ----------------------------------------------------------------------------- errors in place
class BadShard(Exception):
    def __init__(self, message, shard):
        super().__init__(message)
        self.shard = shard


@pytest.mark.parametrize("depth", [0, 2])
def test_source_error_arrives_after_the_batches_before_it(depth):
    p = Prefetcher(counting(10, fail_at=4, exc=BadShard("truncated footer", "part-00003")),
                   depth=depth, name=f"pf-src-{depth}")
    got = []
    with pytest.raises(BadShard, match="truncated footer") as info:
        for batch in p:
            got.append(batch)
    assert [int(b["label"][0]) for b in got] == [0, 1, 2, 3]
    assert info.value.shard == "part-00003"
    text = "".join(traceback.format_exception(info.value))
    assert "in counting" in text  # where it happened on the thread is kept
    if depth:
        assert "pf-src-2" in text and "batch 4" in text
    assert wait_gone(f"pf-src-{depth}")
    with pytest.raises(StopIteration, match="^$"):  # plain exhaustion, no message
        next(p)


@pytest.mark.parametrize("depth", [0, 3])
def test_stage_error_arrives_after_the_batches_before_it(depth):
    def stage(batch):
        if int(batch["label"][0]) == 2:
            raise KeyError("no decoder for 'webp'")
        return batch
    got = []
    with pytest.raises(KeyError, match="webp") as info:
        for batch in Prefetcher(counting(10), depth=depth, stage=stage, name=f"pf-stg-{depth}"):
            got.append(batch)
    assert len(got) == 2
    assert "in stage" in "".join(traceback.format_exception(info.value))
    assert wait_gone(f"pf-stg-{depth}")


def test_stop_iteration_from_stage_does_not_end_the_loop_silently():
    def stage(batch):
        raise StopIteration
    with pytest.raises(RuntimeError, match="raised StopIteration in .* batch 0"):
        list(Prefetcher(counting(3), depth=1, stage=stage))


# ----------------------------------------------------------------------------- memory and the ring
@pytest.mark.parametrize("pin", [False, True])
def test_memory_stays_bounded(pin, plain_ring):
    mb = 1 << 20
    # 400 batches (400 MB) after the warm-up point: a leak of one batch in two would show.
    source = ({"x": torch.full((mb,), i % 200, dtype=torch.uint8), "i": i} for i in range(600))
    proc = psutil.Process()
    with Prefetcher(source, depth=4, pin_memory=pin, name="pf-mem") as p:
        for batch in p:
            if batch["i"] == 200:
                gc.collect()
                warm = proc.memory_info().rss
            assert int(batch["x"][-1]) == batch["i"] % 200
    gc.collect()
    assert proc.memory_info().rss - warm < 64 * mb


@pytest.mark.parametrize("pin", [False, True])
def test_held_batches_are_never_overwritten(pin, plain_ring):
    held, views = [], []
    source = ({"x": torch.full((64,), float(i)), "i": i} for i in range(300))
    for batch in Prefetcher(source, depth=3, pin_memory=pin):
        if batch["i"] % 3 == 0:
            held.append(batch)               # the whole batch
        elif batch["i"] % 3 == 1:
            views.append((batch["i"], batch["x"][10:20]))  # only a sub-view of it
    assert all(torch.all(b["x"] == b["i"]) for b in held)
    assert all(torch.all(v == i) for i, v in views)


def test_ring_never_overwrites_a_held_tensor_and_reuses_released_slots():
    allocations = []

    def allocate(shape, dtype):
        allocations.append(shape)
        return torch.empty(shape, dtype=dtype)
    ring = pinring.PinnedRing(3, allocate)
    a, slot_a = ring.put(torch.full((8,), 1.0))
    b, _ = ring.put(torch.full((8,), 2.0))
    sub_c = ring.put(torch.full((8,), 3.0))[0][2:4]  # only a sub-view is held
    d, slot_d = ring.put(torch.full((8,), 4.0))       # every slot held: fresh memory, unpooled
    assert slot_d is None and len(ring.slots) == 3
    assert torch.all(a == 1) and torch.all(b == 2) and torch.all(sub_c == 3) and torch.all(d == 4)
    ptr_a = a.data_ptr()
    del a
    e, slot_e = ring.put(torch.full((8,), 5.0))      # a's slot is free again: reused
    assert slot_e is slot_a and e.data_ptr() == ptr_a
    assert torch.all(b == 2) and torch.all(sub_c == 3)
    n = len(allocations)
    del e, sub_c
    ring.put(torch.full((4,), 6.0))
    ring.put(torch.full((4,), 7.0))
    assert len(allocations) == n  # smaller batches fit the slots already there


def test_ring_grows_a_slot_for_a_larger_batch():
    ring = pinring.PinnedRing(2, lambda shape, dtype: torch.empty(shape, dtype=dtype))
    ring.put(torch.zeros(4, dtype=torch.int64))
    big, slot = ring.put(torch.arange(100, dtype=torch.int64).view(10, 10))
    assert slot.buffer.numel() >= 800 and torch.equal(big, torch.arange(100).view(10, 10))


class FakeEvent:
    def __init__(self):
        self.done, self.waited = False, False

    def query(self):
        return self.done

    def synchronize(self):
        self.waited, self.done = True, True


def test_ring_waits_for_an_in_flight_copy_before_reuse():
    ring = pinring.PinnedRing(2, lambda shape, dtype: torch.empty(shape, dtype=dtype))
    view_1, first = ring.put(torch.ones(4))
    view_2, second = ring.put(torch.ones(4))
    assert first is not second
    del view_1, view_2                   # dropped, as after a device copy; only the copies hold
    first.event, second.event = FakeEvent(), FakeEvent()
    second.event.done = True
    assert ring.put(torch.ones(4))[1] is second          # the finished copy's slot, no wait
    second.event = FakeEvent()
    slot = ring.put(torch.ones(4))[1]                    # both copying: wait for the oldest
    assert slot is first and first.event is None
    assert not second.event.waited


# ----------------------------------------------------------------------------- helpers, benchmark
def test_map_tensors_maps_tensors_and_binary_columns_only():
    batch = make_batch(3)
    names = []
    out = pf._map_tensors(batch, lambda name, t: names.append(name) or t + 1)
    assert sorted(names) == ["image.data", "image.offsets", "label", "x"]
    assert torch.equal(out["x"], batch["x"] + 1) and out["caption"] is batch["caption"]
    assert torch.equal(out["image"].offsets, batch["image"].offsets + 1)


def test_the_producer_runs_ahead_while_the_consumer_works():
    """What hides the producer's time: while the consumer holds batch 0 and asks for nothing,
    the thread makes the next `depth` batches (an event-based check; no clock involved)."""
    made, depth = threading.Condition(), 4
    count = [0]

    def source():
        for i in range(20):
            with made:
                count[0] += 1
                made.notify_all()
            yield make_batch(i)
    with Prefetcher(source(), depth=depth, name="pf-ahead") as p:
        next(p)
        with made:
            assert made.wait_for(lambda: count[0] >= 1 + depth + 1, timeout=60), count[0]
        assert [int(b["label"][0]) for b in p] == list(range(1, 20))


def test_feed_benchmark_reports_the_wait_fraction():
    """The figures themselves are measured by `sparkfeed bench` (README "Performance"); here only
    their shape, since wall-clock fractions on two shared cores are not a pass/fail signal."""
    args = dict(batches=6, batch_bytes=1 << 12, step_s=0.001, pin_memory=False, device=None,
                producer_s=0.001)
    for depth in (0, 4):
        got = feed_benchmark(depth=depth, **args)
        assert got["batches"] == 6 and got["depth"] == depth and got["wall_s"] > 0
        assert 0 <= got["wait_fraction"] <= 1 and got["batches_per_s"] > 0
        assert "h2d_gbps" not in got


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_model_step_says_it_needs_cuda():
    from sparkfeed.bench.model_step import measure

    with pytest.raises(RuntimeError, match=r"bench.model_step needs CUDA \(torch.cuda.is_available\(\) is False\)"):
        measure("/nonexistent")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_the_h2d_studies_say_they_need_cuda():
    from sparkfeed.bench.feed import main
    from sparkfeed.bench.h2d import h2d_breakdown, ring_stages

    for study in (h2d_breakdown, ring_stages):
        with pytest.raises(RuntimeError, match=r"needs CUDA \(torch.cuda.is_available\(\) is False\)"):
            study()
    with pytest.raises(SystemExit):
        main(["--h2d"])


def test_model_step_keeps_the_waits_of_epoch_starts_apart(tmp_path):
    """`bench.model_step` runs past epoch ends; the steps that began an epoch (the loader
    restarting) are counted apart, so a short benchmark epoch cannot pass its restarts off as the
    steady wait."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    import sparkfeed
    from sparkfeed.bench.model_step import _batches, split_waits

    (tmp_path / "ds").mkdir()
    pq.write_table(pa.table({"id": np.arange(10)}), tmp_path / "ds" / "a.parquet")
    loader = sparkfeed.DataLoader(str(tmp_path / "ds"), batch_size=4, shuffle=True)
    starts: list[int] = []
    got = [b["id"].tolist() for b in _batches(loader, 7, starts)]
    assert starts == [0, 3, 6] and len(got) == 7
    assert sorted(sum(got[3:6], [])) == list(range(10))  # the second epoch, whole
    split = split_waits([0.1, 0.2, 0.3, 0.4], [1.0, 1.0, 1.0, 1.0], starts=[0, 2], warmup=1)
    assert split["epoch_starts"] == 1 and split["epoch_start_wait_s"] == 0.2
    assert split["wait_fraction"] == 0.25 and split["max_wait_s"] == 0.4
    assert split["wait_fraction_within_epochs"] == round(0.8 / 3, 4)


def test_the_model_steps_loader_reads_each_next_epoch_ahead_when_asked(tmp_path, capsys):
    """`bench.model_step --persistent-workers` and `bench.feed --epoch-starts` use
    `persistent_workers=True`: the batches are those of a loader without it, epoch after epoch,
    and the later epochs were read ahead."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    import sparkfeed
    from sparkfeed.bench.feed import main
    from sparkfeed.bench.model_step import _batches

    (tmp_path / "ds").mkdir()
    pq.write_table(pa.table({"id": np.arange(40)}), tmp_path / "ds" / "a.parquet", row_group_size=8)
    path = str(tmp_path / "ds")
    runs = {}
    for persistent in (False, True):
        loader = sparkfeed.DataLoader(path, batch_size=4, shuffle=True, num_workers=2, persistent_workers=persistent)
        runs[persistent] = ([b["id"].tolist() for b in _batches(loader, 25, [])], loader.stats())
    assert runs[True][0] == runs[False][0]
    assert runs[True][1]["epochs_read_ahead"] == 2 and "epochs_read_ahead" not in runs[False][1]
    assert main(["--epoch-starts", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["persistent_workers=False", "persistent_workers=True"]
