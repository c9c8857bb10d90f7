"""Blocks, batch cutting and lanes (`sparkfeed.stream`, `sparkfeed.lanes`): positions, kept rows,
skips and the workers' order stay exact; lane threads never hang."""

from __future__ import annotations

import functools
import gc
import os
import threading

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparkfeed.batch import user_facing

from sparkfeed.binarycols import BinaryColumn, TextColumn
from sparkfeed.lanes import LaneReader, reading_threads, round_robin
from sparkfeed.plan import WorkUnit
from sparkfeed.read import UnitRows
from sparkfeed.segments import Block, ROW_KEYS, cut


def _unit(index: int) -> WorkUnit:
    return WorkUnit(index=index, shard=index, path=f"part-{index}.parquet", row_group=0, num_rows=0)


def _block(first: int, ok: list[bool]) -> Block:
    """Positions first..first+len(ok)-1; `x` holds the position, kept where ok."""
    n = len(ok)
    table = pa.table({"x": np.arange(first, first + n, dtype=np.int64),
                      "s": [f"s{first + i}" for i in range(n)],
                      "b": [bytes([(first + i) % 256]) * ((first + i) % 3) for i in range(n)]})
    mask = np.array(ok, dtype=bool)
    return Block.from_rows(UnitRows(table, _unit(0), None, None if mask.all() else mask), row_ids=True)


def _alive(prefix: str) -> bool:
    """Whether a thread whose name starts with `prefix` is still running."""
    return any(t.name.startswith(prefix) and t.is_alive() for t in threading.enumerate())


def _kept(blocks) -> list[int]:
    return [int(v) for b in blocks for v in b.columns["x"]]


segments_st = st.lists(st.lists(st.booleans(), min_size=1, max_size=30), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(segments_st, st.integers(1, 17))
def test_cut_gives_batches_of_size_positions_keeping_every_kept_row_once(oks, size):
    firsts = np.concatenate([[0], np.cumsum([len(o) for o in oks])])
    blocks = [_block(int(f), o) for f, o in zip(firsts[:-1], oks)]
    batches = list(cut(iter(blocks), size))
    total = int(firsts[-1])
    assert [b.positions for b in batches] == [size] * (total // size) + ([total % size] if total % size else [])
    expected = [p for f, o in zip(firsts[:-1], oks) for i, p in enumerate(range(int(f), int(f) + len(o))) if o[i]]
    assert _kept(batches) == expected
    assert sum(b.skipped for b in batches) == total - len(expected)
    for b in batches:  # every column agrees with `x`, row for row
        xs = b.columns["x"].tolist()
        assert user_facing({"s": b.columns["s"]})["s"] == [f"s{x}" for x in xs]  # a TextColumn
        assert b.columns["b"].to_list() == [bytes([x % 256]) * (x % 3) for x in xs]
        assert len(b.columns[ROW_KEYS]) == len(xs)  # each kept row keeps its (unit, row) key
        assert all(int(k) >> 32 == 0 for k in b.columns[ROW_KEYS])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=40), st.randoms(use_true_random=False))
def test_permute_moves_positions_and_their_skips_together(ok, rnd):
    block = _block(0, ok)
    order = np.array(rnd.sample(range(len(ok)), len(ok)), dtype=np.int64)
    permuted = block.permute(order)
    assert permuted.positions == len(ok) and permuted.skipped == len(ok) - sum(ok)
    assert _kept([permuted]) == [int(p) for p in order if ok[p]]
    if permuted.skipped:  # the first empty position of the permuted block is the first skipped one
        assert permuted.first_skipped() == next(i for i, p in enumerate(order) if not ok[p])


def test_slices_are_views_and_concat_copies():
    block = _block(0, [True] * 10)
    piece = block.slice(2, 5)
    assert piece.columns["x"].tolist() == [2, 3, 4]
    assert piece.columns["x"].untyped_storage().data_ptr() == block.columns["x"].untyped_storage().data_ptr()
    joined = Block.concat([block.slice(0, 3), block.slice(7, 10)])
    assert joined.columns["x"].tolist() == [0, 1, 2, 7, 8, 9] and joined.good is None


