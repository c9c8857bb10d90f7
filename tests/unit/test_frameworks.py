"""The loader driven as PyTorch Lightning (2.x) and DDP scripts drive one, without importing them:
the same calls, in the same order, on the same ranks. Lightning's fit loop calls
`dataloader.sampler.set_epoch` (`_set_sampler_epoch`), `iter()` before it at a fit's or resume's
start, stops an epoch at `len()` counting the batches done before a checkpoint itself, and saves
rank 0's `state_dict()` for every rank to load. Each test is a defect found by running real
Lightning (epochs in one order; a resumed epoch cut short; a DDP resume refused on rank 1)."""

import itertools
import json
import logging
import os

import pytest
import torch

import dsutil
import sparkfeed

N, BATCH = 400, 25  # 16 batches per epoch on one rank
KW = dict(batch_size=BATCH, shuffle=True, seed=3, columns=["id"], drop_last=True)


@pytest.fixture(scope="module")
def pq_path(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("frameworks") / "ds")
    dsutil.write_parquet(root, dsutil.table(N), 100, 25)
    return root


def ids(batch) -> list[int]:
    return batch["id"].tolist()


def set_sampler_epoch(dataloader, epoch: int) -> None:
    """lightning.fabric.utilities.data._set_sampler_epoch, as it reads a loader."""
    for holder in (dataloader, getattr(dataloader, "batch_sampler", None)):
        sampler = getattr(holder, "sampler", None)
        if callable(getattr(sampler, "set_epoch", None)):
            sampler.set_epoch(epoch)


def fit(loader, epochs: int, state=None, stop_after: int | None = None) -> tuple[list, dict | None]:
    """The calls of Lightning's fit loop (2.6) on a train loader: `len()` before the checkpoint
    loads (the limit), `load_state_dict`, `iter()`, `len()` again: the smaller is every epoch's bound
    for the whole fit. Lightning counts the batches the checkpoint says were done and, where they
    reach the bound, counts from 0 again; per epoch `sampler.set_epoch`, `iter()` (not for the epoch
    a fit starts or resumes in), batches up to the bound or the iterator's end. With `stop_after`, a
    checkpoint after that many batches: (each epoch's ids, {"loader", "epoch", "done"}), where a
    checkpoint at the bound is of the next epoch, as Lightning restores it."""
    limit = len(loader)
    start, done = 0, 0
    if state is not None:
        loader.load_state_dict(state["loader"])
        start, done = state["epoch"], state["done"]
    it = iter(loader)
    bound = min(len(loader), limit)
    if done >= bound:  # (epoch_loop.reset: batch_progress.reset_on_run)
        done = 0
    seen, step = [], 0
    for epoch in range(start, epochs):
        set_sampler_epoch(loader, epoch)
        if epoch > start:
            it, done = iter(loader), 0
        seen.append([])
        while done < bound:
            try:
                seen[-1] += ids(next(it))
            except StopIteration:
                break
            done, step = done + 1, step + 1
            if step == stop_after:
                at_end = done == bound
                return seen, {"loader": loader.state_dict(), "epoch": epoch + at_end, "done": done}
    return seen, None


# ---------------------------------------------------------------- set_epoch through loader.sampler

def test_sampler_set_epoch_gives_each_epoch_its_order(pq_path):
    """Lightning calls only `loader.sampler.set_epoch`; without it all epochs had epoch 0's order."""
    loader = sparkfeed.DataLoader(pq_path, **KW)
    seen, _ = fit(loader, 3)
    assert all(sorted(epoch) == list(range(N)) for epoch in seen)
    assert len({tuple(epoch) for epoch in seen}) == 3
    for epoch, got in enumerate(seen):
        alone = sparkfeed.DataLoader(pq_path, **KW)
        alone.set_epoch(epoch)
        assert got == [i for b in alone for i in ids(b)]


