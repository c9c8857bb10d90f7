"""Seeded random loader configurations (tests/epochmodel.py) checked against a model of the
documented epoch: each source's share (`floor(T * w_i)`, `samples=`, every sample once), exactly
once within a share across ranks x workers, the same batches under any worker count, `len()`,
`stats()` per source, set_epoch, and resume after k batches with another batch size, worker count
or world size, once or twice; and the cases they found, each as its own test."""

from __future__ import annotations

import collections
import random
from fractions import Fraction

import pytest

from epochmodel import (WEIGHTS, Case, build, check_stats, deliver, flat, passes, per_source, rank_runs,
                        shares, weight, worker_order)
from sparkfeed import Source, mixshares


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build(tmp_path_factory.mktemp("epochs"))


# ---------------------------------------------------------------- the properties

def check_shares(case: Case, seq: list, counts: list[int]):
    """Each source's count is its share; each sample at most once in its share (exactly the
    source's filtered samples when the share is all of them); with repeat, every pass complete
    before the next begins; weighted fractions within k / N."""
    sizes = case.sizes()
    assert [per_source(seq)[i] for i in range(len(counts))] == counts
    for i, (name, flt) in enumerate(case.filters):
        allowed = {x for x in case.data[name][1] if passes(x, flt) and passes(x, case.loader_filter)}
        mine = [x for s, x in seq if s == i]
        assert set(mine) <= allowed, f"source {i} delivered ids its filter drops"
        if counts[i] <= sizes[i]:
            assert len(set(mine)) == len(mine), f"source {i} repeated a sample within its share"
            if counts[i] == sizes[i]:
                assert set(mine) == allowed
        else:  # repeat: passes of the whole source, each complete before the next
            for k in range(0, len(mine), sizes[i]):
                part = mine[k:k + sizes[i]]
                assert len(set(part)) == len(part) and (len(part) < sizes[i] or set(part) == allowed), \
                    f"source {i}: pass {k // sizes[i]} is not one pass over the source"
    # the tolerance, of the weighted sources' samples (the epoch's, when every source is weighted)
    weighted = [i for i, s in enumerate(case.sources) if s.weight is not None]
    n = sum(counts[i] for i in weighted)
    total = sum(weight(case.sources[i].weight) for i in weighted)
    for i in weighted if n else ():
        assert abs(Fraction(counts[i], n) - weight(case.sources[i].weight) / total) <= Fraction(len(weighted), n)


def check_order(case: Case, ref, seq: list, counts: list[int], what: str):
    """Without shuffle: one dataset in its stored order; in a mix each source's samples a cyclic
    window of its stored order, the sources alternating evenly. With it, set_epoch changes the order,
    and an epoch started again without set_epoch repeats it. A source larger than its share gives
    another subset in another epoch."""
    if not case.kw["shuffle"]:
        for i, (name, flt) in enumerate(case.filters):
            stored = [x for x in case.data[name][1] if passes(x, flt) and passes(x, case.loader_filter)]
            mine = [x for s, x in seq if s == i]
            if not mine:
                continue
            off = stored.index(mine[0])
            assert mine == [stored[(off + j) % len(stored)] for j in range(len(mine))], \
                f"{what}: source {i} out of its stored order"
            if case.plain:
                assert off == 0, f"{what}: one dataset starts at {off}"
        n, labels = len(seq), [s for s, _ in seq]
        for p in range(n + 1 if n else 0):
            for i, c in enumerate(counts):
                assert abs(labels[:p].count(i) - Fraction(p * c, n)) <= len(counts), \
                    f"{what}: source {i} does not alternate evenly (first {p} positions)"
    elif len(set(seq)) >= 12:
        assert flat(deliver(ref)) == seq, f"{what}: the same epoch again"
        assert flat(deliver(ref, case.epoch + 1)) != seq, f"{what}: set_epoch kept the order"
    sizes = case.sizes()
    moving = [i for i, c in enumerate(counts) if 0 < c < sizes[i] and sizes[i] >= 8]
    if moving and case.r.random() < 0.3:
        subsets = [{x for s, x in flat(deliver(ref, e)) if s in moving} for e in range(case.epoch, case.epoch + 3)]
        assert len({frozenset(x) for x in subsets}) > 1, f"{what}: sources {moving} give the same subset every epoch"


