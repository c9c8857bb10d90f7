"""`seed=` counts whole: any seed torch accepts (64-bit, as `torch.initial_seed()` gives, or
negative) orders, mixes and crops by all its bits, seeds that torch would refuse are refused up
front, and seeds in [0, 2**32) keep the orders saved states were made with. Real Parquet files."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

import dsutil
import sparkfeed
from sparkfeed import Source
from sparkfeed.shuffle import key_words


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")
    dsutil.write_parquet(str(root / "a"), dsutil.table(60), 20, 10)
    dsutil.write_parquet(str(root / "b"), dsutil.table(90), 30, 10)
    return str(root / "a"), str(root / "b")


def order(path_or_sources, seed: int, **kw) -> list[int]:
    loader = sparkfeed.DataLoader(path_or_sources, batch_size=8, shuffle=True, seed=seed, columns=["id"], **kw)
    return [i for b in loader for i in b["id"].tolist()]


@pytest.mark.parametrize("a,b", [(0, 2**32), (2**32 - 1, -1), (5, 2**64 - 2**32 + 5), (2**32, 2**33)])
def test_seeds_equal_in_their_low_32_bits_give_other_orders(ds, a, b):
    # before: only the low 32 bits counted, so each pair gave one order without a word
    assert sorted(order(ds[0], a)) == sorted(order(ds[0], b)) == list(range(60))
    assert order(ds[0], a) != order(ds[0], b)


def test_a_mix_counts_the_whole_seed_too(ds):
    sources = [Source(ds[0], weight=1.0), Source(ds[1], weight=1.0)]
    assert order(sources, 0) != order(sources, 2**32)


def test_seeds_below_2_32_keep_their_words():
    """The orders of seeds in [0, 2**32) (every saved state so far) stay what they were."""
    assert key_words((7, 3)) == [7, 3, 2] and key_words((2**32 - 1,)) == [2**32 - 1, 1]
    wide = key_words((2**32 + 7, 3))
    assert wide[:2] == [7, 3] and wide[2:4] == [1, 0] and len(set(map(tuple, [wide, key_words((7, 3))]))) == 2


@pytest.mark.parametrize("seed", [2**64, -2**63 - 1, 10**30])
def test_a_seed_outside_torchs_range_is_refused_up_front(ds, seed):
    with pytest.raises(ValueError, match=r"`seed` should be an integer in \[-2\*\*63, 2\*\*64\)"):
        sparkfeed.DataLoader(ds[0], batch_size=8, shuffle=True, seed=seed)


def test_a_wide_seed_resumes_exactly_and_a_state_from_before_is_refused(ds):
    seed = 2**40 + 3
    loader = sparkfeed.DataLoader(ds[0], batch_size=8, shuffle=True, seed=seed, columns=["id"])
    it = iter(loader)
    seen = [i for _ in range(3) for i in next(it)["id"].tolist()]
    state = loader.state_dict()
    again = sparkfeed.DataLoader(ds[0], batch_size=8, shuffle=True, seed=seed, columns=["id"])
    again.load_state_dict(state)
    rest = [i for b in again for i in b["id"].tolist()]
    assert seen + rest == order(ds[0], seed)
    # a state saved before 64-bit seeds counted (its order was seed 3's) has the plain seed in its fingerprint
    old = dict(state, fingerprint=state["fingerprint"].replace(" (all 64 bits)", ""))
    assert old["fingerprint"] != state["fingerprint"]
    fresh = sparkfeed.DataLoader(ds[0], batch_size=8, shuffle=True, seed=seed, columns=["id"])
    with pytest.raises(ValueError, match=r"seed 1099511627779 saved, 1099511627779 \(all 64 bits\) now"):
        fresh.load_state_dict(old)


def _jpeg(i: int) -> bytes:
    y, x = np.mgrid[0:32, 0:48]
    buf = io.BytesIO()
    Image.fromarray(np.stack([x * 5, y * 7, (x * y + i) % 256], -1).astype(np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("backend", ["dali", "pil"])
def test_random_crops_take_a_negative_or_64_bit_seed(tmp_path, backend):
    """Before: a negative seed or one past 2**63 failed every decoded batch (numpy's uint64)."""
    t = dsutil.table(16)
    root = str(tmp_path / "img")
    dsutil.write_parquet(root, t.append_column("image", pa.array([_jpeg(i) for i in range(16)], pa.binary())),
                         16, 16, codecs={"image": "jpeg"})
    spec = {"image": sparkfeed.ImageDecode(size=24, crop="random", mirror=True, device="cpu", backend=backend)}

    def crops(seed):
        loader = sparkfeed.DataLoader(root, batch_size=16, seed=seed, columns=["image"], decode=spec)
        return next(iter(loader))["image"]
    for seed in (-5, 2**63 + 9):
        a, b = crops(seed), crops(seed)
        assert a.shape == (16, 3, 24, 24) and bool((a == b).all())  # reproducible
    assert not bool((crops(-5) == crops(2**63 + 9)).all())


@pytest.mark.parametrize("epoch", [-1, 2**63, 1.0])
def test_an_epoch_outside_int64_is_refused_naming_it(ds, epoch):
    """Before: set_epoch(2**63) failed later with "Overflow when unpacking long long", naming nothing."""
    loader = sparkfeed.DataLoader(ds[0], batch_size=8, shuffle=True)
    with pytest.raises(ValueError, match=r"`epoch` should be an integer in \[0, 2\*\*63\), but got epoch="):
        loader.set_epoch(epoch)
