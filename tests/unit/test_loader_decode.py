"""decode= in the DataLoader: DALI (CPU mode here) on real JPEG columns of both formats."""

import gc
import io
import threading

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


# -- decoding one batch ahead (the prefetch thread starts batch n+1 before it hands over batch n) --

def _decoder_of(loader):
    return loader._work.decoders["image"][0]


def _wait_for_a_batch_in_flight(loader) -> None:
    """Block until the prefetch thread has a batch submitted to DALI and not yet collected (it
    runs ahead on its own; this waits for that state, it does not time anything)."""
    done = threading.Event()
    while not done.wait(0.01):
        if "image" in loader._work.decoders and any(_decoder_of(loader)._backend.inflight.values()):
            done.set()


@pytest.mark.parametrize("ahead", [1, 3])
def test_resume_after_a_batch_decoded_ahead_keeps_exactly_once_and_the_same_crops(image_ds, ahead):
    """Batches that DALI has decoded ahead but that were not handed over do not count as
    consumed: resuming delivers them, each sample exactly once, with the same keyed crop."""
    root = image_ds(200, images=gradient_jpeg)
    spec = {"image": sparkfeed.ImageDecode(size=24, crop="random", mirror=True, device="cpu")}

    def loader():
        L = sparkfeed.DataLoader(root, batch_size=20, num_workers=1, columns=["id", "image"],
                                 decode=spec, seed=4, prefetch=2)
        L._work.ahead = ahead
        return L
    full = {i: img for b in loader() for i, img in zip(b["id"].tolist(), b["image"])}
    L = loader()
    it = iter(L)
    seen = {}
    for _ in range(3):
        b = next(it)
        seen.update(zip(b["id"].tolist(), b["image"]))
    _wait_for_a_batch_in_flight(L)
    state = L.state_dict()
    it.close()
    assert not any(_decoder_of(L)._backend.inflight.values())
    R = loader()
    R.load_state_dict(state)
    rest = {i: img for b in R for i, img in zip(b["id"].tolist(), b["image"])}
    assert len(seen) == 60 and not seen.keys() & rest.keys()
    assert sorted(seen.keys() | rest.keys()) == list(range(200))
    assert all(torch.equal(img, full[i]) for i, img in {**seen, **rest}.items())


def _undecodable_jpeg(i: int) -> bytes:
    good = bytearray(jpeg(i, size=(160, 120)))
    good[good.index(b"\xff\xda") + 6] = 0x33  # scan tables never defined: only DALI's decode finds it bad
    return bytes(good)


@pytest.mark.parametrize("ahead", [1, 3])
@pytest.mark.parametrize("bad", ["header", "pixels"])
def test_a_corrupt_image_in_the_batch_decoded_ahead_raises_after_the_batch_before_it(image_ds, bad, ahead):
    """Batch 1 holds the bad image (refused by the header check, or failed by DALI's run): it is
    submitted before batch 0 is handed over, but its error comes only after batch 0 was
    delivered, naming the shard and the row."""
    if bad == "header":
        root = image_ds(100, bad={27})
    else:
        root = image_ds(100, images=lambda i: _undecodable_jpeg(i) if i == 27 else jpeg(i))
    L = sparkfeed.DataLoader(root, batch_size=20, num_workers=1, columns=["id", "image"],
                             decode={"image": sparkfeed.ImageDecode(size=16, device="cpu")})
    L._work.ahead = ahead
    got = []
    with pytest.raises(CorruptSampleError, match=r"(?s)shard '(part|shard)-00000.*'row 27'.*"
                                                 r"producing batch 1; batches 0\.\.0 were delivered"):
        for b in L:
            got.append(b["id"].tolist())
    assert got == [list(range(20))]
    assert not any(_decoder_of(L)._backend.inflight.values())


