"""shuffle.py and the shuffled epoch stream: invariants over many shapes, mixing on clustered
data, no byte read twice, and the stated memory bound (one block of runs)."""

from __future__ import annotations

import os
import threading

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dsutil
import sparkfeed
from sparkfeed import ShardReadError, shuffle, storage
from sparkfeed.plan import Plan, WorkUnit
from sparkfeed.read import ReadContext, make_reader
from sparkfeed.stats import Stats
from sparkfeed.epoch import EpochStream
from sparkfeed.stream import StreamReader

sizes_st = st.lists(st.integers(1, 300), min_size=1, max_size=60)


def _plan(shards: list[list[int]]) -> Plan:
    """A plan of row groups with the given counts, shard by shard (as make_plan lists them)."""
    units = [WorkUnit(0, s, f"part-{s}.parquet", g, n) for s, groups in enumerate(shards)
             for g, n in enumerate(groups)]
    units = [WorkUnit(i, u.shard, u.path, u.row_group, u.num_rows) for i, u in enumerate(units)]
    return Plan(units=tuple(units), counts=tuple(u.num_rows for u in units), columns=("id",),
                filter_columns=(), shards_planned=len(shards), shards_pruned=0,
                row_groups_planned=len(units), row_groups_pruned=0, counted=False)


@settings(max_examples=80, deadline=None)
@given(sizes_st, st.integers(0, 2**31), st.integers(0, 50), st.integers(1, 2000),
       st.sampled_from(sorted(shuffle.ALGORITHMS)))
def test_layout_is_a_permutation_of_runs_cut_into_bounded_blocks(sizes, seed, epoch, block, algo):
    order, cuts = shuffle.block_layout(algo, sizes, seed, epoch, block)
    assert sorted(order.tolist()) == list(range(len(sizes)))
    assert cuts[0] == 0 and cuts[-1] == len(sizes) and np.all(np.diff(cuts) > 0)
    ordered = np.asarray(sizes)[order]
    for a, b in zip(cuts[:-1], cuts[1:]):  # a block holds at most `block` samples plus one run
        assert ordered[a:b].sum() <= block + ordered[a:b].max()
    again = shuffle.block_layout(algo, sizes, seed, epoch, block)
    assert np.array_equal(order, again[0]) and np.array_equal(cuts, again[1])


@settings(max_examples=60, deadline=None)
@given(sizes_st, st.integers(0, 2**31), st.integers(1, 2000), st.integers(1, 12))
def test_max_runs_cuts_blocks_of_at_most_that_many_runs(sizes, seed, block, max_runs):
    order, cuts = shuffle.block_layout("block", sizes, seed, 0, block, max_runs)
    runs = np.diff(cuts)
    assert sorted(order.tolist()) == list(range(len(sizes))) and runs.sum() == len(sizes)
    assert runs.max() <= max_runs
    ordered = np.asarray(sizes)[order]
    for a, b in zip(cuts[:-1], cuts[1:]):  # and still at most `block` samples plus one run
        assert ordered[a:b].sum() <= block + ordered[a:b].max()
    plain = shuffle.block_layout("block", sizes, seed, 0, block)
    assert np.array_equal(order, plain[0])  # the cap cuts blocks; the run order is the same
    if len(sizes) <= max_runs:
        assert np.array_equal(cuts, plain[1])


def test_default_block_of_many_tiny_shards_is_cut_by_runs_and_says_so():
    plan = _plan([[10]] * 3000)  # 30,000 samples: one default block by size alone
    stream = EpochStream(plan, seed=1, epoch=0, shuffle=True)
    runs_per_block = np.diff(stream.block_runs)
    assert len(runs_per_block) == 3 and runs_per_block.max() <= shuffle.MAX_BLOCK_RUNS
    assert stream.capped and stream.max_block <= 10 * shuffle.MAX_BLOCK_RUNS
    chosen = EpochStream(plan, seed=1, epoch=0, shuffle=True, shuffle_buffer=30_000)
    assert len(chosen.block_runs) == 2 and not chosen.capped  # a chosen block is the user's
    few = EpochStream(_plan([[10]] * 100), seed=1, epoch=0, shuffle=True)
    assert len(few.block_runs) == 2 and not few.capped


