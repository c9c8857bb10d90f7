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
  batches done before the checkpoint itself and stops the epoch at `len()`. It takes `len()` once
  per fit, as every later epoch's bound too, so after a resume on fewer ranks or with a smaller
  batch size (before + rest < this world's whole epoch) `len()` is the whole epoch, not before + rest
  (which cut every later epoch short: 30 of 40 batches). It also takes `len()` once before the
  state loads, and stops at the smaller: on more ranks or a larger batch size (before + rest > the
  whole epoch) a resumed epoch can end early, and after a checkpoint at an epoch's end on fewer
  ranks the next epoch can (Lightning counts it from the old epoch's batches): warned at the load.
"""

from __future__ import annotations

import datetime
import logging
import sys
from typing import TYPE_CHECKING, Callable

import torch

from . import progress

if TYPE_CHECKING:  # (loader.py imports this module)
    from .loader import DataLoader

__all__ = ["EpochSampler", "TrainerLoader"]
log = logging.getLogger(__name__)
_gathered = [0]  # gathered state_dict() calls of this process that every rank made: the same on every rank
STATE_KIND = "sparkfeed.TrainerLoader"
GATHER_TIMEOUT_S = 300.0  # how long a gathered state_dict() waits for every rank to call it


def checked_gather_timeout(value) -> float:
    """`gather_timeout` as seconds, or a ValueError saying what was expected."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"`gather_timeout` should be a positive number of seconds, but got {value!r}")
    return float(value)


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

    def __init__(self, loader: "DataLoader", gather_timeout: float = GATHER_TIMEOUT_S):
        from .loader import DataLoader

        if not isinstance(loader, DataLoader):
            raise ValueError(f"`loader` should be a sparkfeed.DataLoader, but got {type(loader).__name__}")
        self.loader = loader
        self.gather_timeout = checked_gather_timeout(gather_timeout)
        self._before = 0  # batches of the loaded epoch delivered before its state was saved
        self._whole = 0  # batches of a whole epoch at this world and batch size (set at a load)
        self._count = 0  # batches the current iteration has delivered
        self._iteration = 0  # which iteration is current (an older one no longer counts)
        self.end_of_dataloader, self.remainder = False, 0  # what Accelerate reads of its active loader

    def __getattr__(self, name):
        if name == "loader":  # (not set yet: a half-made object)
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __setattr__(self, name: str, value) -> None:
        """An attribute of the wrapped loader (`num_workers`, `timeout`, `batch_size`, ...) is set
        there, under its rules (`loaderargs.checked`): set here, it only hid the loader's (a
        `num_workers` read back as set while the loader used its own). Others are this object's."""
        loader = self.__dict__.get("loader")
        if loader is not None and name not in self.__dict__ and name not in type(self).__dict__ \
                and (name in vars(loader) or hasattr(type(loader), name)):
            setattr(loader, name, value)
        else:
            super().__setattr__(name, value)

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
        followed `iter()` (the order of Lightning's fit loop). Under Accelerate it is the active
        dataloader while it runs (`_accelerate_gradient_state`)."""
        if not self._resuming():
            self._before = 0
        self._iteration += 1
        self._count, mine = 0, self._iteration
        gradient = _accelerate_gradient_state()
        self.end_of_dataloader, self.remainder = False, 0  # never padded: nothing to drop
        if gradient is not None:
            gradient._add_dataloader(self)
        try:
            batches, last = iter(self.loader), None
            for done, batch in enumerate(batches, 1):
                last = len(self.loader) if last is None else last  # this iteration's batches, as it started
                self.end_of_dataloader = done >= last
                if mine == self._iteration:
                    self._count += 1
                yield batch
        finally:
            if gradient is not None:
                gradient._remove_dataloader(self)

    def __len__(self) -> int:
        """Batches of the whole epoch; during a resumed one the larger of a whole epoch here and those
        delivered before the state was saved plus those left (they differ after a world or batch size change)."""
        if not self._before:
            return len(self.loader)
        return max(self._whole, self._before + len(self.loader))

    def state_dict(self) -> dict:
        """Every rank's state (gathered over torch.distributed when there are several ranks: a
        collective) and the batches of this epoch delivered so far."""
        loader = self.loader
        return {"kind": STATE_KIND, "batches": self._before + self._count,
                "loader": loader.state_dict(all_ranks=loader.dataset.world_size > 1,
                                            gather_timeout=self.gather_timeout)}

    def load_state_dict(self, state) -> None:
        """Resume from `state_dict()` (or any state `DataLoader.load_state_dict` takes)."""
        if isinstance(state, dict) and state.get("kind") == STATE_KIND:
            batches = state.get("batches")
            if isinstance(batches, bool) or not isinstance(batches, int) or batches < 0:
                raise ValueError(f"`state` should come from TrainerLoader.state_dict(), but its "
                                 f"batches={batches!r} is not a non-negative integer")
            self.loader.load_state_dict(state["loader"])
            self._before = batches
            self._note_cut(batches)
        else:
            self.loader.load_state_dict(state)
            self._before = 0
        self._count, self._iteration = 0, self._iteration + 1

    def _note_cut(self, before: int) -> None:
        """A warning where Lightning can end this resumed epoch (or the next) early: it bounds each
        epoch by the whole epoch's `len()` taken before the load and counts the `before` batches itself."""
        loader = self.loader
        self._whole = progress.EpochProgress(loader._fresh_lanes(), loader.batch_size).batches_left()
        rest, whole, path, rank = len(loader), self._whole, loader.dataset.path, loader.dataset.rank
        if rest and before + rest > whole:
            log.warning("%s: resumed with %d batches done before the checkpoint and %d left on rank %d, more "
                        "than a whole epoch here (%d: more ranks or a larger batch size than when saved). "
                        "Lightning bounds the epoch by the whole epoch and counts the batches done itself, "
                        "so it can end this epoch after %d more batches, leaving up to %d of this rank's "
                        "undelivered", path, before, rest, rank, whole, max(0, whole - before),
                        min(rest, before + rest - whole))
        elif not rest and 0 < before < whole:
            log.warning("%s: resumed at the end of an epoch of %d batches, fewer than a whole epoch here (%d: "
                        "fewer ranks or a smaller batch size than when saved). Lightning counts the next "
                        "epoch's batches from %d, so it can end that epoch after %d of its %d batches",
                        path, before, whole, before, whole - before, whole)


def _accelerate_gradient_state():
    """Accelerate's `GradientState` where an `Accelerator` exists in this process, else None.

    `accelerator.accumulate(model)` syncs gradients at the last batch of the active dataloader
    (`GradientState.end_of_dataloader`, `sync_with_dataloader=True`, its default), and it knows only
    the loaders it prepared itself (it hands a sparkfeed loader back unchanged). Without this, with
    `gradient_accumulation_steps` not dividing the epoch's batches, the last batches' gradients of
    an epoch were carried into the next epoch's first step, and those of the last epoch were
    never applied. A TrainerLoader being iterated registers as Accelerate's own loaders do
    (`end_of_dataloader` at its last batch, `remainder` 0: no sample is ever padded)."""
    module = sys.modules.get("accelerate.state")
    state = getattr(module, "GradientState", None)
    if state is None or not getattr(state, "_shared_state", None):  # no Accelerator made
        return None
    gradient = state()
    if not all(callable(getattr(gradient, name, None)) for name in ("_add_dataloader", "_remove_dataloader")):
        return None  # (an Accelerate without them)
    return gradient


def every_rank_arrives(timeout: float, path: str) -> None:
    """Every rank checks in at the process group's store before a gathered state_dict(), so that a
    rank calling it alone (a checkpoint saved on rank 0 only; Accelerate's save_state on the main
    process only) gets an error after `timeout` s, not a wait for the process group's time-out
    (30 minutes for gloo) or forever."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return  # the gather says what is missing
    try:
        store = dist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):
        return  # (a torch without it: the gather alone)
    world, key = dist.get_world_size(), f"sparkfeed/state_dict/{_gathered[0] + 1}"
    if store.add(key, 1) == world:
        store.set(key + "/all", "1")
    try:
        store.wait([key + "/all"], datetime.timedelta(seconds=timeout))
    except RuntimeError:  # (torch.distributed.DistStoreError: the wait timed out)
        if not _withdrawn(store, key, world):  # the last rank came meanwhile: they gather, so this one does
            _gathered[0] += 1
            return
        raise ValueError(
            f"{path}: state_dict(all_ranks=True) (and for_trainer().state_dict() over several ranks) "
            f"gathers every rank's state (a collective), but only {store.add(key, 0) + 1} of {world} "
            f"ranks called it within gather_timeout={timeout:g} s: call it on every rank, then save "
            "the result on one (Lightning's trainer.save_checkpoint calls it on every rank; call "
            "accelerator.save_state on every process, not only the main one)") from None
    _gathered[0] += 1


def _withdrawn(store, key: str, world: int) -> bool:
    """Take a timed-out rank's check-in back, so that the ranks' next gathered call meets at the
    same key again (a refused call left on one rank's count paired its next call with the
    others' previous one); False where every rank had come by then (the count it takes back
    from is the world's), and the call goes ahead: the others are in the gather."""
    if store.add(key, -1) == world - 1:
        store.add(key, 1)
        return False
    return True