def test_a_unit_with_no_kept_row_joins_others():
    empty = Block.from_rows(UnitRows(pa.table({"x": pa.nulls(3, pa.int64())}), _unit(1), None,
                                     np.zeros(3, dtype=bool)))
    full = Block.from_rows(UnitRows(pa.table({"x": np.arange(2, dtype=np.int64)}), _unit(2)))
    joined = Block.concat([empty, full])
    assert joined.positions == 5 and joined.rows == 2 and joined.columns["x"].tolist() == [0, 1]
    assert list(Block.concat([empty, empty]).columns["x"]) == []


def test_a_batch_cut_across_segments_keeps_its_binary_samples_where_they_were_read():
    """`cut` joins a batch's pieces of several segments without copying their binary columns
    (`BinaryChunks`): each part is a view of its segment's buffer, and every way a batch is used
    (user's bytes, `select_rows` for skips, slices, splits, packing between processes) sees
    the samples of the joined column."""
    from sparkfeed.batch import select_rows, split_rows
    from sparkfeed.binarycols import BinaryChunks, BinaryViews
    from sparkfeed.packing import pack, unpack

    segments = [_block(5 * i, [True] * 5) for i in range(4)]
    batches = list(cut(iter(segments), 8))
    chunks = batches[0].columns["b"]
    assert isinstance(chunks, BinaryChunks) and [len(p) for p in chunks.parts] == [5, 3]
    seg_ptrs = {seg.columns["b"].data.untyped_storage().data_ptr() for seg in segments}
    assert {p.data.untyped_storage().data_ptr() for p in chunks.parts} <= seg_ptrs
    want = [bytes([x % 256]) * (x % 3) for x in range(8)]
    assert chunks.to_list() == want and len(chunks) == 8
    assert user_facing({"s": batches[0].columns["s"]})["s"] == [f"s{x}" for x in range(8)]  # TextColumn chunks
    assert chunks.slice(3, 7).to_list() == want[3:7] and chunks.slice(6, 6).to_list() == []
    assert [c.to_list() for c in split_rows(chunks, [2, 4, 2])] == [want[:2], want[2:6], want[6:]]
    assert select_rows({"b": chunks}, torch.tensor([7, 0, 5]))["b"].to_list() == [want[7], want[0], want[5]]
    back = unpack(pack({"b": chunks, "s": batches[0].columns["s"]}))
    assert back["b"].to_list() == want and back["s"].to_list() == [f"s{x}" for x in range(8)]
    views = BinaryViews.join([seg.columns["b"] for seg in segments[:2]])  # a shuffle block's
    assert user_facing({"b": views})["b"] == [bytes([x % 256]) * (x % 3) for x in range(10)]
    assert unpack(pack({"b": views}))["b"].to_list() == [bytes([x % 256]) * (x % 3) for x in range(10)]
    from sparkfeed.batch import concat_rows  # a mix of both, joined either way, keeps every sample in order
    ten = [bytes([x % 256]) * (x % 3) for x in range(10)]
    assert user_facing(concat_rows([{"b": views}, {"b": chunks}]))["b"] == ten + want
    assert user_facing(concat_rows([{"b": chunks}, {"b": views}], views=True))["b"] == want + ten


def test_binary_slices_rebase_offsets():
    col = BinaryColumn(torch.tensor(list(b"aabbbc"), dtype=torch.uint8), torch.tensor([0, 2, 5, 6]))
    assert col.slice(1, 3).to_list() == [b"bbb", b"c"]
    assert BinaryColumn.concat([col.slice(2, 3), col.slice(0, 1)]).to_list() == [b"c", b"aa"]
    assert col.slice(1, 1).to_list() == []


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.float32, torch.bool, torch.bfloat16])
def test_cat_is_torch_cat(dtype):
    """`batch.cat` (numpy's concatenate where numpy has the type, torch's otherwise): the values,
    dtype and shape `torch.cat` gives, for strided views too, in memory of its own."""
    from sparkfeed.tensorcopies import cat

    for cols in (6, 10_000):  # below and above the size that torch would copy on its threads
        base = (torch.arange(4 * cols) % 7).reshape(4, cols).to(dtype)
        parts = [base[:1], base[1:3, :], base.t().contiguous().t()[3:], base[:0]]
        got = cat(parts)
        assert got.dtype == dtype and got.shape == (4, cols) and torch.equal(got, torch.cat(parts))
        got[0] = 0
        assert torch.equal(base, (torch.arange(4 * cols) % 7).reshape(4, cols).to(dtype))  # a copy
        want = torch.cat(parts)[1:]
        del parts
        gc.collect()  # the joined memory (Arrow's pool, for large ones) lives as long as the tensor
        assert torch.equal(got[1:], want)
    mixed = [torch.ones(40_000, dtype=torch.int64), torch.ones(1, dtype=torch.float32)]
    assert cat(mixed).dtype == torch.cat(mixed).dtype  # torch's promotion, not numpy's
    with pytest.raises((ValueError, RuntimeError)):
        cat([torch.zeros(2, 30_000), torch.zeros(2, 40_000)])


