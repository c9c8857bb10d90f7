"""A state saved over a mix by a sparkfeed that computed its shares otherwise: refused saying that
the shares changed, not the data (`mixstate.check`). States are built by hand as plain dicts."""

from __future__ import annotations

import pytest

import dsutil
import sparkfeed
from sparkfeed import Source, mixstate
from sparkfeed.mixshares import shares

# 6 and 9 rows with a weight of 2.0000000001 against 1: the float shares before the exact ones gave
# the second source 3 samples, the exact ones 2. (With weights such as 0.7 and 0.3 the shares
# differ from millions of samples on: test_float_shares_are_those_of_the_older_sparkfeed.)
WEIGHTS = (2.0000000001, 1)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("upgrade")
    dsutil.write_parquet(str(root / "a"), dsutil.table(6), 6, 3)
    dsutil.write_parquet(str(root / "b"), dsutil.table(9), 9, 3)
    return [Source(str(root / "a"), weight=WEIGHTS[0]), Source(str(root / "b"), weight=WEIGHTS[1])]


def loader(sources, seed: int = 1):
    return sparkfeed.DataLoader(sources, batch_size=2, columns=["id"], shuffle=True, seed=seed)


def old_state(sources) -> dict:
    """A rank state as the older sparkfeed saved it after one batch: this loader's fingerprint and
    digest (the same data and settings), no share record, its epoch of 6 + 3 samples."""
    state = loader(sources).state_dict()
    state.pop(mixstate.RECORD)
    return {**state, "num_samples": 9, "remaining": [[2, 9]], "lanes": [[[2, 9]]]}


def test_float_shares_are_those_of_the_older_sparkfeed():
    """The float formula gave the bounding source one sample fewer than its size from millions on."""
    sources = [Source("a", weight=0.7), Source("b", weight=0.3)]
    assert mixstate.float_shares([28_209_956, 42_967_014], sources) == [28_209_955, 12_089_981]
    assert shares([28_209_956, 42_967_014], sources) == [28_209_956, 12_089_981]
    assert mixstate.float_shares([6, 9], [Source("a", weight=WEIGHTS[0]), Source("b", weight=WEIGHTS[1])]) == [6, 3]


def test_a_state_of_the_older_shares_is_refused_naming_the_upgrade(ds):
    L = loader(ds)
    assert L.dataset.plan().num_samples == 8  # 6 + 2 now
    with pytest.raises(ValueError) as refused:
        L.load_state_dict(old_state(ds))
    message = str(refused.value)
    assert "saved over this same mix" in message and "before exact shares" in message, message
    assert "[6, 3]" in message and "[6, 2]" in message and "the data is not the cause" in message
    assert "other data or with other settings" not in message
    assert message.startswith("mix[")  # names the loader that refused it


def test_a_recorded_state_whose_shares_differ_over_the_same_sizes_is_refused_as_another_computation(ds):
    """A state of this version records the sizes and counts: another computation of the same sizes'
    shares is told apart from other data, even where the sample counts agree."""
    L = loader(ds)
    state = L.state_dict()
    assert state[mixstate.RECORD] == {"sizes": [6, 9], "counts": [6, 2]}
    state[mixstate.RECORD] = {"sizes": [6, 9], "counts": [5, 3]}  # 8 samples still
    with pytest.raises(ValueError, match=r"computes them otherwise: its sources' shares of the epoch were "
                                         r"\[5, 3\] samples, this version's are \[6, 2\]"):
        L.load_state_dict(state)
    loader(ds).load_state_dict(L.state_dict())  # its own state loads


def test_other_data_or_settings_keep_the_usual_refusal(ds, tmp_path):
    """Only a state over this very mix is said to differ in its shares: one saved with another seed,
    or over sources of other sizes, gets the usual refusal, which names what differs."""
    with pytest.raises(ValueError, match=r"other data or with other settings.*seed 1 saved, 2 now"):
        loader(ds, seed=2).load_state_dict(old_state(ds))
    dsutil.write_parquet(str(tmp_path / "b"), dsutil.table(12), 12, 3)
    other = [ds[0], Source(str(tmp_path / "b"), weight=WEIGHTS[1])]
    with pytest.raises(ValueError, match="other data or with other settings") as refused:
        loader(other).load_state_dict(old_state(ds))
    assert "before exact shares" not in str(refused.value)


def test_an_older_state_of_weights_past_the_floats_range_loads(tmp_path):
    """Weights whose float shares overflow (1e308 twice: their sum is infinite) tell nothing of the
    older shares: a state without a record over the same mix loads as before."""
    dsutil.write_parquet(str(tmp_path / "a"), dsutil.table(6), 6, 3)
    sources = [Source(str(tmp_path / "a"), weight=1e308), Source(str(tmp_path / "a"), weight=1e308)]
    state = loader(sources).state_dict()
    state.pop(mixstate.RECORD)
    L = loader(sources)
    L.load_state_dict(state)
    assert sum(len(b["id"]) for b in L) == 12


def test_a_state_of_older_shares_with_the_same_total_is_refused_naming_both(ds, monkeypatch):
    """A state without a share record was let through where the older formula gave the same total
    as this one's split otherwise: its positions fall in other sources. The older split is what
    `float_shares` reproduces; such a split at the same total needs sources of millions of samples
    (none in 500,000 random mixes tried), so it is set here, for these sizes, by hand."""
    monkeypatch.setattr(mixstate, "float_shares", lambda sizes, sources: [5, 3])  # 8, as [6, 2]
    state = {**old_state(ds), "num_samples": 8, "remaining": [[2, 8]], "lanes": [[[2, 8]]]}
    with pytest.raises(ValueError) as refused:
        loader(ds).load_state_dict(state)
    message = str(refused.value)
    assert "before exact shares" in message and "[5, 3]" in message and "[6, 2]" in message, message
    monkeypatch.setattr(mixstate, "float_shares", lambda sizes, sources: [6, 2])  # the same split: loads
    loader(ds).load_state_dict(state)
