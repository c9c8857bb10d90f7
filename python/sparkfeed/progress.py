"""Where an epoch stands, and the resume state: one place, pure values.

A rank's epoch is a list of lanes (one per worker, each a list of `Span`s of stream positions,
see `partition.py`). `EpochProgress` counts how many positions of each lane the consumer has
received; `rank_state` turns it into the plain dict `DataLoader.state_dict()` returns, and
`resume_lanes` turns saved states back into lanes for the loader that resumes:

* one rank's own state (same world size, same rank): that rank's lanes continue exactly where
  they stopped - the same batches in the same order as the run that was interrupted, when the
  worker count is the same too (else the same positions, re-split over the new workers);
* the list of every rank's state (or `state_dict(all_ranks=True)`, which gathers that list) in
  the same world size: each rank takes its own, as above;
* every rank's state from another world size (elastic): the positions nobody delivered are
  pooled and re-split over the new ranks and workers (exactly once still holds; the order is new).

Another batch size than the state's (`batch_size`, recorded in the state) changes only how the
positions left are cut: in the same world size each rank takes its own rest in batches of the new
size, re-split over its workers (`_own_rebatched`; with `drop_last`, every rank the same number of
full batches: from every rank's states saved at different steps, the pooled rest re-split); in
another world size the pooled rest is split in batches of the new size, as above.

Anything else (one rank's state loaded in a world of another size, or on another rank; a list
missing a rank) would lose or repeat samples, so it is a `ValueError` naming what to pass.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from . import partition

__all__ = ["STATE_VERSION", "EpochProgress", "rank_state", "global_state", "resume_lanes"]

STATE_VERSION = 2
Lanes = list[list[partition.Span]]


@dataclass
class EpochProgress:
    """This rank's lanes and how many positions of each the consumer has received; `ended`: the
    iteration over them has ended (its last batch handed over and the iterator finished), so
    `len(loader)` counts the next one, not this one's `batches()`."""

    lanes: Lanes
    batch_size: int
    delivered: list[int] | None = None
    ended: bool = False

    def __post_init__(self):
        if self.delivered is None:
            self.delivered = [0] * len(self.lanes)

    def batches(self) -> int:
        """The batches of these lanes from their start, whatever has been delivered."""
        return sum(-(-partition.total(lane) // self.batch_size) for lane in self.lanes)

    def record(self, worker: int, consumed: int) -> None:
        """Lane `worker` has delivered its first `consumed` positions."""
        self.delivered[worker] = consumed

    def remaining_lanes(self) -> Lanes:
        """Per lane, the positions not delivered yet."""
        return [partition.skip(lane, done) for lane, done in zip(self.lanes, self.delivered)]

    def remaining(self) -> list[partition.Span]:
        return partition.normalise([s for lane in self.remaining_lanes() for s in lane])

    def batches_left(self) -> int:
        return sum(-(-partition.total(lane) // self.batch_size) for lane in self.remaining_lanes())

    def lanes_in_turn(self) -> Lanes:
        """The remaining lanes, starting with the one whose batch is due next (lanes take turns,
        as torch's workers do), so that resuming with as many workers continues in the same order.
        Finished lanes stay in the list (empty) so that the turns of the others do not shift."""
        lanes = self.remaining_lanes()
        turn = sum(-(-d // self.batch_size) for d in self.delivered) % len(lanes)
        return lanes[turn:] + lanes[:turn]


def rank_state(*, epoch: int, seed: int, rank: int, world_size: int, num_samples: int,
               fingerprint: str, data: str, progress: EpochProgress, extra: Mapping | None = None) -> dict:
    """One rank's state as plain values (survives torch.save and JSON); `extra`: plain values the
    engine keeps beside them (a mix: its shares, `mixstate.record`)."""
    return {"version": STATE_VERSION, "scope": "rank", "epoch": epoch, "seed": seed,
            "rank": rank, "world_size": world_size, "num_samples": num_samples,
            "fingerprint": fingerprint, "data": data, "batch_size": progress.batch_size,
            "remaining": [list(s) for s in progress.remaining()],
            "lanes": [[list(s) for s in lane] for lane in progress.lanes_in_turn()], **(extra or {})}


def global_state(states: Sequence[dict]) -> dict:
    """Every rank's state in one dict (what `state_dict(all_ranks=True)` returns). Ranks that
    disagree on what fixes the epoch's order (`_one_order`) are refused here, when the state is
    saved, not when the checkpoint is loaded."""
    _one_order(states)
    first = states[0]
    remaining = partition.normalise([s for st in states for s in st["remaining"]])
    return {"version": STATE_VERSION, "scope": "global", "epoch": first["epoch"],
            "seed": first["seed"], "world_size": first["world_size"],
            "num_samples": first["num_samples"], "fingerprint": first["fingerprint"],
            "data": first.get("data"), "batch_size": first["batch_size"],
            "remaining": [list(s) for s in remaining],
            "ranks": [dict(st) for st in states]}


def _one_order(states: Sequence[dict]) -> None:
    """Every rank must cut the same epoch stream: the same seed, epoch and settings. Otherwise
    the ranks' shares overlap and each sample is not delivered once across them (a seed derived
    from the rank, `seed=base + rank`, or a `set_epoch` missed on one rank), which nothing else
    shows, and the gathered state could not be loaded either (`_check_same`)."""
    keys = ("seed", "epoch", "world_size", "batch_size", "num_samples", "fingerprint")
    seen = {key: [st[key] for st in states] for key in keys}
    differ = [key for key in keys if len(set(seen[key])) > 1]
    differ = [key for key in differ if key != "fingerprint"] or differ  # settings: named when nothing plainer is
    if differ:
        what = "; ".join(f"{key} by rank: {seen[key]}" for key in differ)
        raise ValueError(f"the ranks do not read one epoch stream ({what}), so some samples reach "
                         "several ranks and others none: pass every rank the same seed= (not one "
                         "derived from the rank), the same batch_size, and call set_epoch(epoch) with the "
                         "same epoch on every rank")


def _rank_states(state) -> list[dict]:
    """A rank state, a global state or a list of either -> the list of rank states."""
    items = list(state) if isinstance(state, (list, tuple)) else [state]
    if not items:
        raise ValueError("`state` should be a DataLoader.state_dict() or a list of them, but got an empty list")
    out = []
    for item in items:
        if not isinstance(item, Mapping) or item.get("version") != STATE_VERSION:
            raise ValueError(f"`state` should come from DataLoader.state_dict() (version "
                             f"{STATE_VERSION}), but got {str(item)[:200]!r}")
        out.extend(item["ranks"] if item.get("scope") == "global" else [item])
    return out


# The fingerprint states saved before the batch size was recorded apart: the settings with the
# batch size between shuffle_buffer and drop_last ("...|<shuffle_buffer>|<batch_size>|<drop_last>",
# then "|block runs<=N" where the run cap cuts the epoch).
_OLD_FINGERPRINT = re.compile(r"(?P<head>.*)\|(?P<batch>[1-9][0-9]*)\|"
                              r"(?P<tail>(?:True|False)(?:\|block runs<=[0-9]+)?)", re.DOTALL)


def _settings_and_batch_size(state: Mapping) -> tuple[str, int]:
    """A rank state's settings fingerprint (without the batch size) and the batch size it was saved
    with; a state from before `batch_size` was recorded has it inside its fingerprint, taken out here."""
    batch = state.get("batch_size")
    if batch is not None:
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"`state` should come from DataLoader.state_dict(), but its batch_size="
                             f"{batch!r} is not a positive integer")
        return state["fingerprint"], batch
    old = _OLD_FINGERPRINT.fullmatch(str(state["fingerprint"]))
    if old is None:
        raise ValueError("`state` has no batch_size and its fingerprint does not hold one either "
                         f"(expected '...|<batch_size>|<drop_last>', got {state['fingerprint']!r}): "
                         "pass a state that DataLoader.state_dict() returned")
    return f"{old['head']}|{old['tail']}", int(old["batch"])


def _check_same(states: list[dict], fingerprint: str, num_samples: int, data: str) -> int:
    """Refuse states that do not fit this loader's data and settings (all but the batch size);
    returns the batch size they were saved with."""
    batches = set()
    for st in states:
        settings, batch = _settings_and_batch_size(st)
        batches.add(batch)
        if settings != fingerprint or st["num_samples"] != num_samples:
            raise ValueError("`state` was saved by a loader over other data or with other settings "
                             f"({st['fingerprint']!r}); resume with the same dataset, filter, "
                             "shuffle, shuffle_buffer and drop_last (batch_size may differ)")
        if st.get("data", data) != data:  # states saved before the digest existed have none
            raise ValueError(f"`state` was saved over other files than this dataset's: the same "
                             f"{num_samples} samples, but its shards were rewritten or re-indexed since "
                             f"(digest {st['data']!r}, now {data!r}), so its positions would deliver "
                             "other rows; resume over the data it was saved with, or start the epoch "
                             "afresh without loading it")
    if len({(st["epoch"], st["world_size"]) for st in states}) != 1 or len(batches) != 1:
        raise ValueError("`state` mixes states of different epochs, world sizes or batch sizes: "
                         f"{sorted({(st['epoch'], st['world_size']) for st in states})}, batch sizes "
                         f"{sorted(batches)}; pass the states every rank saved at the same step")
    return batches.pop()


def _complete(states: list[dict]) -> dict[int, dict]:
    """The states by rank; every rank of their world must be there exactly once."""
    world = states[0]["world_size"]
    by_rank = {st["rank"]: st for st in states}
    missing = sorted(set(range(world)) - set(by_rank))
    if missing or len(by_rank) != len(states):
        raise ValueError(f"`state` holds {len(states)} state(s) of a world of {world} ranks "
                         f"(missing ranks {missing}); pass the list of every rank's state_dict() "
                         "(or one rank's own state on that same rank)")
    return by_rank


def resume_lanes(state, *, rank: int, world_size: int, workers: int, unit: int, drop_last: bool,
                 fingerprint: str, num_samples: int, data: str) -> tuple[int, Lanes]:
    """The epoch and this rank's lanes to resume `state` with (see the module doc for the cases)."""
    states = _rank_states(state)
    saved_unit = _check_same(states, fingerprint, num_samples, data)
    epoch, saved_world = int(states[0]["epoch"]), states[0]["world_size"]
    own = [st for st in states if st["rank"] == rank]
    if saved_world == world_size and len(states) == 1 and not own:
        raise ValueError(f"`state` is rank {states[0]['rank']}'s, but this is rank {rank}: load each "
                         "rank's own state, or the list of every rank's state on every rank (Lightning saves rank "
                         "0's state and loads it on every rank: hand it loader.for_trainer(), whose "
                         "state holds every rank's)")
    if saved_world == world_size and own and (len(states) == 1 or _complete(states)):
        if saved_unit != unit:
            return epoch, _own_rebatched(own[0], states, workers, unit, drop_last)
        lanes = [[(int(lo), int(hi)) for lo, hi in lane] for lane in own[0]["lanes"]]
        if len(lanes) == workers:  # the same lanes: the interrupted order continues
            return epoch, lanes
        return epoch, partition.split_workers(partition.normalise(own[0]["remaining"]), workers, unit)
    if len(states) == 1 and saved_world > 1:
        raise ValueError(f"`state` is one rank's state of a world of {saved_world}, but this world has "
                         f"{world_size} ranks: the other ranks' positions are not in it. Pass the list "
                         "of every rank's state_dict(), or state_dict(all_ranks=True)")
    if len(states) > 1:
        _complete(states)
    pooled = partition.normalise([s for st in states for s in st["remaining"]])
    mine = partition.split_ranks(pooled, world_size, unit, drop_last)[rank]
    return epoch, partition.split_workers(mine, workers, unit)


def _own_rebatched(own: dict, states: list[dict], workers: int, unit: int, drop_last: bool) -> Lanes:
    """A rank's own rest in batches of the new size `unit`, over its workers; with `drop_last`, as
    many full batches as the smallest rest in `states` holds, so no rank waits for another under DDP.
    Every rank's states with rests of different sizes (saved at different steps) are pooled and
    re-split instead, as in another world size: cut to the smallest rest, they lost all but it."""
    rests = [partition.normalise(st["remaining"]) for st in states]
    if drop_last and len({partition.total(r) for r in rests}) > 1:
        pooled = partition.normalise([s for r in rests for s in r])
        mine = partition.split_ranks(pooled, own["world_size"], unit, drop_last)[own["rank"]]
        return partition.split_workers(mine, workers, unit)
    mine = partition.normalise(own["remaining"])
    if drop_last:
        mine = partition.take(mine, 0, partition.total(mine) // unit * unit)
    return partition.split_workers(mine, workers, unit)