def check_case(data, seed: int):
    case = Case(data, seed)
    saved = {k: getattr(*k) for k in case.small}
    try:
        for (module, name), value in case.small.items():
            setattr(module, name, value)
        return check_case_as_drawn(case)
    finally:
        for (module, name), value in saved.items():
            setattr(module, name, value)


def check_case_as_drawn(case: Case):
    what = repr(case)
    sizes = case.sizes()
    counts = shares(sizes, case.sources) if not case.plain else sizes
    B, drop_last = case.kw["batch_size"], case.kw["drop_last"]
    if isinstance(counts, str):  # refused, when built or at the first len() / batch (a filtered source)
        with pytest.raises(ValueError, match=counts):
            len(case.loader())
        return case
    # the reference: one rank, no workers, the epoch's positions in order
    ref = case.loader(drop_last=False)
    seq = flat(deliver(ref, case.epoch))
    assert len(seq) == sum(counts), what
    check_shares(case, seq, counts)
    check_stats(ref, seq, len(counts), not case.plain, what)
    check_order(case, ref, seq, counts, what)
    # every rank x workers: the model's batches, in torch's worker order
    got = []
    for rank, run in enumerate(rank_runs(seq, case.world, B, drop_last)):
        L = case.loader(rank, case.world, case.workers, persistent_workers=case.persistent)
        if case.r.random() < 0.2:  # set_epoch after iter(), before the first batch, takes effect
            n, batches = None, deliver(L, late=lambda: L.set_epoch(case.epoch))
        else:
            L.set_epoch(case.epoch)
            n = len(L)
            batches = deliver(L)
        expected = worker_order(run, case.workers, B)
        assert batches == expected, f"{what}: rank {rank}"
        assert n in (None, len(batches)), f"{what}: len() {n}, {len(batches)} batches delivered"
        check_stats(L, flat(batches), len(counts), not case.plain, what)
        got.append(batches)
        if case.persistent and rank == 0:  # the next epoch read ahead: the same as a fresh loader's
            again = deliver(L, case.epoch + 1)
            fresh = deliver(case.loader(rank, case.world, case.workers), case.epoch + 1)
            assert again == fresh, f"{what}: persistent workers' next epoch"
    if drop_last:
        assert len({len(b) for b in got}) == 1 and all(len(b) == B for bs in got for b in bs), what
    check_resume(case, got, what)
    return case


def check_resume(case: Case, got: list[list], what: str):
    """Stop every rank after k batches, save, and load into fresh loaders, once or twice: the same
    settings give the rest exactly; another batch size or worker count (one's own state), or
    another world size (every rank's states), the samples not yet delivered, each once."""
    r, drop_last = case.r, case.kw["drop_last"]
    ks, states, same_k = interrupt(case, got, what)
    whole = collections.Counter(flat(flat(got)))
    seen = collections.Counter(flat(flat(b[:k] for b, k in zip(got, ks))))
    left, dropped_at_most = whole - seen, 0
    own = [collections.Counter(flat(b[k:])) for b, k in zip(got, ks)]  # each rank's rest
    at = (case.world, case.workers, case.kw["batch_size"])
    hops = r.choice([1, 1, 2])
    for hop in range(hops):
        mode = r.choice(["batch", "workers", "world"])
        world, workers, B = at
        to = (r.choice([1, 2, 3, 4]) if mode == "world" else world,
              r.choice([0, 1, 3]) if mode != "batch" else workers,
              r.choice([1, 2, 3, 7, 64]) if mode != "workers" else B)
        note = f"{what}: hop {hop} ({mode}: world {to[0]}, workers {to[1]}, batch {to[2]})"
        per_rank, states, stops = resume_hop(case, states if mode == "world" else None, states, to,
                                             hop == hops - 1, note)
        if hop == 0 and mode == "world" and to == at:  # every rank's states, as they were: own order
            for rank, batches in enumerate(per_rank):
                assert batches == got[rank][ks[rank]:ks[rank] + len(batches)], f"{note}: rank {rank}'s order"
        now = collections.Counter(flat(flat(per_rank)))
        assert not now - left, f"{note}: delivered what was delivered before (or never in the epoch)"
        own = own_rests(own if mode != "world" else None, per_rank, drop_last or hop < hops - 1, note)
        if drop_last:
            assert all(len(b) == to[2] for bs in per_rank for b in bs), f"{note}: a short batch under drop_last"
            if hop == hops - 1 and (mode == "world" or same_k):
                assert len({len(bs) for bs in per_rank}) == 1, f"{note}: ranks got {[len(b) for b in per_rank]}"
            dropped_at_most += to[0] * to[2] - 1
        left, seen = left - now, seen + now
        at, same_k = to, (same_k or mode == "world") and len(set(stops)) == 1  # saved at one step
    if drop_last:
        assert sum(left.values()) <= dropped_at_most, f"{what}: dropped {sum(left.values())}"
    else:
        assert not left, f"{what}: lost {sorted(left.elements())[:10]} after resuming"
    assert not seen - whole, f"{what}: delivered twice"


