"""ImageDecode(size=None) keeps each image's size, so a batch of two sizes cannot be one tensor:
the error names the dataset, the column and the shard the batch starts in. Real Parquet files,
both backends (DALI in CPU mode)."""

from __future__ import annotations

import io

import pyarrow as pa
import pytest
from PIL import Image

import dsutil
import sparkfeed


def _jpeg_of(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 30)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("backend", ["dali", "pil"])
def test_images_of_two_sizes_under_size_none_name_the_dataset_column_and_shard(tmp_path, backend):
    """Before: a ValueError naming neither the dataset nor where the batch came from."""
    t = dsutil.table(8)
    root = str(tmp_path / "sizes")
    images = [_jpeg_of(16, 16) if i < 4 else _jpeg_of(24, 16) for i in range(8)]
    dsutil.write_parquet(root, t.append_column("image", pa.array(images, pa.binary())), 8, 8,
                         codecs={"image": "jpeg"})
    loader = sparkfeed.DataLoader(root, batch_size=8, columns=["image"],
                                  decode={"image": sparkfeed.ImageDecode(size=None, device="cpu", backend=backend)})
    with pytest.raises(ValueError, match=r"dataset '.*sizes/?', column 'image', the batch starting in shard "
                                         r"'[^']+\.parquet', row group 0: ImageDecode\(size=None\) needs "
                                         r"same-sized images"):
        next(iter(loader))
