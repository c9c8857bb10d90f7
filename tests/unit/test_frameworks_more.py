"""More of what training frameworks read of a loader: Hugging Face Accelerate's gradient
accumulation, which syncs at the last batch of the dataloader it is iterating
(`GradientState.end_of_dataloader`) and knew only the loaders it prepared itself. Found by
running Accelerate 1.15 under torchrun (2 CPU processes, gloo) with `gradient_accumulation_steps=3`
over 8 batches an epoch: the last 2 batches' gradients of each epoch were carried into the next
epoch's first step, and the last epoch's were never applied."""

import pytest

import dsutil
import sparkfeed

N, BATCH = 400, 25  # 16 batches per epoch on one rank
KW = dict(batch_size=BATCH, shuffle=True, seed=3, columns=["id", "score"], drop_last=True)


@pytest.fixture(scope="module")
def pq_path(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("frameworks_more") / "ds")
    dsutil.write_parquet(root, dsutil.table(N), 100, 25)
    return root


def ends(trainer, limit=None) -> list[bool]:
    """`end_of_dataloader` as each batch of one iteration is handed over (at most `limit` batches)."""
    out = []
    for batch in trainer:
        out.append(trainer.end_of_dataloader)
        if len(out) == limit:
            break
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_end_of_dataloader_marks_the_last_batch_of_each_iteration_and_of_a_resumed_one(pq_path, workers):
    """What Accelerate reads of its active loader: True at the last batch only, also when the
    iteration is the rest of a resumed epoch (its last batch, not the 16th)."""
    trainer = sparkfeed.DataLoader(pq_path, num_workers=workers, **KW).for_trainer()
    assert trainer.end_of_dataloader is False and trainer.remainder == 0
    trainer.set_epoch(0)
    assert ends(trainer) == [False] * 15 + [True]
    trainer.set_epoch(1)
    assert ends(trainer, limit=5) == [False] * 5
    saved = trainer.state_dict()
    again = sparkfeed.DataLoader(pq_path, num_workers=workers, **KW).for_trainer()
    again.load_state_dict(saved)
    again.set_epoch(1)
    assert ends(again) == [False] * 10 + [True]


def test_accelerate_syncs_gradients_at_each_epochs_last_batch(pq_path):
    """`accelerator.accumulate(model)` with 3 steps over 16 batches: syncs after batches 3, 6, ...,
    15 and at the epoch's last (16th), and the accumulation count starts again each epoch; before,
    it synced on every 3rd batch counted across epochs, never at an epoch's end."""
    pytest.importorskip("accelerate")
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    try:
        accelerator = Accelerator(cpu=True, gradient_accumulation_steps=3)
        model = torch.nn.Linear(1, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        trainer = sparkfeed.DataLoader(pq_path, **KW).for_trainer()
        model, optimizer, loader = accelerator.prepare(model, optimizer, trainer)
        assert loader is trainer  # handed back unchanged: it shards by rank itself
        synced = []
        for epoch in range(2):
            loader.set_epoch(epoch)
            for i, batch in enumerate(loader):
                with accelerator.accumulate(model):
                    accelerator.backward(model(batch["score"].float()[:, None]).mean())
                    optimizer.step()
                    optimizer.zero_grad()
                    if accelerator.sync_gradients:
                        synced.append((epoch, i))
            assert not accelerator.gradient_state.in_dataloader  # left when the iteration ends
        every = [2, 5, 8, 11, 14, 15]
        assert synced == [(e, i) for e in range(2) for i in every]
        for batch in loader:
            break  # a loop left early (Lightning stops at len(), a script breaks): no longer active
        assert not accelerator.gradient_state.in_dataloader
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
