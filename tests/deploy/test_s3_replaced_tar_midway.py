"""An indexed tar shard on S3 (moto's server on 127.0.0.1) overwritten while an epoch reads it
in pieces (same size, the last sample's label byte changed, a new ETag): its version is checked
once per shard and iteration, so the pieces read after the change were cut from the new object.
Every GetObject of the tar reader is now conditional on the indexed ETag (`IfMatch`), and S3's
PreconditionFailed (412) is an error naming the dataset and shard."""

import os

import pytest

from tarversions import N, replace_last_label, write_shard
import sparkfeed
from sparkfeed.errors import ShardReadError
from sparkfeed.read import tar


def test_a_tar_overwritten_during_an_epoch_is_an_error_naming_it(s3, tmp_path, monkeypatch):
    monkeypatch.setattr(tar, "FIRST_CHUNK_BYTES", 128 << 10)
    monkeypatch.setattr(tar, "CHUNK_BYTES", 256 << 10)
    monkeypatch.setattr(tar, "MIN_CHUNK_ROWS", 4)
    (tmp_path / "wds").mkdir()
    shard = tmp_path / "wds" / "a.tar"
    write_shard(shard)
    url = s3.upload(str(tmp_path / "wds"), "sparkfeed-tests", f"tar-overwritten-{os.getpid()}")
    m = sparkfeed.index(url, manifest=str(tmp_path / "m.json"), storage_options=s3.options, progress=False)
    assert m.shards[0].etag and m.shards[0].index
    loader = sparkfeed.DataLoader(url, manifest=str(tmp_path / "m.json"), batch_size=50, num_workers=0,
                                  prefetch=0, read_ahead_bytes=512 << 10, storage_options=s3.options)
    it = iter(loader)
    assert next(it)["cls"].tolist() == [i % 7 for i in range(50)]
    replace_last_label(shard)
    s3.fs().pipe(f"{url}/a.tar", shard.read_bytes())
    with pytest.raises(ShardReadError, match=r"a\.tar.*HTTP 412, the file was replaced during the read") as info:
        for _ in it:
            pass
    assert info.value.shard == "a.tar" and info.value.offset >= 50 * (3 * 512 + 10_240)  # (the piece refused)
    assert N > 50


@pytest.mark.parametrize("way", ["streamed", "whole"])
def test_an_unchanged_tar_is_read_with_conditional_requests(s3, tmp_path, way):
    """No change: every sample, streamed in place (its DALI index gone: s3fs's file, its
    GetObjects carrying IfMatch) or read whole in place (a filter), the IfMatch sent matching."""
    (tmp_path / "wds").mkdir()
    write_shard(tmp_path / "wds" / "a.tar")
    url = s3.upload(str(tmp_path / "wds"), "sparkfeed-tests", f"tar-unchanged-{way}-{os.getpid()}")
    sparkfeed.index(url, manifest=str(tmp_path / "m.json"), storage_options=s3.options, progress=False)
    if way == "streamed":
        next(tmp_path.rglob("a.tar.idx")).unlink()
    kwargs = {"filter": [("cls", ">=", 0)]} if way == "whole" else {}
    loader = sparkfeed.DataLoader(url, manifest=str(tmp_path / "m.json"), batch_size=50, num_workers=0,
                                  storage_options=s3.options, **kwargs)
    assert [x for b in loader for x in b["cls"].tolist()] == [i % 7 for i in range(N)]
