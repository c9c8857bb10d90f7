"""A resume with another batch size (elastic training keeping the global batch: 8 ranks x 32 saved,
4 ranks x 64 resumed): exactly the samples not yet delivered, each once, in batches of the new
size; with drop_last only full batches and every rank the same number. No Spark needed."""

import json
import os
import re

import pytest
import torch

import dsutil
import sparkfeed
from sparkfeed import progress

N = 600
COLS = ["id"]


@pytest.fixture(scope="module")
def pq_path(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("rebatch") / "ds")
    dsutil.write_parquet(root, dsutil.table(N), 100, 25)
    return root


def plain(state):
    """The state as a checkpoint holds it (JSON: plain values only)."""
    return json.loads(json.dumps(state))


def save(path, world, workers, batch_size, stop, **kw):
    """Every rank of a world stopped after `stop` batches of epoch 1 (an int, or one per rank):
    (ids delivered, rank states)."""
    stops = stop if isinstance(stop, (list, tuple)) else [stop] * world
    seen, states = [], []
    for r, stop in enumerate(stops):
        L = sparkfeed.DataLoader(path, batch_size=batch_size, rank=r, world_size=world,
                                 num_workers=workers, columns=COLS, **kw)
        L.set_epoch(1)
        it = iter(L)
        for _ in range(stop):
            seen += next(it)["id"].tolist()
        states.append(plain(L.state_dict()))
        it.close()
    return seen, states


def resume(path, state_of, world, workers, batch_size, **kw):
    """Per rank of the new world, the batches (lists of ids) delivered after loading `state_of(rank)`;
    checks that len() announced them."""
    out = []
    for r in range(world):
        L = sparkfeed.DataLoader(path, batch_size=batch_size, rank=r, world_size=world,
                                 num_workers=workers, columns=COLS, **kw)
        L.load_state_dict(state_of(r))
        assert L.dataset.epoch == 1
        announced = len(L)
        out.append([b["id"].tolist() for b in L])
        assert len(out[-1]) == announced
    return out


def check_rest(seen, rest, batch_size, drop_last, dropped_before=0):
    """The invariants of a resume: no sample twice; every one without drop_last; new batch size
    (one short batch per rank at most without drop_last); with it every rank as many full batches,
    and fewer than `dropped_before` (the first run's drop bound) + world x batch_size dropped."""
    got = seen + [i for batches in rest for b in batches for i in b]
    assert len(got) == len(set(got)) and set(got) <= set(range(N))
    sizes = [[len(b) for b in batches] for batches in rest]
    if drop_last:
        assert all(s == batch_size for per_rank in sizes for s in per_rank), sizes
        assert len({len(per_rank) for per_rank in sizes}) == 1, sizes
        assert N - len(got) < dropped_before + len(rest) * batch_size
    else:
        assert sorted(got) == list(range(N))
        assert all(0 < s <= batch_size for per_rank in sizes for s in per_rank), sizes
        assert all(sum(s != batch_size for s in per_rank) <= 1 for per_rank in sizes), sizes


def old_format(state):
    """What sparkfeed saved before the batch size was recorded apart: no `batch_size`, and the batch
    size inside the fingerprint, between shuffle_buffer and drop_last."""
    def one(st):
        if "batch_size" not in st:  # (saved in that format already)
            return dict(st)
        old = {k: v for k, v in st.items() if k != "batch_size"}
        old["fingerprint"] = re.sub(r"\|(True|False)((?:\|block runs<=\d+)?)$", rf"|{st['batch_size']}|\1\2",
                                    st["fingerprint"])
        return old
    out = one(state)
    if state.get("scope") == "global":
        out["ranks"] = [one(st) for st in state["ranks"]]
    return out


# (world, workers) saved -> (world, workers) resumed, batch size saved -> resumed, what is loaded
CASES = [
    (1, 0, 1, 0, 16, 40, "own"),
    (1, 2, 1, 2, 32, 12, "own"),
    (2, 0, 2, 2, 20, 50, "own"),     # each rank its own state, more workers
    (2, 2, 2, 0, 24, 10, "list"),    # the list of every rank's state
    (3, 1, 3, 1, 10, 25, "global"),  # state_dict(all_ranks=True)
    (4, 0, 2, 0, 16, 32, "list"),    # 4 x 16 -> 2 x 32: the global batch kept
    (2, 2, 3, 1, 20, 15, "global"),  # more ranks, smaller batches
]


