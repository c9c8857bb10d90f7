"""Resources and shutdown as long training jobs and notebooks meet them: a loader used in a
forked child, a worker process that dies while the consumer waits for a prefetch thread.

Each forked child reports through its exit status; the parent waits for it within a bound
(`_child_status`), which turns a hang into a failure without timing anything."""

import io
import os
import signal
import sys
import threading

import psutil
import pyarrow as pa
import pytest
from PIL import Image

import dsutil
import sparkfeed
from sparkfeed import WorkerError

_CHILD_WAIT_S = 60.0  # a hang, not a slow child: the bound only turns it into a failure


def _jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), ((i * 37) % 256, (i * 91) % 256, 7)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def parquet(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("hunt") / "pq")
    dsutil.write_parquet(root, dsutil.table(400), 100, 20)
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("hunt") / "img")
    t = dsutil.table(96)
    dsutil.write_parquet(root, t.append_column("image", pa.array([_jpeg(i) for i in range(96)], pa.binary())),
                         48, 16, codecs={"image": "jpeg"})
    return root


@pytest.fixture(scope="module")
def tars(tmp_path_factory):
    """Tars without a DALI index: read by worker processes."""
    root = str(tmp_path_factory.mktemp("hunt") / "tar")
    dsutil.write_tar(root, dsutil.table(200), 50, index=False)
    return root


def _child_status(pid: int) -> int:
    """The forked child's exit code (a child hung past `_CHILD_WAIT_S` fails the test)."""
    return dsutil.child_exit_code(pid, "the forked child hung iterating the loader it inherited", _CHILD_WAIT_S)


def _in_child(loader, epoch: int, expected: int) -> int:
    """Fork; the child iterates `loader` for `epoch` and exits 0 if it got `expected` batches."""
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        code = 1
        try:
            loader.set_epoch(epoch)
            code = 0 if sum(1 for _ in loader) == expected else 2
        finally:
            os._exit(code)
    return _child_status(pid)


def test_a_forked_child_decodes_with_a_loader_its_parent_was_decoding_with(images):
    """The parent's prefetch thread holds the decoder's lock while it decodes ahead: a child forked
    then waited for that lock forever (and the decoder's DALI threads are not in the child)."""
    L = sparkfeed.DataLoader(images, batch_size=8, num_workers=2,
                             decode={"image": sparkfeed.ImageDecode(size=16, device="cpu")})
    it = iter(L)
    next(it)
    assert _in_child(L, 1, len(L)) == 0
    assert sum(1 for _ in it) == len(L) - 1, "the parent's own iteration goes on"


@pytest.mark.parametrize("collate", [False, True])
def test_a_forked_child_reads_the_epoch_its_parent_read_ahead(parquet, collate):
    """persistent_workers=True reads the next epoch ahead on the parent's threads, which the child
    does not have: taking those reads failed ("thread 'sparkfeed-lane-0' ended without a result")."""
    L = sparkfeed.DataLoader(parquet, batch_size=16, num_workers=2, persistent_workers=True,
                             collate_fn=(lambda b: b) if collate else None)
    L.set_epoch(0)
    n = sum(1 for _ in L)  # epoch 1 is being read ahead now
    assert _in_child(L, 1, n) == 0
    L.set_epoch(1)
    assert sum(1 for _ in L) == n
    assert L.stats()["epochs_read_ahead"] == 1, "the parent still takes its own reads"


def test_a_forked_child_leaves_its_parents_kept_worker_processes_alone(tars):
    """The kept workers are the parent's children: the child's iteration restarted them through
    torch's queues ("can only test a child process" in the child), and the parent's next epoch
    then hung (here torch's `timeout` turns that into an error)."""
    L = sparkfeed.DataLoader(tars, batch_size=10, num_workers=2, persistent_workers=True, timeout=30)
    L.set_epoch(0)
    n = sum(1 for _ in L)
    assert _in_child(L, 1, n) == 0
    L.set_epoch(1)
    assert sum(1 for _ in L) == n


def _new_children(before: set) -> list:
    return [p for p in psutil.Process().children() if p.pid not in before]


def test_a_worker_killed_while_the_consumer_waits_for_the_prefetch_thread_is_a_worker_error(tars):
    """torch's SIGCHLD handler raises its RuntimeError ("DataLoader worker (pid N) is killed by
    signal") in the main thread, which with a prefetch thread between (a collate_fn, decode=) waits
    for that thread, outside the code that named worker deaths: the user got a bare RuntimeError
    where the README promises a WorkerError naming the rank."""
    main, gate, calls = threading.main_thread(), threading.Event(), []
    before = {p.pid for p in psutil.Process().children()}

    def collate(batch):
        calls.append(1)
        if len(calls) == 2:  # the prefetch thread: once the consumer waits for this batch
            dsutil.wait_until(lambda: sys._current_frames()[main.ident].f_code.co_name == "wait",
                              "the consumer waiting for the prefetch thread")
            os.kill(_new_children(before)[0].pid, signal.SIGKILL)
            gate.wait(_CHILD_WAIT_S)
        return batch

    L = sparkfeed.DataLoader(tars, batch_size=10, num_workers=2, prefetch=1, collate_fn=collate)
    it = iter(L)  # (workers start on the main thread: torch sets its SIGCHLD handler)
    try:
        next(it)
        with pytest.raises(WorkerError, match="rank 0"):
            next(it)
    finally:
        gate.set()
    del it
    dsutil.wait_until(lambda: not _new_children(before), "the workers shut down")


def test_a_kept_worker_killed_between_epochs_is_replaced_at_the_next(tars):
    """A kept worker (persistent_workers=True) killed between epochs (the OOM killer, while it read
    ahead): the next epoch waited 5 s for its restart, then failed with WorkerError, and only the
    epoch after worked. Now the next epoch starts new workers and delivers every batch."""
    before = {p.pid for p in psutil.Process().children()}
    L = sparkfeed.DataLoader(tars, batch_size=10, num_workers=2, persistent_workers=True,
                             collate_fn=lambda b: b)
    L.set_epoch(0)
    n = sum(1 for _ in L)
    kept = _new_children(before)
    torch_handler = signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # (else raised here, outside the loader)
    try:
        os.kill(kept[0].pid, signal.SIGKILL)
        os.waitid(os.P_PID, kept[0].pid, os.WEXITED | os.WNOWAIT)  # ended, left for its parent to reap
    finally:
        signal.signal(signal.SIGCHLD, torch_handler)
    L.set_epoch(1)
    assert sum(1 for _ in L) == n
    assert kept[0].pid not in {p.pid for p in _new_children(before)}
