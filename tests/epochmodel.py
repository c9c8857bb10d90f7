"""A model of the loader's epochs written from README.md ("Concepts", "Mixing several datasets")
and DESIGN.md, not from the code (each source's share, ranks as contiguous runs of the epoch's
positions, workers as contiguous runs of whole batches in torch's worker order), the random
configurations tests/unit/test_epoch_properties.py checks against it, and the data they read.

Tiny real data: Parquet with uneven shards and row groups, files without row groups, row groups
without rows, and a tar source.
"""

from __future__ import annotations

import collections
import os
import random
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import dsutil
import sparkfeed
from sparkfeed import Source, epoch, mix, mixgrid, storage
from sparkfeed.manifest import parse_manifest, write_manifest
from sparkfeed.writefooters import _footer_entry

COLS = ["id", "label"]
WEIGHTS = [1, 2, 3, 0.5, 0.25, 0.7, 0.3]
WORKER_TYPE = "thread"  # worker processes give the same batches, at ~0.4 s a loader


def _rows(lo: int, n: int) -> pa.Table:
    ids = np.arange(lo, lo + n, dtype=np.int64)
    return pa.table({"id": ids, "label": (ids % 10).astype(np.int32)})


def write_uneven(root: str, offset: int, shards: list[list[int]]) -> list[int]:
    """Parquet shards with the given row-group sizes (`[]`: a file without row groups, 0: a row
    group without rows) and a manifest; the ids written, from `offset` on (label = id % 10)."""
    os.makedirs(root, exist_ok=True)
    fs, _ = storage.resolve(root)
    entries, schema, nxt = [], None, offset
    for k, groups in enumerate(shards):
        rel = f"part-{k:05d}.parquet"
        full = os.path.join(root, rel)
        with pq.ParquetWriter(full, _rows(0, 0).schema) as w:
            for g in groups:
                w.write_table(_rows(nxt, g), row_group_size=max(g, 1))  # 0: an empty row group
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


def build(root) -> dict:
    """name -> (path, ids): four Parquet datasets of uneven layout, one tar dataset."""
    out = {"p0": write_uneven(str(root / "p0"), 0, [[3, 5], [], [7], [1, 1, 2], [4]]),
           "p1": write_uneven(str(root / "p1"), 1000, [[9, 2, 6], [5], [], [8, 8]]),
           "p2": write_uneven(str(root / "p2"), 2000, [[], [2, 0, 3], [2]]),
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


def shares(sizes: list[int], sources: list[Source]) -> list[int] | str:
    """README, "Shares": counts per source; where the docs say the mix is refused, what the
    refusal says (a pattern matching each reason that applies)."""
    out, why = [], []
    weighted = [i for i, s in enumerate(sources) if s.weight is not None]
    bounding = [i for i in weighted if not sources[i].repeat]
    if weighted and not bounding:
        why.append("nothing bounds the epoch")
    if any(sizes[i] == 0 for i in bounding):
        why.append("has no samples")
    total = sum(weight(sources[i].weight) for i in weighted)
    T = min((Fraction(sizes[i]) / (weight(sources[i].weight) / total) for i in bounding if sizes[i]), default=0)
    for i, s in enumerate(sources):
        if s.samples is not None:
            if s.samples > sizes[i] and not s.repeat:
                why.append(rf"has {sizes[i]} samples .*samples={s.samples}`; pass repeat=True")
            n = s.samples
        elif s.weight is None:
            n = sizes[i]
        else:
            n = int(T * weight(s.weight) / total)  # floor: both are positive
        if n and not sizes[i]:
            why.append("has no samples")
        out.append(n)
    return "|".join(why) if why else out


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
        if r.random() < 0.2:  # torch's arguments, taken without changing a batch
            self.kw.update(in_order=r.random() < 0.5, prefetch_factor=r.choice([None, 1, 3]))
        self.workers = r.choice([0, 1, 3])
        self.world = r.choice([1, 1, 2, 3])
        self.epoch = r.randint(0, 3)
        self.persistent = self.workers > 0 and r.random() < 0.3
        # sizes that real data reach (mix grid blocks, pieces, stream pieces, cached labels), cut
        # down to a few rows so that tiny data cross their bounds
        self.small = {} if r.random() < 0.4 else {
            (mix, "_BLOCK_BYTES"): 1, (mix, "_MIN_BLOCK"): r.choice([1, 3, 5, 11]),
            (mix, "_PIECE"): r.choice([1, 2, 7, 64]), (mixgrid, "_CACHED_BLOCKS"): r.choice([1, 2, 16]),
            (epoch, "_PIECE_BYTES"): 1, (epoch, "_MIN_PIECE"): r.choice([1, 3, 8])}

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
        if self.r.random() < 0.15:  # a Dataset made first keeps its settings in the loader
            own = {k: kw.pop(k) for k in ("columns", "filter", "shuffle", "seed", "batch_size", "drop_last",
                                          "shuffle_buffer", "rank", "world_size")}
            return sparkfeed.DataLoader(sparkfeed.Dataset(self.sources, with_source=True, **own), **kw)
        return sparkfeed.DataLoader(self.sources, with_source=True, **kw)


def deliver(loader, epoch: int | None = None, stop: int | None = None, save: list | None = None,
            on: bool = False, late=None):
    """Batches (lists of (source, id)) of one iteration, stopped after `stop` of them; with `save`,
    the loader's state_dict() there is appended to it, taken inside the loop as a training script
    does (the iterator alive, its threads reading ahead), and with `on` the iteration goes on to its
    end after the save. `late`: called after iter() and before the first batch (which it
    reaches, as set_epoch and load_state_dict do there)."""
    if epoch is not None:
        loader.set_epoch(epoch)
    out, it = [], iter(loader)
    if late is not None:
        late()
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
