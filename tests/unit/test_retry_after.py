"""A server that answers 429 or 503 with `Retry-After` asks for a wait before the next request;
the retries took their own backoff instead (0.1-0.3 s for the first), so a throttling server was
asked again at once. Invariant: the next request of that file comes no sooner than asked (up to
`retries.MAX_RETRY_AFTER_S`), and the epoch still delivers every row. A real HTTP server on
127.0.0.1."""

import email.utils
import time

import aiohttp

import dsutil
import sparkfeed
from faulty_http import FaultPlan, FaultyServer
from sparkfeed import httpranges, retries

ASKED_S = 2


def test_the_next_request_waits_as_long_as_the_server_asked(tmp_path):
    """The first three requests of the shards (three files) are answered 429 with
    `Retry-After: 2`; each file's next request comes 2 s later or more."""
    dsutil.write_parquet(str(tmp_path / "ds"), dsutil.table(60), rows_per_shard=20, rows_per_group=10)
    plan = FaultPlan(error_every=0, drop_every=0, stall_every=0, always_fail=r"\.parquet$", status=429,
                     fail_times=3, retry_after=str(ASKED_S))
    with FaultyServer(str(tmp_path), plan) as url:
        loader = sparkfeed.DataLoader(f"{url}/ds", batch_size=16, columns=["id"])
        assert sorted(i for b in loader for i in b["id"].tolist()) == list(range(60))
    throttled = [(t, path) for t, path, fault in plan.answered if fault == "permanent"]
    assert len(throttled) == 3
    for t, path in throttled:
        after = [u for u, p, _ in plan.answered if p == path and u > t]
        assert after, f"{path} was not asked again after its 429"
        assert after[0] - t >= ASKED_S - 0.05, f"{path} asked again {after[0] - t:.2f}s after its 429"


def test_retry_after_is_read_from_every_client_and_in_both_forms():
    plain = httpranges.HTTPStatusError(429, "x: HTTP 429", "Too Many Requests", {"Retry-After": "7"})
    assert retries.retry_after(plain) == 7.0
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    client = aiohttp.ClientResponseError(None, (), status=503, headers={"Retry-After": later})
    assert 25 <= retries.retry_after(client) <= 31
    wrapped = OSError("storage kept failing")
    wrapped.__cause__ = plain
    assert retries.retry_after(wrapped) == 7.0  # (as `as_os_error` raises it: from the client's error)
    for value in ("soon", "", "-3", "Thu, 99 Foo 2026"):
        assert retries.retry_after(httpranges.HTTPStatusError(429, "x", "", {"Retry-After": value})) is None
    assert retries.retry_after(ConnectionError("reset")) is None


def test_a_wait_asked_for_is_capped(monkeypatch):
    """A server asking for an hour gets `MAX_RETRY_AFTER_S`, so a retry budget stays bounded."""
    slept = []
    monkeypatch.setattr(retries.time, "sleep", slept.append)
    calls = []

    def fails_once():
        calls.append(1)
        if len(calls) == 1:
            raise httpranges.HTTPStatusError(503, "x: HTTP 503", "Slow Down", {"Retry-After": "3600"})
        return "ok"

    assert retries.with_retries(fails_once, "x") == "ok"
    assert slept == [retries.MAX_RETRY_AFTER_S]
