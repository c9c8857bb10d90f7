"""Remote read-ahead: bounded bytes, one footer and one coalesced request per file, the same
samples as a local read. Over the project's Range-honouring HTTP test server (no faults)."""

import threading

import pytest

import dsutil
import sparkfeed
from faulty_http import FaultPlan, FaultyServer
from sparkfeed import storage


def test_read_ahead_holds_at_most_max_bytes():
    release = threading.Event()
    ra = storage.ReadAhead(max_bytes=25, threads=2)
    try:
        ra.ahead([([k], 10, lambda k=k: release.wait(10) and k) for k in range(5)])
        assert [k in ra for k in range(5)] == [True, True, False, False, False]
        release.set()
        assert ra.take(0) == 0 and ra.take(0) is None  # handed over once
        ra.ahead([([k], 10, lambda k=k: k) for k in (1, 2, 3)])  # 0 taken: 2 fits now
        assert [k in ra for k in range(5)] == [False, True, True, False, False]
        ra.ahead([([k], 10, lambda k=k: k) for k in (3, 4)])  # 1 and 2 no longer ahead: dropped
        assert [k in ra for k in range(5)] == [False, False, False, True, True]
    finally:
        release.set()
        ra.close()


def test_a_failed_fetch_is_read_in_place():
    ra = storage.ReadAhead(max_bytes=100)
    try:
        ra.ahead([(["x"], 1, lambda: 1 / 0)])
        assert ra.take("x") is None
    finally:
        ra.close()


@pytest.mark.parametrize("name", ["pq", "wds"])
def test_remote_reads_fetch_each_file_once(tmp_path, name):
    data = dsutil.table(400, image_bytes=256)
    if name == "pq":
        m = dsutil.write_parquet(str(tmp_path / name), data, 100, 10)
    else:
        m = dsutil.write_tar(str(tmp_path / name), data, 100)
    plan = FaultPlan(error_every=0, drop_every=0, stall_every=0)
    with FaultyServer(str(tmp_path), plan) as url:
        L = sparkfeed.DataLoader(f"{url}/{name}", batch_size=50, num_workers=0)
        ids = [i for b in L for i in b["id"].tolist()]
        requests = next(plan.counter) - 1
    assert sorted(ids) == list(range(400))
    # manifest + per file: footer and one merged request (Parquet), or the whole shard (tar)
    assert requests <= 1 + 2 * len(m.shards), requests
