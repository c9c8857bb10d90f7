"""A mix's shares in a saved state, and why a state saved over this very mix by another sparkfeed does not fit them."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from . import progress
from .mix import MixedEngine
from .mixshares import shares

if TYPE_CHECKING:
    from .mixsource import Source

RECORD = "mix_shares"  # the key of a rank state that holds the record


def extra(engine) -> dict | None:
    """What a rank state of `engine` keeps besides the positions (`progress.rank_state`): a mix's
    `record`; None for one dataset."""
    return {RECORD: record(engine)} if isinstance(engine, MixedEngine) else None


def record(engine: MixedEngine) -> dict:
    """What a saved state keeps of a mix's shares this epoch: each source's size (after its
    filter) and count. A later sparkfeed that computes the shares otherwise tells from it that
    only the computation changed, not the data."""
    plan = engine.plan()
    return {"sizes": list(plan.sizes), "counts": list(plan.counts)}


def float_shares(sizes: Sequence[int], sources: Sequence[Source]) -> list[int]:
    """The shares as sparkfeed computed them before exact fractions (`mixshares.shares`): the
    weighted ones `floor(T * w_i + 1e-9)` in floats, where the source bounding the epoch got
    `size - 1` from about 6 million samples on. Only to recognise a state saved by it."""
    counts = shares(sizes, sources)
    weighted = [i for i, s in enumerate(sources) if s.weight is not None]
    if weighted:
        total_w = sum(sources[i].weight for i in weighted)
        length = min(sizes[i] * total_w / sources[i].weight for i in weighted if not sources[i].repeat)
        for i in weighted:
            share = math.floor(length * (sources[i].weight / total_w) + 1e-9)
            counts[i] = share if sources[i].repeat else min(share, sizes[i])
    return counts


def check(state, engine, fingerprint: str, where: str) -> None:
    """Refuse, saying so, a state saved over this very mix (the same settings, and data where the
    state has its digest) whose shares were computed otherwise than this sparkfeed computes
    them: its positions would name other samples. Other states (and one dataset's) pass on to
    the usual checks (`progress.resume_lanes`). `where`: the loader's path, which the error names.

    A state without the record is judged by its total alone. One saved by the unreleased code
    between the exact shares (41fcaa8) and the record (283f41c) has this version's shares; it is
    refused wrongly only where the float shares have the same total split otherwise (the bounding
    source one fewer, another one more: weights of ten decimals over tens of millions of samples,
    none in 800,000 random mixes), which an older state of the same total cannot be told from.
    Refusing it costs the rest of an epoch, never a wrong sample."""
    if not isinstance(engine, MixedEngine):
        return
    try:
        saved = progress._rank_states(state)[0]
        settings, _ = progress._settings_and_batch_size(saved)
    except (ValueError, KeyError, TypeError):
        return  # not a state at all: the usual checks say so
    if settings != fingerprint or saved.get("data", engine.data_digest) != engine.data_digest:
        return
    plan = engine.plan()
    ours, kept = list(plan.counts), saved.get(RECORD)
    if isinstance(kept, Mapping):
        if kept.get("sizes") == list(plan.sizes) and kept.get("counts") != ours:
            raise ValueError(_refusal(where, saved, kept.get("counts"), ours,
                                      "by a sparkfeed that computes them otherwise"))
        return
    try:
        old = float_shares(plan.sizes, engine.sources)
    except (OverflowError, ValueError):  # weights past the floats' range (1e308 each): not told
        return
    # the same total with another split is refused too: its positions fall in other sources
    if saved.get("num_samples") == sum(old) and old != ours:
        raise ValueError(_refusal(where, saved, old, ours, _BEFORE_EXACT))


_BEFORE_EXACT = ("by a sparkfeed from before exact shares (it computed the weights' shares in floating "
                 "point, which gave a source that bounds the epoch one sample fewer than its size from "
                 "about 6 million on)")


def _refusal(where: str, saved: Mapping, counts, ours: list[int], how: str) -> str:
    return (f"{where}: `state` was saved over this same mix (the same data, filters and settings) {how}: "
            f"its sources' shares of the epoch were {counts} samples, this version's are {ours}, so its "
            "positions would deliver other samples; the data is not the cause. Start its epoch afresh "
            f"(set_epoch({saved.get('epoch')}) without load_state_dict), or finish it with the version "
            "that saved it")