def interrupt(case: Case, got: list[list], what: str) -> tuple[list[int], list[dict], bool]:
    """Each rank stopped after k of its batches (one k for every rank, or each its own) with its
    state saved inside the loop (which then stops or goes on) or after it: (the k's, the states,
    whether they share one k). Where drawn, the state resumed with the same settings."""
    r = case.r
    same_k = r.random() < 0.5
    k0 = r.randint(0, max(len(b) for b in got))
    ks, states = [], []
    for rank, batches in enumerate(got):
        k = min(k0, len(batches)) if same_k else r.randint(0, len(batches))
        L = case.loader(rank, case.world, case.workers, persistent_workers=case.persistent)
        if r.random() < 0.5:  # saved inside the loop, which then goes on or stops
            on = r.random() < 0.5
            out = deliver(L, case.epoch, stop=k, save=states, on=on)
            assert out == (batches if on else batches[:k]), f"{what}: rank {rank}, the loop saving after {k}"
        else:  # saved after the loop stopped
            out = deliver(L, case.epoch, stop=k) if k else []
            if not k:
                L.set_epoch(case.epoch)
            states.append(L.state_dict())
            assert out == batches[:k], f"{what}: rank {rank}, interrupted run"
        check_stats(L, flat(out), len(case.sources), not case.plain, f"{what}: rank {rank} stopped after {k}")
        ks.append(k)
        if r.random() < 0.5:
            check_same_settings(case, rank, batches, k, states[-1], f"{what}: rank {rank}, resumed after {k}")
    return ks, states, same_k


def check_same_settings(case: Case, rank: int, batches: list, k: int, state: dict, what: str):
    """The same settings: the same batches in the same order (also after `set_epoch` of the loaded
    epoch, the usual loop after a restart), and then the next epoch whole."""
    r = case.r
    R = case.loader(rank, case.world, case.workers, persistent_workers=case.persistent)
    if r.random() < 0.2:  # after iter(), before the first batch
        rest = deliver(R, late=lambda: R.load_state_dict(state))
        assert rest == batches[k:], f"{what}: loaded after iter()"
        return
    R.load_state_dict(state)
    if r.random() < 0.2:  # another epoch drops the loaded state
        fresh = deliver(case.loader(rank, case.world, case.workers), case.epoch + 1)
        assert deliver(R, case.epoch + 1) == fresh, f"{what}: set_epoch of another epoch"
        return
    if r.random() < 0.5:
        R.set_epoch(case.epoch)
    n = len(R)
    rest = deliver(R)
    assert rest == batches[k:] and n == len(rest), what
    if r.random() < 0.3:
        fresh = deliver(case.loader(rank, case.world, case.workers), case.epoch + 1)
        assert deliver(R, case.epoch + 1) == fresh, f"{what}: the epoch after"