def test_permutations_are_permutations_deterministic_and_differ_by_epoch():
    for length in (0, 1, 5, 1000):
        p = shuffle.block_permutation(3, 1, 7, length)
        assert sorted(p.tolist()) == list(range(length))
        assert np.array_equal(p, shuffle.block_permutation(3, 1, 7, length))
    assert not np.array_equal(shuffle.block_permutation(3, 1, 7, 100), shuffle.block_permutation(3, 2, 7, 100))
    sizes = [10] * 50
    assert not np.array_equal(shuffle.block_layout("block", sizes, 0, 0, 100)[0],
                              shuffle.block_layout("block", sizes, 0, 1, 100)[0])


def test_unknown_algorithm_is_refused_by_name():
    with pytest.raises(ValueError, match=r"`shuffle_algo` should be one of \['block', 'unit'\], but got shuffle_algo='py1s'"):
        shuffle.block_layout("py1s", [1, 2], 0, 0, 10)


def test_runs_are_consecutive_units_of_one_shard_and_bounded():
    shards = [0] * 40 + [1] * 3
    bounds = shuffle.runs(shards, [100] * 43, block=8000)
    # a run: first rows in one stretch of 1,000 (= block / 8) and in one stretch of 16 units
    assert bounds.tolist() == [0, 10, 16, 20, 30, 32, 40, 43]
    assert shuffle.runs(shards, [100] * 43, block=10**6).tolist() == [0, 16, 32, 40, 43]
    assert shuffle.runs([0, 0], [5000, 5000], block=8).tolist() == [0, 1, 2]  # a big unit alone


def test_default_block_follows_the_bytes_per_sample_within_bounds():
    assert shuffle.default_block(100) == shuffle.MAX_BLOCK
    assert shuffle.default_block(16 * 1024) == shuffle.BLOCK_BYTES // (16 * 1024)
    assert shuffle.default_block(10 << 20) == shuffle.MIN_BLOCK
    assert shuffle.default_block(0) == shuffle.MAX_BLOCK


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(1, 50), min_size=1, max_size=6), min_size=1, max_size=5),
       st.integers(0, 1000), st.integers(1, 200))
def test_the_shuffled_stream_holds_every_unit_once_in_whole_blocks(shards, seed, block):
    plan = _plan(shards)
    stream = EpochStream(plan, seed=seed, epoch=2, shuffle=True, shuffle_buffer=block)
    assert sorted(u.index for u in stream.units) == list(range(len(plan.units)))
    assert stream.num_samples == plan.num_samples
    assert stream.blocks[0] == 0 and stream.blocks[-1] == plan.num_samples
    assert set(stream.blocks.tolist()) <= set(stream.starts.tolist())  # blocks hold whole units
    assert stream.max_block <= block + max(max(s) for s in shards) * shuffle.RUN_UNITS
    same = EpochStream(plan, seed=seed, epoch=2, shuffle=True, shuffle_buffer=block)
    assert [u.index for u in same.units] == [u.index for u in stream.units]
    assert np.array_equal(same.blocks, stream.blocks)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(1, 50), min_size=1, max_size=6), min_size=1, max_size=5),
       st.integers(0, 1000), st.integers(1, 200), st.integers(1, 5), st.booleans())