@settings(max_examples=60, deadline=None)
@given(items=st.lists(st.binary(max_size=6), max_size=8), data=st.data())
def test_binary_select_takes_the_items_in_the_given_order(items, data):
    """`select` (Arrow's take over the column's buffers), also on a slice whose offsets were
    rebased: exactly the chosen items, repeats and empty items included."""
    offsets = torch.tensor([0] + list(np.cumsum([len(b) for b in items], dtype=np.int64)), dtype=torch.int64)
    col = BinaryColumn(torch.tensor(list(b"".join(items)), dtype=torch.uint8), offsets)
    lo = data.draw(st.integers(0, len(items)))
    part = col.slice(lo, len(items))
    rows = data.draw(st.lists(st.integers(0, max(0, len(items) - lo - 1)), max_size=10)) if len(items) > lo else []
    got = part.select(rows)
    assert got.to_list() == [items[lo + r] for r in rows]
    assert got.offsets.tolist()[0] == 0 and len(got) == len(rows)


@settings(max_examples=80, deadline=None)
@given(parts=st.lists(st.lists(st.binary(max_size=40), max_size=6), min_size=1, max_size=4),
       text=st.booleans(), data=st.data())
def test_binary_views_select_what_the_joined_column_selects(parts, text, data):
    """`BinaryViews` (a shuffle block's binary columns, left in the buffers they were read in):
    joined from columns and slices of them, sliced again, `select` gives the items a joined copy
    would, of the columns' class, in memory of its own; samples of 12 bytes or fewer (which a
    view holds inline) and longer ones alike."""
    from sparkfeed.batch import concat_rows, select_rows
    from sparkfeed.binarycols import BinaryViews

    kind = TextColumn if text else BinaryColumn
    parts = [[b.hex().encode() for b in items] if text else items for items in parts]

    def column(items):
        offsets = torch.tensor([0] + list(np.cumsum([len(b) for b in items], dtype=np.int64)), dtype=torch.int64)
        return kind(torch.tensor(list(b"".join(items)), dtype=torch.uint8), offsets)

    columns = [column([b"pad"] + items).slice(1, len(items) + 1) for items in parts]  # rebased slices
    joined = BinaryViews.join(columns)
    items = [b for p in parts for b in p]
    assert isinstance(joined, BinaryViews) and len(joined) == len(items)
    lo = data.draw(st.integers(0, len(items)))
    hi = data.draw(st.integers(lo, len(items)))
    view = joined.slice(lo, hi)
    rows = data.draw(st.lists(st.integers(0, hi - lo - 1), max_size=12)) if hi > lo else []
    got = view.select(rows)
    assert type(got) is kind and len(got) == len(rows) and got.offsets.tolist()[0] == 0
    assert [got.item_view(i).numpy().tobytes() for i in range(len(rows))] == [items[lo + r] for r in rows]
    if len(got.data):  # a copy: the parts' buffers are untouched by writes to it
        got.data.fill_(0)
        assert [columns[k][i] for k in range(len(columns)) for i in range(len(columns[k]))] == \
            [kind(column(items).data, column(items).offsets)[i] for i in range(len(items))]
    # how a block gets them: concat_rows(views=True), then select_rows
    block = concat_rows([{"b": c, "n": torch.arange(len(c))} for c in columns], views=True)
    if len(columns) > 1:
        assert isinstance(block["b"], BinaryViews)
    picked = select_rows(block, torch.tensor(rows, dtype=torch.int64) + lo)["b"]
    assert type(picked) is kind and [picked.item_view(i).numpy().tobytes() for i in range(len(rows))] == \
        [items[lo + r] for r in rows]


