"""Unshuffled thread lanes share the units a lane boundary falls inside (`blocks.SharedUnits`):
a Parquet row group is read whole, so without it every lane that delivers rows of one would
read and convert all of it. (Shared shuffle blocks: tests/unit/test_shuffle.py.)"""

from __future__ import annotations

import os
import threading
import time

import pytest

import dsutil
import sparkfeed
from sparkfeed import ShardReadError


@pytest.fixture(scope="module")
def one_group(tmp_path_factory):
    """One file of one 1,000-row group: every lane boundary falls inside it."""
    root = str(tmp_path_factory.mktemp("one") / "ds")
    dsutil.write_parquet(root, dsutil.table(1000, image_bytes=32), 1000, 1000)
    return root


@pytest.fixture(scope="module")
def split_groups(tmp_path_factory):
    """3 files of 2 row groups of 250 rows: 4 lanes split 1,500 rows inside three of them."""
    root = str(tmp_path_factory.mktemp("split") / "ds")
    dsutil.write_parquet(root, dsutil.table(1500, image_bytes=32), 500, 250)
    return root


def _epoch(path, workers, worker_type="thread", **kw):
    loader = sparkfeed.DataLoader(path, batch_size=64, num_workers=workers, worker_type=worker_type, **kw)
    batches = [b["id"].tolist() for b in loader]
    return batches, loader.stats()


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_thread_lanes_read_a_row_group_split_between_them_once(one_group, workers):
    alone, alone_stats = _epoch(one_group, 1)
    batches, stats = _epoch(one_group, workers)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert stats["bytes_read"] == alone_stats["bytes_read"] > 0  # not `workers` times
    processes, process_stats = _epoch(one_group, workers, "process")
    assert batches == processes  # the same batches in the same order as worker processes
    assert process_stats["bytes_read"] == workers * alone_stats["bytes_read"]  # they share no memory


@pytest.mark.parametrize("filter", [None, [("label", "<", 5)]])
def test_boundaries_inside_several_files_read_each_byte_once(split_groups, filter):
    alone, alone_stats = _epoch(split_groups, 1, filter=filter)
    batches, stats = _epoch(split_groups, 4, filter=filter)
    assert sorted(i for b in batches for i in b) == sorted(i for b in alone for i in b)
    assert stats["bytes_read"] == alone_stats["bytes_read"]
    assert stats["rows_filtered"] == alone_stats["rows_filtered"]  # counted by the lane that read


def test_a_resumed_epoch_delivers_the_rest_once(split_groups):
    loader = sparkfeed.DataLoader(split_groups, batch_size=64, num_workers=4, worker_type="thread")
    it = iter(loader)
    head = [i for _ in range(7) for i in next(it)["id"].tolist()]
    state = loader.state_dict()
    it.close()
    again = sparkfeed.DataLoader(split_groups, batch_size=64, num_workers=4, worker_type="thread")
    again.load_state_dict(state)
    rest = [i for b in again for i in b["id"].tolist()]
    assert sorted(head + rest) == list(range(1500))


def _corrupt_first_shard(root):
    with open(os.path.join(root, "part-00000.parquet"), "r+b") as f:
        f.seek(100)
        f.write(b"\0" * 4000)  # data pages, footer intact


def test_a_corrupt_shared_row_group_raises_naming_the_shard_and_nothing_hangs(tmp_path):
    root = str(tmp_path / "ds")
    dsutil.write_parquet(root, dsutil.table(1000, image_bytes=32), 1000, 1000)
    _corrupt_first_shard(root)
    before = {t.ident for t in threading.enumerate()}
    loader = sparkfeed.DataLoader(root, batch_size=64, num_workers=2, worker_type="thread")
    with pytest.raises(ShardReadError, match=r"part-00000\.parquet.*row group 0"):
        list(loader)
    for t in threading.enumerate():
        if t.ident not in before and t.name.startswith("sparkfeed"):
            t.join(timeout=60)  # hang guard: every lane returned, the waiting one too
            assert not t.is_alive(), t.name


def test_a_corrupt_shared_row_group_is_skipped_and_counted_once(tmp_path):
    root = str(tmp_path / "ds")
    dsutil.write_parquet(root, dsutil.table(1500, image_bytes=32), 500, 250)
    _corrupt_first_shard(root)
    alone, alone_stats = _epoch(root, 1, on_error="skip")
    batches, stats = _epoch(root, 4, on_error="skip")
    assert sorted(i for b in batches for i in b) == sorted(i for b in alone for i in b)
    assert stats["samples_skipped"] == alone_stats["samples_skipped"] > 0


