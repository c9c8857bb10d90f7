"""A worker process killed mid-epoch, wherever the training loop is when torch notices: a
WorkerError naming the rank, the dataset, the worker and the shard its lane was reading next,
never torch's bare RuntimeError; another library's workers keep torch's own error; a worker
frozen whole (SIGSTOP) under `timeout=` is a time-out naming it, never a hang."""

import os
import signal
import threading
import time

import psutil
import pytest
import torch

import dsutil
import sparkfeed
from sparkfeed import WorkerError, workerdeaths
from sparkfeed.threads import TimedOut

_WAIT_S = 60.0  # a bound that turns a missed signal into a failure, not a timing


@pytest.fixture(scope="module")
def tars(tmp_path_factory):
    """4 tars of 30 samples without a DALI index (read by worker processes)."""
    root = str(tmp_path_factory.mktemp("deaths") / "tar")
    dsutil.write_tar(root, dsutil.table(120), 30, index=False)
    return root


def _children(before: set) -> list:
    return sorted((p for p in psutil.Process().children() if p.pid not in before), key=lambda p: p.pid)


def _step_until_signalled() -> None:
    """The user's training step, long enough for SIGCHLD to arrive (its handler raises here)."""
    deadline = time.monotonic() + _WAIT_S
    while time.monotonic() < deadline:
        time.sleep(0.01)
    pytest.fail("no error came from the killed worker")


@pytest.mark.parametrize("persistent", [False, True])
def test_a_worker_killed_during_the_users_step_is_a_worker_error_naming_its_shard(tars, persistent):
    """torch's SIGCHLD handler raised its bare RuntimeError inside the user's step, outside every
    sparkfeed frame: nothing said which dataset or shard the dead worker was reading."""
    before = {p.pid for p in psutil.Process().children()}
    loader = sparkfeed.DataLoader(tars, batch_size=10, num_workers=2, persistent_workers=persistent)
    it = iter(loader)
    try:
        first = next(it)  # worker 0's first batch: worker 1's lane (positions 60..119) is next
        assert list(first["id"][:1]) == [0]
        workers = _children(before)
        assert len(workers) == 2
        victim = sorted(workers, key=lambda p: (p.create_time(), p.pid))[1]  # worker 1, started second
        with pytest.raises(WorkerError) as info:
            os.kill(victim.pid, signal.SIGKILL)
            _step_until_signalled()
        text = str(info.value)
        assert f"pid {victim.pid}" in text and "rank 0" in text and "worker 1" in text
        assert repr(tars) in text and "'shard-00002.tar'" in text, text
        assert isinstance(info.value.__cause__, RuntimeError)
        it.close()
        loader.set_epoch(1)
        assert sorted(int(i) for b in loader for i in b["id"]) == list(range(120)), "the next epoch is whole"
    finally:
        it.close()
        loader._procs.drop()  # (kept workers)
    dsutil.wait_until(lambda: not _live(_children(before)), "the workers shut down")


def _live(processes) -> list:
    """Those of `processes` not ended (a zombie waits for its parent to reap it)."""
    out = []
    for p in processes:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


class _Squares(torch.utils.data.Dataset):
    def __len__(self):
        return 1000

    def __getitem__(self, i):
        return i * i


def test_a_plain_torch_worker_killed_keeps_torchs_error(tars):
    """The handler sparkfeed wraps around torch's names sparkfeed's workers only."""
    before = {p.pid for p in psutil.Process().children()}
    ours = sparkfeed.DataLoader(tars, batch_size=10, num_workers=1)
    assert sum(1 for _ in ours) == 12  # (sparkfeed's handler is in place from here)
    plain = iter(torch.utils.data.DataLoader(_Squares(), batch_size=4, num_workers=1))
    try:
        next(plain)
        with pytest.raises(RuntimeError, match="DataLoader worker") as info:
            os.kill(_children(before)[0].pid, signal.SIGKILL)
            _step_until_signalled()
        assert not isinstance(info.value, WorkerError)
    finally:
        plain._shutdown_workers()