def test_a_chunked_binary_column_stays_in_its_chunks_only_when_asked():
    """`table_to_batch(views=True)`: a binary column read in several chunks becomes `BinaryViews`
    over them (nothing joined), strings with nulls stay lists, a single chunk stays a column."""
    from sparkfeed.batch import table_to_batch
    from sparkfeed.binarycols import BinaryViews

    chunked = pa.chunked_array([pa.array([b"a" * 20, b"b"], pa.large_binary()), pa.array([b"c" * 30], pa.large_binary())])
    table = pa.table({"b": chunked, "s": pa.chunked_array([pa.array(["x", None]), pa.array(["y"])]),
                      "one": pa.array([b"p", b"q", b"r"])})
    viewed, joined = table_to_batch(table, copy=False, views=True), table_to_batch(table, copy=False)
    assert isinstance(viewed["b"], BinaryViews) and isinstance(joined["b"], BinaryColumn)
    assert viewed["b"].select([2, 0, 1]).to_list() == [b"c" * 30, b"a" * 20, b"b"] == joined["b"].select([2, 0, 1]).to_list()
    assert viewed["s"] == joined["s"] == ["x", None, "y"]
    assert isinstance(viewed["one"], BinaryColumn) and viewed["one"].to_list() == [b"p", b"q", b"r"]


def test_a_shuffle_block_gathers_binary_samples_from_the_runs_it_read(tmp_path):
    """A shuffled stream over a dataset with an image column: the block keeps the bytes of its
    runs where they were read (`BinaryViews`, no joined copy of the block), and each position
    delivers the image of its own row, exactly once over the epoch."""
    import dsutil

    import sparkfeed
    from sparkfeed import storage
    from sparkfeed.binarycols import BinaryViews
    from sparkfeed.read import ReadContext, make_reader
    from sparkfeed.stream import StreamReader

    root = str(tmp_path / "ds")
    dsutil.write_parquet(root, dsutil.table(500, image_bytes=37), 250, 40)
    ds = sparkfeed.Dataset(root, columns=["id", "image"], shuffle=True, seed=3, shuffle_buffer=300)
    fs, froot = storage.resolve(root)
    ctx = ReadContext(fs=fs, root=froot, dataset=root, schema=ds.manifest.schema, columns=("id", "image"),
                      filter_columns=(), expr=None)
    reader = StreamReader(ds.stream(), make_reader("parquet", ctx))
    segments = list(reader.segments([(0, 500)]))
    ids = [i for seg in segments for i in seg.columns["id"].tolist()]
    images = [b for seg in segments for b in seg.columns["image"].to_list()]
    assert sorted(ids) == list(range(500)) and ids != list(range(500))
    assert images == [bytes([i % 251]) * 37 for i in ids]
    assert reader._current is not None and isinstance(reader._current[1].rows.columns["image"], BinaryViews)


def test_round_robin_is_torchs_worker_order_and_closes_everything():
    closed = []

    def lane(name, n):
        try:
            yield from (f"{name}{i}" for i in range(n))
        finally:
            closed.append(name)

    out = list(round_robin([lane("a", 3), lane("b", 1), lane("c", 2)], on_close=lambda: closed.append("end")))
    assert out == ["a0", "b0", "c0", "a1", "c1", "a2"]
    assert sorted(closed) == ["a", "b", "c", "end"]
    closed.clear()
    early = round_robin([lane("a", 5), lane("b", 5)], on_close=lambda: closed.append("end"))
    assert [next(early), next(early), next(early)] == ["a0", "b0", "a1"]
    early.close()
    assert sorted(closed) == ["a", "b", "end"]


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_lanes_deliver_each_lane_in_order_whatever_the_reading_threads(threads):
    lanes = [functools.partial(iter, [f"{k}-{i}" for i in range(n)]) for k, n in enumerate([5, 0, 7])]
    reader = LaneReader(lanes, depth=1, threads=threads, name=f"t-order-{threads}")
    got = list(round_robin([reader.lane(k) for k in range(3)], on_close=reader.close))
    assert [x for x in got if x.startswith("0-")] == [f"0-{i}" for i in range(5)]
    assert [x for x in got if x.startswith("2-")] == [f"2-{i}" for i in range(7)]
    assert got[:4] == ["0-0", "2-0", "0-1", "2-1"]  # torch's worker order, the empty lane skipped
    assert not _alive(f"t-order-{threads}")


