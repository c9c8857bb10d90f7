"""S3 through s3fs against moto's S3 server on 127.0.0.1: both formats, exactly once, filter
pushdown with the bytes counted on the server, resume, and retries through 503 SlowDown and
connections cut mid-body. Datasets are written locally (tests/dsutil.py) and uploaded."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dsutil
import sparkfeed

N = 600
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def datasets(s3, tmp_path_factory):
    """{format: s3 URL} of one dataset per format, plus a label-sorted Parquet one."""
    root = tmp_path_factory.mktemp("s3src")
    dsutil.write_parquet(str(root / "pq"), dsutil.table(N, image_bytes=64), 200, 50)
    rng = np.random.default_rng(0)  # incompressible images: what pushdown must not fetch
    images = pa.array([rng.bytes(4096) for _ in range(N)], pa.binary())
    dsutil.write_parquet(str(root / "sorted"), dsutil.table(N).append_column("image", images),
                         200, 20, sort_by="label")
    dsutil.write_tar(str(root / "wds"), dsutil.table(N, image_bytes=64), 150)
    return {name: s3.upload(str(root / name), "sparkfeed-tests", name)
            for name in ("pq", "sorted", "wds")}


def ids_of(loader) -> list[int]:
    return [i for b in loader for i in b["id"].tolist()]


@pytest.fixture(autouse=True)
def _clean_faults(s3):
    s3.faults.arm(0, 0)
    s3.faults.reset_counts()
    yield
    s3.faults.arm(0, 0)
    s3.faults.deny = None


@pytest.mark.parametrize("name", ["pq", "wds"])
def test_s3_every_sample_exactly_once(s3, datasets, name):
    assert sparkfeed.read_manifest(datasets[name], storage_options=s3.options).num_samples == N
    L = sparkfeed.DataLoader(datasets[name], batch_size=64, shuffle=True, seed=3, num_workers=2,
                             storage_options=s3.options)
    assert sorted(ids_of(L)) == list(range(N))


def test_s3_filter_pushdown_served_bytes(s3, datasets):
    url = datasets["sorted"]
    prefix = "/sparkfeed-tests/sorted/part-"
    full = sparkfeed.DataLoader(url, batch_size=100, storage_options=s3.options)
    assert len(ids_of(full)) == N
    all_bytes = s3.faults.bytes_served(prefix)
    s3.faults.reset_counts()
    kept = sparkfeed.DataLoader(url, batch_size=100, filter=[("label", "<", 2)],
                                storage_options=s3.options)
    assert sorted(ids_of(kept)) == [i for i in range(N) if i % 10 < 2]
    some_bytes = s3.faults.bytes_served(prefix)
    # 20% of the rows survive; pruned row groups and skipped image columns are never fetched
    # (what is served beyond that: each file's footer, read as one 64 KiB tail request)
    assert 0 < some_bytes < 0.35 * all_bytes, (some_bytes, all_bytes)


@pytest.mark.parametrize("name", ["pq", "wds"])
def test_s3_resume_delivers_exactly_the_rest(s3, datasets, name):
    kw = dict(batch_size=50, shuffle=True, seed=5, num_workers=2, storage_options=s3.options)
    L = sparkfeed.DataLoader(datasets[name], **kw)
    it = iter(L)
    head = [i for _ in range(4) for i in next(it)["id"].tolist()]
    state = L.state_dict()
    it.close()
    L2 = sparkfeed.DataLoader(datasets[name], **kw)
    L2.load_state_dict(state)
    rest = ids_of(L2)
    assert len(head) + len(rest) == N
    assert sorted(head + rest) == list(range(N))


@pytest.mark.parametrize("name", ["pq", "wds"])
def test_s3_retries_slowdown_and_cut_connections(s3, datasets, name):
    s3.faults.arm(slowdown_every=3, cut_every=4)
    L = sparkfeed.DataLoader(datasets[name], batch_size=64, num_workers=0,
                             storage_options=s3.options)
    assert sorted(ids_of(L)) == list(range(N))
    assert s3.faults.injected["slowdown"] > 0 and s3.faults.injected["cut"] > 0, s3.faults.injected


def test_s3_a_glob_of_parquet_files_loads_without_its_manifest(s3, datasets):
    """A glob names files, not a dataset: they are indexed in memory over S3 (footers through
    s3fs) and read where they are, every sample once."""
    url = f"{datasets['pq']}/*.parquet"
    L = sparkfeed.DataLoader(url, batch_size=64, shuffle=True, num_workers=2, storage_options=s3.options)
    assert sorted(ids_of(L)) == list(range(N))
    assert L.dataset.path.startswith("s3://sparkfeed-tests/pq")


@pytest.mark.parametrize("name,shard", [("pq", "part-00001.parquet"), ("wds", "shard-00001.tar")])
def test_s3_a_shard_access_denied_is_an_error_naming_it(s3, datasets, name, shard):
    """A bucket policy refuses one shard (403 AccessDenied): a ShardReadError naming the
    dataset, the shard and the refusal. Before, a tar shard's PermissionError left the loader
    bare ("Forbidden"), naming neither."""
    s3.faults.deny = shard
    L = sparkfeed.DataLoader(datasets[name], batch_size=64, storage_options=s3.options)
    with pytest.raises(sparkfeed.ShardReadError,
                       match=rf"dataset '{datasets[name]}', shard '{shard}'.*storage refused access"):
        ids_of(L)


def test_s3_no_credentials_is_a_manifest_error_saying_how_to_pass_them(s3, datasets, monkeypatch):
    """No credentials anywhere (no storage_options key/secret, no AWS_* variables or files):
    a ManifestError naming the dataset that says to pass them (or anon=True), not botocore's
    NoCredentialsError."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    options = {"client_kwargs": s3.options["client_kwargs"], "skip_instance_cache": True}
    with pytest.raises(sparkfeed.ManifestError,
                       match=rf"dataset '{datasets['pq']}'.*Unable to locate credentials.*'anon': True"):
        sparkfeed.DataLoader(datasets["pq"], batch_size=64, storage_options=options)