@pytest.mark.parametrize("world0,workers0,world1,workers1,b0,b1,load", CASES)
@pytest.mark.parametrize("shuffle,drop_last", [(False, False), (True, False), (True, True)])
def test_a_resume_with_another_batch_size_delivers_exactly_the_rest(pq_path, world0, workers0, world1, workers1,
                                                                    b0, b1, load, shuffle, drop_last):
    kw = dict(shuffle=shuffle, seed=5, drop_last=drop_last)
    seen, states = save(pq_path, world0, workers0, b0, 3, **kw)
    pick = {"own": lambda r: states[r], "list": lambda r: states,
            "global": lambda r: plain(progress.global_state(states))}[load]
    rest = resume(pq_path, pick, world1, workers1, b1, **kw)
    check_rest(seen, rest, b1, drop_last, dropped_before=world0 * b0)
    assert all(st["batch_size"] == b0 for st in states)  # recorded apart from the fingerprint


def _old_state_after(path: str, batch_size: int, batches: int, **kw) -> tuple[list, list, dict]:
    """(a whole epoch's ids, the first `batches` batches' ids, the state saved after them in the
    earlier format)."""
    full = [i for b in sparkfeed.DataLoader(path, batch_size=batch_size, **kw) for i in b["id"].tolist()]
    L = sparkfeed.DataLoader(path, batch_size=batch_size, **kw)
    it = iter(L)
    head = [i for _ in range(batches) for i in next(it)["id"].tolist()]
    old = plain(old_format(L.state_dict()))
    it.close()
    return full, head, old


@pytest.mark.parametrize("workers", [0, 2])
def test_a_state_saved_before_the_batch_size_was_recorded_still_loads(pq_path, workers):
    """A state of the earlier format (batch size only inside the fingerprint): with the same batch
    size the interrupted order continues exactly, as before; with another, exactly the rest."""
    kw = dict(shuffle=True, seed=9, num_workers=workers, columns=COLS)
    full, head, old = _old_state_after(pq_path, 16, 5, **kw)
    assert "batch_size" not in old and "|16|False" in old["fingerprint"]
    same = sparkfeed.DataLoader(pq_path, batch_size=16, **kw)
    same.load_state_dict(old)
    assert head + [i for b in same for i in b["id"].tolist()] == full
    other = sparkfeed.DataLoader(pq_path, batch_size=24, **kw)
    other.load_state_dict(old)
    check_rest(head, [[b["id"].tolist() for b in other]], 24, False)


def test_an_old_gathered_state_loads_with_another_batch_size_in_any_world(pq_path):
    """The earlier format's state_dict(all_ranks=True) of 2 ranks: on 2 ranks and on 3, drop_last."""
    kw = dict(shuffle=True, seed=2, drop_last=True)
    seen, states = save(pq_path, 2, 0, 20, 4, **kw)
    old = plain(old_format(progress.global_state(states)))
    assert all("batch_size" not in st for st in [old] + old["ranks"])
    for world in (2, 3):
        rest = resume(pq_path, lambda r: old, world, 0, 30, **kw)
        check_rest(seen, rest, 30, True, dropped_before=2 * 20)
    rest = resume(pq_path, lambda r: old, 2, 0, 20, **kw)  # the same batch size: each rank its own lanes
    check_rest(seen, rest, 20, True, dropped_before=2 * 20)
    with pytest.raises(ValueError, match="other settings"):
        sparkfeed.DataLoader(pq_path, batch_size=30, shuffle=True, seed=2, drop_last=False,
                             rank=0, world_size=2).load_state_dict(old)