def test_a_failing_lane_raises_its_error_on_whichever_lane_is_read_next():
    def bad():
        yield "b-0"
        raise ValueError("broken shard")

    reader = LaneReader([functools.partial(iter, range(1000)), bad], depth=2, threads=1, name="t-fail")
    with pytest.raises(ValueError, match="broken shard") as info:
        list(round_robin([reader.lane(0), reader.lane(1)], on_close=reader.close))
    assert any("lane 1 on thread 't-fail-0'" in note for note in info.value.__notes__)
    assert not _alive("t-fail")


def test_closing_early_stops_the_reading_threads():
    reader = LaneReader([functools.partial(iter, range(10**6)) for _ in range(2)], depth=2, threads=2,
                        name="t-early")
    rr = round_robin([reader.lane(0), reader.lane(1)], on_close=reader.close)
    assert [next(rr) for _ in range(4)] == [0, 0, 1, 1]
    assert _alive("t-early")
    rr.close()
    assert not _alive("t-early")


def test_reading_threads_leave_a_core_for_the_consumer():
    assert reading_threads(1) == 1
    cores = len(os.sched_getaffinity(0))
    assert reading_threads(64) == max(1, min(64, cores - 1))


def test_parquet_runs_stop_at_files_budgets_and_mismatches(tmp_path, monkeypatch):
    import dsutil
    import sparkfeed
    from sparkfeed.read import make_reader, parquet
    from sparkfeed.stats import Stats

    root = str(tmp_path / "d")
    dsutil.write_parquet(root, dsutil.table(500), 250, 50)  # 2 files x 5 row groups
    ds = sparkfeed.Dataset(root, columns=["id", "label"])
    units, counts = ds.plan().units, [int(c) for c in ds.plan().counts]
    reader = make_reader("parquet", ds.engine.context(Stats()))
    run = reader.read_run(units, counts)  # stops at the file boundary
    assert [u.index for u, _ in run.parts()] == [0, 1, 2, 3, 4]
    assert run.table.column("id").to_pylist() == list(range(250))
    assert run.row_numbers().tolist() == list(range(50)) * 5
    assert len(reader.read_run(units[1:], counts[1:]).parts()) == 4
    wrong = counts[:2] + [counts[2] + 1] + counts[3:]  # the manifest disagrees with row group 2
    assert len(reader.read_run(units, wrong).parts()) == 2
    monkeypatch.setattr(parquet, "_RUN_BYTES", 1)  # every row group alone
    assert len(reader.read_run(units, counts).parts()) == 1
    filtered = sparkfeed.Dataset(root, filter=[("label", "<", 5)])
    reader = make_reader("parquet", filtered.engine.context(Stats()))
    assert len(reader.read_run(filtered.plan().units, list(filtered.plan().counts)).parts()) == 1


# ----------------------------------------------------------------------------- shuffled stream
@pytest.fixture(scope="module")
def small_pq(tmp_path_factory):
    import dsutil

    root = str(tmp_path_factory.mktemp("stream") / "ds")
    dsutil.write_parquet(root, dsutil.table(600), 200, 50)
    return root


def _stream_reader(path: str, block: int):
    import sparkfeed
    from sparkfeed import storage
    from sparkfeed.read import ReadContext, make_reader
    from sparkfeed.stream import StreamReader

    ds = sparkfeed.Dataset(path, columns=["id"], shuffle=True, seed=11, shuffle_buffer=block)
    fs, root = storage.resolve(path)
    ctx = ReadContext(fs=fs, root=root, dataset=path, schema=ds.manifest.schema, columns=("id",),
                      filter_columns=(), expr=None)
    return StreamReader(ds.stream(), make_reader("parquet", ctx))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 600), min_size=0, max_size=8), st.sampled_from([90, 150, 600]),
       st.sampled_from([7, 64, 4096]))