def test_samples_read_are_the_whole_blocks_each_lane_reaches(shards, seed, block, lanes, shared):
    """Each lane reads every block its span reaches, whole; lanes that share blocks read each
    once. So the figure is at least the lanes' share, and equals it where no block is split."""
    stream = EpochStream(_plan(shards), seed=seed, epoch=1, shuffle=True, shuffle_buffer=block)
    n, bounds = stream.num_samples, stream.blocks.tolist()
    cuts = [n * k // lanes for k in range(lanes + 1)]
    spans = [[(lo, hi)] if hi > lo else [] for lo, hi in zip(cuts, cuts[1:])]
    reached = [{b for b in range(len(bounds) - 1) if hi > lo and bounds[b] < hi and bounds[b + 1] > lo}
               for lo, hi in zip(cuts, cuts[1:])]  # (an empty span reaches no block)
    groups = [set().union(*reached)] if shared else reached
    expected = sum(bounds[b + 1] - bounds[b] for g in groups for b in g)
    assert stream.samples_read(spans, shared) == expected >= n
    assert stream.samples_read(spans, shared=True) == n  # lanes sharing the epoch read each block once
    if set(cuts) <= set(bounds):
        assert stream.samples_read(spans, shared=False) == n  # no block split: no lane reads another's


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(1, 50), min_size=1, max_size=6), min_size=1, max_size=5),
       st.integers(0, 1000), st.integers(1, 200), st.integers(1, 5), st.floats(0, 0.5))
