"""The loader as a researcher uses it in training code: the resume pattern of a training loop,
a `Dataset` handed to the loader, counters of a mix with skipped samples. Each test is a defect
found by a hunt as such a user (exact ids delivered, exact counters); no Spark."""

import io
import itertools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

import dsutil
import sparkfeed
from sparkfeed import Source

N = 400


@pytest.fixture(scope="module")
def pq_path(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("usage") / "ds")
    dsutil.write_parquet(root, dsutil.table(N), 100, 25, sort_by="label")
    return root


def ids_of(batches) -> list[int]:
    return [i for b in batches for i in b["id"].tolist()]


# ---------------------------------------------------------------- resume in a training loop

@pytest.mark.parametrize("stop", [3, 16])  # mid-epoch; after the epoch's last batch
def test_set_epoch_of_the_loaded_epoch_keeps_the_resume(pq_path, stop):
    """The usual loop after a restart: load the checkpoint's state, then `for epoch in
    range(saved_epoch, E): loader.set_epoch(epoch)`. That set_epoch names the epoch the state
    is in, so the epoch goes on where it stopped (torchdata's StatefulDataLoader keeps its state
    through a sampler's set_epoch the same way); it re-delivered the samples already trained on."""
    kw = dict(batch_size=25, shuffle=True, seed=1, columns=["id"], num_workers=2)
    first = sparkfeed.DataLoader(pq_path, **kw)
    first.set_epoch(3)
    head = ids_of(itertools.islice(first, stop))
    saved = {"epoch": 3, "loader": first.state_dict()}
    again = sparkfeed.DataLoader(pq_path, **kw)
    again.load_state_dict(saved["loader"])
    rest = []
    for epoch in range(saved["epoch"], 5):
        again.set_epoch(epoch)
        assert epoch > 3 or len(again) == N // 25 - stop
        rest.append(ids_of(again))
    assert sorted(head + rest[0]) == list(range(N))  # each sample of epoch 3 once
    assert sorted(rest[1]) == list(range(N))  # epoch 4 whole


def test_a_shuffled_epoch_started_again_without_set_epoch_is_warned_once(pq_path, caplog):
    """Forgetting `set_epoch` trains every epoch on the same order (DistributedSampler is silent
    about it too); the loader says so once, and not where set_epoch is called or nothing shuffles."""
    def epochs(set_epoch: bool, **kw) -> list[list[int]]:
        loader = sparkfeed.DataLoader(pq_path, batch_size=50, columns=["id"], **kw)
        out = []
        for epoch in range(3):
            if set_epoch:
                loader.set_epoch(epoch)
            out.append(ids_of(loader))
        return out

    with caplog.at_level("WARNING", logger="sparkfeed.loader"):
        assert len({tuple(e) for e in epochs(False, shuffle=True)}) == 1  # the order repeats
        assert len({tuple(e) for e in epochs(True, shuffle=True)}) == 3
        epochs(False, shuffle=False)
    said = [r.getMessage() for r in caplog.records if "same order" in r.getMessage()]
    assert len(said) == 1 and "epoch 0 starts again" in said[0] and "set_epoch(epoch)" in said[0]


@pytest.mark.parametrize("workers", [0, 2])
def test_len_stays_the_resumed_epochs_rest_while_it_is_delivered(pq_path, workers):
    """`len(loader)` is what the iteration yields, before it and during it (`enumerate` against
    `len(loader) - 1` to find the last batch): it said 16 during a resumed epoch of 13 batches."""
    kw = dict(batch_size=25, columns=["id"], num_workers=workers)
    first = sparkfeed.DataLoader(pq_path, **kw)
    ids_of(itertools.islice(first, 3))
    again = sparkfeed.DataLoader(pq_path, **kw)
    again.load_state_dict(first.state_dict())
    assert len(again) == 13
    assert [len(again) for _ in again] == [13] * 13
    assert len(again) == 16  # the next iteration: a whole epoch
    plain = sparkfeed.DataLoader(pq_path, **kw)
    assert [len(plain) for _ in plain] == [16] * 16