def test_any_spans_of_a_shuffled_stream_are_exactly_those_positions_of_the_epoch(small_pq, cuts, block, piece):
    """What resume relies on: reading spans [a, b) ... gives the epoch's positions a..b-1, in the
    epoch's order, whichever blocks the spans start or end in, whatever the gathered pieces."""
    full = [i for seg in _stream_reader(small_pq, block).segments([(0, 600)]) for i in seg.columns["id"].tolist()]
    assert sorted(full) == list(range(600))
    bounds = sorted(set(cuts))
    spans = [(a, b) for a, b in zip(bounds[0::2], bounds[1::2]) if b > a]
    reader = _stream_reader(small_pq, block)
    reader.stream.piece = piece
    segments = list(reader.segments(spans))
    assert all(seg.positions <= piece for seg in segments)
    assert [i for seg in segments for i in seg.columns["id"].tolist()] == [full[p] for a, b in spans for p in range(a, b)]


def test_gathered_pieces_hold_about_16_mib_of_stored_samples():
    """Shuffle pieces: a power of two near 16 MiB of stored bytes (whole batches of the usual
    sizes), never under 256 positions (large samples) nor over 65,536 (small rows); 4,096 where
    the dataset's bytes are unknown."""
    from sparkfeed.epoch import piece_positions

    assert piece_positions(0) == piece_positions(-1) == 4096
    assert piece_positions(1) == piece_positions(40) == piece_positions(256) == 65_536
    assert piece_positions(300) == 32_768 and piece_positions(4096) == 4096
    assert piece_positions(8_000) == 2048 and piece_positions(16 << 10) == 1024
    assert piece_positions(110_000) == piece_positions(10 << 20) == 256
    sizes = [piece_positions(b) for b in range(1, 200_000, 997)]
    assert all(n & (n - 1) == 0 and 256 <= n <= 65_536 for n in sizes) and sizes == sorted(sizes, reverse=True)
    assert all(n * b <= 16 << 20 for n, b in zip(sizes, range(1, 200_000, 997)) if n > 256)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=40), st.randoms(use_true_random=False), st.data())
def test_permuting_a_piece_of_the_order_is_that_piece_of_the_permuted_block(ok, rnd, data):
    """Shuffle blocks are gathered piece by piece (`order[a:b]`): the same positions, skips
    included, as slicing the block permuted whole."""
    block = _block(0, ok)
    order = np.array(rnd.sample(range(len(ok)), len(ok)), dtype=np.int64)
    a = data.draw(st.integers(0, len(ok)))
    b = data.draw(st.integers(a, len(ok)))
    piece, whole = block.permute(order[a:b]), block.permute(order).slice(a, b)
    assert piece.positions == whole.positions == b - a and piece.skipped == whole.skipped
    assert _kept([piece]) == _kept([whole])


def test_strings_move_as_text_columns_and_reach_users_as_str():
    """A string column without nulls is UTF-8 bytes in a `TextColumn` through slicing, selecting,
    concatenation and the process hand-over; with nulls it stays a list (None kept)."""
    from sparkfeed.batch import column_to_value, concat_rows, select_rows
    from sparkfeed.packing import pack, unpack

    col = column_to_value(pa.array(["héllo", "", "wörld", "x"]), "s")
    assert isinstance(col, TextColumn) and col[2] == "wörld" and col[-1] == "x"
    with pytest.raises(IndexError, match="sample 4 of a column of 4"):
        col[4]
    assert col.slice(1, 3).to_list() == ["", "wörld"]
    assert col.select([3, 0, 3]).to_list() == ["x", "héllo", "x"]
    with_nulls = column_to_value(pa.array(["a", None]), "s")
    assert with_nulls == ["a", None]
    joined = concat_rows([{"s": col.slice(0, 2)}, {"s": col.slice(2, 4)}])["s"]
    assert isinstance(joined, TextColumn) and joined.to_list() == ["héllo", "", "wörld", "x"]
    assert concat_rows([{"s": col}, {"s": with_nulls}])["s"] == ["héllo", "", "wörld", "x", "a", None]
    moved = unpack(pack({"s": col, "n": torch.arange(4)}))
    assert isinstance(moved["s"], TextColumn) and user_facing(moved)["s"] == col.to_list()
    picked = select_rows({"s": col}, torch.tensor([1, 2]))["s"]
    assert isinstance(picked, TextColumn) and picked.to_list() == ["", "wörld"]


