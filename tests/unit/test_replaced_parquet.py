"""A Parquet shard replaced after the write or the index (another shard copied over it) is the
file its manifest recorded no more. A local file of another size is refused by its size; one of
the same size and counts by its footer: the row groups' statistics (made into a manifest entry
as the write makes them, `sparkfeed.footer`) differ from the recorded ones. Either way a
ShardReadError names the dataset, the shard and where known the row group (a counted skip under
on_error="skip"), never another shard's rows delivered in its place."""

import datetime
import decimal
import os
import shutil

import numpy as np
import pyarrow as pa
import pytest

import dsutil
import sparkfeed
from sparkfeed.bench.remote import LatencyServer
from sparkfeed.errors import ShardReadError


def _same_size_shards(root: str) -> None:
    """Three shards of 100 rows (row groups of 50) whose files are byte for byte the same size:
    fixed-width columns, so shard 1 copied over shard 0 keeps its size and its counts."""
    data = pa.table({"id": np.arange(300, dtype=np.int64), "image": [bytes(16)] * 300})
    dsutil.write_parquet(root, data, 100, 50)
    sizes = {os.path.getsize(os.path.join(root, f"part-0000{i}.parquet")) for i in (0, 1)}
    assert len(sizes) == 1  # the premise: only the statistics can tell the copy apart


def _ids(loader) -> list[int]:
    return [i for b in loader for i in b["id"].tolist()]


@pytest.mark.parametrize("shuffle", [False, True])
def test_a_same_size_copy_is_refused_naming_the_shard_and_row_group(tmp_path, shuffle):
    root = str(tmp_path / "ds")
    _same_size_shards(root)
    assert sorted(_ids(sparkfeed.DataLoader(root, batch_size=50, shuffle=shuffle))) == list(range(300))
    shutil.copy(os.path.join(root, "part-00001.parquet"), os.path.join(root, "part-00000.parquet"))
    with pytest.raises(ShardReadError, match="replaced or changed after the manifest") as err:
        _ids(sparkfeed.DataLoader(root, batch_size=50, shuffle=shuffle, num_workers=2))
    e = err.value
    assert e.shard == "part-00000.parquet" and e.row_group == 0 and e.dataset == root
    assert "column 'id' has min 100 where the manifest records 0" in str(e)


def test_a_copy_of_another_size_is_refused_by_its_size(tmp_path):
    root = str(tmp_path / "ds")
    dsutil.write_parquet(root, dsutil.table(300), 100, 50)
    shutil.copy(os.path.join(root, "part-00002.parquet"), os.path.join(root, "part-00000.parquet"))
    with pytest.raises(ShardReadError, match=r"the file is \d+ bytes but the manifest says \d+"):
        _ids(sparkfeed.DataLoader(root, batch_size=50))


def test_a_filter_meets_the_copy_rather_than_pruning_by_the_old_statistics(tmp_path):
    """`id < 50` keeps shard 0 by its recorded range; the copy there holds 100..199: refused, not
    an empty result."""
    root = str(tmp_path / "ds")
    _same_size_shards(root)
    shutil.copy(os.path.join(root, "part-00001.parquet"), os.path.join(root, "part-00000.parquet"))
    with pytest.raises(ShardReadError, match="part-00000.parquet"):
        _ids(sparkfeed.DataLoader(root, batch_size=10, filter=[("id", "<", 50)]))


def test_on_error_skip_counts_the_replaced_shard_and_delivers_the_rest_once(tmp_path):
    root = str(tmp_path / "ds")
    _same_size_shards(root)
    shutil.copy(os.path.join(root, "part-00001.parquet"), os.path.join(root, "part-00000.parquet"))
    L = sparkfeed.DataLoader(root, batch_size=50, on_error="skip")
    assert sorted(_ids(L)) == list(range(100, 300))
    assert L.stats()["samples_skipped"] == 100


