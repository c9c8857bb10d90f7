"""Training-loop semantics: `set_epoch` or `load_state_dict` between `iter()` and the first
batch restarts that iteration as the new epoch or state (exactly once across a resume), a mix that
nothing bounds is refused when the loader is built, and a refused resume state names the loader's
dataset and what differs. Real Parquet files; no Spark."""

from __future__ import annotations

import re

import pytest

import dsutil
import sparkfeed
from sparkfeed import Source


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("hunt")
    dsutil.write_parquet(str(root / "a"), dsutil.table(60), 20, 10)
    dsutil.write_parquet(str(root / "b"), dsutil.table(30), 15, 5)
    return str(root / "a"), str(root / "b")


def test_a_mix_whose_weighted_sources_all_repeat_is_refused_when_built(ds):
    a, b = ds
    # before: built fine, and the error came at len() or the first batch
    with pytest.raises(ValueError, match="nothing bounds the epoch"):
        sparkfeed.DataLoader([Source(a, weight=1.0, repeat=True), Source(b, samples=5)], batch_size=4)
    with pytest.raises(ValueError, match="nothing bounds the epoch"):
        sparkfeed.Dataset([Source(a, weight=1.0, repeat=True), Source(b, weight=2.0, repeat=True,
                                                                      filter=[("label", "<", 3)])])


def test_a_mix_bounded_by_one_source_still_builds_and_delivers_its_shares(ds):
    a, b = ds
    loader = sparkfeed.DataLoader([Source(a, weight=1.0, repeat=True), Source(b, weight=1.0)],
                                  batch_size=7, columns=["id"], with_source=True)
    sources = [s for batch in loader for s in batch["__source__"].tolist()]
    assert sources.count(0) == sources.count(1) == 30


def saved(path: str, **kw) -> dict:
    loader = sparkfeed.DataLoader(path, batch_size=4, shuffle=True, columns=["id"], **kw)
    it = iter(loader)
    next(it)
    return loader.state_dict()


@pytest.mark.parametrize("change,named", [
    ({"seed": 5}, "seed 0 saved, 5 now"),
    ({"drop_last": True}, "drop_last False saved, True now"),
    ({"shuffle_buffer": 16}, "shuffle_buffer None saved, 16 now"),
    ({"shuffle": False}, "shuffle True saved, False now"),
    ({"filter": [("label", "<", 3)]}, r"filter None saved, \(label < 3\) now; 60 samples \(after the filter\) saved, 18 now"),
])
def test_a_refused_state_names_the_dataset_and_what_differs(ds, change, named):
    a, _ = ds
    state = saved(a)
    loader = sparkfeed.DataLoader(a, batch_size=4, columns=["id"], **{"shuffle": True, **change})
    # before: the saved fingerprint alone, no dataset, and a message that left the seed out
    for given in (state, [state], {"version": 2, "scope": "global", "ranks": [state]}):
        with pytest.raises(ValueError, match=f"^{re.escape(a)}: `state` was saved .* \\(here: {named}\\)$"):
            loader.load_state_dict(given)


def test_a_state_of_another_dataset_names_this_one_and_both_sizes(ds):
    a, b = ds
    with pytest.raises(ValueError, match=f"^{re.escape(b)}: .*60 samples \\(after the filter\\) saved, 30 now"):
        sparkfeed.DataLoader(b, batch_size=4, shuffle=True, columns=["id"]).load_state_dict(saved(a))


def test_other_refusals_name_the_dataset_too(ds):
    a, _ = ds
    state = saved(a, rank=0, world_size=2)
    with pytest.raises(ValueError, match=f"^{re.escape(a)}: `state` is rank 0's, but this is rank 1"):
        sparkfeed.DataLoader(a, batch_size=4, shuffle=True, rank=1, world_size=2).load_state_dict(state)
    with pytest.raises(ValueError, match=f"^{re.escape(a)}: `state` should come from DataLoader.state_dict"):
        sparkfeed.DataLoader(a, batch_size=4).load_state_dict({"epoch": 1})


def test_an_accepted_state_still_resumes_exactly(ds):
    a, _ = ds
    loader = sparkfeed.DataLoader(a, batch_size=4, shuffle=True, columns=["id"])
    it = iter(loader)
    seen = next(it)["id"].tolist() + next(it)["id"].tolist()
    again = sparkfeed.DataLoader(a, batch_size=6, shuffle=True, columns=["id"], num_workers=2)
    again.load_state_dict(loader.state_dict())
    rest = [i for batch in again for i in batch["id"].tolist()]
    assert sorted(seen + rest) == list(range(60))


def ids(batches) -> list[int]:
    return [i for batch in batches for i in batch["id"].tolist()]


def epoch_order(path: str, epoch: int, **kw) -> list[int]:
    """Epoch `epoch`'s samples in order, from a loader of its own (the worker count sets the order)."""
    loader = sparkfeed.DataLoader(path, batch_size=4, shuffle=True, columns=["id"], **kw)
    loader.set_epoch(epoch)
    return ids(loader)