def test_segments_ungathered_are_the_gathered_ones_once_gathered(small_pq):
    """`segments(gather=False)` (what a mix reads its sources with) hands out each block's part
    of a span as a `Shuffled`: gathered, the same positions as the default pieces."""
    from sparkfeed.segments import Shuffled

    spans = [(7, 260), (300, 599)]
    lazy = list(_stream_reader(small_pq, 150).segments(spans, gather=False))
    assert lazy and all(isinstance(p, Shuffled) for p in lazy)
    assert sum(p.positions for p in lazy) == sum(b - a for a, b in spans)
    got = [i for p in lazy for i in p.gathered().columns["id"].tolist()]
    want = [i for seg in _stream_reader(small_pq, 150).segments(spans) for i in seg.columns["id"].tolist()]
    assert got == want
    assert [i for p in lazy for i in p.slice(3, 9).gathered().columns["id"].tolist()][:6] == want[3:9]


def test_numbers_converted_without_a_copy_only_from_arrows_own_memory():
    """`table_to_batch(copy=False)` (rows copied again before delivery: shuffle runs, mix
    sources) leaves numbers in Arrow's buffers where Arrow allocated them, and copies them
    where the memory is read-only (bytes fetched or mapped) or the column holds nulls; the
    values are those of a copying conversion either way."""
    from sparkfeed.batch import table_to_batch

    fresh = pa.array(np.arange(10, dtype=np.float32)).slice(3, 3)
    frozen = pa.Array.from_buffers(pa.int64(), 4, [None, pa.py_buffer(np.arange(4, dtype=np.int64).tobytes())])
    nulls = pa.array([1.0, None, 3.0], pa.float64())
    table = pa.table({"fresh": fresh, "frozen": frozen.slice(0, 3), "nulls": nulls, "s": ["a", "b", "c"]})
    views, copies = table_to_batch(table, copy=False), table_to_batch(table)
    assert views["fresh"].data_ptr() == fresh.buffers()[1].address + 3 * 4  # Arrow's memory
    assert copies["fresh"].data_ptr() != views["fresh"].data_ptr()
    assert views["frozen"].data_ptr() != frozen.buffers()[1].address  # read-only: copied
    for name in ("fresh", "frozen", "nulls"):
        assert views[name].dtype == copies[name].dtype
        assert torch.equal(views[name].nan_to_num(-1), copies[name].nan_to_num(-1))
    assert views["s"].to_list() == ["a", "b", "c"]


def test_binary_columns_view_arrows_own_memory_and_copy_read_only_memory():
    """Encoded images decoded from Parquet pages live in memory Arrow allocated: the BinaryColumn
    takes it without a copy (the `bytes` path's largest cost); bytes in read-only memory (a
    mapped tar, a fetched body) are copied, so no tensor can write into them. Same values."""
    from sparkfeed.binarycols import binary_column

    fresh = pa.array([b"ab", b"", b"cde", b"f"], pa.binary()).slice(1, 3)
    raw = b"xyzw"
    frozen = pa.Array.from_buffers(pa.binary(), 2, [None, pa.py_buffer(np.array([0, 1, 4], np.int32).tobytes()),
                                                     pa.py_buffer(raw)])
    view, copy = binary_column(fresh), binary_column(frozen)
    assert fresh.buffers()[2].is_mutable and not frozen.buffers()[2].is_mutable
    assert view.data.data_ptr() == fresh.buffers()[2].address + 2  # rows from b"cde" on: Arrow's memory
    assert copy.data.data_ptr() != frozen.buffers()[2].address
    assert view.to_list() == [b"", b"cde", b"f"] and copy.to_list() == [b"x", b"yzw"]


# ----------------------------------------------------------------------------- a block placed run by run
def _run(first: int, sizes: list[int], ok: list[bool] | None = None) -> list[Block]:
    """A run read as pieces of `sizes` positions from `first`, with a 2-D float column and a
    bfloat16 one (no numpy dtype) beside `_block`'s numbers, strings, bytes and row keys."""
    pieces, at = [], first
    for i, n in enumerate(sizes):
        p = _block(at, ok[:n] if ok is not None and i == 0 else [True] * n)
        kept = torch.tensor(p.columns["x"].tolist(), dtype=torch.float32)
        pieces.append(Block({**p.columns, "v": torch.stack([kept, -kept], 1), "h": kept.to(torch.bfloat16)},
                            p.positions, p.good))
        at += n
    return pieces


