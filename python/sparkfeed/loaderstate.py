"""`DataLoader`'s epochs and saved state: `set_epoch`, `len()`, `state_dict()` and
`load_state_dict()`, as a base class of `loader.DataLoader` (moved out of loader.py by job).

What it reads of the loader: `dataset`, `batch_size`, `_workers`, `_engine`, `_progress` (the
epoch being delivered), `_pending` (the lanes a resume starts from), `_began_resumed`,
`_changes`, and `_own_process` / `_drop_next`.
"""

from __future__ import annotations

from . import mixstate, progress
from . import shuffle as shuffling
from .integrations import GATHER_TIMEOUT_S, EpochSampler, TrainerLoader, checked_gather_timeout
from .resumecheck import gather, settings_differ


class LoaderState:
    """The epoch and state methods of `DataLoader` (see the module's docstring)."""

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` at the next iteration (same value on every rank). A state loaded
        for this very epoch (`load_state_dict`, not yet iterated) is kept, so the usual loop after
        a restart, `for epoch in range(saved_epoch, E): loader.set_epoch(epoch)`, goes on where the
        epoch stopped instead of delivering its first samples again; another epoch drops it."""
        kept = self._pending if epoch == self.dataset.epoch else None
        unstarted = self._progress is not None and not self._progress.ended and not any(self._progress.delivered)
        if kept is None and unstarted and self._began_resumed and epoch == self.dataset.epoch:
            kept = self._progress.lanes  # an iteration of the loaded state made and not started: still to come
        self.dataset.set_epoch(epoch)
        self._progress, self._pending, self._epoch_set = None, kept, True
        self._changes += 1  # an iteration made before this and not started yet restarts (`_deliver`)

    @property
    def sampler(self) -> EpochSampler:
        """What `loader.sampler.set_epoch(epoch)` finds (DDP scripts; Lightning's fit loop calls it
        before each epoch): this loader's `set_epoch`, except that an iteration of that epoch
        already begun is kept (Lightning calls `iter()` before it at a fit's or resume's start)."""
        return EpochSampler(self._set_epoch_unless_begun)

    def _set_epoch_unless_begun(self, epoch: int) -> None:
        running = self._progress
        if running is not None and not running.ended and self._began_resumed and not any(running.delivered):
            raise ValueError(
                f"{self.dataset.path}: sampler.set_epoch({epoch}) came after iter() of an epoch resumed from a "
                "loaded state (the order of Lightning's fit loop): that iteration cannot change epoch, and "
                "len() counts only its rest, so a trainer would cut the epoch short. Hand the trainer "
                "loader.for_trainer() (len() the whole epoch, state_dict() every rank's), or call "
                "set_epoch before iter()")
        if running is not None and not running.ended and self.dataset.epoch == epoch:
            return  # the iteration of this epoch goes on, and state_dict() keeps counting it
        self.set_epoch(epoch)

    def for_trainer(self, gather_timeout: float = GATHER_TIMEOUT_S) -> TrainerLoader:
        """This loader as Lightning and Accelerate use one (`integrations.TrainerLoader`): its
        state_dict() gathers every rank's state (refused after `gather_timeout` s unless every rank
        calls it), len() is the whole epoch, even a resumed one."""
        return TrainerLoader(self, gather_timeout)

    def _fresh_lanes(self) -> list:
        ds = self.dataset
        spans = self._engine.rank_spans(ds.rank, ds.world_size, self.batch_size, ds.drop_last)
        return self._engine.lanes(spans, self._workers, self.batch_size)

    def _current(self) -> progress.EpochProgress:
        """The epoch's progress: the one being delivered, else the one the next iteration starts."""
        if self._progress is not None:
            return self._progress
        return progress.EpochProgress(self._pending or self._fresh_lanes(), self.batch_size)

    @property
    def drop_last(self) -> bool:
        """As torch's `DataLoader.drop_last` (tools that inspect a loader read it): the dataset's."""
        return self.dataset.drop_last

    def __len__(self) -> int:
        """Batches of the iteration being delivered, as it started (a resumed epoch's rest stays its
        rest while it is delivered: `i == len(loader) - 1` finds its last batch), else of the next."""
        running = self._progress
        if self._pending is None and running is not None and not running.ended:
            return running.batches()
        return progress.EpochProgress(self._pending or self._fresh_lanes(), self.batch_size).batches_left()

    def _fingerprint(self) -> str:
        """The settings a saved state must match. The run cap of the default shuffle block is
        named only where it changes the order, so states saved before it existed still load
        wherever their order is unchanged (and are refused where it is not). The batch size is
        not one of them: the state records it apart (a resume may change it), and older states'
        fingerprints, which held it, are read without it (`progress._settings_and_batch_size`)."""
        ds = self.dataset
        capped = f"|block runs<={shuffling.MAX_BLOCK_RUNS}" if self._engine.runs_capped else ""
        # a seed outside [0, 2**32) orders by all its bits now (`shuffle.key_words`): states saved
        # before, when its low 32 bits alone counted, are refused rather than resumed in another order
        seed = ds.seed if shuffling.narrow_seed(ds.seed) else f"{ds.seed} (all 64 bits)"
        return f"{self._engine.identity()}|{ds.shuffle}|{seed}|{ds.shuffle_buffer}|{ds.drop_last}{capped}"

    def state_dict(self, all_ranks: bool = False, gather_timeout: float = GATHER_TIMEOUT_S) -> dict:
        """Plain values: the epoch and, per lane, the stream positions not delivered yet.

        `all_ranks=True` gathers every rank's state into one (under an initialised
        torch.distributed; without one, save each rank's state and load the list of them). It is
        a collective: every rank calls it, and a rank that calls it alone gets a ValueError after
        `gather_timeout` seconds instead of waiting for the process group's time-out."""
        timeout = checked_gather_timeout(gather_timeout)
        ds = self.dataset
        state = progress.rank_state(epoch=ds.epoch, seed=ds.seed, rank=ds.rank,
                                    world_size=ds.world_size, num_samples=ds.plan().num_samples,
                                    fingerprint=self._fingerprint(), data=self._engine.data_digest,
                                    progress=self._current(), extra=mixstate.extra(self._engine))
        if not all_ranks:
            return state
        return progress.global_state(gather(state, ds.world_size, timeout, ds.path))

    def load_state_dict(self, state) -> None:
        """Resume from `state_dict()`: this rank's own state, the list of every rank's states,
        or a state_dict(all_ranks=True); another world size or worker count is fine with every
        rank's states, another batch size with any of them (see `progress.py`). Call it before iterating."""
        ds = self.dataset
        fingerprint, num_samples = self._fingerprint(), ds.plan().num_samples
        mixstate.check(state, self._engine, fingerprint, ds.path)  # saved by a sparkfeed with other shares
        try:
            epoch, lanes = progress.resume_lanes(
                state, rank=ds.rank, world_size=ds.world_size, workers=self._workers,
                unit=self.batch_size, drop_last=ds.drop_last, fingerprint=fingerprint,
                num_samples=num_samples, data=self._engine.data_digest)
        except ValueError as exc:  # which loader refused it (a script resumes several), and why
            differ = settings_differ(state, fingerprint, num_samples)
            raise ValueError(f"{ds.path}: {exc}" + (f" (here: {differ})" if differ else "")) from None
        ds.set_epoch(epoch)
        self._progress, self._pending = None, lanes
        self._changes += 1
        self._own_process()
        self._drop_next()  # its reads start the epoch from its beginning, not from this state
