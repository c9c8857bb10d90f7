"""What a loader says about its epochs: once, before the first one is read, shuffle blocks that a
rank reads beyond its share and ranks that get different numbers of batches; an epoch started
again without set_epoch; a batch of an iteration begun before the last set_epoch. Pure functions of
the dataset and the lanes; each gives the log record's arguments (or None), which the loader logs
under its own name."""

from __future__ import annotations

import logging

from . import mix, progress

UNEVEN_CHECK_RANKS = 1024  # ranks past which the once-per-loader check of batch counts is skipped
REREAD_WARN_MIB = 64  # shuffle blocks read on both sides of a boundary: a warning from this much more


def blocks_read_twice(ds, epoch: int, lanes: list, batch_size: int, shared: bool) -> tuple | None:
    """How much more than its share this rank reads in a shuffled epoch, because a shuffle block
    that a boundary between ranks (or worker processes; `shared`: thread lanes share blocks) crosses
    is read whole on each side; a warning where that is over twice its share and `REREAD_WARN_MIB`
    more, with the `shuffle_buffer` that bounds it, else an info line. None: nothing read twice."""
    engine = ds.engine
    if not ds.shuffle or isinstance(engine, mix.MixedEngine):  # (a mix's blocks are its own)
        return None
    stream = engine.stream(epoch)
    share = sum(hi - lo for spans in lanes for lo, hi in spans)
    kept = [span for r in range(ds.world_size)
            for span in engine.rank_spans(r, ds.world_size, batch_size, ds.drop_last)]
    read = stream.samples_read(lanes, shared=shared, kept=kept)
    if share <= 0 or read <= share:
        return None
    manifest = ds.manifest
    sample_bytes = (manifest.num_bytes or 0) / max(1, manifest.num_samples or 0)
    extra_mib = (read - share) * sample_bytes / (1 << 20)
    # the span a reader holds alone: the rank's where its lanes share blocks, else a lane's
    alone = share if shared else min((sum(hi - lo for lo, hi in spans) for spans in lanes if spans), default=share)
    sides = " or ".join(([f"the {ds.world_size} ranks"] if ds.world_size > 1 else [])
                        + ([] if shared else ["worker processes"]))
    level = logging.WARNING if read > 2 * share and extra_mib >= REREAD_WARN_MIB else logging.INFO
    return (level, "%s: rank %d reads %d samples of shuffle blocks per epoch for its %d (about %.0f MiB "
            "of stored rows more): a block that a boundary between %s crosses is read whole on "
            "each side. A smaller shuffle_buffer (now %d samples per block) reads less twice and "
            "mixes less: shuffle_buffer=%d reads at most about 1.5x its share",
            ds.path, ds.rank, read, share, extra_mib, sides or "lanes", stream.block, max(1, alone // 4))


def uneven_ranks(ds, batch_size: int, workers: int) -> tuple | None:
    """The warning's arguments where ranks get different numbers of batches (drop_last=False
    keeps every sample, so the last batches fall to some ranks only); None where they do not."""
    if ds.drop_last or ds.world_size == 1 or ds.world_size > UNEVEN_CHECK_RANKS:
        return None
    engine = ds.engine
    counts = [progress.EpochProgress(engine.lanes(engine.rank_spans(r, ds.world_size, batch_size, False),
                                                  workers, batch_size), batch_size).batches_left()
              for r in range(ds.world_size)]
    if min(counts) == max(counts):
        return None
    return ("%s: with drop_last=False the %d ranks get %d to %d batches per epoch (rank %d: "
            "%d). Under DistributedDataParallel a rank that runs out first waits for the "
            "others forever: pass drop_last=True (every rank the same number of full "
            "batches) or wrap the loop in torch.distributed.algorithms.Join",
            ds.path, ds.world_size, min(counts), max(counts), ds.rank, counts[ds.rank])


def stale_iteration(path: str, epoch: int) -> tuple:
    """The warning's arguments for a batch of an iteration begun before a `set_epoch` or
    `load_state_dict`: that iteration goes on as it began (as torch's does), but `state_dict()`
    now describes the new epoch or state, so a checkpoint saved meanwhile would skip the rest of
    the old epoch."""
    return ("%s: a batch was delivered by an iteration begun before the last set_epoch() or "
            "load_state_dict(): that iteration goes on as it began, but state_dict() describes epoch %d "
            "as set, so a checkpoint saved before that iteration ends would skip the rest of it. Call "
            "set_epoch between epochs (before iter()), or finish or drop the old iteration first",
            path, epoch)


def same_epoch_again(path: str, epoch: int) -> tuple:
    """The warning's arguments when a shuffled epoch delivered to its end starts again without
    `set_epoch` (the same order as the last one; DistributedSampler repeats silently, and a
    training loop that forgot `set_epoch` learns the same order every epoch)."""
    return ("%s: epoch %d starts again in the same order (shuffle=True, no set_epoch since it "
            "was delivered): call loader.set_epoch(epoch) before each epoch, the same value "
            "on every rank, for a new order", path, epoch)