def test_sampler_set_epoch_after_iter_keeps_the_iteration_counted(pq_path):
    """Lightning calls iter() and then set_epoch(0): the iteration begun goes on, and state_dict()
    still counts what it delivered (a set_epoch that restarted the epoch reset it to nothing)."""
    loader = sparkfeed.DataLoader(pq_path, num_workers=2, **KW)
    it = iter(loader)
    loader.sampler.set_epoch(0)
    head = [i for b in itertools.islice(it, 5) for i in ids(b)]
    again = sparkfeed.DataLoader(pq_path, num_workers=2, **KW)
    again.load_state_dict(loader.state_dict())
    assert sorted(head + [i for b in again for i in ids(b)]) == list(range(N))
    with pytest.raises(ValueError, match=r"`epoch` should be an integer in \[0, 2\*\*63\)"):
        loader.sampler.set_epoch(-1)


def test_the_plain_loader_refuses_lightnings_resume_order_with_the_way_out(pq_path):
    """A resumed epoch's len() is its rest (documented), which Lightning, counting the batches done
    before the checkpoint itself, took for the whole: the epoch and every later one were cut
    short (33 of 40 batches in a real run). The order of its calls is refused, naming for_trainer()."""
    first = sparkfeed.DataLoader(pq_path, **KW)
    _, saved = fit(first, 2, stop_after=20)
    with pytest.raises(ValueError, match=r"sampler.set_epoch\(1\) came after iter\(\).*loader.for_trainer\(\)"):
        fit(sparkfeed.DataLoader(pq_path, **KW), 2, state=saved)


# ---------------------------------------------------------------- for_trainer(): Lightning's resume

@pytest.mark.parametrize("stop", [3, 20, 16])  # in epoch 0; in epoch 1; at epoch 0's last batch
@pytest.mark.parametrize("workers", [0, 2])
def test_a_fit_resumed_from_a_checkpoint_delivers_what_the_whole_fit_would(pq_path, stop, workers):
    """Stopped after `stop` batches and resumed from the checkpoint: exactly the uninterrupted fit's
    batches. Before, a checkpoint at an epoch's last batch resumed with no batch at all ("No
    training batches": its rest, 0, became every epoch's length)."""
    whole, _ = fit(sparkfeed.DataLoader(pq_path, num_workers=workers, **KW).for_trainer(), 3)
    head, saved = fit(sparkfeed.DataLoader(pq_path, num_workers=workers, **KW).for_trainer(), 3, stop_after=stop)
    saved = json.loads(json.dumps(saved))  # a checkpoint holds plain values
    loader = sparkfeed.DataLoader(pq_path, num_workers=workers, **KW).for_trainer()
    rest, _ = fit(loader, 3, state=saved)
    assert [i for e in head + rest for i in e] == [i for e in whole for i in e]
    assert len(loader) == N // BATCH


def test_for_trainer_checks_what_it_is_given(pq_path):
    with pytest.raises(ValueError, match="`loader` should be a sparkfeed.DataLoader, but got list"):
        sparkfeed.DataLoader(pq_path, **KW).for_trainer().__class__([])
    with pytest.raises(ValueError, match="`gather_timeout` should be a positive number of seconds, but got 0"):
        sparkfeed.DataLoader(pq_path, **KW).for_trainer(gather_timeout=0)
    trainer = sparkfeed.DataLoader(pq_path, **KW).for_trainer()
    state = trainer.state_dict()
    with pytest.raises(ValueError, match="batches=-1 is not a non-negative integer"):
        trainer.load_state_dict(dict(state, batches=-1))
    trainer.load_state_dict(state["loader"])  # a plain loader state loads too
    assert (trainer.batch_size, trainer.drop_last, len(trainer)) == (BATCH, True, N // BATCH)


# ---------------------------------------------------------------- Lightning under DDP (gloo, 2 ranks)

def _ddp_rank(rank: int, world: int, port: int, path: str, out: str) -> None:
    """One DDP rank as Lightning runs it: fit to a checkpoint after 5 batches (state_dict() on every
    rank, rank 0's kept), then a new fit resumed from rank 0's state on every rank."""
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=world)
    try:
        def make():
            return sparkfeed.DataLoader(path, num_workers=2, **KW).for_trainer()
        head, saved = fit(make(), 2, stop_after=5)
        box = [saved]
        torch.distributed.broadcast_object_list(box, src=0)  # every rank reads rank 0's checkpoint
        rest, _ = fit(make(), 2, state=box[0])
        with open(os.path.join(out, f"rank-{rank}.json"), "w") as f:
            json.dump({"head": head, "rest": rest}, f)
    finally:
        torch.distributed.destroy_process_group()



