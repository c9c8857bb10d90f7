"""The loader driven as PyTorch Lightning (2.x) and DDP scripts drive one, without importing them:
the same calls, in the same order, on the same ranks. Lightning's fit loop calls
`dataloader.sampler.set_epoch` (`_set_sampler_epoch`), `iter()` before it at a fit's or resume's
start, stops an epoch at `len()` counting the batches done before a checkpoint itself, and saves
rank 0's `state_dict()` for every rank to load. Each test is a defect found by running real
Lightning (epochs in one order; a resumed epoch cut short; a DDP resume refused on rank 1)."""

import itertools
import json
import os
import socket

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
    """The calls of Lightning's fit loop on a train loader: `len()` (limits), `load_state_dict` of
    the checkpoint, `iter()`, `len()` again (the epoch's bound, kept for the whole fit), then per
    epoch `sampler.set_epoch`, `iter()` (not for the epoch a fit starts or resumes in) and batches
    up to the bound, counting those the checkpoint says were done. With `stop_after`, a checkpoint
    after that many batches: (each epoch's ids, {"loader": state_dict(), "epoch", "done"})."""
    len(loader)
    start, done = 0, 0
    if state is not None:
        loader.load_state_dict(state["loader"])
        start, done = state["epoch"], state["done"]
    it = iter(loader)
    bound = len(loader)
    if state is not None and done >= bound:  # saved at an epoch's last batch: the fit goes on with the next
        start, done = start + 1, 0
    seen, step = [], 0
    for epoch in range(start, epochs):
        set_sampler_epoch(loader, epoch)
        if epoch > start:
            it, done = iter(loader), 0
        seen.append([])
        while done < min(bound, len(loader)):
            seen[-1] += ids(next(it))
            done, step = done + 1, step + 1
            if step == stop_after:
                return seen, {"loader": loader.state_dict(), "epoch": epoch, "done": done}
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
    with pytest.raises(ValueError, match="`epoch` should be a non-negative integer"):
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_a_ddp_fit_resumed_from_rank_0s_checkpoint_delivers_each_sample_once(pq_path, tmp_path):
    """Lightning writes rank 0's state_dict() and loads it on every rank: rank 1 refused it
    ("`state` is rank 0's, but this is rank 1"). for_trainer()'s state holds every rank's."""
    torch.multiprocessing.spawn(_ddp_rank, args=(2, _free_port(), pq_path, str(tmp_path)), nprocs=2)
    ranks = [json.load(open(tmp_path / f"rank-{r}.json")) for r in range(2)]
    epoch0 = [i for r in ranks for i in r["head"][0] + r["rest"][0]]
    epoch1 = [i for r in ranks for i in r["rest"][1]]
    assert all(len(r["head"][0]) == 5 * BATCH for r in ranks)
    assert sorted(epoch0) == list(range(N)) and sorted(epoch1) == list(range(N))
