"""The engine's contract: bookkeeping beside the data, resume state in one place, arguments
checked when the loader is built. No Spark needed."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading

import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dsutil
import sparkfeed
from sparkfeed import partition, progress

N = 640


@pytest.fixture(scope="module")
def pq_path(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("eng") / "ds")
    dsutil.write_parquet(root, dsutil.table(N, image_bytes=8), 160, 32)
    return root


@pytest.fixture(scope="module")
def dunder_path(tmp_path_factory):
    """A dataset whose columns look like bookkeeping: WebDataset-style and sparkfeed-style names."""
    root = str(tmp_path_factory.mktemp("dunder") / "ds")
    data = dsutil.table(200)
    data = data.append_column("__src__", pa.array([f"s{i}" for i in range(200)]))
    data = data.append_column("__sparkfeed_progress__", pa.array(range(200), pa.int64()))
    dsutil.write_parquet(root, data, 100, 25)
    return root


def ids_of(batches) -> list[int]:
    return [i for b in batches for i in b["id"].tolist()]


# ---------------------------------------------------------------- bookkeeping beside the data

@pytest.mark.parametrize("workers,worker_type", [(0, "auto"), (2, "thread"), (2, "process")])
def test_user_columns_of_any_name_reach_the_batch(dunder_path, workers, worker_type):
    L = sparkfeed.DataLoader(dunder_path, batch_size=16, num_workers=workers, worker_type=worker_type)
    batches = list(L)
    assert {"__src__", "__sparkfeed_progress__", "id"} <= set(batches[0])
    assert [s for b in batches for s in b["__src__"]] == [f"s{i}" for i in ids_of(batches)]
    assert [v for b in batches for v in b["__sparkfeed_progress__"].tolist()] == ids_of(batches)
    assert L.stats()["samples"] == 200  # the loader's own counting is untouched by the column


def test_user_columns_of_any_name_reach_plain_torch(dunder_path):
    ds = sparkfeed.Dataset(dunder_path, columns=["id", "__src__"])
    rows = list(torch.utils.data.DataLoader(ds, batch_size=None))
    assert rows[0].keys() == {"id", "__src__"} and rows[7]["__src__"] == f"s{int(rows[7]['id'])}"


@dataclasses.dataclass
class Pair:
    ids: torch.Tensor
    n: int


@pytest.mark.parametrize("collate,check", [
    (lambda b: (b["id"], b["label"]), lambda out: isinstance(out, tuple) and len(out) == 2),
    (lambda b: b["id"] * 2, lambda out: isinstance(out, torch.Tensor) and int(out[0]) % 2 == 0),
    (lambda b: Pair(b["id"], len(b["id"])), lambda out: isinstance(out, Pair) and out.n == 32),
    (lambda b: [b["id"]], lambda out: isinstance(out, list) and isinstance(out[0], torch.Tensor)),
])
@pytest.mark.parametrize("workers", [0, 2])
def test_collate_fn_result_comes_back_unchanged(pq_path, collate, check, workers):
    L = sparkfeed.DataLoader(pq_path, batch_size=32, num_workers=workers, collate_fn=collate)
    out = list(L)
    assert len(out) == N // 32 and all(check(o) for o in out)
    assert L.stats()["samples"] == N  # progress and stats still counted beside them


# ---------------------------------------------------------------- resume state

def _run_and_stop(path, world, workers, stop_after, **kw):
    """Every rank iterates `stop_after` batches and saves; returns (seen ids per rank, states)."""
    seen, states = [], []
    for r in range(world):
        L = sparkfeed.DataLoader(path, rank=r, world_size=world, num_workers=workers, **kw)
        L.set_epoch(1)
        it = iter(L)
        seen.append(ids_of(next(it) for _ in range(stop_after)))
        states.append(json.loads(json.dumps(L.state_dict())))
        it.close()
    return seen, states


@pytest.mark.parametrize("workers", [0, 2, 3])
@pytest.mark.parametrize("stop_after", [1, 4])
def test_every_ranks_states_continue_each_ranks_own_order_exactly(pq_path, workers, stop_after):
    kw = dict(batch_size=16, shuffle=True, seed=11)
    full = []
    for r in range(2):
        L = sparkfeed.DataLoader(pq_path, rank=r, world_size=2, num_workers=workers, **kw)
        L.set_epoch(1)
        full.append(ids_of(L))
    seen, states = _run_and_stop(pq_path, 2, workers, stop_after, **kw)
    for r in range(2):  # the list of every rank's state, as examples/train.py saves it
        L = sparkfeed.DataLoader(pq_path, rank=r, world_size=2, num_workers=workers, **kw)
        L.load_state_dict(states)
        assert seen[r] + ids_of(L) == full[r]  # the uninterrupted run's sequence
    L = sparkfeed.DataLoader(pq_path, rank=1, world_size=2, num_workers=workers, **kw)
    L.load_state_dict(progress.global_state(states))  # the gathered form, the same
    assert seen[1] + ids_of(L) == full[1]


def test_all_ranks_without_a_process_group_is_an_error_naming_the_list(pq_path):
    L = sparkfeed.DataLoader(pq_path, batch_size=16, rank=0, world_size=2)
    with pytest.raises(ValueError, match="not initialised.*list of all ranks' states"):
        L.state_dict(all_ranks=True)
    one = sparkfeed.DataLoader(pq_path, batch_size=16)  # one rank: its own state is global
    assert one.state_dict(all_ranks=True)["scope"] == "global"


def test_one_ranks_state_in_another_world_size_is_refused(pq_path):
    _, states = _run_and_stop(pq_path, 2, 0, 1, batch_size=16)
    L = sparkfeed.DataLoader(pq_path, batch_size=16, rank=0, world_size=3)
    with pytest.raises(ValueError, match="one rank's state of a world of 2.*every rank's"):
        L.load_state_dict(states[0])


def test_another_ranks_state_is_refused(pq_path):
    _, states = _run_and_stop(pq_path, 2, 0, 1, batch_size=16)
    L = sparkfeed.DataLoader(pq_path, batch_size=16, rank=1, world_size=2)
    with pytest.raises(ValueError, match="rank 0's, but this is rank 1"):
        L.load_state_dict(states[0])


def test_a_list_missing_a_rank_is_refused(pq_path):
    _, states = _run_and_stop(pq_path, 3, 0, 1, batch_size=16)
    L = sparkfeed.DataLoader(pq_path, batch_size=16, rank=0, world_size=2)
    with pytest.raises(ValueError, match=r"missing ranks \[1\]"):
        L.load_state_dict([states[0], states[2]])


def test_a_state_from_another_seed_is_refused(pq_path):
    _, states = _run_and_stop(pq_path, 1, 0, 1, batch_size=16, shuffle=True, seed=1)
    L = sparkfeed.DataLoader(pq_path, batch_size=16, shuffle=True, seed=2)
    with pytest.raises(ValueError, match="other data or with other settings"):
        L.load_state_dict(states[0])


def test_a_state_saved_over_rewritten_data_of_the_same_size_is_refused(tmp_path):
    """The same number of samples, written again in other shards: the saved positions would name
    other rows, so the state is refused, naming both digests; over the data it was saved with it
    resumes, and a state saved before the digest existed (no "data") still loads."""
    root = str(tmp_path / "ds")
    dsutil.write_parquet(root, dsutil.table(300), 100, 50)
    _, states = _run_and_stop(root, 1, 0, 2, batch_size=16, shuffle=True, seed=3)
    sparkfeed.DataLoader(root, batch_size=16, shuffle=True, seed=3).load_state_dict(states[0])
    old = {k: v for k, v in states[0].items() if k != "data"}
    sparkfeed.DataLoader(root, batch_size=16, shuffle=True, seed=3).load_state_dict(old)
    shutil.rmtree(root)
    dsutil.write_parquet(root, dsutil.table(300, seed=1), 150, 30)
    L = sparkfeed.DataLoader(root, batch_size=16, shuffle=True, seed=3)
    with pytest.raises(ValueError, match=r"same 300 samples, but its shards were rewritten or re-indexed"):
        L.load_state_dict(states[0])


spans_st = st.lists(st.tuples(st.integers(0, 500), st.integers(1, 60)), min_size=1, max_size=6).map(
    lambda xs: partition.normalise([(lo, lo + n) for lo, n in xs]))


@settings(max_examples=80, deadline=None)
@given(spans_st, st.integers(1, 4), st.integers(1, 4), st.integers(1, 9), st.data())
def test_resume_lanes_hand_out_every_remaining_position_once(spans, world, workers, batch, data):
    """Whatever was delivered, the resumed lanes of every rank hold exactly the positions that
    were not, in any new world size and worker count (drop_last=False)."""
    fp, n = "fp", 10_000
    states = []
    for r in range(world):
        mine = partition.split_ranks(spans, world, batch, False)[r]
        prog = progress.EpochProgress(partition.split_workers(mine, workers, batch), batch)
        for k, lane in enumerate(prog.lanes):
            done = data.draw(st.integers(0, -(-partition.total(lane) // batch)))
            prog.record(k, min(done * batch, partition.total(lane)))
        states.append(progress.rank_state(epoch=0, seed=0, rank=r, world_size=world, num_samples=n,
                                          fingerprint=fp, data="d", progress=prog))
    left = partition.normalise([s for st_ in states for s in st_["remaining"]])
    new_world, new_workers = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    got = []
    for r in range(new_world):
        _, lanes = progress.resume_lanes(states, rank=r, world_size=new_world, workers=new_workers,
                                         unit=batch, drop_last=False, fingerprint=fp, num_samples=n,
                                         data="d")
        assert len(lanes) == new_workers
        got += [p for lane in lanes for lo, hi in lane for p in range(lo, hi)]
    assert sorted(got) == [p for lo, hi in left for p in range(lo, hi)]


# ---------------------------------------------------------------- arguments checked when built

@pytest.mark.parametrize("device,match", [
    ("mps", "should be None, 'cpu' or a CUDA device"),
    ("tpu:0", "should be None, 'cpu' or a CUDA device"),
    # a bare number is torch's accelerator index: refused where there is none, too high where there is
    (42, r"`device` is 42 but this machine has \d+ CUDA device" if torch.cuda.is_available()
     else "should be None, 'cpu' or a CUDA device"),
])
def test_unsupported_devices_are_refused_when_built(pq_path, device, match):
    with pytest.raises(ValueError, match=match):
        sparkfeed.DataLoader(pq_path, batch_size=8, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-CUDA path")
def test_cuda_requests_without_cuda_are_refused_when_built(pq_path):
    with pytest.raises(ValueError, match="CUDA is not available"):
        sparkfeed.DataLoader(pq_path, batch_size=8, device="cuda")
    with pytest.raises(ValueError, match="`device` should be 'cpu' or 'auto' on a machine without CUDA"):
        sparkfeed.DataLoader(pq_path, batch_size=8, columns=["image"],
                             decode={"image": sparkfeed.ImageDecode(size=8, device="gpu")})


def test_device_cpu_starts_no_prefetch_thread(pq_path):
    """(Threads of earlier tests' loaders not yet garbage-collected are not this loader's.)"""
    before = set(threading.enumerate())
    L = sparkfeed.DataLoader(pq_path, batch_size=32, device="cpu", num_workers=0)
    it = iter(L)
    next(it)
    assert not any(t.name.startswith("sparkfeed-prefetch") for t in set(threading.enumerate()) - before)
    assert len(ids_of(it)) == N - 32


@pytest.mark.parametrize("kwargs,match", [
    (dict(batch_size=0), "`batch_size` should be a positive integer, but got batch_size=0"),
    (dict(batch_size=8, num_workers=-1), "`num_workers` should be a non-negative integer"),
    (dict(batch_size=8, prefetch=True), "`prefetch` should be a non-negative integer"),
    (dict(batch_size=8, prefetch_factor=0), "`prefetch_factor` should be a positive integer or None"),
    (dict(batch_size=8, worker_type="fiber"), "`worker_type` should be one of"),
    (dict(batch_size=8, on_error="ignore"), "`on_error` should be one of"),
    (dict(batch_size=8, timeout=-1), "`timeout` should be a non-negative number"),
    (dict(batch_size=8, columns=["id", "id"]), "should name each column once"),
    (dict(batch_size=8, decode={"label": sparkfeed.ImageDecode()}), "not a binary column"),
    (dict(batch_size=8, decode=["image"]), "`decode` should be a dict"),
])
def test_bad_arguments_are_value_errors_in_torchs_sentence(pq_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sparkfeed.DataLoader(pq_path, **kwargs)


def test_a_delivery_with_another_batch_keeps_its_bookkeeping():
    """`Delivery.with_batch` (each staged batch): the lane, the positions consumed, the counters
    and the row keys stay unless new ones are given (None included)."""
    from sparkfeed.engine import Delivery

    keys = torch.arange(3)
    d = Delivery(worker=2, consumed=96, stats={"samples": 3}, batch={"x": 1}, keys=keys)
    same = d.with_batch({"x": 2})
    assert (same.worker, same.consumed, same.stats, same.batch, same.keys) == (2, 96, {"samples": 3}, {"x": 2}, keys)
    other = d.with_batch({"x": 3}, stats={"samples": 4}, keys=None)
    assert (other.worker, other.consumed, other.stats, other.batch, other.keys) == (2, 96, {"samples": 4}, {"x": 3}, None)
    assert dataclasses.is_dataclass(other) and d.batch == {"x": 1}  # a new value; the old one unchanged


def test_thread_lanes_start_in_turn_over_small_files_only(tmp_path, monkeypatch):
    """Data in small files (under SMALL_FILE_SAMPLES samples a file) is read by Python per file,
    under the GIL: its thread lanes start in turn (`LaneReader(in_turn=True)`), so the first
    batch waits for lane 0's first block alone; larger files start every lane at once, read by
    pyarrow in parallel. Both read every sample once."""
    from sparkfeed import engine, lanes, loader as loader_module

    dsutil.write_parquet(str(tmp_path / "small"), dsutil.table(600), 20, 20)  # 30 files of 20 rows
    dsutil.write_parquet(str(tmp_path / "large"), dsutil.table(4000), 2000, 500)  # 2 files of 2,000
    made = []

    class Spy(lanes.LaneReader):
        def __init__(self, *args, **kwargs):
            made.append(kwargs.get("in_turn", False))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(loader_module, "LaneReader", Spy)
    for name, n in (("small", 600), ("large", 4000)):
        loader = sparkfeed.DataLoader(str(tmp_path / name), batch_size=64, shuffle=True, num_workers=2,
                                      worker_type="thread")
        assert sorted(i for b in loader for i in b["id"].tolist()) == list(range(n))
    assert made == [True, False]
    monkeypatch.setattr(engine, "SMALL_FILE_SAMPLES", 10)  # now no file is small
    assert not sparkfeed.DataLoader(str(tmp_path / "small"), batch_size=64)._engine.lanes_start_in_turn