def test_s3_an_endpoint_nobody_answers_is_a_manifest_error(datasets):
    """`endpoint_url` where no server listens: a ManifestError naming the dataset and the
    endpoint (after botocore's own retries), not botocore's EndpointConnectionError."""
    import deployutil

    endpoint = f"http://127.0.0.1:{deployutil.free_port()}"
    options = {"key": "testing", "secret": "testing", "skip_instance_cache": True,
               "client_kwargs": {"endpoint_url": endpoint, "region_name": "eu-west-1"},
               "config_kwargs": {"retries": {"max_attempts": 1}}}
    with pytest.raises(sparkfeed.ManifestError, match=rf"dataset '{datasets['pq']}'.*{endpoint}"):
        sparkfeed.DataLoader(datasets["pq"], batch_size=64, storage_options=options)


def test_s3_indexing_where_storage_refuses_the_listing_is_a_manifest_error(s3, tmp_path):
    """`sparkfeed.index` of data without a manifest where storage refuses (403) the lookups:
    a ManifestError naming the dataset and the refusal, not a bare PermissionError."""
    (tmp_path / "raw").mkdir()
    pq.write_table(pa.table({"x": list(range(10))}), str(tmp_path / "raw" / "a.parquet"))
    url = s3.upload(str(tmp_path / "raw"), "sparkfeed-tests", "refused-raw")
    assert sparkfeed.index(url, storage_options=s3.options, progress=False,
                           manifest=str(tmp_path / "ok.json")).num_samples == 10
    s3.faults.deny = "refused-raw"
    try:
        with pytest.raises(sparkfeed.ManifestError, match=rf"dataset '{url}'.*storage refused access"):
            sparkfeed.index(url, storage_options={**s3.options, "skip_instance_cache": True},  # no cached listing
                            progress=False, manifest=str(tmp_path / "m.json"))
    finally:
        s3.faults.deny = None


@pytest.mark.parametrize("name,shard", [("pq", "part-00001.parquet"), ("sorted", "part-00001.parquet"),
                                        ("wds", "shard-00001.tar")])
@pytest.mark.parametrize("on_error,read_ahead", [("raise", None), ("skip", None), ("raise", 0)])
def test_s3_a_shard_that_grew_after_the_write_is_refused_by_its_size(s3, datasets, name, shard, on_error,
                                                                       read_ahead):
    """Bytes appended to a shard after the manifest was written leave everything the manifest
    points at where it was (a Parquet footer, a tar's members), so the old rows were read and
    the new bytes ignored without a word (over HTTP the server's size was checked; s3fs's
    ranged reads say no size). The request for the file's last bytes now asks for one more: a
    ShardReadError naming the shard, or under on_error="skip" a counted skip of its rows; with
    read-ahead and without (a file opened in place fetches its footer the same way)."""
    fs = s3.fs()
    copy = datasets[name] + "-grown"
    fs.copy(datasets[name], copy, recursive=True)
    key = f"{copy}/{shard}"
    fs.pipe_file(key, fs.cat_file(key) + b"\0" * 1024)  # (a tar's zero blocks: still a valid tar)
    L = sparkfeed.DataLoader(copy, batch_size=64, storage_options=s3.options, on_error=on_error,
                             **({} if read_ahead is None else {"read_ahead_bytes": read_ahead}))
    if on_error == "raise":
        with pytest.raises(sparkfeed.ShardReadError,
                           match=rf"dataset '{copy}', shard '{shard}'.*(changed|replaced) after the"):
            ids_of(L)
        return
    got = ids_of(L)
    assert len(got) == len(set(got)) and 0 < len(got) < N
    assert L.stats()["samples_skipped"] == N - len(got)