@pytest.mark.parametrize("ahead", [1, 3])
def test_closing_or_dropping_the_iterator_mid_epoch_leaves_no_thread_and_no_run(image_ds, ahead):
    root = image_ds(200)
    L = sparkfeed.DataLoader(root, batch_size=20, num_workers=1, columns=["id", "image"],
                             decode={"image": sparkfeed.ImageDecode(size=16, device="cpu")})
    L._work.ahead = ahead
    for drop in ("close", "gc"):
        it = iter(L)
        next(it)
        _wait_for_a_batch_in_flight(L)
        if drop == "close":
            it.close()
        else:
            del it
            gc.collect()
        for t in [t for t in threading.enumerate() if t.name == "sparkfeed-prefetch"]:
            t.join(60)  # returns as soon as it ends; the bound only stops a hang
        assert not [t for t in threading.enumerate() if t.name == "sparkfeed-prefetch"]
        assert not any(_decoder_of(L)._backend.inflight.values())
    ids = [i for b in L for i in b["id"].tolist()]  # the same decoder, a whole epoch after
    assert sorted(ids) == list(range(200))


def test_two_live_iterators_of_one_loader_each_get_their_own_batches(image_ds):
    """An iterator kept alive with a batch in flight on the shared decoder (a peek, a sanity
    check) does not disturb a second one, nor does the second take its images."""
    root = image_ds(200)
    L = sparkfeed.DataLoader(root, batch_size=20, num_workers=1, columns=["id", "image"],
                             decode={"image": sparkfeed.ImageDecode(size=16, device="cpu")})

    def colour_ok(b):
        want = torch.tensor([[(i * 37) % 256, (i * 91) % 256, (i * 13) % 256] for i in b["id"].tolist()])
        return torch.allclose(b["image"].float().mean(dim=(2, 3)), want.float(), atol=6)
    first = iter(L)
    peeked = next(first)
    _wait_for_a_batch_in_flight(L)
    second = list(L)
    assert sorted(i for b in second for i in b["id"].tolist()) == list(range(200))
    rest = list(first)
    assert sorted(i for b in [peeked] + rest for i in b["id"].tolist()) == list(range(200))
    assert all(colour_ok(b) for b in [peeked] + rest + second)


def test_ahead_benchmark_runs_every_depth_over_the_same_epochs(image_ds):
    from sparkfeed.bench.feed import ahead_benchmark

    root = image_ds(120)
    r = ahead_benchmark(root, 32, train=True, rounds=1, workers=1, batch_size=32, depths=(0, 1, 2))
    for depth in (0, 1, 2):
        assert r[depth]["images_per_s"] > 0 and r[depth]["cpu_us"] > 0 and r["ratio"][depth] > 0
    assert r["ratio"][0] == 1.0
    with pytest.raises(ValueError, match=r"`depths` should be non-negative integers, but got depths=\(1, -1\)"):
        ahead_benchmark(root, 32, depths=(1, -1))


@pytest.mark.parametrize("train", [False, True])
def test_decoding_further_ahead_delivers_the_same_batches(image_ds, train):
    """Two and three batches decoded ahead of the one handed over: the same images, labels and
    order as one ahead and as one at a time (keyed crops), with DALI's pipelines sized for it."""
    root = image_ds(200, images=gradient_jpeg)
    spec = {"image": sparkfeed.ImageDecode(size=24, crop="random" if train else "center", mirror=train,
                                           device="cpu")}

    def epoch(ahead):
        L = sparkfeed.DataLoader(root, batch_size=16, num_workers=2, columns=["id", "image"], decode=spec,
                                 shuffle=train, seed=3)
        L._work.ahead = ahead
        got = list(L)
        assert _decoder_of(L)._backend.args["prefetch_queue_depth"] == ahead + 1
        return got
    want = epoch(1)
    assert sorted(i for b in want for i in b["id"].tolist()) == list(range(200))
    for ahead in (0, 2, 3):
        got = epoch(ahead)
        assert [b["id"].tolist() for b in got] == [b["id"].tolist() for b in want]
        assert all(torch.equal(a["image"], b["image"]) for a, b in zip(got, want))


