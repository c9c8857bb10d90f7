"""A tar shard that storage keeps failing (HTTP 503 on every request, real server on 127.0.0.1)
costs one retry budget, and the error names the dataset, the shard and what was tried. Before,
its index waited out a budget, then the tar streamed another (24 requests for 8 attempts); an
indexed shard's pieces one ahead, then another in place; an unindexed shard's whole fetch the
same."""

import re

import aiohttp
import pytest

import dsutil
import sparkfeed
from faulty_http import FaultPlan, FaultyServer
from sparkfeed import ShardReadError, retries

FAST = {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, sock_read=2, sock_connect=2)}}


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    """Retry waits of 10-20 ms (the number of attempts unchanged): the tests count requests."""
    monkeypatch.setitem(retries.with_retries.__kwdefaults__, "base_delay", 0.01)
    monkeypatch.setitem(retries.with_retries.__kwdefaults__, "max_delay", 0.02)


@pytest.mark.parametrize("index,failing,tried", [
    (True, r"shard-00001\.tar", r"its index .*shard-00001\.tar\.idx with retries .*503.*then the tar once"),
    (True, r"shard-00001\.tar$", r"samples 0-99 read ahead with retries .*503.*then once in place"),
    (False, r"shard-00001\.tar$", r"the tar read ahead with retries .*503.*then once in place"),
])
def test_a_shard_storage_keeps_failing_costs_one_retry_budget(tmp_path, index, failing, tried):
    dsutil.write_tar(str(tmp_path / "wds"), dsutil.table(300, image_bytes=64), 100, index=index)
    plan = FaultPlan(error_every=0, drop_every=0, stall_every=0, always_fail=failing, status=503)
    with FaultyServer(str(tmp_path), plan) as url:
        with pytest.raises(ShardReadError) as info:
            list(sparkfeed.DataLoader(f"{url}/wds", batch_size=50, storage_options=FAST))
    said = str(info.value)
    assert said.startswith(f"dataset '{url}/wds', shard 'shard-00001.tar'"), said
    assert "storage kept failing" in said and re.search(tried, said), said
    # 8 attempts, then one (a streamed tar's open asks twice: fsspec's HEAD, then a GET), and
    # the first piece's bytes asked once beside the index (`tarahead._guessed_head`)
    assert 8 <= plan.injected["permanent"] <= 11, plan.injected


def test_a_tar_is_read_once_its_index_failed_and_the_server_recovered(tmp_path):
    """The index's retries give up (8 answers of 503), the tar's one try is served: every
    sample, exactly once."""
    dsutil.write_tar(str(tmp_path / "wds"), dsutil.table(300, image_bytes=64), 100)
    plan = FaultPlan(error_every=0, drop_every=0, stall_every=0, always_fail=r"shard-00001\.tar\.idx",
                     status=503, fail_times=8)
    with FaultyServer(str(tmp_path), plan) as url:
        ids = [i for b in sparkfeed.DataLoader(f"{url}/wds", batch_size=50, storage_options=FAST)
               for i in b["id"].tolist()]
    assert sorted(ids) == list(range(300)) and plan.injected["permanent"] == 8


@pytest.mark.parametrize("index", [True, False])
def test_a_shard_storage_keeps_failing_is_skipped_after_one_retry_budget(tmp_path, index):
    """on_error="skip": its samples skipped and counted, the others delivered, after one budget
    (before, a piece read in place that storage kept failing left the loader as an error)."""
    dsutil.write_tar(str(tmp_path / "wds"), dsutil.table(300, image_bytes=64), 100, index=index)
    plan = FaultPlan(error_every=0, drop_every=0, stall_every=0, always_fail=r"shard-00001\.tar$", status=503)
    with FaultyServer(str(tmp_path), plan) as url:
        loader = sparkfeed.DataLoader(f"{url}/wds", batch_size=50, storage_options=FAST, on_error="skip")
        ids = [i for b in loader for i in b["id"].tolist()]
    assert sorted(ids) == list(range(100)) + list(range(200, 300))
    assert loader.stats()["samples_skipped"] == 100
    assert plan.injected["permanent"] <= 11, plan.injected
