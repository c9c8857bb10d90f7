"""Mixing several datasets: shares, exactly once within each share, determinism, resume, per-source
filters and stats, columns checked when built. Real Parquet and tar files; no Spark."""

from __future__ import annotations

import collections
import io
import re
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import dsutil
import sparkfeed
from sparkfeed import CorruptSampleError, Source
from sparkfeed.mixshares import block_counts, block_labels, share_spans, shares
from sparkfeed import mix
from sparkfeed.segments import Block

A, B, T, C = 0, 100_000, 200_000, 300_000  # id offsets: an id says which dataset it came from
COLS = ["id", "label", "caption", "feature"]


def shifted(n: int, offset: int, **kw) -> pa.Table:
    data = dsutil.table(n, **kw)
    return data.set_column(0, "id", pc.add(data["id"], offset))


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    dsutil.write_parquet(str(root / "a"), shifted(600, A), 150, 30, sort_by="label")  # clustered
    dsutil.write_parquet(str(root / "b"), shifted(400, B), 100, 25)
    dsutil.write_tar(str(root / "t"), shifted(200, T), 50)
    c = shifted(100, C)
    dsutil.write_parquet(str(root / "c"), c.set_column(1, "label", c["label"].cast(pa.int64())), 50, 25)
    s = shifted(100, C)
    dsutil.write_parquet(str(root / "s"), s.set_column(1, "label", s["label"].cast(pa.string())), 50, 25)
    u = shifted(50, C).append_column("__source__", pa.array(range(50), pa.int64()))
    dsutil.write_parquet(str(root / "u"), u, 50, 25)
    return {k: str(root / k) for k in "abtcsu"}


def origin(i: int) -> int:
    return i // 100_000 * 100_000


def run(loader) -> list[tuple[int, int]]:
    """(id, source) per delivered row, in order."""
    return [(i, s) for b in loader for i, s in zip(b["id"].tolist(), b["__source__"].tolist())]


def loader(sources, **kw):
    kw = {"batch_size": 32, "columns": COLS, "with_source": True, "shuffle": True, "seed": 3, **kw}
    return sparkfeed.DataLoader(sources, **kw)


# ---------------------------------------------------------------- pure functions

@pytest.mark.parametrize("sizes,sources,expected", [
    ([600, 400], [Source("a", weight=0.7), Source("b", weight=0.3)], [600, 257]),  # a limits: 600/0.7
    ([600, 400], [Source("a", weight=1), Source("b", weight=1)], [400, 400]),      # b limits
    ([600, 400], [Source("a"), Source("b")], [600, 400]),                          # everything once
    ([600, 400], [Source("a", samples=50), Source("b", weight=2)], [50, 400]),
    ([600, 400], [Source("a", weight=1), Source("b", weight=3, repeat=True)], [600, 1800]),
    ([600, 400], [Source("a", samples=10), Source("b", samples=1000, repeat=True)], [10, 1000]),
])
def test_shares(sizes, sources, expected):
    assert shares(sizes, sources) == expected


@pytest.mark.parametrize("sizes,sources,match", [
    ([600, 40], [Source("a"), Source("b", samples=50)], r"source 1 \('b'\) has 40 samples .* repeat=True"),
    ([600, 40], [Source("a", weight=1, repeat=True)], "nothing bounds the epoch"),
    ([600, 0], [Source("a"), Source("b", samples=5, repeat=True)], r"source 1 \('b'\) has no samples"),
    ([600, 0], [Source("a", weight=1), Source("b", weight=1)], r"source 1 \('b'\) has no samples .* empty"),
])
def test_shares_refused(sizes, sources, match):
    with pytest.raises(ValueError, match=match):
        shares(sizes, sources)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5000), min_size=1, max_size=5), st.integers(1, 300))
def test_blocks_hold_each_source_in_proportion(counts, blocks):
    n = np.array(counts)
    c = block_counts(n, blocks, np.arange(blocks + 1))
    assert (c[0] == 0).all() and (c[-1] == n).all() and (np.diff(c, axis=0) >= 0).all()
    ideal = np.arange(blocks + 1)[:, None] * n[None, :] / blocks
    assert (np.abs(c - ideal) <= 0.5 + 1e-9).all()  # within half a sample of the exact share
    for g in {0, blocks // 2, blocks - 1}:
        for shuffle in (False, True):
            labels = block_labels(n, blocks, g, seed=1, epoch=2, shuffle=shuffle)
            assert np.bincount(labels, minlength=len(n)).tolist() == (c[g + 1] - c[g]).tolist()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3000), min_size=1, max_size=4), st.integers(1, 40), st.data())
