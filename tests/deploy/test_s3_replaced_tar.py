"""A tar shard on S3 (moto's server on 127.0.0.1) replaced after the manifest was written by a
shorter or longer object: refused before any of its samples is delivered, naming the dataset,
the shard and both sizes. Before, a shard read in pieces was checked only by its last piece
(its first pieces' samples were delivered from the changed object), and a piece that starts
past the end of a shorter object (S3's 416, which s3fs raises as EINVAL) was retried 8 times
as if storage were failing."""

import os

import pytest

import dsutil
import sparkfeed
from sparkfeed import ShardReadError, retries
from sparkfeed.read import tar


@pytest.mark.parametrize("change", ["longer", "shorter", "half"])
def test_a_replaced_tar_on_s3_is_refused_naming_both_sizes(s3, tmp_path, monkeypatch, change, caplog):
    monkeypatch.setattr(tar, "FIRST_CHUNK_BYTES", 64 << 10)  # read in pieces of a few samples
    monkeypatch.setattr(tar, "CHUNK_BYTES", 128 << 10)
    monkeypatch.setattr(tar, "MIN_CHUNK_ROWS", 4)
    dsutil.write_tar(str(tmp_path / "wds"), dsutil.table(300, image_bytes=3000), 100)
    shard = tmp_path / "wds" / "shard-00001.tar"
    data = shard.read_bytes()
    written = len(data)
    data = {"longer": data + bytes(10240), "shorter": data[:-4096], "half": data[:written // 2]}[change]
    shard.write_bytes(data)
    url = s3.upload(str(tmp_path / "wds"), "sparkfeed-tests", f"replaced-{change}-{os.getpid()}")
    delivered = []
    with caplog.at_level("WARNING", logger="sparkfeed"), pytest.raises(ShardReadError) as info:
        for batch in sparkfeed.DataLoader(url, batch_size=50, storage_options=s3.options):
            delivered += batch["id"].tolist()
    assert str(info.value).startswith(f"dataset '{url}', shard 'shard-00001.tar'"), info.value
    assert f"the file is {len(data)} bytes but the manifest says {written}" in str(info.value)
    assert delivered == list(range(100))  # none of the changed shard's samples
    assert "retry" not in caplog.text  # a refused range is not a failing server
    assert not retries.is_transient(OSError(22, "The requested range is not satisfiable"))
