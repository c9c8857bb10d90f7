"""Tar shards on S3 (moto's server on 127.0.0.1) whose GETs stall: the server answers nothing
until the client's read time-out. s3fs raises botocore's `ReadTimeoutError` there, which is no
`TimeoutError`; a read-ahead fetch that timed out must still be tried once, not retried 8 times
before the reader reads the bytes in place with its own retries (as an HTTP time-out is), and a
stalled index must be asked once before the tar is streamed."""

import threading

import pytest

import dsutil
import sparkfeed
from sparkfeed import ShardReadError, retries

s3fs = pytest.importorskip("s3fs")


class _Stalls:
    """WSGI layer around moto's app: the first `stalls` GETs of each object whose path ends with
    one of `suffixes` get no answer until `release` (the client times out first)."""

    def __init__(self, app, stalls: int, suffixes=(".tar", ".idx")):
        self.app, self.stalls, self.suffixes = app, stalls, suffixes
        self.gets: dict[str, int] = {}
        self.release, self.lock = threading.Event(), threading.Lock()

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if environ["REQUEST_METHOD"] == "GET" and path.endswith(self.suffixes):
            with self.lock:
                self.gets[path] = n = self.gets.get(path, 0) + 1
            if n <= self.stalls:
                self.release.wait(60)
        return self.app(environ, start_response)


@pytest.fixture
def stalling(s3, monkeypatch):
    """Arms a `_Stalls` layer in front of moto (for the test only), quick retry waits (the
    number of attempts unchanged: the test counts requests) and no retries inside s3fs."""
    monkeypatch.setitem(retries.with_retries.__kwdefaults__, "base_delay", 0.01)
    monkeypatch.setitem(retries.with_retries.__kwdefaults__, "max_delay", 0.02)
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)  # s3fs's own retries (5) left out of the count
    layers = []

    def arm(stalls: int) -> _Stalls:
        layers.append(_Stalls(s3.faults.app, stalls))
        monkeypatch.setattr(s3.faults, "app", layers[-1])
        return layers[-1]

    yield arm
    for layer in layers:
        layer.release.set()


def _options(s3) -> dict:
    """The test's S3 options: a 0.3 s read time-out, and neither botocore nor s3fs retrying
    (with `stalling`: sparkfeed's own retries are what the test counts)."""
    client = {**s3.options["client_kwargs"]}
    return {**s3.options, "client_kwargs": client, "skip_instance_cache": True,
            "config_kwargs": {"read_timeout": 0.3, "connect_timeout": 2,
                              "retries": {"mode": "standard", "total_max_attempts": 1}}}


@pytest.mark.parametrize("index", [False, True])
def test_a_bucket_that_stays_stalled_costs_one_retry_budget(s3, stalling, tmp_path, index):
    dsutil.write_tar(str(tmp_path / "wds"), dsutil.table(200, image_bytes=64), 100, index=index)
    url = s3.upload(str(tmp_path / "wds"), "sparkfeed-tests", f"stalled-{index}")
    layer = stalling(10**6)
    loader = sparkfeed.DataLoader(url, batch_size=50, storage_options=_options(s3))
    with pytest.raises(ShardReadError, match="storage kept failing") as info:
        list(loader)
    # said as a time-out (botocore's ReadTimeoutError was worded as a ConnectionError)
    assert "TimeoutError" in str(info.value) and "no answer within the storage client's time-out" in str(info.value)
    tar = f"/sparkfeed-tests/stalled-{index}/{info.value.shard}"
    # the read-ahead's one request, then the reader's 8 attempts (before: 8 ahead, then 8 more)
    assert layer.gets[tar] <= 9, layer.gets
    # a stalled index: asked once, then the tar streamed (before: 8 times)
    assert all(n == 1 for p, n in layer.gets.items() if p.endswith(".idx")), layer.gets


@pytest.mark.parametrize("index", [False, True])
def test_a_bucket_that_stalls_once_per_object_delivers_every_sample(s3, stalling, tmp_path, index, caplog):
    dsutil.write_tar(str(tmp_path / "wds"), dsutil.table(200, image_bytes=64), 100, index=index)
    url = s3.upload(str(tmp_path / "wds"), "sparkfeed-tests", f"stalls-once-{index}")
    layer = stalling(1)
    with caplog.at_level("WARNING", logger="sparkfeed"):
        loader = sparkfeed.DataLoader(url, batch_size=50, storage_options=_options(s3))
        ids = sorted(i for b in loader for i in b["id"].tolist())
    assert ids == list(range(200))
    # each tar: the stalled read-ahead, then in place; each index: the stalled one, then the tar
    # streamed (before: each retried ahead until it answered)
    assert all(n == (1 if p.endswith(".idx") else 2) for p, n in layer.gets.items()), layer.gets
    said = [r.getMessage() for r in caplog.records if "no answer within" in r.getMessage()]
    assert said and all("ReadTimeoutError" in m for m in said), said  # botocore's, taken as a stall
