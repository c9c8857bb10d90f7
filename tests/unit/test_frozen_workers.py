"""A worker process frozen whole (SIGSTOP) under `timeout=`: the loader raises the time-out naming
the worker, its pid and how long, and leaves no process behind, never hangs. A batch's tensors
travel as file descriptors the receiver asks their sender for while it unpickles the message,
so a worker frozen with a batch queued hung the parent inside torch's receive, past any timeout."""

import os
import signal
import threading

import psutil
import pytest

import dsutil
import sparkfeed
from sparkfeed import workerdeaths
from sparkfeed.threads import TimedOut

_HANG_S = 60.0  # a bound that turns a hang into a failure (the workers continued), not a timing


@pytest.fixture(scope="module")
def tars(tmp_path_factory):
    """4 tars of 30 samples without a DALI index (read by worker processes)."""
    root = str(tmp_path_factory.mktemp("frozen") / "tar")
    dsutil.write_tar(root, dsutil.table(120), 30, index=False)
    return root


def _children(before: set) -> list:
    return [p for p in psutil.Process().children() if p.pid not in before]


def _torch_iterator(before: set):
    """torch's iterator of the worker processes started since `before` (sparkfeed watches it)."""
    new = {p.pid for p in _children(before)}
    live = {id(w): w for pid, (ref, *_) in list(workerdeaths._WATCHED.items())
            if pid in new and (w := ref()) is not None and not w._shutdown}
    assert len(live) == 1, live
    return next(iter(live.values()))


def _released_after(pids: list, seconds: float) -> threading.Timer:
    """Continue the stopped workers after `seconds` (a hang becomes a failure, not a stuck run)."""
    timer = threading.Timer(seconds, lambda: [_signal(pid, signal.SIGCONT) for pid in pids])
    timer.daemon = True
    timer.start()
    return timer


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _stopped_or_live(processes) -> list:
    out = []
    for p in processes:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.parametrize("workers, persistent", [(1, False), (2, True)])
def test_a_worker_stopped_with_a_batch_queued_is_a_time_out_naming_it(tars, workers, persistent):
    """The workers are stopped once a batch waits on the queue: receiving it needs its (stopped)
    sender, and the loader hung there whatever `timeout` said."""
    before = {p.pid for p in psutil.Process().children()}
    loader = sparkfeed.DataLoader(tars, batch_size=10, num_workers=workers, timeout=2,
                                  persistent_workers=persistent)
    it = iter(loader)
    pids = []
    try:
        next(it)
        assert _torch_iterator(before)._data_queue._reader.poll(_HANG_S), "a batch is queued"
        pids = [p.pid for p in _children(before)]
        assert len(pids) == workers
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        timer = _released_after(pids, _HANG_S)
        with pytest.raises(TimedOut) as info:
            for _ in it:
                pass
        timer.cancel()
        text = str(info.value)
        assert text.startswith("DataLoader timed out after 2 seconds: worker "), text
        assert any(f"(pid {pid}) was stopped (state T" in text for pid in pids), text
        assert "s while the loader waited for a batch" in text and f"dataset {tars!r}" in text, text
        dsutil.wait_until(lambda: not _stopped_or_live(_children(before)), "no worker left, stopped or not")
        loader.set_epoch(1)
        assert sorted(int(i) for b in loader for i in b["id"]) == list(range(120)), "the next epoch is whole"
    finally:
        it.close()
        for pid in pids:
            _signal(pid, signal.SIGCONT)
            _signal(pid, signal.SIGKILL)
        loader._procs.drop()
    dsutil.wait_until(lambda: not _stopped_or_live(_children(before)), "the workers shut down")


def test_a_worker_stopped_with_nothing_queued_is_a_time_out_and_killed(tmp_path):
    """Worker 1 stuck opening a FIFO and stopped there: the time-out came, but the stopped worker
    was only sent SIGTERM (which waits until it runs again) and stayed, stopped, for good."""
    root = str(tmp_path / "tar")
    dsutil.write_tar(root, dsutil.table(120), 30, index=False)
    fifo = os.path.join(root, "shard-00002.tar")  # lane 1 starts there: its open never returns
    os.remove(fifo)
    os.mkfifo(fifo)
    before = {p.pid for p in psutil.Process().children()}
    loader = sparkfeed.DataLoader(root, batch_size=10, num_workers=2, timeout=2)
    it = iter(loader)
    pids = []
    try:
        pids = [_torch_iterator(before)._workers[1].pid]  # worker 1, whose lane starts at the FIFO
        os.kill(pids[0], signal.SIGSTOP)
        timer = _released_after(pids, _HANG_S)
        with pytest.raises(RuntimeError, match="DataLoader timed out after 2 seconds"):
            for _ in it:
                pass
        timer.cancel()
        dsutil.wait_until(lambda: not _stopped_or_live(_children(before)), "no worker left, stopped or not")
    finally:
        it.close()
        for pid in pids:
            _signal(pid, signal.SIGCONT)
            _signal(pid, signal.SIGKILL)
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def test_kept_workers_stopped_with_a_batch_left_queued_time_out_at_the_next_epoch(tars):
    """Kept workers (`persistent_workers=True`) of an epoch left early keep its batches queued; torch
    receives them as it restarts the workers for the next epoch, and hung there if they were stopped."""
    before = {p.pid for p in psutil.Process().children()}
    loader = sparkfeed.DataLoader(tars, batch_size=10, num_workers=2, timeout=2, persistent_workers=True)
    it = iter(loader)
    next(it)
    it.close()
    kept = _torch_iterator(before)
    assert kept._data_queue._reader.poll(_HANG_S), "a batch of the epoch left is queued"
    pids = [p.pid for p in kept._workers]
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        timer = _released_after(pids, _HANG_S)
        loader.set_epoch(1)
        with pytest.raises(TimedOut) as info:
            for _ in loader:
                pass
        timer.cancel()
        assert any(f"(pid {pid}) was stopped" in str(info.value) for pid in pids), str(info.value)
        dsutil.wait_until(lambda: not _stopped_or_live(_children(before)), "no worker left, stopped or not")
        loader.set_epoch(2)
        assert sorted(int(i) for b in loader for i in b["id"]) == list(range(120)), "the next epoch is whole"
    finally:
        for pid in pids:
            _signal(pid, signal.SIGCONT)
            _signal(pid, signal.SIGKILL)
        loader._procs.drop()
    dsutil.wait_until(lambda: not _stopped_or_live(_children(before)), "the workers shut down")