@pytest.mark.parametrize("indexed", [False, True])
def test_a_time_out_names_the_dataset_and_what_was_being_read(tmp_path, indexed):
    """torch's `DataLoader timed out after N seconds` (worker processes: tars without an index) and
    sparkfeed's '... no data from lane 1' (thread lanes: tars with their DALI index) named nothing of
    the data: a lane stuck in a read (here of a shard that is a FIFO no one writes) left the user
    without the dataset or the shard to look at."""
    root = str(tmp_path / "tar")
    dsutil.write_tar(root, dsutil.table(120), 30, index=indexed)
    fifo = os.path.join(root, "shard-00002.tar")  # lane 1 starts there: its read never returns
    os.remove(fifo)
    os.mkfifo(fifo)
    loader = sparkfeed.DataLoader(root, batch_size=10, num_workers=2, timeout=3)
    try:
        with pytest.raises(RuntimeError, match="DataLoader timed out after 3 seconds") as info:
            for _ in loader:
                pass
    finally:
        _unblock(fifo)
    text = str(info.value)
    assert f"worker 1, dataset {root!r}, epoch 0, reading shard(s) 'shard-00002.tar'" in text, text
    if indexed:
        assert "rank 0: worker 1," in text and "worker 0," not in text, "the lane that timed out alone"
    else:  # (torch does not say which worker it waited for)
        assert f"rank 0: worker 0, dataset {root!r}" in text, text


def _unblock(fifo: str) -> None:
    """Let a reader stuck opening `fifo` go on (to an end of file), if one still waits there."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # no reader waits (ENXIO)
        pass


def test_a_pid_of_workers_shut_down_is_no_longer_named_as_sparkfeeds():
    """Once sparkfeed's workers are shut down, their pids may be reused by another library's: a
    death there keeps torch's error (the iterator still referenced, by a traceback say, named it)."""
    workers = iter(torch.utils.data.DataLoader(_Squares(), batch_size=4, num_workers=1))
    next(workers)
    pid = workers._workers[0].pid
    workerdeaths.watch(workers, 0, None)
    death = RuntimeError(f"DataLoader worker (pid {pid}) is killed by signal: Killed. ")
    assert isinstance(workerdeaths.named(death), WorkerError)
    workers._shutdown_workers()
    assert workerdeaths.named(death) is None

# A worker process frozen whole (SIGSTOP) under `timeout=`: the loader raises the time-out naming
# the worker, its pid and how long, and leaves no process behind, never hangs. A batch's tensors
# travel as file descriptors the receiver asks their sender for while it unpickles the message,
# so a worker frozen with a batch queued hung the parent inside torch's receive, past any timeout.
# (`_WAIT_S` here: a bound after which the stopped workers continue, a hang turned into a failure.)
_TIMEOUT_S = 5  # the loaders' timeout: their first batches come well within it, even on a loaded machine
_SLOW_S = 120  # the timeout of the epoch after the error: no time-out of its own on a loaded machine


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


