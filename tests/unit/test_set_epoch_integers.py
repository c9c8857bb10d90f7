"""`set_epoch` takes any integer a training loop may hold: a numpy integer (`for epoch in
np.arange(n)`) was refused as "should be an integer ..., but got epoch=np.int64(2)", though torch's
samplers take it. It means the same epoch as the plain int: the same order, and a plain int in
the saved state (JSON-safe)."""

import json

import numpy as np
import pytest

import dsutil
import sparkfeed


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("epochs") / "pq")
    dsutil.write_parquet(path, dsutil.table(40), 10, 5)
    return path


def _ids(loader) -> list[int]:
    return [i for b in loader for i in b["id"].tolist()]


@pytest.mark.parametrize("epoch", [np.int64(3), np.uint16(3), np.int32(3)])
def test_a_numpy_integer_epoch_is_that_epoch(root, epoch):
    plain = sparkfeed.DataLoader(root, batch_size=4, shuffle=True, columns=["id"])
    plain.set_epoch(3)
    loader = sparkfeed.DataLoader(root, batch_size=4, shuffle=True, columns=["id"])
    loader.set_epoch(epoch)
    assert _ids(loader) == _ids(plain)
    loader.sampler.set_epoch(epoch)  # (Lightning's and DDP scripts' way)
    state = loader.state_dict()
    assert type(state["epoch"]) is int and state["epoch"] == 3
    json.dumps(state)


@pytest.mark.parametrize("epoch", [np.bool_(True), True, 1.0, np.float64(1), -1, np.int64(-1)])
def test_what_is_not_an_epoch_is_still_refused(root, epoch):
    loader = sparkfeed.DataLoader(root, batch_size=4, columns=["id"])
    with pytest.raises(ValueError, match=r"`epoch` should be an integer in \[0, 2\*\*63\), but got epoch="):
        loader.set_epoch(epoch)