def test_two_decoded_columns_drop_a_row_that_fails_in_either_once(tmp_path):
    """Both columns are submitted together; a row bad in either is dropped from every column and
    counted once (skip), and with on_error="raise" the first column in `decode`'s order is named."""
    t = image_table(60, bad={5})
    t = t.append_column("thumb", pa.array([b"not a jpeg" if i in (5, 9) else jpeg(i + 1) for i in range(60)],
                                          pa.binary()))
    root = str(tmp_path / "two")
    dsutil.write_parquet(root, t, 100, 50, codecs={"image": "jpeg", "thumb": "jpeg"})
    spec = {"image": sparkfeed.ImageDecode(size=16, device="cpu"), "thumb": sparkfeed.ImageDecode(size=8, device="cpu")}
    L = sparkfeed.DataLoader(root, batch_size=20, columns=["id", "image", "thumb"], decode=spec, on_error="skip")
    batches = list(L)
    ids = [i for b in batches for i in b["id"].tolist()]
    assert ids == [i for i in range(60) if i not in (5, 9)]
    assert L.stats()["samples_skipped"] == 2
    for b in batches:
        assert b["image"].shape == (len(b["id"]), 3, 16, 16) and b["thumb"].shape == (len(b["id"]), 3, 8, 8)
        want = torch.tensor([[((i + 1) * 37) % 256, ((i + 1) * 91) % 256, ((i + 1) * 13) % 256]
                             for i in b["id"].tolist()], dtype=torch.float32)
        assert torch.allclose(b["thumb"].float().mean(dim=(2, 3)), want, atol=6)
    with pytest.raises(CorruptSampleError, match=r"'row 5': cannot decode: not a recognised image format"):
        list(sparkfeed.DataLoader(root, batch_size=20, columns=["id", "image", "thumb"], decode=spec))


@pytest.mark.parametrize("set_epoch", [True, False])
def test_the_next_epoch_decoded_ahead_draws_its_own_crops(image_ds, set_epoch):
    """`persistent_workers=True`: the prefetch thread submits the next epoch's first batches to
    DALI while this epoch is still delivered. Their crops and flips are the next epoch's (the same
    epoch again without `set_epoch`): every image as a loader without it decodes it."""
    import time

    root = image_ds(120, images=gradient_jpeg)
    spec = {"image": sparkfeed.ImageDecode(size=24, crop="random", mirror=True, device="cpu")}
    kw = dict(batch_size=20, num_workers=1, columns=["id", "image"], decode=spec, seed=9, shuffle=True)

    def epochs(loader, n):
        out = []
        for e in range(n):
            if set_epoch:
                loader.set_epoch(e)
            out.append({i: img for b in loader for i, img in zip(b["id"].tolist(), b["image"])})
            if loader.persistent_workers and e == 0:  # the next epoch's draws began before its iteration
                deadline = time.monotonic() + 10
                while loader._work.decoders["image"][1] != (1 if set_epoch else 0, 0) or not loader._next:
                    assert time.monotonic() < deadline, "nothing of the next epoch was decoded ahead"
                    time.sleep(0.01)
        return out

    plain = epochs(sparkfeed.DataLoader(root, **kw), 3)
    ahead_loader = sparkfeed.DataLoader(root, persistent_workers=True, **kw)
    ahead = epochs(ahead_loader, 3)
    for p, a in zip(plain, ahead):
        assert sorted(a) == list(range(120)) and all(torch.equal(a[i], p[i]) for i in a)
    assert ahead_loader.stats()["epochs_read_ahead"] == 2
    if set_epoch:  # the epochs differ, so a crop of the wrong epoch would have shown
        assert sum(torch.equal(plain[0][i], plain[1][i]) for i in range(120)) < 60


def test_corrupt_images_in_staged_epochs_are_counted_or_named_in_their_own_epoch(image_ds):
    """`persistent_workers=True` decodes the next epoch's first batches ahead: skipped images are
    counted when their batch is delivered (once per epoch, never for an epoch not iterated), and
    with on_error="raise" every epoch raises naming the shard and the row."""
    root = image_ds(100, bad={3, 61})
    kw = dict(batch_size=20, num_workers=1, columns=["id", "image"], persistent_workers=True,
              decode={"image": sparkfeed.ImageDecode(size=16, device="cpu")})
    skipping = sparkfeed.DataLoader(root, on_error="skip", **kw)
    for e in range(3):
        skipping.set_epoch(e)
        assert sorted(i for b in skipping for i in b["id"].tolist()) == sorted(set(range(100)) - {3, 61})
    stats = skipping.stats()
    assert stats["samples_skipped"] == 6 and stats["samples"] == 3 * 98 and stats["epochs_read_ahead"] == 2
    raising = sparkfeed.DataLoader(root, **kw)
    for e in range(2):
        raising.set_epoch(e)
        with pytest.raises(CorruptSampleError, match=r"shard '(part|shard)-00000.*'row 3'"):
            for _ in raising:
                pass