def test_an_old_state_of_a_run_capped_shuffle_loads_with_another_batch_size(tmp_path, monkeypatch):
    """The earlier format's fingerprint ends in the run cap where it cut the epoch ('|block runs<=N'):
    its batch size is read before it, and the state loads with the same batch size (the same
    order) or another (exactly the rest)."""
    from sparkfeed import shuffle

    root = str(tmp_path / "tiny")
    dsutil.write_parquet(root, dsutil.table(200), 5, 5)  # 40 shards: 40 runs
    monkeypatch.setattr(shuffle, "MAX_BLOCK_RUNS", 8)
    kw = dict(shuffle=True, seed=3, columns=COLS)
    full, head, old = _old_state_after(root, 10, 7, **kw)
    assert old["fingerprint"].endswith("|10|False|block runs<=8")
    same = sparkfeed.DataLoader(root, batch_size=10, **kw)
    same.load_state_dict(old)
    assert head + [i for b in same for i in b["id"].tolist()] == full
    other = sparkfeed.DataLoader(root, batch_size=16, **kw)
    other.load_state_dict(old)
    rest = [b["id"].tolist() for b in other]
    assert sorted(head + [i for b in rest for i in b]) == list(range(200))
    assert [len(b) for b in rest] == [16] * 8 + [2]


def test_only_the_batch_size_may_change(pq_path):
    """Another batch size loads; every other setting still refuses the state, saying so."""
    kw = dict(shuffle=True, seed=4, shuffle_buffer=100, drop_last=False, columns=COLS)
    L = sparkfeed.DataLoader(pq_path, batch_size=16, **kw)
    it = iter(L)
    next(it)
    state = plain(L.state_dict())
    it.close()
    sparkfeed.DataLoader(pq_path, batch_size=32, **kw).load_state_dict(state)
    for change in (dict(seed=5), dict(shuffle=False), dict(shuffle_buffer=50), dict(drop_last=True),
                   dict(filter=[("id", "<", 500)])):
        with pytest.raises(ValueError, match=r"other settings .*drop_last \(batch_size may differ\)"):
            sparkfeed.DataLoader(pq_path, batch_size=32, **{**kw, **change}).load_state_dict(state)
        with pytest.raises(ValueError, match="other settings"):
            sparkfeed.DataLoader(pq_path, batch_size=16, **{**kw, **change}).load_state_dict(old_format(state))


def test_a_states_batch_size_is_checked(pq_path):
    """A recorded batch size that is not a positive integer, an old state whose fingerprint holds
    none, and a list of states of different batch sizes are refused, naming what came."""
    _, states = save(pq_path, 2, 0, 16, 1)
    L = sparkfeed.DataLoader(pq_path, batch_size=16, rank=0, world_size=2, columns=COLS)
    for bad in (0, True, "16", None):
        broken = dict(states[0], batch_size=bad)
        if bad is None:
            broken = {k: v for k, v in broken.items() if k != "batch_size"}
            with pytest.raises(ValueError, match=r"has no batch_size and its fingerprint does not hold one"):
                L.load_state_dict(broken)
            continue
        with pytest.raises(ValueError, match=rf"batch_size={re.escape(repr(bad))} is not a positive integer"):
            L.load_state_dict(broken)
    _, other = save(pq_path, 2, 0, 32, 1)
    with pytest.raises(ValueError, match=r"mixes states of .*batch sizes: .*batch sizes \[16, 32\]"):
        L.load_state_dict([states[0], other[1]])


def test_ranks_with_different_batch_sizes_are_named_when_the_state_is_gathered(pq_path):
    """The batch size is no longer in the fingerprint, so the gathered state names it itself:
    ranks cutting the epoch in other units overlap."""
    states = [sparkfeed.DataLoader(pq_path, batch_size=16 * (r + 1), rank=r, world_size=2).state_dict()
              for r in range(2)]
    with pytest.raises(ValueError, match=r"batch_size by rank: \[16, 32\].*same batch_size"):
        progress.global_state(states)