@pytest.mark.distributed
def test_a_ddp_fit_resumed_from_rank_0s_checkpoint_delivers_each_sample_once(pq_path, tmp_path):
    """Lightning writes rank 0's state_dict() and loads it on every rank: rank 1 refused it
    ("`state` is rank 0's, but this is rank 1"). for_trainer()'s state holds every rank's."""
    torch.multiprocessing.spawn(_ddp_rank, args=(2, dsutil.free_port(), pq_path, str(tmp_path)), nprocs=2)
    ranks = [json.load(open(tmp_path / f"rank-{r}.json")) for r in range(2)]
    epoch0 = [i for r in ranks for i in r["head"][0] + r["rest"][0]]
    epoch1 = [i for r in ranks for i in r["rest"][1]]
    assert all(len(r["head"][0]) == 5 * BATCH for r in ranks)
    assert sorted(epoch0) == list(range(N)) and sorted(epoch1) == list(range(N))


def _lone_rank(rank: int, world: int, port: int, path: str, out: str, how: str) -> None:
    """Accelerate's save_state called on the main process only (`how="trainer"`), or a plain
    loader's `state_dict(all_ranks=True)` inside `if rank == 0:` (`how="plain"`): rank 0 calls it
    alone, rank 1 goes on to the next collective (a barrier), as `accelerator.wait_for_everyone()`."""
    import datetime
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        loader = sparkfeed.DataLoader(path, **KW)
        trainer = loader.for_trainer()
        trainer.gather_timeout = 1.0  # a rank that never comes: no wait but this one
        if rank == 0:
            try:
                trainer.state_dict() if how == "trainer" else loader.state_dict(all_ranks=True, gather_timeout=1)
                got = "no error"
            except Exception as exc:  # (what the test checks)
                got = f"{type(exc).__name__}: {exc}"
            with open(os.path.join(out, "rank-0.txt"), "w") as f:
                f.write(got)
        torch.distributed.barrier()
        # the call fixed: on every rank it gathers (the refused one left no count behind)
        state = trainer.state_dict() if how == "trainer" else loader.state_dict(all_ranks=True, gather_timeout=30)
        with open(os.path.join(out, f"after-{rank}.json"), "w") as f:
            json.dump(state, f)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.parametrize("how", ["trainer", "plain"])
def test_a_state_dict_called_on_one_rank_only_is_refused_not_hung(pq_path, tmp_path, how):
    """`accelerator.save_state` calls state_dict() on the processes that call it and writes the main
    one's: called on the main process only, the gather waited for the other ranks forever (a
    real run under torchrun, 2 CPU processes, hung until killed). A plain loader's gathered state
    saved under `if rank == 0:` waited for the process group's time-out (here 60 s; gloo's
    default is 30 minutes). Now: a ValueError saying why, after `gather_timeout`; and once every
    rank calls it, it gathers (the refused call's check-in, left counted, paired rank 0's next
    call with the others' previous one, so it timed out again and the others hung in the gather)."""
    torch.multiprocessing.spawn(_lone_rank, args=(2, dsutil.free_port(), pq_path, str(tmp_path), how), nprocs=2)
    got = (tmp_path / "rank-0.txt").read_text()
    assert got.startswith("ValueError: ") and "only 1 of 2 ranks called it within gather_timeout=1 s" in got
    assert "call it on every rank" in got
    after = [json.load(open(tmp_path / f"after-{r}.json")) for r in range(2)]
    assert after[0] == after[1] and "global" in json.dumps(after[0])


