"""Attributes set on a made DataLoader, as torch allows them: `num_workers`, `timeout` (...) take
effect at the next epoch, with every sample delivered once; `batch_size`, `drop_last` (...) are
refused, as torch refuses them, and bad values are refused when set, not at the next epoch."""

import psutil
import pytest

import dsutil
import sparkfeed


@pytest.fixture(scope="module")
def tars(tmp_path_factory):
    """Tars without a DALI index: read by worker processes."""
    root = str(tmp_path_factory.mktemp("attrs") / "tar")
    dsutil.write_tar(root, dsutil.table(120), 30, index=False)
    return root


@pytest.fixture(scope="module")
def parquet(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("attrs") / "pq")
    dsutil.write_parquet(root, dsutil.table(160), 40, 10)
    return root


def _ids(loader, epoch: int) -> list:
    loader.set_epoch(epoch)
    return sorted(int(i) for b in loader for i in b["id"])


@pytest.mark.parametrize("persistent", [False, True])
def test_num_workers_changed_between_epochs_delivers_every_sample_of_process_workers(tars, persistent):
    """Worker processes were started with the count the loader was made with while the lanes were
    cut for the new one: with 2 processes for 3 lanes, the third lane's samples were never read."""
    loader = sparkfeed.DataLoader(tars, batch_size=8, num_workers=2, timeout=60, persistent_workers=persistent)
    assert _ids(loader, 0) == list(range(120))
    loader.num_workers = 3
    assert len(loader) == sum(1 for _ in loader)
    assert _ids(loader, 1) == list(range(120))
    loader.num_workers = 1
    assert _ids(loader, 2) == list(range(120))


def test_a_setting_changed_drops_the_epoch_read_ahead_with_the_old_one(parquet):
    """persistent_workers=True reads the next epoch ahead once one is read: that reading, made with
    the old prefetch_factor, was taken as if it had the new one."""
    loader = sparkfeed.DataLoader(parquet, batch_size=8, num_workers=2, persistent_workers=True)
    assert _ids(loader, 0) == list(range(160))
    loader.prefetch_factor = 5
    assert _ids(loader, 1) == list(range(160))
    stats = loader.stats()
    assert (stats.get("epochs_read_ahead", 0), stats["epochs_read_ahead_dropped"]) == (0, 1)
    assert _ids(loader, 2) == list(range(160))
    assert loader.stats()["epochs_read_ahead"] == 1, "unchanged settings: the next reading is taken"


def test_kept_worker_processes_restart_with_a_new_timeout(tars):
    """Kept workers (persistent_workers=True) were torch's with the timeout they started with."""
    before = _children()
    loader = sparkfeed.DataLoader(tars, batch_size=8, num_workers=2, persistent_workers=True, timeout=60)
    assert _ids(loader, 0) == list(range(120))
    first = _children() - before
    assert _ids(loader, 1) == list(range(120))
    assert _children() >= first, "same settings: the same workers are kept"
    loader.timeout = 90
    assert _ids(loader, 2) == list(range(120))
    assert loader._procs._kept.loader.timeout == 90
    assert not _children() & first


def _children() -> set:
    """This process's live children (leaving out those ended and not yet reaped)."""
    live = set()
    for p in psutil.Process().children():
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                live.add(p.pid)
        except psutil.NoSuchProcess:
            pass
    return live


@pytest.mark.parametrize("change", [{"num_workers": 0}, {"worker_type": "thread"}])
def test_kept_worker_processes_end_once_the_loader_reads_with_threads(tars, change):
    """Kept workers (persistent_workers=True) stayed, idle, for the loader's life after num_workers=0
    or worker_type="thread" moved its reading to threads."""
    before = _children()
    loader = sparkfeed.DataLoader(tars, batch_size=8, num_workers=2, persistent_workers=True, timeout=60)
    assert _ids(loader, 0) == list(range(120))
    assert len(_children() - before) == 2
    for name, value in change.items():
        setattr(loader, name, value)
    assert _ids(loader, 1) == list(range(120))
    dsutil.wait_until(lambda: not _children() - before, "the kept workers shut down")


@pytest.mark.parametrize("name, value", [("batch_size", 4), ("drop_last", True), ("persistent_workers", True),
                                         ("dataset", None), ("sampler", None), ("batch_sampler", None),
                                         ("decode", {})])
def test_what_torch_refuses_after_construction_is_refused(parquet, name, value):
    loader = sparkfeed.DataLoader(parquet, batch_size=8, num_workers=1)
    with pytest.raises(ValueError, match=f"`{name}` cannot be set after the DataLoader is made"):
        setattr(loader, name, value)
    assert sum(len(b["id"]) for b in loader) == 160


@pytest.mark.parametrize("name, value, message", [
    ("num_workers", -1, "non-negative integer"), ("prefetch_factor", 0, "positive integer or None"),
    ("timeout", -2, "non-negative number"), ("multiprocessing_context", "nope", "multiprocessing_context"),
    ("pin_memory", "yes", "pin_memory"), ("worker_type", "fibre", "worker_type"),
    ("worker_init_fn", print, "does not take"), ("generator", object(), "does not take"),
    ("device", "tpu", "device")])
def test_a_bad_value_is_refused_when_set(parquet, name, value, message):
    loader = sparkfeed.DataLoader(parquet, batch_size=8)
    with pytest.raises(ValueError, match=message):
        setattr(loader, name, value)


def test_settable_attributes_keep_their_value(parquet):
    loader = sparkfeed.DataLoader(parquet, batch_size=8)
    loader.num_workers, loader.timeout, loader.worker_init_fn = 2, 3.5, None
    assert (loader.num_workers, loader.timeout, loader.worker_init_fn) == (2, 3.5, None)
    assert _ids(loader, 0) == list(range(160))


def test_attributes_set_on_the_trainer_loader_are_the_loaders(parquet):
    """`loader.for_trainer().num_workers = 1` set an attribute of the wrapper alone: read back as 1
    while the loader went on with its own, and batch_size could be 'set' where torch refuses it."""
    loader = sparkfeed.DataLoader(parquet, batch_size=8, num_workers=2)
    trainer = loader.for_trainer()
    trainer.num_workers = 1
    assert loader.num_workers == 1 and trainer.num_workers == 1
    with pytest.raises(ValueError, match="`batch_size` cannot be set"):
        trainer.batch_size = 4
    trainer.end_of_dataloader = True  # (what Accelerate sets on its loader: the wrapper's own)
    assert "end_of_dataloader" not in vars(loader)
    assert sorted(int(i) for b in trainer for i in b["id"]) == list(range(160))
