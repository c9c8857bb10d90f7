"""An indexed Parquet object on S3 (moto's server on 127.0.0.1) overwritten while an epoch reads
it (same size, one byte of its data changed, a new ETag): its version is checked once per file
and iteration, so the rows read after the change came from the new object under the old footer.
Every GetObject of the Parquet reader is now conditional on the indexed ETag (`IfMatch`), and
S3's PreconditionFailed (412) is an error naming the dataset and shard."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import sparkfeed
from sparkfeed.errors import ShardReadError

N, BLOB = 2_000, 4_000


def test_an_object_overwritten_during_an_epoch_is_an_error_naming_it(s3, tmp_path):
    (tmp_path / "pq").mkdir()
    rng = np.random.default_rng(0)
    pq.write_table(pa.table({"id": np.arange(N), "blob": [rng.bytes(BLOB) for _ in range(N)]}),
                   tmp_path / "pq" / "a.parquet", row_group_size=100, compression="none")
    url = s3.upload(str(tmp_path / "pq"), "sparkfeed-tests", f"overwritten-{os.getpid()}")
    m = sparkfeed.index(url, manifest=str(tmp_path / "m.json"), storage_options=s3.options, progress=False)
    assert m.shards[0].etag
    loader = sparkfeed.DataLoader(url, manifest=str(tmp_path / "m.json"), batch_size=100, num_workers=0,
                                  prefetch=0, read_ahead_bytes=1 << 20, storage_options=s3.options)
    it = iter(loader)
    assert next(it)["id"].tolist() == list(range(100))
    data = bytearray((tmp_path / "pq" / "a.parquet").read_bytes())
    data[len(data) - 8 - int.from_bytes(data[-8:-4], "little") - 1_000] ^= 0xFF  # a blob of the last row group
    s3.fs().pipe(f"{url}/a.parquet", bytes(data))
    with pytest.raises(ShardReadError, match=r"a\.parquet.*HTTP 412, the file was replaced during the read") as info:
        for _ in it:
            pass
    assert info.value.shard == "a.parquet"