def test_gather_timeout_is_checked_before_anything_is_gathered(pq_path):
    loader = sparkfeed.DataLoader(pq_path, **KW)
    for bad in (0, -1.0, True, "30", float("nan")):
        with pytest.raises(ValueError, match="`gather_timeout` should be a positive number of seconds"):
            loader.state_dict(all_ranks=True, gather_timeout=bad)
    assert loader.state_dict(all_ranks=True, gather_timeout=0.5)["scope"] == "global"  # one rank: nothing to wait for


# ---------------------------------------------------------------- for_trainer(): another world or batch size

def _two_rank_state(pq_path, stop: int) -> dict:
    """What for_trainer().state_dict() holds after `stop` batches on each of 2 ranks: every rank's state."""
    states = []
    for rank in range(2):
        loader = sparkfeed.DataLoader(pq_path, rank=rank, world_size=2, **KW)
        _, saved = fit(loader, 2, stop_after=stop)
        states.append(loader.state_dict())
    return {"state": {"kind": sparkfeed.integrations.STATE_KIND, "batches": saved["done"], "loader": states},
            "epoch": saved["epoch"], "done": saved["done"]}


def _head(pq_path, stop: int) -> list[int]:
    out = []
    for rank in range(2):
        out += fit(sparkfeed.DataLoader(pq_path, rank=rank, world_size=2, **KW), 2, stop_after=stop)[0][0]
    return out


@pytest.mark.parametrize("world, batch", [(1, BATCH), (2, 5)])
def test_a_resume_on_fewer_ranks_or_smaller_batches_keeps_every_later_epoch_whole(pq_path, world, batch):
    """Saved on 2 ranks after 3 of 8 batches, resumed on 1 rank, or on 2 with batches of 5: the
    rest of the epoch, then whole epochs. Lightning takes len() once per fit as every epoch's bound,
    and len() was before + rest (3 + 10 on 1 rank), which cut every later epoch (13 of 16 batches)."""
    saved = _two_rank_state(pq_path, 3)
    saved = {"loader": json.loads(json.dumps(saved["state"])), "epoch": saved["epoch"], "done": saved["done"]}
    rest = [[] for _ in range(2)]
    for rank in range(world):
        loader = sparkfeed.DataLoader(pq_path, **dict(KW, batch_size=batch), rank=rank,
                                      world_size=world).for_trainer()
        for epoch, got in enumerate(fit(loader, 2, state=saved)[0]):
            rest[epoch] += got
        assert len(loader) == N // world // batch
    assert sorted(_head(pq_path, 3) + rest[0]) == list(range(N))
    assert sorted(rest[1]) == list(range(N))


def test_a_resume_lightning_would_cut_short_is_warned_of(pq_path, caplog):
    """On more ranks (2 -> 4) before + rest exceeds a whole epoch there: Lightning ends the resumed
    epoch at the whole epoch's count (4 - 3 = 1 batch of 2 left); at an epoch's end on fewer
    ranks (2 -> 1) it counts the next epoch from the old epoch's 8 batches (8 of 16). Both warned."""
    saved = _two_rank_state(pq_path, 3)
    with caplog.at_level(logging.WARNING, logger="sparkfeed.integrations"):
        loader = sparkfeed.DataLoader(pq_path, **KW, rank=0, world_size=4).for_trainer()
        seen, _ = fit(loader, 1, state={"loader": saved["state"], "epoch": 0, "done": 3})
    assert len(seen[0]) == 1 * BATCH
    assert "3 batches done before the checkpoint and 2 left on rank 0, more than a whole epoch here (4" \
        in caplog.text and "after 1 more batches, leaving up to 1 of this rank's undelivered" in caplog.text
    caplog.clear()
    end = _two_rank_state(pq_path, 8)
    assert (end["epoch"], end["done"]) == (1, 8)
    with caplog.at_level(logging.WARNING, logger="sparkfeed.integrations"):
        loader = sparkfeed.DataLoader(pq_path, **KW).for_trainer()
        seen, _ = fit(loader, 2, state={"loader": end["state"], "epoch": 1, "done": 8})
    assert [len(e) for e in seen] == [8 * BATCH]
    assert "resumed at the end of an epoch of 8 batches, fewer than a whole epoch here (16" in caplog.text