WORKERS = [dict(num_workers=0), dict(num_workers=2, worker_type="thread", persistent_workers=True),
           dict(num_workers=2, worker_type="process"), dict(num_workers=0, collate_fn=lambda b: b)]


@pytest.mark.parametrize("kw", WORKERS, ids=["inline", "threads-kept", "processes", "collate"])
@pytest.mark.parametrize("how", ["set_epoch", "sampler"])
def test_set_epoch_between_iter_and_the_first_batch_takes_that_epoch_and_its_state(ds, kw, how):
    a, _ = ds
    loader = sparkfeed.DataLoader(a, batch_size=4, shuffle=True, columns=["id"], **kw)
    it = iter(loader)  # (Lightning's fit loop, and scripts that make the iterator first)
    (loader.sampler.set_epoch if how == "sampler" else loader.set_epoch)(1)
    seen = ids(next(it) for _ in range(3))
    state = loader.state_dict()
    # before: epoch 0's batches came, while state_dict() said epoch 1 with nothing delivered, so a
    # resume from it delivered 12 samples twice (and lost 12 others)
    assert state["epoch"] == 1 and seen == epoch_order(a, 1, **kw)[:12]
    again = sparkfeed.DataLoader(a, batch_size=4, shuffle=True, columns=["id"])
    again.load_state_dict(state)
    assert sorted(seen + ids(again)) == list(range(60))
    assert sorted(seen + ids(it)) == list(range(60))


@pytest.mark.parametrize("kw", WORKERS, ids=["inline", "threads-kept", "processes", "collate"])
def test_a_loaded_state_survives_iter_then_set_epoch_of_its_own_epoch(ds, kw):
    a, _ = ds
    first = sparkfeed.DataLoader(a, batch_size=4, shuffle=True, columns=["id"])
    first.set_epoch(2)
    it = iter(first)
    seen = ids(next(it) for _ in range(5))
    loader = sparkfeed.DataLoader(a, batch_size=4, shuffle=True, columns=["id"], **kw)
    loader.load_state_dict(first.state_dict())
    it = iter(loader)
    loader.set_epoch(2)  # the restart loop's set_epoch, after the iterator was made
    # before: the state was dropped (len() and state_dict() said the whole epoch) while the rest came
    assert len(loader) == 10
    rest = ids(it)
    assert sorted(seen + rest) == list(range(60))
    assert loader.state_dict()["remaining"] == []


def test_set_epoch_of_another_epoch_after_iter_of_a_loaded_state_starts_that_epoch_whole(ds):
    a, _ = ds
    first = sparkfeed.DataLoader(a, batch_size=4, shuffle=True, columns=["id"])
    it = iter(first)
    next(it)
    loader = sparkfeed.DataLoader(a, batch_size=4, shuffle=True, columns=["id"])
    loader.load_state_dict(first.state_dict())
    it = iter(loader)
    loader.set_epoch(3)
    assert ids(it) == epoch_order(a, 3)


def test_an_iterator_made_and_never_used_leaves_the_next_one_whole(ds):
    a, _ = ds
    kw = dict(num_workers=2, worker_type="thread")
    loader = sparkfeed.DataLoader(a, batch_size=4, shuffle=True, columns=["id"], **kw)
    unused = iter(loader)
    loader.set_epoch(1)
    assert ids(loader) == epoch_order(a, 1, **kw)
    del unused
    loader.set_epoch(2)
    assert ids(loader) == epoch_order(a, 2, **kw)


@pytest.mark.parametrize("change", ["set_epoch", "load_state_dict"])
def test_an_iteration_going_on_after_set_epoch_mid_epoch_says_the_state_moved_on(ds, change, caplog):
    """set_epoch (or load_state_dict) after batches were delivered: the old iteration goes on with
    its own epoch, as torch's does, while state_dict() describes the new one; a checkpoint saved
    meanwhile would skip the old epoch's rest, so its next batch warns, once (before: silently)."""
    a, _ = ds
    loader = sparkfeed.DataLoader(a, batch_size=4, shuffle=True, columns=["id"])
    it = iter(loader)
    seen = ids(next(it) for _ in range(2))
    if change == "set_epoch":
        loader.set_epoch(1)
    else:
        loader.load_state_dict(saved(a))
    with caplog.at_level("WARNING", logger="sparkfeed"):
        rest = ids(it)
    assert sorted(seen + rest) == list(range(60))  # epoch 0 whole: the old iteration went on as it began
    stale = [r for r in caplog.records if "iteration begun before the last set_epoch()" in r.getMessage()]
    assert len(stale) == 1 and a in stale[0].getMessage()
    assert "state_dict() describes epoch" in stale[0].getMessage()


def test_set_epoch_after_an_epoch_ended_warns_nothing(ds, caplog):
    a, _ = ds
    loader = sparkfeed.DataLoader(a, batch_size=4, shuffle=True, columns=["id"])
    with caplog.at_level("WARNING", logger="sparkfeed"):
        for epoch in range(2):
            loader.set_epoch(epoch)
            assert sorted(ids(loader)) == list(range(60))
    assert not [r for r in caplog.records if "iteration begun before" in r.getMessage()]