def test_a_tail_no_reader_delivers_is_not_counted_as_read_twice(shards, seed, block, lanes, dropped):
    """Where the lanes cover the kept positions and share blocks, counting kept positions only
    gives exactly the share, whatever tail (drop_last) is left: that tail is read with its
    block but by nobody else. Lanes that do not share blocks still count each split block."""
    stream = EpochStream(_plan(shards), seed=seed, epoch=1, shuffle=True, shuffle_buffer=block)
    kept_end = stream.num_samples - int(stream.num_samples * dropped)
    cuts = [kept_end * k // lanes for k in range(lanes + 1)]
    spans = [[(lo, hi)] if hi > lo else [] for lo, hi in zip(cuts, cuts[1:])]
    kept = [(0, kept_end)]
    assert stream.samples_read(spans, shared=True, kept=kept) == kept_end
    assert stream.samples_read(spans, shared=True) >= kept_end  # whole blocks, the tail's too
    assert kept_end <= stream.samples_read(spans, shared=False, kept=kept) <= stream.samples_read(spans, shared=False)


# ----------------------------------------------------------------------------- loaders

N_MIX, LABELS, BATCH = 20_000, 1_000, 256


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    """20,000 rows, 1,000 labels of 20 rows each, written clustered (sorted) by label in
    row groups of 1,024 and shards of 10,000, as `sparkfeed.write(cluster_by="label")` does."""
    root = str(tmp_path_factory.mktemp("clustered") / "ds")
    ids = np.arange(N_MIX, dtype=np.int64)
    table = pa.table({"id": ids, "label": (ids * LABELS // N_MIX).astype(np.int32)})
    dsutil.write_parquet(root, table, 10_000, 1_024, sort_by="label")
    return root


def _uniform_distinct(n: int, labels: int, batch: int) -> float:
    """Expected distinct labels in a uniform draw of `batch` rows (n rows, equal label sizes)."""
    per = n // labels
    return labels * (1 - np.prod([(n - per - i) / (n - i) for i in range(batch)]))


def _distinct_per_batch(loader) -> float:
    return float(np.mean([len(set(b["label"].tolist())) for b in loader]))


def test_default_shuffle_mixes_clustered_data_like_a_uniform_shuffle(clustered):
    """Invariant: at default settings a batch holds >= 90% of the distinct labels a uniform
    shuffle gives (~226 here); a shuffle within single row groups (block = one unit) gets ~51."""
    target = 0.9 * _uniform_distinct(N_MIX, LABELS, BATCH)
    for seed in (0, 1):
        loader = sparkfeed.DataLoader(clustered, batch_size=BATCH, shuffle=True, seed=seed,
                                      drop_last=True, num_workers=2)
        assert _distinct_per_batch(loader) >= target
    per_unit = sparkfeed.DataLoader(clustered, batch_size=BATCH, shuffle=True, seed=0,
                                    drop_last=True, num_workers=2, shuffle_buffer=1_024)
    assert _distinct_per_batch(per_unit) < 0.5 * target


@pytest.mark.parametrize("worker_type", ["thread", "process"])
@pytest.mark.parametrize("world,workers", [(2, 2), (3, 1)])
def test_each_position_once_across_ranks_and_workers_with_many_blocks(clustered, worker_type, world, workers):
    got = []
    for rank in range(world):
        loader = sparkfeed.DataLoader(clustered, batch_size=100, shuffle=True, seed=4, rank=rank,
                                      world_size=world, num_workers=workers, shuffle_buffer=3_000,
                                      worker_type=worker_type, columns=["id"])
        got += [i for b in loader for i in b["id"].tolist()]
    assert sorted(got) == list(range(N_MIX))


def test_resume_with_other_workers_and_world_size_continues_the_same_blocks(clustered):
    make = lambda **kw: sparkfeed.DataLoader(clustered, batch_size=100, shuffle=True, seed=2,
                                             shuffle_buffer=3_000, columns=["id"], **kw)
    full = [i for b in make(num_workers=2) for i in b["id"].tolist()]
    first, it = make(num_workers=2), None
    it = iter(first)
    head = [i for _ in range(37) for i in next(it)["id"].tolist()]
    state = first.state_dict(all_ranks=False)
    del it
    rest = []
    for rank in range(2):
        again = make(num_workers=1, rank=rank, world_size=2)
        again.load_state_dict(state)
        rest += [i for b in again for i in b["id"].tolist()]
    assert sorted(head + rest) == list(range(N_MIX))
    assert set(head) == set(full[:len(head)])


@pytest.fixture(scope="module")
def four_groups(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("four") / "ds")
    dsutil.write_parquet(root, dsutil.table(1024, image_bytes=64), 512, 256, sort_by="label")
    return root


def test_a_shuffled_epoch_reads_the_bytes_of_an_unshuffled_one(four_groups):
    """Two thread lanes split the positions at 512, inside the one block: the lane that gets
    there first reads the block, the other takes it, so each byte is read once."""
    def stats(shuffle):
        loader = sparkfeed.DataLoader(four_groups, batch_size=256, shuffle=shuffle, num_workers=2,
                                      worker_type="thread")
        assert sum(len(b["id"]) for b in loader) == 1024
        return loader.stats()
    plain, mixed = stats(False), stats(True)
    assert mixed["bytes_read"] == plain["bytes_read"] > 0
    assert mixed["shuffle_blocks"] == 1 and mixed["shuffle_block_rows"] == 1024


def test_memory_is_one_block_of_runs_and_each_block_is_read_once(clustered):
    """The stated bound: a lane holds one block, at most `shuffle_buffer` samples plus one run
    (`EpochStream.max_block`); `stats()` counts each block read (`shuffle_blocks`) and the rows
    it held (`shuffle_block_rows`), which sum to the epoch when no block is read twice."""
    loader = sparkfeed.DataLoader(clustered, batch_size=100, shuffle=True, seed=9, num_workers=2,
                                  shuffle_buffer=4_000, worker_type="thread", columns=["id"])
    stream = loader.dataset.stream()
    run = 4_000 // 8  # runs hold at most block / 8 samples unless one unit alone is larger
    assert stream.max_block <= 4_000 + max(run, 1_024)
    assert sum(len(b["id"]) for b in loader) == N_MIX
    stats = loader.stats()
    assert stats["shuffle_blocks"] == len(stream.blocks) - 1
    assert stats["shuffle_block_rows"] == N_MIX


def test_a_shuffled_epoch_of_many_blocks_reads_each_footer_once(clustered, monkeypatch):
    """Thread lanes and the helper threads that read each block's runs share the footers of
    one iteration (`read.sharedreads.SharedReads`): a shuffled epoch of several blocks reads what an
    unshuffled one does, footers included, and every file's footer once per iteration."""
    from sparkfeed import stream

    monkeypatch.setattr(stream, "cores", lambda: 8)  # 4 per lane: each block gets helpers

    def stats(shuffle):
        loader = sparkfeed.DataLoader(clustered, batch_size=100, shuffle=shuffle, seed=5, num_workers=2,
                                      shuffle_buffer=3_000, worker_type="thread", columns=["id", "label"])
        for _ in range(2):  # a second pass reads every footer again
            assert sorted(i for b in loader for i in b["id"].tolist()) == list(range(N_MIX))
        return loader.stats()
    plain, mixed = stats(False), stats(True)
    assert mixed["shuffle_blocks"] >= 2 * 6  # several blocks per pass, read by helpers too
    assert mixed["bytes_read"] == plain["bytes_read"] > 0


def _lane_readers(path: str, lanes, stats):
    """One StreamReader per lane over the same epoch stream, as thread lanes get them."""
    ds = sparkfeed.Dataset(path, columns=["id"], shuffle=True, seed=3)
    fs, root = storage.resolve(path)
    stream = ds.stream()
    return [StreamReader(stream, make_reader("parquet", ReadContext(
        fs=fs, root=root, dataset=path, schema=ds.manifest.schema, columns=("id",),
        filter_columns=(), expr=None, stats=stats[k])), lanes=lanes) for k in range(len(lanes))]


def _run_lanes(readers, lanes):
    """Each lane's segments on its own thread, started together; results or errors per lane."""
    barrier, out = threading.Barrier(len(lanes)), [None] * len(lanes)

    def lane(k):
        barrier.wait()
        try:
            out[k] = [i for seg in readers[k].segments(lanes[k]) for i in seg.columns["id"].tolist()]
        except Exception as exc:  # noqa: BLE001 - handed to the test
            out[k] = exc
        finally:
            readers[k].close()

    threads = [threading.Thread(target=lane, args=(k,)) for k in range(len(lanes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_block_helpers_take_the_cores_the_lanes_leave(four_groups, monkeypatch):
    """Helper threads for a block: the block's share of the cores (an even share per lane of the
    iteration, one per lane that delivers from the block) less the lanes that read it."""
    from sparkfeed import stream

    lanes = [[(0, 300)], [(300, 1024)]]  # both inside the one block
    readers = _lane_readers(four_groups, lanes, [Stats(), Stats()])
    for reader, spans in zip(readers, lanes):
        reader._join_lanes(spans)
    alone = _lane_readers(four_groups, [[(0, 1024)]], [Stats()])[0]  # no other lane
    spare = {}
    for n in (1, 2, 3, 16):
        monkeypatch.setattr(stream, "cores", lambda n=n: n)
        spare[n] = (readers[0]._spare_cores(0), readers[1]._spare_cores(0), alone._spare_cores(0))
    assert spare == {1: (-1, -1, 0), 2: (0, 0, 1), 3: (1, 1, 2), 16: (14, 14, 15)}
    three = [[(0, 300)], [(300, 600)], [(600, 1024)]]
    monkeypatch.setattr(stream, "cores", lambda: 6)
    reader = _lane_readers(four_groups, three, [Stats() for _ in three])[0]
    reader._join_lanes(three[0])
    assert reader._spare_cores(0) == 3 * 6 // 3 - 3  # three lanes share it: their 6 cores, less 3
    monkeypatch.setattr(stream, "cores", lambda: 8)  # in one of torch's 4 worker processes
    monkeypatch.setattr(stream.torch.utils.data, "get_worker_info", lambda: type("Info", (), {"num_workers": 4}))
    assert alone._spare_cores(0) == 8 // 4 - 1
    for r in readers:
        r.close()


def test_lanes_on_threads_read_a_shared_block_together_once(four_groups):
    lanes = [[(0, 300)], [(300, 700)], [(700, 1024)]]  # three lanes inside the one block
    stats = [Stats() for _ in lanes]
    out = _run_lanes(_lane_readers(four_groups, lanes, stats), lanes)
    assert sorted(i for ids in out for i in ids) == list(range(1024))
    alone = StreamReader(sparkfeed.Dataset(four_groups, columns=["id"], shuffle=True, seed=3).stream(),
                         _lane_readers(four_groups, [[(0, 1024)]], [Stats()])[0].reader)
    assert [i for seg in alone.segments([(0, 1024)]) for i in seg.columns["id"].tolist()] == \
        [i for ids in out for i in ids]  # the same order as one lane reading alone
    totals = [s.snapshot() for s in stats]
    assert sum(t.get("shuffle_block_rows", 0) for t in totals) == 1024
    plain = Stats()
    list(StreamReader(sparkfeed.Dataset(four_groups, columns=["id"]).stream(),
                      _lane_readers(four_groups, [[(0, 1024)]], [plain])[0].reader).segments([(0, 1024)]))
    assert sum(t["bytes_read"] for t in totals) <= plain.snapshot()["bytes_read"] + 3 * 4096  # + footers


def test_a_corrupt_run_in_a_shared_block_raises_in_every_lane_and_nothing_hangs(tmp_path):
    root = str(tmp_path / "ds")
    dsutil.write_parquet(root, dsutil.table(1024), 512, 256)
    with open(os.path.join(root, "part-00001.parquet"), "r+b") as f:
        f.seek(100)
        f.write(b"\0" * 2000)  # data pages of the second shard, footer intact
    lanes = [[(0, 512)], [(512, 1024)]]
    out = _run_lanes(_lane_readers(root, lanes, [Stats(), Stats()]), lanes)
    for err in out:
        assert isinstance(err, ShardReadError) and "part-00001.parquet" in str(err)


def test_block_reading_helpers_end_with_their_block(clustered):
    """Helper threads read runs of one block and stop; none outlives the epoch."""
    loader = sparkfeed.DataLoader(clustered, batch_size=500, shuffle=True, num_workers=0,
                                  shuffle_buffer=5_000, columns=["id"])
    assert sorted(i for b in loader for i in b["id"].tolist()) == list(range(N_MIX))
    helpers = [t for t in threading.enumerate() if t.name == "sparkfeed-block-reader"]
    for t in helpers:
        t.join(timeout=60)  # each has returned or is returning: its block was built
    assert not any(t.is_alive() for t in helpers)


@pytest.fixture(scope="module")
def unsigned_path(tmp_path_factory):
    """uint16/32/64 columns (torch holds them, with few kernels) beside the id, at their extremes."""
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("unsigned")
    ids = np.arange(60, dtype=np.int64)
    pq.write_table(pa.table({"id": ids, "u16": (ids * 1_000 + 5).astype(np.uint16),
                             "u32": (ids + 2**32 - 60).astype(np.uint32),
                             "u64": ids.astype(np.uint64) + np.uint64(2**64 - 60)}),
                   root / "part-0.parquet", row_group_size=7)
    sparkfeed.index(str(root), progress=False)
    return str(root)


@pytest.mark.parametrize("kwargs", [dict(), dict(num_workers=2), dict(num_workers=2, worker_type="process"),
                                    dict(shuffle_buffer=5)], ids=str)
def test_unsigned_columns_are_shuffled_and_mixed_with_their_rows(unsigned_path, kwargs):
    """torch has no index_select for uint16/32/64: a shuffled epoch of such a column failed."""
    def rows(loader):
        return sorted((i, a, b, c) for batch in loader for i, a, b, c in zip(
            *(batch[k].tolist() for k in ("id", "u16", "u32", "u64"))))

    want = [(i, i * 1_000 + 5, i + 2**32 - 60, i + 2**64 - 60) for i in range(60)]
    assert rows(sparkfeed.DataLoader(unsigned_path, batch_size=8, shuffle=True, **kwargs)) == want
    mixed = sparkfeed.DataLoader([sparkfeed.Source(unsigned_path), sparkfeed.Source(unsigned_path)],
                                 batch_size=8, shuffle=True, **kwargs)
    assert rows(mixed) == sorted(want + want)