def test_over_http_a_same_size_copy_is_refused(tmp_path):
    """Remote: the footer's fetch brings small files whole; the check is the same."""
    root = str(tmp_path / "ds")
    _same_size_shards(root)
    shutil.copy(os.path.join(root, "part-00001.parquet"), os.path.join(root, "part-00000.parquet"))
    server = LatencyServer(str(tmp_path), latency_s=0.0)
    try:
        with pytest.raises(ShardReadError, match="replaced or changed") as err:
            _ids(sparkfeed.DataLoader(f"{server.url}/ds", batch_size=50, num_workers=2))
    finally:
        server.close()
    assert err.value.shard == "part-00000.parquet"


@pytest.mark.parametrize("image_bytes,read_ahead", [(16, None), (8192, None), (8192, 0)])
def test_over_http_a_file_that_grew_is_refused_by_its_size(tmp_path, image_bytes, read_ahead):
    """Bytes appended to a Parquet file after the write leave its footer where the manifest's size
    says it is, so reads at the recorded offsets find the old file. The server's size is checked
    at the footer's request; when read-ahead's footer fetch failed on it, the file was opened in
    place with the manifest's size and read without a word (all 800 rows delivered). Small
    files (fetched whole with the footer), files large enough for a head fetched beside it, and
    no read-ahead at all: a ShardReadError naming the shard, or the shard skipped and counted."""
    rng = np.random.default_rng(8)
    data = dsutil.table(800).append_column("image", pa.array([rng.bytes(image_bytes) for _ in range(800)]))
    root = str(tmp_path / "ds")
    dsutil.write_parquet(root, data, 400, 100)
    with open(os.path.join(root, "part-00000.parquet"), "ab") as f:
        f.write(b"x" * 100)
    server = LatencyServer(str(tmp_path), latency_s=0.0)
    try:
        with pytest.raises(ShardReadError, match=r"the file is \d+ bytes, not \d+ \(changed after") as err:
            _ids(sparkfeed.DataLoader(f"{server.url}/ds", batch_size=100, num_workers=2, read_ahead_bytes=read_ahead))
        skipping = sparkfeed.DataLoader(f"{server.url}/ds", batch_size=100, num_workers=2, on_error="skip",
                                        read_ahead_bytes=read_ahead)
        assert sorted(_ids(skipping)) == list(range(400, 800))
        assert skipping.stats()["samples_skipped"] == 400
    finally:
        server.close()
    assert err.value.shard == "part-00000.parquet"


def test_data_as_written_reads_whole_with_every_kind_of_statistic(tmp_path):
    """No false alarm: strings past the 64 characters statistics keep, timestamps, dates,
    decimals, booleans, floats, nulls and an all-null row group, read plain, shuffled, filtered
    and in worker processes."""
    n = 240
    long = [("x" * 70 + f"{i:05d}") if i % 3 else None for i in range(n)]
    data = pa.table({
        "id": np.arange(n, dtype=np.int64),
        "long": pa.array(long, pa.string()),
        "when": pa.array([datetime.datetime(2026, 1, 1) + datetime.timedelta(seconds=i) for i in range(n)],
                         pa.timestamp("us")),
        "day": pa.array([datetime.date(2026, 1, 1) + datetime.timedelta(days=i) for i in range(n)]),
        "price": pa.array([decimal.Decimal(f"{i}.25") for i in range(n)], pa.decimal128(9, 2)),
        "flag": pa.array([i % 2 == 0 for i in range(n)]),
        "score": pa.array([float(i) / 7 for i in range(n)]),
        "empty": pa.array([None if i < 60 else i for i in range(n)], pa.int32()),
    })
    root = str(tmp_path / "ds")
    dsutil.write_parquet(root, data, 120, 60)
    for kw in ({}, {"shuffle": True, "num_workers": 2}, {"worker_type": "process", "num_workers": 2},
               {"filter": [("when", ">=", datetime.datetime(2026, 1, 1, 0, 2))]}):
        got = sorted(_ids(sparkfeed.DataLoader(root, batch_size=32, columns=["id", "long"], **kw)))
        assert got == (list(range(120, n)) if "filter" in kw else list(range(n))), kw