def test_a_unit_larger_than_a_shuffle_block_is_read_by_each_lane_not_held(one_group):
    """The memory bound: a shared unit waits in memory for the lane that reaches it last, so
    only units of at most one shuffle block (`shuffle_buffer`, here set below the row group)
    are shared; a larger one is read by each lane that needs it (the footer once)."""
    _, alone_stats = _epoch(one_group, 1)
    batches, stats = _epoch(one_group, 2, shuffle_buffer=500)
    assert batches == _epoch(one_group, 2, "process")[0]
    assert stats["bytes_read"] > 1.9 * alone_stats["bytes_read"]


def test_a_corrupt_shard_with_the_next_epoch_read_ahead_is_skipped_or_named_each_epoch(tmp_path):
    """`persistent_workers=True` reads each next epoch ahead: its skips are counted when its
    batches are delivered, as without; with on_error="raise" every epoch raises naming the shard
    (an epoch that fails is not read ahead), and nothing hangs."""
    root = str(tmp_path / "ds")
    dsutil.write_parquet(root, dsutil.table(1500, image_bytes=32), 500, 250)
    _corrupt_first_shard(root)
    runs = {}
    for persistent in (False, True):
        loader = sparkfeed.DataLoader(root, batch_size=64, num_workers=2, shuffle=True, on_error="skip",
                                      persistent_workers=persistent)
        epochs = []
        for epoch in range(3):
            loader.set_epoch(epoch)
            epochs.append([i for b in loader for i in b["id"].tolist()])
        runs[persistent] = (epochs, loader.stats())
    assert runs[True][0] == runs[False][0]
    assert runs[True][1]["samples_skipped"] == runs[False][1]["samples_skipped"] > 0
    assert runs[True][1]["epochs_read_ahead"] == 2
    loader = sparkfeed.DataLoader(root, batch_size=64, num_workers=2, shuffle=True, persistent_workers=True)
    for epoch in range(2):
        loader.set_epoch(epoch)
        with pytest.raises(ShardReadError, match=r"part-00000\.parquet.*row group"):
            list(loader)
    assert "epochs_read_ahead" not in loader.stats()


def test_a_block_built_without_its_order_is_ordered_once():
    """The last run is read before any thread drew the block's order: the builder draws it
    itself (`_finish_block`), and a thread that joins meanwhile waits for the block instead of
    drawing the order beside it (before: twice, seen under load as a flaky
    test_a_shared_block_is_ordered_once_and_read_by_every_thread)."""
    from types import SimpleNamespace

    import numpy as np

    from sparkfeed.blocks import PendingBlock

    building, orders = threading.Event(), []

    def make_order():
        orders.append(threading.current_thread().name)
        return np.arange(4)

    class Reader:
        stream = SimpleNamespace(block_runs=np.array([0, 1]))

        def _read_run_part(self, run, into, part):
            return ["run"]

        def _finish_block(self, b, parts, order, into):
            building.set()
            if order is None:
                order = make_order()
            time.sleep(0.2)  # the other thread joins while this one builds
            return ("block", parts, order.tolist())

    pending = PendingBlock(1, make_order=make_order)
    got = {}
    first = threading.Thread(target=lambda: got.setdefault("first", pending.join(Reader(), 0)), name="first")
    first.start()
    assert building.wait(10)
    second = threading.Thread(target=lambda: got.setdefault("second", pending.join(Reader(), 0)), name="second")
    second.start()
    first.join(10)
    second.join(10)
    assert got["first"] == got["second"] == ("block", [["run"]], [0, 1, 2, 3])
    assert orders == ["first"]


def test_closing_lanes_mid_block_stops_reading_the_block(tmp_path, monkeypatch):
    """A lane closed while it reads a shuffle block stops at the next run (`threads.stopping`),
    not at the block's end: a Ctrl-C, or an iterator closed after one batch, then waits for one
    run instead of a block (over 10,000 small files, `close()` took 1.5-1.8 s, now 0.00-0.03).
    600 files of 5 rows, blocks of at most 100 runs, two lanes of three blocks each: when the
    first batch comes, the lanes have read about a block each and are into their next; closed
    then, they read a few runs more, not the rest of those blocks."""
    from sparkfeed import shuffle, stream

    root = str(tmp_path / "small")
    dsutil.write_parquet(root, dsutil.table(3_000), 5, 5)
    monkeypatch.setattr(shuffle, "MAX_BLOCK_RUNS", 100)
    runs_read, read_run_part = [], stream.StreamReader._read_run_part

    def counted(self, run, into, part):
        runs_read.append(run)
        return read_run_part(self, run, into, part)

    monkeypatch.setattr(stream.StreamReader, "_read_run_part", counted)
    loader = sparkfeed.DataLoader(root, batch_size=64, shuffle=True, num_workers=2, worker_type="thread")
    it = iter(loader)
    assert len(next(it)["id"]) == 64
    it.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("sparkfeed-") and t.is_alive()]
    assert 100 <= len(runs_read) < 300, len(runs_read)  # the first block, then a few runs a lane
