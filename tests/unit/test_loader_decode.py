"""decode= in the DataLoader: DALI (CPU mode here) on real JPEG columns of both formats."""

import io

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

import dsutil
import sparkfeed
from sparkfeed import CorruptSampleError


def jpeg(i: int, size=(40, 30)) -> bytes:
    img = Image.new("RGB", size, ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def gradient_jpeg(i: int) -> bytes:
    """A 48x32 image whose every crop and flip looks different."""
    y, x = np.mgrid[0:32, 0:48]
    a = np.stack([x * 5, y * 7, (x * y + i) % 256], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def image_table(n: int, bad: set[int] = frozenset(), make=jpeg) -> pa.Table:
    t = dsutil.table(n)
    images = [b"not a jpeg" if i in bad else make(i) for i in range(n)]
    return t.append_column("image", pa.array(images, pa.binary()))


@pytest.fixture(params=["parquet", "webdataset"])
def image_ds(request, tmp_path):
    def make(n, bad=frozenset(), images=jpeg):
        root = str(tmp_path / request.param)
        if request.param == "parquet":
            dsutil.write_parquet(root, image_table(n, bad, images), 100, 50, codecs={"image": "jpeg"})
        else:
            dsutil.write_tar(root, image_table(n, bad, images), 100)
        return root
    return make


def test_decoded_batches_are_rgb_tensors_with_the_right_colour(image_ds):
    root = image_ds(120)
    L = sparkfeed.DataLoader(root, batch_size=32, num_workers=1, columns=["id", "image"],
                             decode={"image": sparkfeed.ImageDecode(size=24, device="cpu")})
    n = 0
    for b in L:
        assert b["image"].dtype == torch.uint8 and b["image"].shape[1:] == (3, 24, 24)
        for i, img in zip(b["id"].tolist(), b["image"]):
            want = torch.tensor([(i * 37) % 256, (i * 91) % 256, (i * 13) % 256], dtype=torch.float32)
            assert torch.allclose(img.float().mean(dim=(1, 2)), want, atol=6)
        n += len(b["id"])
    assert n == 120


def test_corrupt_image_raises_naming_shard_and_key_or_is_skipped_and_counted(image_ds):
    root = image_ds(200, bad={7, 150})
    spec = {"image": sparkfeed.ImageDecode(size=16, device="cpu")}
    with pytest.raises(CorruptSampleError, match=r"shard '(part|shard)-0000[01]"):
        for _ in sparkfeed.DataLoader(root, batch_size=50, decode=spec):
            pass
    L = sparkfeed.DataLoader(root, batch_size=50, decode=spec, on_error="skip")
    ids = [i for b in L for i in b["id"].tolist()]
    assert sorted(ids) == [i for i in range(200) if i not in (7, 150)]
    assert L.stats()["samples_skipped"] == 2


def test_decode_of_a_non_binary_column_is_refused(image_ds):
    root = image_ds(10)
    with pytest.raises(ValueError, match="not a binary column"):
        sparkfeed.DataLoader(root, decode={"label": sparkfeed.ImageDecode(size=8, device="cpu")})


@pytest.mark.parametrize("crop", [dict(crop="random"), dict(crop="random", resize=None),
                                  dict(crop="random_resized")], ids=["random", "stored-pixels", "random_resized"])
def test_random_crops_follow_the_sample_not_the_batch(image_ds, crop):
    """A sample's random crop and flip depend on (seed, epoch, sample): the same for any batch
    size and worker count, different between samples and between epochs; for every crop kind."""
    root = image_ds(120, images=gradient_jpeg)
    spec = {"image": sparkfeed.ImageDecode(size=24, mirror=True, device="cpu", **crop)}

    def epoch(e, **kw):
        L = sparkfeed.DataLoader(root, columns=["id", "image"], decode=spec, seed=5, **kw)
        L.set_epoch(e)
        out = {i: img for b in L for i, img in zip(b["id"].tolist(), b["image"])}
        assert sorted(out) == list(range(120))
        return out

    a = epoch(0, batch_size=8)
    b = epoch(0, batch_size=32, num_workers=2)
    assert all(torch.equal(a[i], b[i]) for i in range(120))
    # batches do not repeat one sequence of draws: rows 0..7 of batch 1 and of batch 2 differ
    same_place = [torch.equal(a[i][:, :, :8], a[i + 8][:, :, :8]) for i in range(8)]
    assert not all(same_place)
    assert len({tuple(a[i][0, 0, :4].tolist()) for i in range(120)}) > 10  # many crop positions
    c = epoch(1, batch_size=8)
    assert sum(torch.equal(a[i], c[i]) for i in range(120)) < 60  # another epoch, other crops