# ---------------------------------------------------------------- a Dataset handed to the loader

def test_a_datasets_batch_size_is_kept_or_a_different_one_refused(pq_path):
    """`DataLoader(Dataset(..., batch_size=64))`: the Dataset keeps what it was made with (README),
    but the loader cut batches of its own default, 1, silently."""
    ds = sparkfeed.Dataset(pq_path, columns=["id"], batch_size=64)
    loader = sparkfeed.DataLoader(ds)
    assert [len(b["id"]) for b in loader] == [64] * 6 + [16]
    assert len(loader) == 7
    with pytest.raises(ValueError, match=r"batch_size=64.*batch_size=100"):
        sparkfeed.DataLoader(ds, batch_size=100)


# ---------------------------------------------------------------- a mix's counters

def test_a_mix_counts_skipped_nulls_per_source(tmp_path):
    """Rows skipped for a null (on_error="skip") are counted per source as README promises
    (`source.<i>.samples_skipped`); they were in the total only, every source at 0."""
    data = dsutil.table(120)
    bad = pa.array([None if i % 5 == 0 else i % 10 for i in range(120)], pa.int32())  # 24 nulls
    dsutil.write_parquet(str(tmp_path / "bad"), data.set_column(1, "label", bad), 60, 20)
    good = dsutil.table(50)
    dsutil.write_parquet(str(tmp_path / "good"), good.set_column(0, "id", pc.add(good["id"], 1000)), 50, 25)
    for workers, worker_type in [(0, "auto"), (2, "thread"), (2, "process")]:
        loader = sparkfeed.DataLoader([Source(str(tmp_path / "good")), Source(str(tmp_path / "bad"))],
                                      batch_size=16, shuffle=True, on_error="skip", columns=["id", "label"],
                                      num_workers=workers, worker_type=worker_type)
        delivered = ids_of(loader)
        stats = loader.stats()
        assert sorted(delivered) == [i for i in range(120) if i % 5] + list(range(1000, 1050))
        assert stats["samples_skipped"] == 24
        assert (stats["source.0.samples_skipped"], stats["source.1.samples_skipped"]) == (0, 24)
        assert (stats["source.0.samples"], stats["source.1.samples"]) == (50, 96)


def _npy(value: int) -> bytes:
    out = io.BytesIO()
    np.save(out, np.array([value, value], np.float32))
    return out.getvalue()


@pytest.fixture(scope="module")
def npy_mix(tmp_path_factory):
    """Two sources with an `.npy` column; every fourth array of the second is not one."""
    root = tmp_path_factory.mktemp("npymix")
    a = dsutil.table(60)
    dsutil.write_parquet(str(root / "a"), a.append_column("emb", pa.array([_npy(i) for i in range(60)])),
                         30, 10, codecs={"emb": "npy"})
    b = dsutil.table(40)
    b = b.set_column(0, "id", pc.add(b["id"], 1000))
    dsutil.write_parquet(str(root / "b"), b.append_column("emb", pa.array([_npy(i) if i % 4 else b"junk"
                                                                          for i in range(40)])),
                         20, 10, codecs={"emb": "npy"})
    return [Source(str(root / "a")), Source(str(root / "b"))]


def test_decode_skips_are_named_per_source_by_the_engine(npy_mix):
    """`Engine.decode_skips`: the counters a batch's decode failures add beside the totals, per
    source from the row keys (none for one dataset)."""
    loader = sparkfeed.DataLoader(npy_mix, batch_size=100, columns=["id", "emb"])
    keys = torch.tensor([(1 << 56) | 5, 7, (1 << 56) | (2 << 32) | 1], dtype=torch.int64)
    assert loader._engine.decode_skips(keys, [0, 2]) == {"source.1.samples_skipped": 2, "source.1.samples": -2}
    assert loader._engine.decode_skips(keys, [1]) == {"source.0.samples_skipped": 1, "source.0.samples": -1}
    assert loader._engine.engines[0].decode_skips(keys, [1]) == {}


