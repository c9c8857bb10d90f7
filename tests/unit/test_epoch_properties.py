"""Seeded random configurations of the loader checked against a model of its epochs written from
README.md ("Concepts", "Mixing several datasets") and DESIGN.md, not from the code: each source's
share (`floor(T * w_i)`, `samples=`, every sample once), exactly once within a share across ranks
x workers, ranks as contiguous runs of the epoch's positions and workers as contiguous runs of
whole batches (so the same batches under any worker count), `len()`, `stats()` per source,
set_epoch, and resume after k batches with another batch size, worker count or world size.

Tiny real data: Parquet with uneven shards and row groups and empty files, and a tar source."""

from __future__ import annotations

import collections
import os
import random
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dsutil
import sparkfeed
from sparkfeed import Source, mix, storage, stream
from sparkfeed.manifest import parse_manifest, write_manifest
from sparkfeed.write import _footer_entry

COLS = ["id", "label"]
WEIGHTS = [1, 2, 3, 0.5, 0.25, 0.7, 0.3]
WORKER_TYPE = "thread"  # worker processes give the same batches, at ~0.4 s a loader


def _rows(lo: int, n: int) -> pa.Table:
    ids = np.arange(lo, lo + n, dtype=np.int64)
    return pa.table({"id": ids, "label": (ids % 10).astype(np.int32)})


def write_uneven(root: str, offset: int, shards: list[list[int]]) -> list[int]:
    """Parquet shards with the given row-group sizes (`[]`: an empty file) and a manifest; the
    ids written, from `offset` on (label = id % 10)."""
    os.makedirs(root, exist_ok=True)
    fs, _ = storage.resolve(root)
    entries, schema, nxt = [], None, offset
    for k, groups in enumerate(shards):
        rel = f"part-{k:05d}.parquet"
        full = os.path.join(root, rel)
        with pq.ParquetWriter(full, _rows(0, 0).schema) as w:
            for g in groups:
                w.write_table(_rows(nxt, g), row_group_size=g)
                nxt += g
        entry = _footer_entry(fs, full, rel, os.path.getsize(full))
        schema = entry.pop("schema")
        entries.append(entry)
    doc = {"sparkfeed_manifest": 1, "format": "parquet", "created_by": {"sparkfeed": "test"},
           "schema": [{"name": n, "type": t} for n, t in schema],
           "num_samples": sum(e["num_samples"] for e in entries),
           "num_bytes": sum(e["num_bytes"] for e in entries), "shards": entries}
    write_manifest(parse_manifest(doc, dataset=root), root)
    return list(range(offset, nxt))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build(tmp_path_factory.mktemp("epochs"))


def build(root) -> dict:
    """name -> (path, ids): four Parquet datasets of uneven layout, one tar dataset."""
    out = {"p0": write_uneven(str(root / "p0"), 0, [[3, 5], [], [7], [1, 1, 2], [4]]),
           "p1": write_uneven(str(root / "p1"), 1000, [[9, 2, 6], [5], [], [8, 8]]),
           "p2": write_uneven(str(root / "p2"), 2000, [[], [2, 3], [2]]),
           "p3": write_uneven(str(root / "p3"), 3000, [[1] * 6, [13], [2, 2, 2, 2, 2]])}
    t = dsutil.table(23)
    dsutil.write_tar(str(root / "t"), t.set_column(0, "id", pa.array(np.arange(4000, 4023))), 7)
    out["t"] = list(range(4000, 4023))
    return {k: (str(root / k), ids) for k, ids in out.items()}


# ---------------------------------------------------------------- the model, from the docs

FILTERS = [None, None, None, [("label", "<", 5)], [("label", ">=", 3)], [("label", "==", 7)], [("label", ">", 20)]]


def passes(i: int, flt) -> bool:
    """Whether id i (label i % 10) passes a DNF filter of FILTERS (one clause)."""
    if flt is None:
        return True
    _, op, v = flt[0]
    return {"<": i % 10 < v, ">=": i % 10 >= v, "==": i % 10 == v, ">": i % 10 > v}[op]


def weight(w) -> Fraction:
    """A weight as the user wrote it: 0.7 is 7/10, 1 / 3 is 1/3 (not the float's binary value)."""
    return Fraction(str(w)).limit_denominator(10 ** 12)