def resume_hop(case: Case, every: list | None, own: list, to: tuple, last: bool, note: str):
    """Every rank of world `to` = (world, workers, batch) loads every rank's states (`every`) or
    its own, and delivers its rest (stopping at a drawn batch unless `last`, and saving there):
    (batches per rank, states, where each stopped)."""
    world, workers, B = to
    per_rank, states, stops = [], [], []
    for rank in range(world):
        R = case.loader(rank, world, workers, batch_size=B)
        R.load_state_dict(every if every is not None else own[rank])
        n = len(R)
        stop = None if last else case.r.randint(0, n)
        batches = deliver(R, stop=stop) if stop != 0 else []
        assert not last or n == len(batches), f"{note}: len() {n}, delivered {len(batches)}"
        check_stats(R, flat(batches), len(case.sources), not case.plain, note)
        states.append(R.state_dict())
        per_rank.append(batches)
        stops.append(stop)
    return per_rank, states, stops


def own_rests(own: list | None, per_rank: list, partial: bool, note: str) -> list | None:
    """In the same world size each rank cuts its own rest: it delivers none of another's (and,
    unless `partial`, all of its own); what is left of each rank's rest, or None after a hop
    into another world size."""
    if own is None:
        return None
    for rank, batches in enumerate(per_rank):
        mine = collections.Counter(flat(batches))
        assert not mine - own[rank], f"{note}: rank {rank} delivered another rank's samples"
        assert partial or mine == own[rank], f"{note}: rank {rank} lost samples"
        own[rank] -= mine
    return own


# ---------------------------------------------------------------- the configurations, and what they found

@pytest.mark.parametrize("seed", range(60))
def test_random_configurations_keep_the_documented_epoch(data, seed):
    check_case(data, seed)


@pytest.mark.parametrize("sizes,weights", [
    ([33_739_506, 31_437_866], [0.6, 0.6]),       # b bounds the epoch: its share is all of it
    ([3_362_685_027], [0.7]),                     # one weighted source: every sample
    ([26_582_183, 738_106_430], [0.85, 0.6]),
    ([6_408_588_591, 7_982_227_215], [0.554, 0.9]),
    ([300, 100], [1, 1 / 3]),                     # a weight of 1/3 is a third, as written
    ([100, 300], [1 / 3, 1]),
])
def test_a_source_that_bounds_the_epoch_supplies_every_sample(sizes, weights):
    """floor(T * w_i) with T = min(size_i / w_i): the bounding source's share is its size. Found
    by the random configurations' model: computed in floats (plus 1e-9), a source of 6 million or
    more samples that bounds the epoch lost one sample per epoch in about 6% of two-source mixes
    (and, its share no longer the whole source, became a moving window)."""
    sources = [Source(f"s{i}", weight=w) for i, w in enumerate(weights)]
    assert mixshares.shares(sizes, sources) == shares(sizes, sources)
    bound = min(range(len(sizes)), key=lambda i: Fraction(sizes[i]) / weight(weights[i]))
    assert mixshares.shares(sizes, sources)[bound] == sizes[bound]


def test_shares_follow_the_documented_formula_for_any_sizes_and_weights():
    """The documented shares (exact, the weights as written) over random sizes up to 10^10."""
    r = random.Random(0)
    for _ in range(3000):
        sizes = [r.choice([r.randint(0, 50), r.randint(1, 10 ** 7), r.randint(1, 10 ** 10)])
                 for _ in range(r.randint(1, 4))]
        sources = [Source(f"s{i}", weight=r.choice([r.randint(1, 10), r.choice(WEIGHTS + [1 / 3, 0.15, 0.554])]),
                          repeat=r.random() < 0.1) for i in range(len(sizes))]
        expected = shares(sizes, sources)
        if isinstance(expected, str):
            with pytest.raises(ValueError, match=expected):
                mixshares.shares(sizes, sources)
        else:
            assert mixshares.shares(sizes, sources) == expected, (sizes, sources)
