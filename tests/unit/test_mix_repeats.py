"""A small source repeated many times in a mix: read once per lane and tiled (`mixrows._Tiled`),
in exactly the order of reading each repeat (the epoch model's)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import dsutil
import sparkfeed
from sparkfeed import Source, mix
from sparkfeed.mixrows import Repeats
from sparkfeed.stream import StreamReader

COLS = ["id", "label", "caption", "feature"]


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("repeats")
    big = dsutil.table(300)
    dsutil.write_parquet(str(root / "big"), big.set_column(0, "id", pc.add(big["id"], 1000)), 100, 50)
    dsutil.write_parquet(str(root / "small"), dsutil.table(10), 10, 5)
    dsutil.write_tar(str(root / "tiny"), dsutil.table(7), 4)
    return {k: str(root / k) for k in ("big", "small", "tiny")}


def epoch(sources, **kw) -> tuple[list[tuple[int, int]], dict]:
    """(id, source) per delivered row in order, and the loader's stats, for epoch 1."""
    kw = {"batch_size": 64, "columns": COLS, "with_source": True, "seed": 5, **kw}
    loader = sparkfeed.DataLoader(sources, **kw)
    loader.set_epoch(1)
    rows = [(i, s) for b in loader for i, s in zip(b["id"].tolist(), b["__source__"].tolist())]
    return rows, loader.stats()


@pytest.mark.parametrize("shuffle,workers", [(False, 0), (True, 0), (True, 2), (False, 3)])
def test_a_small_source_repeated_gives_the_order_of_reading_each_repeat(ds, shuffle, workers, monkeypatch):
    """Sources of 10 (one filtered to 8) and 7 rows repeated to 3,000 and 2,000 samples beside a
    300-row one: the same rows in the same order as reading every repeat (tiling off)."""
    sources = [Source(ds["big"]), Source(ds["small"], samples=3000, repeat=True, filter=[("id", "<", 8)]),
               Source(ds["tiny"], samples=2000, repeat=True)]
    kw = {"shuffle": shuffle, "num_workers": workers, "shuffle_buffer": 16 if shuffle else None}
    tiled, stats = epoch(sources, **kw)
    monkeypatch.setattr(mix, "_TILE_BYTES", 0)  # every repeat read on its own, as before tiling
    each, each_stats = epoch(sources, **kw)
    assert tiled == each and len(tiled) == 5300
    assert sorted(i for i, s in tiled if s == 1) == sorted(list(range(8)) * 375)
    assert [stats[f"source.{i}.samples"] for i in range(3)] == [300, 3000, 2000]


@pytest.mark.parametrize("shuffle", [False, True])
def test_a_small_source_repeated_is_read_as_one_span(ds, shuffle, monkeypatch):
    """Each source's reader is asked for a few spans of its stream, not a span per repeat (a
    10-row source repeated to 100,000 samples was 10,000 spans, each planned and read on its own:
    0.83 s an epoch)."""
    asked = []
    segments = StreamReader.segments

    def counted(self, spans, *args, **kwargs):
        asked.append(len(spans))
        return segments(self, spans, *args, **kwargs)

    monkeypatch.setattr(StreamReader, "segments", counted)
    sources = [Source(ds["big"]), Source(ds["small"], samples=3000, repeat=True)]
    rows, _ = epoch(sources, shuffle=shuffle, num_workers=0)
    assert len(rows) == 3300 and asked and max(asked) <= 2, asked


def test_a_small_source_with_a_skipped_row_tiles_its_skips(ds, tmp_path, monkeypatch):
    """on_error="skip" over a small source whose row holds a null where a tensor needs a value:
    that row is skipped at each of its repeats, counted per source, in the order of reading each
    repeat."""
    data = dsutil.table(6)
    labels = data["label"].to_pylist()
    labels[2] = None
    data = data.set_column(1, "label", pa.array(labels, pa.int32()))
    dsutil.write_parquet(str(tmp_path / "holey"), data, 6, 3)
    sources = [Source(ds["big"]), Source(str(tmp_path / "holey"), samples=600, repeat=True)]
    tiled, stats = epoch(sources, on_error="skip", shuffle=True)
    monkeypatch.setattr(mix, "_TILE_BYTES", 0)
    each, each_stats = epoch(sources, on_error="skip", shuffle=True)
    assert tiled == each
    assert stats["source.1.samples_skipped"] == each_stats["source.1.samples_skipped"] == 100
    assert sorted(i for i, s in tiled if s == 1) == sorted([0, 1, 3, 4, 5] * 100)


def test_a_lanes_part_of_a_small_source_is_its_share_ranges_not_a_span_per_repeat(ds):
    """A 10-row source repeated to 10 million samples: each lane's part of it is one share range
    (`Repeats`), not a million spans (at 2**36 samples the spans were a MemoryError, billions of
    them); its first batches come as the epoch model says (share index j is position j mod 10
    unshuffled, one repeat after another)."""
    loader = sparkfeed.DataLoader([Source(ds["small"], samples=10_000_000, repeat=True)], batch_size=16,
                                  columns=["id"])
    engine = loader._engine
    (part,) = engine._share_of(engine._grid(0), engine.offsets(0), [(0, 10_000_000)])
    assert part == Repeats(0, 10, [(0, 10_000_000)])
    it = iter(loader)
    assert [next(it)["id"].tolist() for _ in range(2)] == [[i % 10 for i in range(16)], [i % 10 for i in range(16, 32)]]


@pytest.mark.parametrize("sources,largest", [
    (lambda ds: [Source(ds["small"], weight=1e-30), Source(ds["big"], weight=1, repeat=True)], "source 1"),
    (lambda ds: [Source(ds["big"]), Source(ds["small"], samples=2 ** 63, repeat=True)], "source 1"),
])
def test_an_epoch_longer_than_a_grid_orders_is_refused_naming_the_largest_share(ds, sources, largest):
    """A repeating source's share beside a tiny weight (10**31 samples: numpy's 'Maximum allowed size
    exceeded'), or samples=2**63 (a 1 PiB allocation), is a ValueError naming the source."""
    loader = sparkfeed.DataLoader(sources(ds), batch_size=16, columns=["id"])
    with pytest.raises(ValueError, match=rf"make an epoch of [0-9,]+ samples, more than a mix orders .*{largest} "
                                         r"\(.*\) has the largest: give it samples="):
        len(loader)


def test_a_large_source_filtered_to_a_few_rows_is_tiled_too(ds, monkeypatch):
    """What is held is the samples after the filter: a source larger than `_TILE_BYTES` whose filter
    leaves a few rows, repeated, is tiled (its part one share range, not a span per repeat)."""
    monkeypatch.setattr(mix, "_TILE_BYTES", 2000)  # "big" stores about 7 KB: 300 rows of ~25 bytes
    loader = sparkfeed.DataLoader([Source(ds["big"], samples=30_000, repeat=True, filter=[("id", "<", 1003)])],
                                  batch_size=16, columns=["id"])
    engine = loader._engine
    assert engine.engines[0].config.manifest.num_bytes > 2000 and engine.plan().sizes == (3,)
    (part,) = engine._share_of(engine._grid(0), engine.offsets(0), [(0, 30_000)])
    assert part == Repeats(0, 3, [(0, 30_000)])
    assert sorted(i for b in loader for i in b["id"].tolist()) == sorted([1000, 1001, 1002] * 10_000)