def _same_block(got: Block, want: Block) -> None:
    assert got.positions == want.positions and got.rows == want.rows and list(got.columns) == list(want.columns)
    assert (got.good is None and want.good is None) or np.array_equal(got.good, want.good)
    everything = torch.arange(got.rows)
    for name, value in want.columns.items():
        mine = got.columns[name]
        if isinstance(value, torch.Tensor):
            assert mine.dtype == value.dtype and torch.equal(mine, value), name
        else:
            assert user_facing({"c": mine.select(everything)})["c"] == user_facing({"c": value.select(everything)})["c"]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(1, 9), min_size=1, max_size=3), min_size=1, max_size=5),
       st.randoms(use_true_random=False), st.data())
def test_a_block_placed_run_by_run_is_its_runs_joined(runs, rnd, data):
    """`BlockColumns`: each run's number columns copied into one buffer per column by whichever
    thread read it, in any order, give the block `Block.concat` gives; a run with a position
    holding no sample is not placed, and the block is then joined from every run's pieces (the
    placed ones as views of the buffers), with the same result."""
    from sparkfeed.segments import BlockColumns

    skip_in = data.draw(st.sampled_from([None] + list(range(len(runs)))))
    firsts = np.concatenate([[0], np.cumsum([sum(r) for r in runs])])
    made = [_run(int(firsts[i]), sizes, [j != 1 for j in range(sizes[0])] if i == skip_in else None)
            for i, sizes in enumerate(runs)]
    want = Block.concat([p for run in made for p in run], views=True)
    into = BlockColumns(firsts.astype(np.int64))
    parts: list = [None] * len(made)
    for i in rnd.sample(range(len(made)), len(made)):  # the threads finish in any order
        parts[i] = into.place(i, made[i])
    placed_all = skip_in is None or runs[skip_in][0] < 2
    assert (len(into.placed) == len(made)) == placed_all
    if placed_all:  # the pieces kept only what was not placed: their numbers' memory can go
        assert all(set(p.columns) == {"s", "b"} for run in parts for p in run)
    _same_block(into.block(parts), want)


def test_a_run_whose_column_type_differs_is_joined_not_placed():
    """Shards can store a column with another type (int32 here, int64 elsewhere): that run is
    left as read and the block joined as `Block.concat` joins it (promoted by torch)."""
    from sparkfeed.segments import BlockColumns

    made = [_run(0, [4, 3]), _run(7, [5]), _run(12, [2]), []]  # the last run holds no position
    made[1] = [Block({**p.columns, "x": p.columns["x"].to(torch.int32)}, p.positions) for p in made[1]]
    want = Block.concat([p for run in made for p in run], views=True)
    into = BlockColumns(np.array([0, 7, 12, 14, 14]))
    parts = [into.place(i, run) for i, run in enumerate(made)]
    assert into.placed == {0, 2, 3} and parts[1] is made[1]
    _same_block(into.block(parts), want)
    assert into.block(parts).columns["x"].dtype == torch.int64
    without = BlockColumns(np.array([0, 7, 14, 14]))  # every run placed, an empty one included
    parts = [without.place(i, run) for i, run in enumerate([made[0], _run(7, [3, 4]), []])]
    assert without.placed == {0, 1, 2}
    _same_block(without.block(parts), Block.concat(made[0] + _run(7, [3, 4]), views=True))


def test_a_shared_block_is_ordered_once_and_read_by_every_thread(small_pq, monkeypatch):
    """Thread lanes and helpers read a shared block's runs; its order is computed once (by a
    thread with no run left to read, while the others finish), and the epoch is the one a
    single lane reads."""
    import sparkfeed
    from sparkfeed import shuffle as shuffling

    calls = []
    permutation = shuffling.block_permutation
    monkeypatch.setattr(shuffling, "block_permutation", lambda *a: calls.append(a) or permutation(*a))

    def epoch(workers, worker_type="thread"):
        loader = sparkfeed.DataLoader(small_pq, batch_size=32, num_workers=workers, worker_type=worker_type,
                                      shuffle=True, seed=3, shuffle_buffer=300)
        return [i for b in loader for i in b["id"].tolist()], loader.stats()

    ids, stats = epoch(3)
    assert sorted(ids) == list(range(600))
    assert len(calls) == stats["shuffle_blocks"] == 2  # both blocks shared by two of the lanes
    assert sorted(calls) == sorted(set(calls))  # each block's order once
    assert ids == epoch(3, "process")[0]  # processes read their blocks alone: the same epoch
