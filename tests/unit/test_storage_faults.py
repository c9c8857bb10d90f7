"""Storage faults: 5xx answers, dropped connections and stalls are retried; outages end in an
error naming the shard after a bounded number of attempts. Every sample is still delivered exactly once."""

import aiohttp
import pytest

import dsutil
import sparkfeed
from faulty_http import FaultPlan, FaultyServer
from sparkfeed import ShardReadError, retries

FAST = {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, sock_read=0.5, sock_connect=2)}}


@pytest.fixture(scope="module")
def www(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    dsutil.write_parquet(str(root / "pq"), dsutil.table(600, image_bytes=64), 200, 50)
    dsutil.write_tar(str(root / "wds"), dsutil.table(300, image_bytes=64), 100)
    return str(root)


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    original = retries.with_retries
    monkeypatch.setattr(retries, "with_retries",
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


def test_a_parquet_shard_that_cannot_be_opened_costs_one_retry_budget_in_place(www, caplog):
    """A shard whose every request fails: its run of row groups is opened with retries; before,
    when they gave up, its first row group was opened alone with the retries all over again
    (14 retried opens, 24 failed requests, twice the time to the error)."""
    plan = FaultPlan(error_every=0, drop_every=0, stall_every=0, always_fail="part-00001")
    with FaultyServer(www, plan) as url:
        with pytest.raises(ShardReadError, match="part-00001.parquet.*storage kept failing"):
            for _ in sparkfeed.DataLoader(f"{url}/pq", batch_size=50, storage_options=FAST):
                pass
    opens = [r for r in caplog.records if r.getMessage().startswith("opening ") and "retry" in r.getMessage()]
    assert len(opens) == 7  # one budget of 8 attempts
    assert plan.injected["permanent"] <= 16  # and one more ahead, by the read-ahead


def test_a_parquet_shard_storage_keeps_failing_is_skipped_after_one_retry_budget(www, caplog):
    """on_error="skip": every row group of the shard is skipped, and the file is given up on once
    (before: each of its 4 row groups opened it with the whole retry budget again, 28 retried
    opens and 40 failed requests, a minute at the default backoff)."""
    plan = FaultPlan(error_every=0, drop_every=0, stall_every=0, always_fail="part-00001")
    with FaultyServer(www, plan) as url:
        ids = [i for b in sparkfeed.DataLoader(f"{url}/pq", batch_size=50, storage_options=FAST,
                                               on_error="skip") for i in b["id"].tolist()]
    assert sorted(ids) == list(range(200)) + list(range(400, 600))
    opens = [r for r in caplog.records if r.getMessage().startswith("opening ") and "retry" in r.getMessage()]
    assert len(opens) == 7
    assert plan.injected["permanent"] <= 16


def test_retry_classification():
    assert retries.is_transient(ConnectionResetError())
    assert retries.is_transient(TimeoutError())
    assert not retries.is_transient(FileNotFoundError())
    assert not retries.is_transient(ValueError("corrupt"))
    err = aiohttp.ClientResponseError(None, (), status=503)
    assert retries.is_transient(err)
    assert not retries.is_transient(aiohttp.ClientResponseError(None, (), status=403))


def test_a_corrupt_footer_fails_at_once_while_read_errors_under_it_are_retried(tmp_path, caplog):
    """pyarrow raises a corrupt footer as an OSError; retrying reads the same bytes, so it is
    `retries.CorruptData` and fails on the first try, naming the file. The server's own 503s and
    dropped connections under the same footer read are still retried."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "plain"
    root.mkdir()
    for k in range(3):
        pq.write_table(pa.table({"id": list(range(10 * k, 10 * k + 10))}), root / f"p{k}.parquet")
    plan = FaultPlan(error_every=3, drop_every=4, stall_every=0)
    with FaultyServer(str(tmp_path), plan) as url, caplog.at_level("WARNING", logger="sparkfeed.storage"):
        m = sparkfeed.index([f"{url}/plain/p{k}.parquet" for k in range(3)], progress=False,
                            manifest=str(tmp_path / "m.json"), storage_options=FAST)
    assert m.num_samples == 30 and plan.injected["error"] + plan.injected["drop"] > 0
    assert "reading the footer of" in caplog.text and "retry" in caplog.text  # under pyarrow's parse
    data = bytearray((root / "p1.parquet").read_bytes())
    data[-30:-8] = b"\xff" * 22  # thrift garbage where the footer was
    (root / "p1.parquet").write_bytes(bytes(data))
    caplog.clear()
    with caplog.at_level("WARNING", logger="sparkfeed.storage"):
        with pytest.raises(ShardReadError, match=r"shard 'p1.parquet'.*CorruptData"):
            sparkfeed.index(str(root), progress=False)
    assert "retry" not in caplog.text
    assert not retries.is_transient(retries.CorruptData("Couldn't deserialize thrift"))


@pytest.mark.parametrize("name,shard", [("pq", "part-00001.parquet"), ("wds", "shard-00001.tar")])
@pytest.mark.parametrize("status,says", [(401, "storage refused access"), (403, "storage refused access"),
                                         (404, "file missing")])
def test_a_refused_or_missing_shard_over_http_is_an_error_naming_it(www, name, shard, status, says):
    """A shard the server refuses (401, 403) or does not have (404) is a ShardReadError naming
    the dataset, the shard and what went wrong, at once (no retry cures it). Before, fsspec's
    HTTP client let aiohttp's ClientResponseError out of the loader, naming neither."""
    plan = FaultPlan(error_every=0, drop_every=0, stall_every=0, always_fail=shard, status=status)
    with FaultyServer(www, plan) as url:
        L = sparkfeed.DataLoader(f"{url}/{name}", batch_size=50, storage_options=FAST)
        with pytest.raises(ShardReadError, match=rf"dataset '{url}/{name}', shard '{shard}'.*{says}"):
            for _ in L:
                pass
    assert 1 <= plan.injected["permanent"] <= 4  # not retried (the reader asks again in place)


def test_a_manifest_the_server_refuses_is_a_manifest_error(www):
    """401 on the manifest: a ManifestError naming the dataset and the refusal, not aiohttp's
    ClientResponseError (nor an attempt to index the directory as data without a manifest)."""
    plan = FaultPlan(error_every=0, drop_every=0, stall_every=0, always_fail="_sparkfeed.json", status=401)
    with FaultyServer(www, plan) as url:
        with pytest.raises(sparkfeed.ManifestError, match=rf"dataset '{url}/pq'.*HTTP 401"):
            sparkfeed.DataLoader(f"{url}/pq", batch_size=50, storage_options=FAST)


def _indexed(www, url, name="pq") -> str:
    """The Parquet files of `www/name` indexed over `url` (a server sending ETags): a manifest
    that records each file's ETag, which the loader checks once per file and iteration."""
    import os

    files = sorted(f for f in os.listdir(f"{www}/{name}") if f.endswith(".parquet"))
    manifest = f"{www}/{name}-indexed.json"
    m = sparkfeed.index([f"{url}/{name}/{f}" for f in files], manifest=manifest, mode="overwrite",
                        progress=False, storage_options=FAST)
    assert all(s.etag for s in m.shards)
    return manifest


def test_an_indexed_files_version_check_is_retried_through_503s(www):
    """The version check of an indexed file (one HEAD, or a GET where the HEAD fails) is
    retried through a burst of 503s like any other read: every sample once. Before, it was
    asked twice at most and a 503 read as "file missing" (fsspec's HTTP `info` calls any
    failure a missing file), so six 503s in a row failed the epoch."""
    plan = FaultPlan(error_every=0, drop_every=0, stall_every=0)
    with FaultyServer(www, plan, etags=True) as url:
        manifest = _indexed(www, url)
        plan.always_fail, plan.status, plan.fail_times, plan.unranged = "part-00001", 503, 6, True
        L = sparkfeed.DataLoader(f"{url}/pq", manifest=manifest, batch_size=50, storage_options=FAST)
        assert sorted(i for b in L for i in b["id"].tolist()) == list(range(600))
    assert plan.injected["permanent"] == 6


def test_an_indexed_files_version_check_outage_is_not_called_a_missing_file(www):
    """A server that answers 503 to every version check of one file: after the retries, a
    ShardReadError that names the shard and says storage kept failing, never "file missing"."""
    plan = FaultPlan(error_every=0, drop_every=0, stall_every=0)
    with FaultyServer(www, plan, etags=True) as url:
        manifest = _indexed(www, url)
        plan.always_fail, plan.status, plan.unranged = "part-00001", 503, True
        L = sparkfeed.DataLoader(f"{url}/pq", manifest=manifest, batch_size=50, storage_options=FAST)
        with pytest.raises(ShardReadError, match=r"shard 'part-00001.parquet'.*storage kept failing.*503"):
            list(L)


@pytest.mark.parametrize("name,shard", [("pq", "part-00001.parquet"), ("wds", "shard-00001.tar")])
@pytest.mark.parametrize("status", [404, 503])
def test_credentials_in_a_dataset_url_never_show_in_errors_or_logs(www, caplog, name, shard, status):
    """A dataset URL may carry credentials (`http://user:password@host/ds`). The errors, their
    tracebacks (chained causes included) and sparkfeed's logs name the dataset and its files
    with `***` in their place. Before, the password was in the ShardReadError, in the plan's log
    line and in every retry warning."""
    import traceback

    password = "s3cr3t-pw"
    plan = FaultPlan(error_every=0, drop_every=0, stall_every=0, always_fail=shard, status=status)
    with FaultyServer(www, plan) as url, caplog.at_level("DEBUG", logger="sparkfeed"):
        with pytest.raises(ShardReadError) as raised:
            list(sparkfeed.DataLoader(url.replace("://", f"://alice:{password}@") + f"/{name}",
                                      batch_size=50, storage_options=FAST))
    assert f"dataset '{url.replace('://', '://***@')}/{name}', shard '{shard}'" in str(raised.value)
    assert password not in "".join(traceback.format_exception(raised.value))
    assert "retry" in caplog.text or status == 404
    assert password not in caplog.text


@pytest.mark.parametrize("status", [503, None])
def test_a_manifest_server_that_keeps_failing_is_a_manifest_error(www, status):
    """Every request for the manifest answered 503 (or dropped without an answer): after the
    retries, a ManifestError naming the dataset and what the server did. Before, aiohttp's own
    ClientResponseError or ServerDisconnectedError left the loader."""
    plan = FaultPlan(error_every=0, drop_every=0, stall_every=0, always_fail="_sparkfeed.json",
                     status=status)
    with FaultyServer(www, plan) as url:
        with pytest.raises(sparkfeed.ManifestError, match=rf"dataset '{url}/pq': cannot read"):
            sparkfeed.DataLoader(f"{url}/pq", batch_size=50, storage_options=FAST)
    assert plan.injected["permanent"] >= 8  # retried first
