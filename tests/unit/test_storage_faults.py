"""Storage faults: 5xx answers, dropped connections and stalls are retried; outages end in an
error naming the shard after a bounded number of attempts. Every sample is still delivered exactly once."""

import aiohttp
import pytest

import dsutil
import sparkfeed
from faulty_http import FaultPlan, FaultyServer
from sparkfeed import ShardReadError, storage

FAST = {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, sock_read=0.5, sock_connect=2)}}


@pytest.fixture(scope="module")
def www(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    dsutil.write_parquet(str(root / "pq"), dsutil.table(600, image_bytes=64), 200, 50)
    dsutil.write_tar(str(root / "wds"), dsutil.table(300, image_bytes=64), 100)
    return str(root)


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    original = storage.with_retries
    monkeypatch.setattr(storage, "with_retries",
                        lambda fn, what, **kw: original(fn, what, **{"base_delay": 0.01, **kw}))


@pytest.mark.parametrize("name,n", [("pq", 600), ("wds", 300)])
def test_flaky_server_still_delivers_every_sample_once(www, name, n):
    plan = FaultPlan(error_every=4, drop_every=5, stall_every=11, stall_s=1.0)
    with FaultyServer(www, plan) as url:
        L = sparkfeed.DataLoader(f"{url}/{name}", batch_size=50, shuffle=True,
                                 storage_options=FAST)
        ids = [i for b in L for i in b["id"].tolist()]
    assert sorted(ids) == list(range(n))
    assert plan.injected["error"] > 0 and plan.injected["drop"] > 0 and plan.injected["stall"] > 0


@pytest.mark.parametrize("name,shard", [("pq", "part-00001.parquet"), ("wds", "shard-00001.tar")])
def test_permanent_outage_of_a_shard_is_an_error_naming_it_after_bounded_retries(www, name, shard):
    plan = FaultPlan(error_every=0, drop_every=0, stall_every=0, always_fail=shard)
    with FaultyServer(www, plan) as url:
        L = sparkfeed.DataLoader(f"{url}/{name}", batch_size=50, storage_options=FAST)
        with pytest.raises(ShardReadError, match=shard):
            for _ in L:
                pass
    # Retried before giving up, and a bounded number of times (8 attempts per request; 16 for a
    # tar, 32 for a Parquet shard here): the bound is on attempts, not on the clock.
    assert 2 <= plan.injected["permanent"] <= 64


def test_retry_classification():
    assert storage.is_transient(ConnectionResetError())
    assert storage.is_transient(TimeoutError())
    assert not storage.is_transient(FileNotFoundError())
    assert not storage.is_transient(ValueError("corrupt"))
    err = aiohttp.ClientResponseError(None, (), status=503)
    assert storage.is_transient(err)
    assert not storage.is_transient(aiohttp.ClientResponseError(None, (), status=403))
