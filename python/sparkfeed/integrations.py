"""What training frameworks that drive torch's `DataLoader` expect of a loader (Lightning, Accelerate).

Two pieces. `EpochSampler` is what `loader.sampler` returns: DDP scripts call
`loader.sampler.set_epoch(epoch)`, and Lightning's fit loop calls it through
`lightning.fabric.utilities.data._set_sampler_epoch`, which looks for `dataloader.sampler.set_epoch`;
without it every epoch had epoch 0's order. `TrainerLoader` (`DataLoader.for_trainer()`) is the
loader as Lightning's checkpointing reads it (lightning/pytorch/loops/fit_loop.py, 2.x):

* `state_dict()` is called on every rank (`Trainer.save_checkpoint` dumps on all of them), rank 0
  writes the file, and every rank calls `load_state_dict` with that one state. So the state is
  gathered over torch.distributed (every rank's positions, which any rank can load);
* `iter()` comes before `set_epoch` at the start of a fit or a resume (`FitLoop.setup_data`, then
  `on_advance_start`), so the epoch is taken at the first `next()`, as torch's sampler takes it;
* `len()` is the whole epoch's batches, also while a resumed epoch runs: Lightning counts the
  batches done before the checkpoint itself and stops the epoch at `len()`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # (loader.py imports this module)
    from .loader import DataLoader

__all__ = ["EpochSampler", "TrainerLoader"]
STATE_KIND = "sparkfeed.TrainerLoader"


class EpochSampler:
    """`loader.sampler`: holds no indices (the loader plans its epoch itself); only `set_epoch`,
    which torch's `DistributedSampler` has and training loops and frameworks call on it."""

    def __init__(self, set_epoch: Callable[[int], None]):
        self._set_epoch = set_epoch

    def set_epoch(self, epoch: int) -> None:
        """The loader's `set_epoch(epoch)` (same value on every rank)."""
        self._set_epoch(epoch)


class TrainerLoader:
    """A `sparkfeed.DataLoader` as Lightning and Accelerate use a loader (see the module doc):
    `state_dict()` gathers every rank's state (a collective under torch.distributed: every rank
    calls it, as Lightning does), `len()` is the whole epoch, the epoch is taken at the first
    batch. Anything else (`stats()`, `batch_size`, `dataset`, ...) is the wrapped loader's."""

    def __init__(self, loader: "DataLoader"):
        from .loader import DataLoader

        if not isinstance(loader, DataLoader):
            raise ValueError(f"`loader` should be a sparkfeed.DataLoader, but got {type(loader).__name__}")
        self.loader = loader
        self._before = 0  # batches of the loaded epoch delivered before its state was saved
        self._count = 0  # batches the current iteration has delivered
        self._iteration = 0  # which iteration is current (an older one no longer counts)

    def __getattr__(self, name):
        if name == "loader":  # (not set yet: a half-made object)
            raise AttributeError(name)
        return getattr(self.loader, name)

    @property
    def sampler(self) -> EpochSampler:
        """`sampler.set_epoch(epoch)`, as Lightning's fit loop calls it before each epoch."""
        return EpochSampler(self.set_epoch)

    def set_epoch(self, epoch: int) -> None:
        """The loader's `set_epoch`; batches counted for this epoch restart unless it keeps a
        loaded state of that very epoch."""
        self.loader.set_epoch(epoch)
        if not self._resuming():
            self._before = 0
        self._count, self._iteration = 0, self._iteration + 1

    def _resuming(self) -> bool:
        return self.loader._pending is not None

    def __iter__(self):
        return self._iterate()

    def _iterate(self):
        """The loader's next iteration, begun at the first `next()`, after any `set_epoch` that
        followed `iter()` (the order of Lightning's fit loop)."""
        if not self._resuming():
            self._before = 0
        self._iteration += 1
        self._count, mine = 0, self._iteration
        for batch in self.loader:
            if mine == self._iteration:
                self._count += 1
            yield batch

    def __len__(self) -> int:
        """Batches of the whole epoch (during a resumed one: those delivered before the state was
        saved plus those left), as torch's loaders count them."""
        return self._before + len(self.loader)

    def state_dict(self) -> dict:
        """Every rank's state (gathered over torch.distributed when there are several ranks: a
        collective) and the batches of this epoch delivered so far."""
        loader = self.loader
        gather = loader.dataset.world_size > 1
        return {"kind": STATE_KIND, "batches": self._before + self._count,
                "loader": loader.state_dict(all_ranks=gather)}

    def load_state_dict(self, state) -> None:
        """Resume from `state_dict()` (or any state `DataLoader.load_state_dict` takes)."""
        if isinstance(state, dict) and state.get("kind") == STATE_KIND:
            batches = state.get("batches")
            if isinstance(batches, bool) or not isinstance(batches, int) or batches < 0:
                raise ValueError(f"`state` should come from TrainerLoader.state_dict(), but its "
                                 f"batches={batches!r} is not a non-negative integer")
            self.loader.load_state_dict(state["loader"])
            self._before = batches
        else:
            self.loader.load_state_dict(state)
            self._before = 0
        self._count, self._iteration = 0, self._iteration + 1