@pytest.mark.parametrize("workers, persistent", [(1, False), (2, True)])
def test_a_worker_stopped_with_a_batch_queued_is_a_time_out_naming_it(tars, workers, persistent):
    """The workers are stopped once a batch waits on the queue: receiving it needs its (stopped)
    sender, and the loader hung there whatever `timeout` said."""
    before = {p.pid for p in psutil.Process().children()}
    loader = sparkfeed.DataLoader(tars, batch_size=10, num_workers=workers, timeout=_TIMEOUT_S,
                                  persistent_workers=persistent)
    it = iter(loader)
    pids = []
    try:
        next(it)
        assert _torch_iterator(before)._data_queue._reader.poll(_WAIT_S), "a batch is queued"
        pids = [p.pid for p in _children(before)]
        assert len(pids) == workers
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        timer = _released_after(pids, _WAIT_S)
        with pytest.raises(TimedOut) as info:
            for _ in it:
                pass
        timer.cancel()
        text = str(info.value)
        assert text.startswith(f"DataLoader timed out after {_TIMEOUT_S} seconds: worker "), text
        assert any(f"(pid {pid}) was stopped (state T" in text for pid in pids), text
        assert "s while the loader waited for a batch" in text and f"dataset {tars!r}" in text, text
        dsutil.wait_until(lambda: not _live(_children(before)), "no worker left, stopped or not")
        loader.timeout = _SLOW_S  # (the next epoch's new workers under a loaded machine's pace)
        loader.set_epoch(1)
        assert sorted(int(i) for b in loader for i in b["id"]) == list(range(120)), "the next epoch is whole"
    finally:
        it.close()
        for pid in pids:
            _signal(pid, signal.SIGCONT)
            _signal(pid, signal.SIGKILL)
        loader._procs.drop()
    dsutil.wait_until(lambda: not _live(_children(before)), "the workers shut down")


def test_a_worker_stopped_with_nothing_queued_is_a_time_out_and_killed(tmp_path):
    """Worker 1 stuck opening a FIFO and stopped there: the time-out came, but the stopped worker
    was only sent SIGTERM (which waits until it runs again) and stayed, stopped, for good."""
    root = str(tmp_path / "tar")
    dsutil.write_tar(root, dsutil.table(120), 30, index=False)
    fifo = os.path.join(root, "shard-00002.tar")  # lane 1 starts there: its open never returns
    os.remove(fifo)
    os.mkfifo(fifo)
    before = {p.pid for p in psutil.Process().children()}
    loader = sparkfeed.DataLoader(root, batch_size=10, num_workers=2, timeout=_TIMEOUT_S)
    it = iter(loader)
    pids = []
    try:
        pids = [_torch_iterator(before)._workers[1].pid]  # worker 1, whose lane starts at the FIFO
        os.kill(pids[0], signal.SIGSTOP)
        timer = _released_after(pids, _WAIT_S)
        with pytest.raises(RuntimeError, match=f"DataLoader timed out after {_TIMEOUT_S} seconds"):
            for _ in it:
                pass
        timer.cancel()
        dsutil.wait_until(lambda: not _live(_children(before)), "no worker left, stopped or not")
    finally:
        it.close()
        for pid in pids:
            _signal(pid, signal.SIGCONT)
            _signal(pid, signal.SIGKILL)
        _unblock(fifo)


def test_kept_workers_stopped_with_a_batch_left_queued_time_out_at_the_next_epoch(tars):
    """Kept workers (`persistent_workers=True`) of an epoch left early keep its batches queued; torch
    receives them as it restarts the workers for the next epoch, and hung there if they were stopped."""
    before = {p.pid for p in psutil.Process().children()}
    loader = sparkfeed.DataLoader(tars, batch_size=10, num_workers=2, timeout=_TIMEOUT_S, persistent_workers=True)
    it = iter(loader)
    next(it)
    it.close()
    kept = _torch_iterator(before)
    assert kept._data_queue._reader.poll(_WAIT_S), "a batch of the epoch left is queued"
    pids = [p.pid for p in kept._workers]
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        timer = _released_after(pids, _WAIT_S)
        loader.set_epoch(1)
        with pytest.raises(TimedOut) as info:
            for _ in loader:
                pass
        timer.cancel()
        assert any(f"(pid {pid}) was stopped" in str(info.value) for pid in pids), str(info.value)
        dsutil.wait_until(lambda: not _live(_children(before)), "no worker left, stopped or not")
        loader.timeout = _SLOW_S
        loader.set_epoch(2)
        assert sorted(int(i) for b in loader for i in b["id"]) == list(range(120)), "the next epoch is whole"
    finally:
        for pid in pids:
            _signal(pid, signal.SIGCONT)
            _signal(pid, signal.SIGKILL)
        loader._procs.drop()
    dsutil.wait_until(lambda: not _live(_children(before)), "the workers shut down")