def shares(sizes: list[int], sources: list[Source]) -> list[int] | None:
    """README, "Shares": counts per source, or None where the docs say the mix is refused."""
    out = []
    weighted = [i for i, s in enumerate(sources) if s.weight is not None]
    bounding = [i for i in weighted if not sources[i].repeat]
    if weighted and not bounding:
        return None
    if any(sizes[i] == 0 for i in bounding):
        return None
    total = sum(weight(sources[i].weight) for i in weighted)
    T = min((Fraction(sizes[i]) / (weight(sources[i].weight) / total) for i in bounding), default=0)
    for i, s in enumerate(sources):
        if s.samples is not None:
            if s.samples > sizes[i] and not s.repeat:
                return None
            n = s.samples
        elif s.weight is None:
            n = sizes[i]
        else:
            n = int(T * weight(s.weight) / total)  # floor: both are positive
        if n and not sizes[i]:
            return None
        out.append(n)
    return out


def rank_runs(seq: list, world: int, batch: int, drop_last: bool) -> list[list]:
    """README, "The epoch stream": ranks take contiguous runs of the positions; with drop_last whole
    batches, as many on every rank, else runs that differ by at most one sample."""
    n = len(seq)
    if drop_last:
        per = n // (world * batch) * batch
        return [seq[r * per:(r + 1) * per] for r in range(world)]
    return [seq[r * n // world:(r + 1) * n // world] for r in range(world)]


def worker_order(run: list, workers: int, batch: int) -> list[list]:
    """A rank's workers take contiguous runs of whole batches of its run; torch's worker order
    delivers them in turn."""
    batches = [run[i:i + batch] for i in range(0, len(run), batch)]
    w = max(1, workers)
    parts = [batches[k * len(batches) // w:(k + 1) * len(batches) // w] for k in range(w)]
    return [p[j] for j in range(max(map(len, parts), default=0)) for p in parts if j < len(p)]


# ---------------------------------------------------------------- running the loader

def identity(batch):
    return batch


def rows_of(batch, mixed: bool) -> list[tuple[int, int]]:
    src = batch["__source__"].tolist() if mixed else [0] * len(batch["id"])
    return list(zip(src, batch["id"].tolist()))


class Case:
    """One random configuration (drawn from `seed`) and the loaders it makes."""

    def __init__(self, data, seed: int):
        r = self.r = random.Random(seed)
        self.data = data
        self.sources, self.filters = [], []
        self.loader_filter = r.choice([None, None, None, [("label", "<", 8)]])
        for _ in range(r.choice([1, 1, 2, 2, 3, 4])):
            name = r.choice(sorted(data))
            flt = r.choice(FILTERS)
            kind = r.choice(["weight", "weight", "samples", "all"])
            size = sum(passes(i, flt) and passes(i, self.loader_filter) for i in data[name][1])
            kw = {}
            if kind == "weight":
                kw = {"weight": r.choice(WEIGHTS), "repeat": r.random() < 0.15}
            elif kind == "samples":  # more than the source holds only with repeat (else refused)
                repeat = r.random() < 0.4
                kw = {"samples": r.randint(1, max(1, 2 * size if repeat else size)), "repeat": repeat}
            self.sources.append(Source(data[name][0], filter=flt, **kw))
            self.filters.append((name, flt))
        self.plain = len(self.sources) == 1 and self.sources[0].weight is None \
            and self.sources[0].samples is None and r.random() < 0.5
        self.kw = dict(batch_size=r.choice([1, 2, 3, 5, 8, 64, 1000]), shuffle=r.random() < 0.6,
                       seed=r.randint(0, 5), drop_last=r.random() < 0.4,
                       shuffle_buffer=r.choice([None, 1, 4, 16]), columns=COLS)
        if r.random() < 0.3:  # batches then pass through the prefetch thread
            self.kw["collate_fn"] = identity
        self.kw["prefetch"] = r.choice([0, 1, 2, 2])
        self.workers = r.choice([0, 1, 3])
        self.world = r.choice([1, 1, 2, 3])
        self.epoch = r.randint(0, 3)
        self.persistent = self.workers > 0 and r.random() < 0.3
        # sizes that real data reach (mix grid blocks, pieces, stream pieces, cached labels), cut
        # down to a few rows so that tiny data cross their bounds
        self.small = {} if r.random() < 0.4 else {
            (mix, "_BLOCK_BYTES"): 1, (mix, "_MIN_BLOCK"): r.choice([1, 3, 5, 11]),
            (mix, "_PIECE"): r.choice([1, 2, 7, 64]), (mix, "_CACHED_BLOCKS"): r.choice([1, 2, 16]),
            (stream, "_PIECE_BYTES"): 1, (stream, "_MIN_PIECE"): r.choice([1, 3, 8])}

    def __repr__(self):
        srcs = [f"{name}:{flt}:" + ",".join(f"{k}={getattr(s, k)}" for k in ("weight", "samples", "repeat")
                                          if getattr(s, k) not in (None, False))
                for (name, flt), s in zip(self.filters, self.sources)]
        kw = {k: v for k, v in self.kw.items() if k not in ("columns", "collate_fn")}
        kw["collate"] = "collate_fn" in self.kw
        return f"Case({srcs}, filter={self.loader_filter}, {kw}, workers={self.workers}, " \
               f"world={self.world}, epoch={self.epoch}, plain={self.plain}, persistent={self.persistent}, " \
               f"small={ {k[1]: v for k, v in self.small.items()} })"

    def sizes(self) -> list[int]:
        return [sum(passes(i, flt) and passes(i, self.loader_filter) for i in self.data[name][1])
                for name, flt in self.filters]

    def loader(self, rank=0, world=1, workers=0, **kw):
        kw = {**self.kw, "filter": self.loader_filter, "num_workers": workers, "rank": rank,
              "world_size": world, **kw}
        if workers:
            kw.setdefault("worker_type", WORKER_TYPE)
        if self.plain:
            flt = self.sources[0].filter
            if flt is not None:  # the source's filter AND the loader's (one conjunction)
                kw["filter"] = flt + (self.loader_filter or [])
            return sparkfeed.DataLoader(self.sources[0].path, **kw)
        return sparkfeed.DataLoader(self.sources, with_source=True, **kw)


def deliver(loader, epoch: int | None = None, stop: int | None = None, save: list | None = None,
            on: bool = False):
    """Batches (lists of (source, id)) of one iteration, stopped after `stop` of them; with `save`,
    the loader's state_dict() there is appended to it, taken inside the loop as a training script
    does (the iterator alive, its threads reading ahead), and with `on` the iteration goes on to its
    end after the save."""
    if epoch is not None:
        loader.set_epoch(epoch)
    out, it = [], iter(loader)
    if stop == 0 and save is not None:
        save.append(loader.state_dict())
    for b in (it if stop != 0 or on else ()):
        out.append(rows_of(b, "__source__" in b))
        if stop is not None and len(out) == stop:
            if save is not None:
                save.append(loader.state_dict())
            if not on:
                break
    if hasattr(it, "close"):
        it.close()
    return out


def flat(batches) -> list:
    return [x for b in batches for x in b]


def per_source(rows) -> collections.Counter:
    return collections.Counter(s for s, _ in rows)


def check_stats(loader, rows, n_sources: int, mixed: bool, what: str):
    """stats(): `samples` and `source.<i>.samples` are what this loader delivered."""
    st = loader.stats()
    assert st["samples"] == len(rows), what
    if mixed:
        counts = per_source(rows)
        assert [st[f"source.{i}.samples"] for i in range(n_sources)] == [counts[i] for i in range(n_sources)], what


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
    if counts is None:  # refused, when built or at the first len() / batch (a filtered source)
        with pytest.raises(ValueError):
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
        L.set_epoch(case.epoch)
        n = len(L)
        batches = deliver(L)
        expected = worker_order(run, case.workers, B)
        assert batches == expected, f"{what}: rank {rank}"
        assert n == len(batches), f"{what}: len() {n}, {len(batches)} batches delivered"
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
        at, same_k = to, len(set(stops)) == 1
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
    R.load_state_dict(state)
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
    assert mix.shares(sizes, sources) == shares(sizes, sources)
    bound = min(range(len(sizes)), key=lambda i: Fraction(sizes[i]) / weight(weights[i]))
    assert mix.shares(sizes, sources)[bound] == sizes[bound]


def test_shares_follow_the_documented_formula_for_any_sizes_and_weights():
    """The documented shares (exact, the weights as written) over random sizes up to 10^10."""
    r = random.Random(0)
    for _ in range(3000):
        sizes = [r.choice([r.randint(0, 50), r.randint(1, 10 ** 7), r.randint(1, 10 ** 10)])
                 for _ in range(r.randint(1, 4))]
        sources = [Source(f"s{i}", weight=r.choice([r.randint(1, 10), r.choice(WEIGHTS + [1 / 3, 0.15, 0.554])]),
                          repeat=r.random() < 0.1) for i in range(len(sizes))]
        expected = shares(sizes, sources)
        if expected is None:
            with pytest.raises(ValueError):
                mix.shares(sizes, sources)
        else:
            assert mix.shares(sizes, sources) == expected, (sizes, sources)