def test_a_mix_counts_decode_skips_per_source(npy_mix):
    """Samples dropped by decoding (on_error="skip") leave their source's `samples` and count in
    its `samples_skipped`: `source.1.samples` said 40 where 30 were delivered."""
    loader = sparkfeed.DataLoader(npy_mix, batch_size=16, columns=["id", "emb"], with_source=True,
                                  decode={"emb": sparkfeed.NpyDecode()}, on_error="skip")
    rows = [(i, s) for b in loader for i, s in zip(b["id"].tolist(), b["__source__"].tolist())]
    stats = loader.stats()
    assert sorted(i for i, _ in rows) == list(range(60)) + [1000 + i for i in range(40) if i % 4]
    assert (stats["samples"], stats["samples_skipped"]) == (90, 10)
    assert (stats["source.0.samples"], stats["source.1.samples"]) == (60, 30)
    assert (stats["source.0.samples_skipped"], stats["source.1.samples_skipped"]) == (0, 10)


# ---------------------------------------------------------------- ranks that read different orders

@pytest.mark.parametrize("mistake, named", [({"seed": lambda r: 7 + r}, r"seed by rank: \[7, 8\]"),
                                            ({"epoch": lambda r: 1 + r}, r"epoch by rank: \[1, 2\]")])
def test_ranks_that_read_different_orders_are_named_when_the_state_is_gathered(pq_path, mistake, named):
    """A seed derived from the rank, or a set_epoch missed on one rank, gives the ranks
    overlapping shares; the gathered state (`state_dict(all_ranks=True)`, here its pure half)
    names it instead of saving what `load_state_dict` would refuse."""
    from sparkfeed import progress

    states = []
    for r in range(2):
        seed = mistake.get("seed", lambda r: 7)(r)
        loader = sparkfeed.DataLoader(pq_path, batch_size=25, shuffle=True, seed=seed, rank=r, world_size=2)
        loader.set_epoch(mistake.get("epoch", lambda r: 1)(r))
        states.append(loader.state_dict())
    with pytest.raises(ValueError, match=named + r".*same seed=.*set_epoch\(epoch\) with the same epoch"):
        progress.global_state(states)
    same = [dict(states[0], rank=r) for r in range(2)]
    assert progress.global_state(same)["scope"] == "global"


# ---------------------------------------------------------------- built before init_process_group

def _group_of(monkeypatch, rank: int, world_size: int) -> None:
    """torch.distributed as an initialised group of `world_size` ranks would answer, seen from `rank`."""
    dist = torch.distributed
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda *a, **k: rank)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: world_size)


def test_a_loader_built_before_init_process_group_is_refused_when_the_group_differs(pq_path, monkeypatch):
    """Under torch.multiprocessing.spawn no RANK/WORLD_SIZE is set: a loader built before
    init_process_group took one rank, and every rank then trained on every sample. Once the group
    exists the loader says so (iterating, len, state_dict); arguments given, or a group that agrees
    (torchrun's RANK/WORLD_SIZE), go on as before."""
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    early = sparkfeed.DataLoader(pq_path, batch_size=25, columns=["id"])
    pinned = sparkfeed.DataLoader(pq_path, batch_size=25, columns=["id"], rank=0, world_size=1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    from_env = sparkfeed.DataLoader(pq_path, batch_size=25, columns=["id"])
    _group_of(monkeypatch, 1, 2)
    said = r"took rank 0 of world_size=1 when it was built, but torch.distributed now says rank 1 of 2"
    for use in (iter, len, lambda L: L.state_dict()):
        with pytest.raises(ValueError, match=said + r".*after init_process_group, or pass rank="):
            use(early)
    with pytest.raises(ValueError, match=said):
        next(iter(early.dataset))
    assert len(ids_of(pinned)) == N
    assert ids_of(from_env) == ids_of(sparkfeed.DataLoader(pq_path, batch_size=25, columns=["id"], rank=1,
                                                         world_size=2))