def test_for_trainer_len_counts_the_batches_before_the_save_and_the_new_sized_rest(pq_path):
    """Lightning stops a resumed epoch at len(), counting the batches done before the checkpoint
    itself (in the old size): len() is those plus the rest's batches of the new size, so the epoch
    ends with its last new batch; the next epoch's len() is all new-size batches."""
    kw = dict(shuffle=True, seed=3, columns=COLS, drop_last=True)
    first = sparkfeed.DataLoader(pq_path, batch_size=25, **kw).for_trainer()
    it = iter(first)
    head = [i for _ in range(5) for i in next(it)["id"].tolist()]
    saved = plain(first.state_dict())
    it.close()
    assert saved["batches"] == 5
    trainer = sparkfeed.DataLoader(pq_path, batch_size=40, **kw).for_trainer()
    trainer.load_state_dict(saved)
    bound = len(trainer)
    assert bound == 5 + (N - 5 * 25) // 40
    rest = []
    for b in trainer:
        rest.append(b["id"].tolist())
        assert len(trainer) == bound  # while the resumed epoch runs
    assert len(rest) == bound - 5
    check_rest(head, [rest], 40, True)
    trainer.set_epoch(2)
    assert len(trainer) == N // 40


# ---------------------------------------------------------------- real torch.distributed (gloo, 2 ranks)

def _ddp_rank(rank: int, world: int, port: int, path: str, out: str) -> None:
    """One DDP rank: 3 batches of 20 of epoch 1, state_dict(all_ranks=True) (a collective), then a new loader of
    batch 30 with 2 workers resumes from it; writes what each part delivered."""
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=world)
    try:
        kw = dict(shuffle=True, seed=6, drop_last=True, columns=COLS)
        L = sparkfeed.DataLoader(path, batch_size=20, **kw)
        L.set_epoch(1)
        it = iter(L)
        head = [i for _ in range(3) for i in next(it)["id"].tolist()]
        state = plain(L.state_dict(all_ranks=True))
        it.close()
        R = sparkfeed.DataLoader(path, batch_size=30, num_workers=2, **kw)
        R.load_state_dict(state)
        rest = [b["id"].tolist() for b in R]
        with open(os.path.join(out, f"rank-{rank}.json"), "w") as f:
            json.dump({"head": head, "rest": rest, "state": state}, f)
    finally:
        torch.distributed.destroy_process_group()



@pytest.mark.distributed
def test_a_ddp_resume_with_another_batch_size(pq_path, tmp_path):
    """Under gloo: both ranks load the gathered state with batch 30 (saved with 20) and get the
    same number of full batches, no sample twice; the same state resumes on one rank with batch 45."""
    torch.multiprocessing.spawn(_ddp_rank, args=(2, dsutil.free_port(), pq_path, str(tmp_path)), nprocs=2)
    ranks = [json.load(open(tmp_path / f"rank-{r}.json")) for r in range(2)]
    seen = [i for r in ranks for i in r["head"]]
    check_rest(seen, [r["rest"] for r in ranks], 30, True, dropped_before=2 * 20)
    state = ranks[0]["state"]
    assert state == ranks[1]["state"] and state["batch_size"] == 20
    alone = resume(pq_path, lambda r: state, 1, 0, 45, shuffle=True, seed=6, drop_last=True)
    check_rest(seen, alone, 45, True, dropped_before=2 * 20)


def test_every_ranks_states_saved_at_different_steps_lose_less_than_a_round_with_drop_last(pq_path):
    """The list of every rank's state, the same world size, another batch size, drop_last: ranks
    that saved at different steps (rank 1 before its first batch, rank 2 at the end of its share)
    had each rank cut its own rest down to the smallest rest, 0, and the whole rest (300 of 600)
    was dropped; now the rest is pooled and re-split, fewer than world x batch size dropped.
    Found by tests/unit/test_epoch_properties.py."""
    seen, states = save(pq_path, 3, 0, 50, [2, 0, 4], drop_last=True)  # 3 ranks x 4 batches of 50 (600 samples)
    rest = resume(pq_path, lambda r: states, 3, 0, 30, drop_last=True)
    check_rest(seen, rest, 30, drop_last=True)
    assert N - len(seen) - sum(len(b) for batches in rest for b in batches) < 3 * 30