def test_time_order_is_the_stable_sort_by_time(counts, blocks, data):
    n = np.array(counts)
    g = data.draw(st.integers(0, blocks - 1))
    lo, hi = block_counts(n, blocks, g), block_counts(n, blocks, g + 1)
    times = np.concatenate([(np.arange(a, b) + 0.5) / max(int(k), 1) for a, b, k in zip(lo, hi, n)])
    labels = np.repeat(np.arange(len(n)), hi - lo)
    expected = labels[np.argsort(times, kind="stable")]
    assert block_labels(n, blocks, g, seed=0, epoch=0, shuffle=False).tolist() == expected.tolist()


@pytest.mark.parametrize("counts", [[3 * 10 ** 9, 4 * 10 ** 9], [2 ** 31, 2 ** 31 + 7, 3], [5 * 10 ** 12, 7]])
def test_time_order_of_shares_of_billions_is_exact(counts):
    """Unshuffled, the time order's numerators (2j + 1) n_l passed int64 where two shares exceed
    about 2 billion each: an OverflowError halfway through the epoch (3 and 4 billion), or
    positions that wrapped (2^31 each); and the block counts' 2 g n where blocks x share passed
    it. Blocks of ~64 positions, so the exact sort is cheap."""
    n = np.array(counts)
    blocks = sum(counts) // 64
    for g in (0, blocks // 3, blocks // 2 + 1, blocks - 1):
        lo, hi = block_counts(n, blocks, g), block_counts(n, blocks, g + 1)
        for c, at in ((lo, g), (hi, g + 1)):  # #{j : (j + 1/2) / n_i < g / G}, in Python's integers
            assert c.tolist() == [min(max(0, -((blocks - 2 * at * k) // (2 * blocks))), k) for k in counts]
        items = [(Fraction(2 * j + 1, 2 * int(k)), i) for i, (a, b, k) in enumerate(zip(lo, hi, n))
                 for j in range(int(a), int(b))]
        expected = [i for _, i in sorted(items)]
        assert block_labels(n, blocks, g, seed=0, epoch=0, shuffle=False).tolist() == expected


@pytest.mark.parametrize("sources", [(0, 1, 2), (1, 2)])  # the general gather index, and two sources'
def test_mixed_puts_each_part_in_its_positions(sources):
    from sparkfeed.mixrows import _mixed
    from sparkfeed.segments import Block
    rng = np.random.default_rng(0)
    labels = np.array(sources, dtype=np.uint8)[rng.integers(0, len(sources), 500)]
    present = np.flatnonzero(np.bincount(labels))
    assert present.tolist() == list(sources)

    def rows(i, n):  # source i's next n rows, as two slices (a take that straddles a block)
        block = Block({"x": torch.arange(n) + 1000 * i, "m": torch.arange(2 * n, dtype=torch.float32).reshape(n, 2),
                       "b": torch.arange(n) % 2 == 0, "s": [str(1000 * i + v) for v in range(n)]}, n)
        return [block.slice(0, n // 3), block.slice(n // 3, n)]

    block = _mixed([rows(int(i), int((labels == i).sum())) for i in present], labels, present)
    x = block.columns["x"]
    assert block.positions == 500 and (x // 1000).tolist() == labels.tolist()
    for i in present:  # each source's rows, in order
        assert (x[torch.from_numpy(labels == i)] % 1000).tolist() == list(range(int((labels == i).sum())))
    assert torch.equal(block.columns["m"][:, 0], (x % 1000 * 2).float())
    assert torch.equal(block.columns["b"], x % 1000 % 2 == 0)
    assert block.columns["s"] == [str(v) for v in x.tolist()]  # lists of str follow the same order


def test_share_spans_wrap_and_cycle():
    assert share_spans(7, 10, 0, 5) == [(7, 10), (0, 2)]
    assert share_spans(7, 10, 4, 3) == [(1, 4)]
    assert share_spans(0, 4, 2, 9) == [(2, 4), (0, 4), (0, 3)]


@pytest.mark.parametrize("with_list", [False, True])  # tensors only (column by column), and a list
@pytest.mark.parametrize("sources", [(0, 1, 2), (1, 2)])
def test_mixed_gathers_shuffle_pieces_as_it_would_their_gathered_rows(sources, with_list):
    """A mix reads shuffled sources ungathered (`Shuffled`: a block's rows and the order of a
    piece of it); `_mixed` must put exactly the rows the pieces would hold once gathered."""
    from sparkfeed.mixrows import _mixed
    from sparkfeed.segments import Block, Shuffled
    rng = np.random.default_rng(1)
    labels = np.array(sources, dtype=np.uint8)[rng.integers(0, len(sources), 400)]
    present = np.flatnonzero(np.bincount(labels))

    def pieces(i, n):  # two pieces of a shuffled block of 3n rows (the second straddles none)
        cols = {"x": torch.arange(3 * n) + 1000 * i, "m": torch.arange(6 * n, dtype=torch.float32).reshape(3 * n, 2)}
        if with_list:
            cols["s"] = [str(1000 * i + v) for v in range(3 * n)]
        order = rng.permutation(3 * n)
        whole = Shuffled(Block(cols, 3 * n), order)
        return [whole.slice(5, 5 + n // 2), whole.slice(5 + n // 2, 5 + n)]

    parts = [pieces(int(i), int((labels == i).sum())) for i in present]
    got = _mixed(parts, labels, present)
    want = _mixed([[p.gathered() for p in ps] for ps in parts], labels, present)
    assert got.positions == want.positions == 400 and list(got.columns) == list(want.columns)
    assert (got.columns["x"] // 1000).tolist() == labels.tolist()
    for name in got.columns:
        assert (torch.equal(got.columns[name], want.columns[name]) if name != "s"
                else got.columns[name] == want.columns[name])


@pytest.mark.parametrize("shuffle", [False, True])
def test_per_batch_source_counts_are_those_of_the_batchs_labels(ds, shuffle, monkeypatch):
    """`_Delivered` counts each batch's sources from counts taken once per window at the batch
    bounds: the same as counting the labels of the batch's mixed positions, for lanes of
    several spans across grid blocks, any batch size, a skipped position, and `__source__`."""
    monkeypatch.setattr(mix, "_MAX_BLOCK", 150)  # grid blocks of 150 positions: windows end often
    engine = loader([Source(ds["a"], weight=3), Source(ds["b"], weight=2), Source(ds["t"], weight=1)],
                    shuffle=shuffle, shuffle_buffer=64)._engine
    grid, rng = engine._grid(0), np.random.default_rng(2)
    assert engine.plan().blocks > 3
    n = engine.plan().num_samples
    for size in (7, 32, 100):
        cuts = np.sort(rng.choice(np.arange(1, n), 6, replace=False))
        spans = [(int(a), int(b)) for a, b in zip(cuts[0::2], cuts[1::2])]
        mixed = np.concatenate([np.arange(a, b) for a, b in spans])
        account = engine._accounting(0, spans)
        for start in range(0, len(mixed), size):
            m = min(size, len(mixed) - start)
            good = None if start != size * 3 else np.concatenate([[0], np.cumsum(np.arange(m) != 1)])
            delta, columns = {}, {}
            account(Block({}, m, good), start, columns, delta)
            labels = grid.labels(int(mixed[start]), int(mixed[start]) + 1) if m == 1 else \
                np.concatenate([grid.labels(int(p), int(p) + 1) for p in mixed[start:start + m]])
            kept = labels if good is None else labels[np.arange(m) != 1]
            assert [delta[f"source.{i}.samples"] for i in range(3)] == np.bincount(kept, minlength=3).tolist()
            assert columns["__source__"].tolist() == kept.tolist()


# ---------------------------------------------------------------- shares, exactly once, determinism

@pytest.mark.parametrize("shuffle", [False, True])
def test_the_mixed_epoch_does_not_depend_on_the_piece_size(ds, shuffle, monkeypatch):
    """Pieces (positions put in order at once) cut the work, not the order: pieces of 37
    positions (grid blocks cut into several, a source part split between pieces) give the
    very rows, in the very order, of pieces as large as a grid block."""
    def epoch() -> list[tuple[int, int]]:
        return run(loader([Source(ds["a"], weight=3), Source(ds["b"], weight=2)], shuffle=shuffle,
                          shuffle_buffer=64, batch_size=50))

    whole = epoch()
    monkeypatch.setattr(mix, "_PIECE", 37)
    assert epoch() == whole and len(whole) > 37 * 4


@pytest.mark.parametrize("shuffle,workers", [(False, 0), (True, 0), (True, 2)])
def test_epoch_holds_each_share_at_most_once(ds, shuffle, workers):
    L = loader([Source(ds["a"], weight=1), Source(ds["b"], weight=1)], shuffle=shuffle, num_workers=workers,
               shuffle_buffer=64)
    rows = run(L)
    ids = [i for i, _ in rows]
    assert len(ids) == len(set(ids)) == 800                       # at most once; 400 + 400
    assert collections.Counter(s for _, s in rows) == {0: 400, 1: 400}
    assert all(origin(i) == (A, B)[s] for i, s in rows)          # __source__ names the source
    assert L.stats()["source.0.samples"] == L.stats()["source.1.samples"] == 400
    if workers:
        return
    # one lane delivers the positions in order: each block of the grid (about shuffle_buffer
    # positions) holds each source's proportion to within one sample
    starts = L._engine.plan().starts
    for g in range(len(starts) - 1):
        block = [s for _, s in rows[starts[g]:starts[g + 1]]]
        assert abs(sum(block) - len(block) / 2) <= 1
    if not shuffle:  # in time order: the sources alternate
        assert [s for _, s in rows[:8]] == [0, 1] * 4
def test_weighted_shares_within_the_documented_tolerance(ds):
    L = loader([Source(ds["a"], weight=0.7), Source(ds["b"], weight=0.3)])
    counts = collections.Counter(s for _, s in run(L))
    n = sum(counts.values())
    assert counts == {0: 600, 1: 257}
    assert abs(counts[0] / n - 0.7) <= 2 / n and abs(counts[1] / n - 0.3) <= 2 / n


def test_full_shares_exactly_once_across_ranks_and_workers(ds):
    sources = [Source(ds["a"]), Source(ds["b"]), Source(ds["t"])]
    ids = []
    for rank in range(2):
        L = loader(sources, num_workers=2, rank=rank, world_size=2, worker_type="thread")
        ids += [i for i, _ in run(L)]
    assert sorted(ids) == list(range(A, A + 600)) + list(range(B, B + 400)) + list(range(T, T + 200))


def test_drop_last_gives_every_rank_the_same_batches(ds):
    sources = [Source(ds["a"], weight=2), Source(ds["b"], weight=1)]
    per_rank = [run(loader(sources, rank=r, world_size=3, drop_last=True, num_workers=2)) for r in range(3)]
    assert len({len(r) for r in per_rank}) == 1 and len(per_rank[0]) % 32 == 0
    ids = [i for r in per_rank for i, _ in r]
    assert len(ids) == len(set(ids)) == 3 * len(per_rank[0])


def test_same_seed_same_order_other_epoch_other_subset(ds):
    sources = [Source(ds["a"], weight=1), Source(ds["b"], weight=1)]   # a: 400 of its 600 per epoch
    first, again, other_seed = run(loader(sources)), run(loader(sources)), run(loader(sources, seed=4))
    assert first == again and first != other_seed
    L = loader(sources)
    L.set_epoch(1)
    second = run(L)
    subset = [{i for i, s in rows if s == 0} for rows in (first, second)]
    assert len(subset[0]) == len(subset[1]) == 400 and subset[0] != subset[1]
    assert {i for i, s in second if s == 1} == set(range(B, B + 400))


def test_samples_fix_the_count_and_repeat_cycles(ds):
    L = loader([Source(ds["a"], samples=100), Source(ds["b"], samples=1000, repeat=True)], num_workers=2)
    rows = run(L)
    per_source = collections.Counter(s for _, s in rows)
    assert per_source == {0: 100, 1: 1000}
    a_ids = [i for i, s in rows if s == 0]
    assert len(set(a_ids)) == 100
    times = collections.Counter(i for i, s in rows if s == 1)
    assert set(times) == set(range(B, B + 400)) and set(times.values()) == {2, 3}  # 1000 / 400
    with pytest.raises(ValueError, match=r"source 0 \(.*/a'\) has 600 samples .*samples=700"):
        loader([Source(ds["a"], samples=700), Source(ds["b"])])  # unfiltered: refused when built
    filtered = loader([Source(ds["a"], samples=600, filter=[("id", ">", 0)]), Source(ds["b"])])
    with pytest.raises(ValueError, match=r"source 0 \(.*/a'\) has 599 samples .*samples=600"):
        len(filtered)  # (its size after the filter is known once counted: the first len() or batch)


# ---------------------------------------------------------------- resume

@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_delivers_exactly_the_rest(ds, workers):
    sources = [Source(ds["a"], weight=0.6), Source(ds["t"], weight=0.4)]
    full = loader(sources, num_workers=workers, worker_type="process" if workers else "auto")
    full.set_epoch(2)
    expected = run(full)
    L = loader(sources, num_workers=workers)
    L.set_epoch(2)
    it, head = iter(L), []
    for _ in range(5):
        b = next(it)
        head += list(zip(b["id"].tolist(), b["__source__"].tolist()))
    state = L.state_dict()
    it.close()
    R = loader(sources, num_workers=workers)
    R.load_state_dict(state)
    assert head + run(R) == expected                          # same batches, same order
    R0 = loader(sources, num_workers=0)                       # another worker count: the same rest
    R0.load_state_dict(state)
    assert sorted(head + run(R0)) == sorted(expected)


def test_every_ranks_state_resumes_in_another_world_size(ds):
    sources = [Source(ds["a"], weight=1), Source(ds["b"], weight=1, filter=[("label", "<", 5)])]
    states, seen = [], []
    for rank in range(2):
        L = loader(sources, rank=rank, world_size=2, num_workers=2)
        it = iter(L)
        for _ in range(3):
            seen += next(it)["id"].tolist()
        states.append(L.state_dict())
        it.close()
    whole = sorted(i for i, _ in run(loader(sources, world_size=1, rank=0)))
    R = loader(sources, rank=0, world_size=1)
    R.load_state_dict(states)
    assert sorted(seen + [i for i, _ in run(R)]) == whole


def test_state_of_another_mix_is_refused(ds):
    state = loader([Source(ds["a"], weight=0.7), Source(ds["b"], weight=0.3)]).state_dict()
    L = loader([Source(ds["a"], weight=0.5), Source(ds["b"], weight=0.5)])
    with pytest.raises(ValueError, match="over other data or with other settings"):
        L.load_state_dict(state)


# ---------------------------------------------------------------- filters, stats, formats, types

def test_each_filter_and_its_pushdown_apply_to_its_source_alone(ds):
    L = loader([Source(ds["a"], filter=[("label", "<", 3)]), Source(ds["b"])], num_workers=2)
    rows = [(i, s, lab) for b in L
            for i, s, lab in zip(b["id"].tolist(), b["__source__"].tolist(), b["label"].tolist())]
    assert sorted(i for i, s, _ in rows if s == 0) == [i for i in range(600) if i % 10 < 3]
    assert sorted(i for i, s, _ in rows if s == 1) == list(range(B, B + 400))
    stats = L.stats()
    assert stats["source.0.row_groups_pruned"] > 0 and stats["source.1.row_groups_pruned"] == 0
    per_source = {k for k in stats if k.startswith("source.")}
    assert per_source == {f"source.{i}.{k}" for i in (0, 1) for k in mix.SOURCE_STATS}  # filter or not
    for key in mix.SOURCE_STATS:
        assert stats[key] == stats[f"source.0.{key}"] + stats[f"source.1.{key}"], key
    assert stats["source.0.samples"] == 180 and stats["source.1.samples"] == 400


def test_both_formats_in_one_mix_on_worker_processes(ds):
    L = loader([Source(ds["a"], weight=3), Source(ds["t"], weight=1)], num_workers=2,
               worker_type="process")
    batches = list(L)
    rows = [(i, s) for b in batches for i, s in zip(b["id"].tolist(), b["__source__"].tolist())]
    assert collections.Counter(s for _, s in rows) == {0: 600, 1: 200}
    assert all(origin(i) == (A, T)[s] for i, s in rows)
    assert all(b["feature"].shape == (len(b["id"]), 2) and isinstance(b["caption"], list) for b in batches)
    assert list(batches[0]) == COLS + ["__source__"]
    assert L.stats()["source.1.bytes_read"] > 0


def test_kept_worker_processes_read_a_mixs_next_epoch_ahead_with_the_same_batches(ds):
    """A shuffled mix on worker processes kept between epochs: each epoch after the first is
    read ahead in the workers, and the batches and per-source counters are those of new workers."""
    sources = [Source(ds["a"], weight=0.6), Source(ds["t"], weight=0.4)]
    kw = dict(num_workers=2, worker_type="process", shuffle=True, seed=1)
    kept, fresh = loader(sources, persistent_workers=True, **kw), loader(sources, **kw)
    for epoch in range(3):
        kept.set_epoch(epoch)
        fresh.set_epoch(epoch)
        assert [b["id"].tolist() for b in kept] == [b["id"].tolist() for b in fresh]
    stats, fresh_stats = kept.stats(), fresh.stats()
    assert stats["epochs_read_ahead"] == 2
    for key in ("samples", "source.0.samples", "source.1.samples", "source.0.bytes_read", "source.1.bytes_read"):
        assert stats[key] == fresh_stats[key], key


def test_integer_columns_of_different_widths_share_the_batch_dtype(ds):
    L = loader([Source(ds["a"]), Source(ds["c"])], with_source=False)
    batches = list(L)
    assert {b["label"].dtype for b in batches} == {torch.int64} and "__source__" not in batches[0]
    assert sorted(i for b in batches for i in b["id"].tolist()) == list(range(600)) + list(range(C, C + 100))


def test_a_manifest_kept_elsewhere(ds, tmp_path):
    import shutil
    shutil.copy(f"{ds['b']}/_sparkfeed.json", tmp_path / "b.json")
    m = sparkfeed.read_manifest(ds["c"])
    L = sparkfeed.DataLoader([Source(ds["b"], manifest=str(tmp_path / "b.json")), Source(ds["c"], manifest=m)],
                             batch_size=100, columns=["id"])
    assert sorted(i for b in L for i in b["id"].tolist()) == list(range(B, B + 400)) + list(range(C, C + 100))


def test_foreign_parquet_without_a_manifest_joins_a_mix(ds, tmp_path):
    import pyarrow.parquet as pq
    (tmp_path / "foreign").mkdir()
    data = shifted(120, T)
    pq.write_table(data.slice(0, 70), tmp_path / "foreign" / "a.parquet", row_group_size=35)
    pq.write_table(data.slice(70), tmp_path / "foreign" / "b.parquet", row_group_size=25)
    L = loader([Source(ds["b"], weight=1), Source(str(tmp_path / "foreign"), weight=1)], num_workers=2)
    rows = run(L)  # the foreign source is indexed in memory, as DataLoader(path) does
    assert collections.Counter(s for _, s in rows) == {0: 120, 1: 120}
    assert sorted(i for i, s in rows if s == 1) == list(range(T, T + 120))


def test_plain_torch_over_a_mixed_dataset(ds):
    mixed = sparkfeed.Dataset([Source(ds["b"]), Source(ds["c"], weight=None)], columns=["id", "label"],
                              with_source=True)
    rows = list(torch.utils.data.DataLoader(mixed, batch_size=None))
    assert sorted(int(r["id"]) for r in rows) == list(range(B, B + 400)) + list(range(C, C + 100))
    assert all(int(r["__source__"]) == (int(r["id"]) >= C) for r in rows)


def test_bad_image_in_a_mix_names_its_source_and_shard(ds, tmp_path):
    good = io.BytesIO()
    Image.new("RGB", (16, 12), (9, 99, 199)).save(good, format="JPEG")
    data = shifted(60, A, image_bytes=1).set_column(5, "image", pa.array([good.getvalue()] * 60))
    dsutil.write_parquet(str(tmp_path / "img"), data, 60, 30, codecs={"image": "jpeg"})
    dsutil.write_tar(str(tmp_path / "bad"), shifted(40, T, image_bytes=20), 20)  # not JPEG
    spec = sparkfeed.ImageDecode(size=8, device="cpu")
    sources = [Source(str(tmp_path / "img")), Source(str(tmp_path / "bad"))]
    with pytest.raises(CorruptSampleError, match=re.escape(str(tmp_path / "bad")) + r".*shard 'shard-0000[01]\.tar'"):
        for _ in sparkfeed.DataLoader(sources, batch_size=25, columns=["id", "image"], decode={"image": spec}):
            pass
    L = sparkfeed.DataLoader(sources, batch_size=25, columns=["id", "image"], decode={"image": spec},
                             on_error="skip")
    assert sorted(i for b in L for i in b["id"].tolist()) == list(range(60))
    assert L.stats()["samples_skipped"] == 40


# ---------------------------------------------------------------- refused when built

def test_a_column_missing_from_a_source_is_named(ds):
    with pytest.raises(ValueError, match=r"`columns` names 'key', which source 1 \(.*/a'\) does not have"):
        sparkfeed.DataLoader([Source(ds["t"]), Source(ds["a"])], batch_size=4)


def test_incompatible_types_are_named(ds):
    with pytest.raises(ValueError, match=r"column 'label' is string in source 1 \(.*/s'\) but int32 in source 0"):
        sparkfeed.DataLoader([Source(ds["a"]), Source(ds["s"])], batch_size=4, columns=["id", "label"])
    L = sparkfeed.DataLoader([Source(ds["a"]), Source(ds["s"])], batch_size=4, columns=["id", "caption"])
    assert len(L) == 175  # the columns both hold are fine


def test_source_column_collision_and_misuse_are_refused(ds):
    with pytest.raises(ValueError, match="`with_source=True` adds the column '__source__'"):
        sparkfeed.DataLoader([Source(ds["u"])], batch_size=4, with_source=True)
    L = sparkfeed.DataLoader([Source(ds["u"])], batch_size=50)  # the user's own column, untouched
    assert next(iter(L))["__source__"].tolist() == list(range(50))
    with pytest.raises(ValueError, match="`with_source=True` tags each row with its source in a mix"):
        sparkfeed.DataLoader(ds["a"], batch_size=4, with_source=True)


def test_a_source_with_more_units_than_row_keys_hold_is_refused(ds, monkeypatch):
    import sparkfeed.mixsource
    monkeypatch.setattr(sparkfeed.mixsource, "_MAX_UNITS", 16)  # 2^24 row groups would not fit a test
    assert len(sparkfeed.DataLoader([Source(ds["t"]), Source(ds["b"])], batch_size=4, columns=["id"])) == 150
    with pytest.raises(ValueError, match=r"source 1 \('.*/a'\) has 20 work units \(row groups, or shards "
                                         r"without row groups\), but a source of a mix can have at most 16"):
        sparkfeed.DataLoader([Source(ds["b"]), Source(ds["a"])], batch_size=4, columns=["id"])


@pytest.mark.parametrize("kwargs,match", [
    ({"weight": 0}, r"`weight` should be a positive number or None, but got weight=0"),
    ({"weight": True}, r"`weight` should be a positive number or None, but got weight=True"),
    ({"samples": -1}, r"`samples` should be a positive integer or None, but got samples=-1"),
    ({"weight": 1, "samples": 3}, r"`weight` and `samples` should not both be given"),
    ({"repeat": "yes"}, r"`repeat` should be True or False, but got repeat='yes'"),
    ({"filter": "label < 3"}, r"`filter` should be None, DNF tuples"),
])
def test_source_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Source("ds/", **kwargs)


def test_numpy_numbers_are_weights_and_counts_as_pythons(ds):
    """Weights or counts taken from a numpy array (np.int64(3), np.float32(0.5)) were refused as
    not positive numbers; they are taken as the Python numbers they hold, so the shares and a saved
    state's settings are those of the same numbers written plainly."""
    assert Source("ds/", weight=np.int64(3)) == Source("ds/", weight=3)
    assert Source("ds/", weight=np.float32(0.5)).weight == 0.5 and Source("ds/", samples=np.uint16(7)).samples == 7
    assert type(Source("ds/", weight=np.float64(0.7)).weight) is float
    with pytest.raises(ValueError, match=r"`weight` should be a positive number or None, but got weight=-2"):
        Source("ds/", weight=np.int8(-2))
    as_numpy = loader([Source(ds["a"], weight=np.int64(3)), Source(ds["b"], weight=np.float32(2.0))])
    plain = loader([Source(ds["a"], weight=3), Source(ds["b"], weight=2.0)])
    assert run(as_numpy) == run(plain)
    plain.load_state_dict(as_numpy.state_dict())


def test_a_mix_is_a_list_of_sources(ds):
    with pytest.raises(ValueError, match=r"a mix should be a non-empty list of sparkfeed.Source, but got \['str'\]"):
        sparkfeed.DataLoader([ds["a"]], batch_size=4)
    with pytest.raises(ValueError, match="in a mix give each sparkfeed.Source its own manifest="):
        sparkfeed.Dataset([Source(ds["a"])], manifest=sparkfeed.read_manifest(ds["a"]))
    with pytest.raises(ValueError, match=r"`filter` .* cannot apply to dataset '.*/b \(source 1\)'"):
        sparkfeed.DataLoader([Source(ds["a"]), Source(ds["b"], filter=[("nope", "<", 3)])], batch_size=4)
