"""Worker processes forked while one of sparkfeed's threads holds a short lock: the child inherits
the lock held, by a thread it does not have, and would wait for it for ever the first time it
needs it. Each test holds the lock on a thread, as a lane thread does for a moment, until the
main thread is forking; the loader's `timeout` turns a hang into a failure."""

import sys
import threading

import pytest

import dsutil
import sparkfeed
from sparkfeed import Source, mixgrid

_BOUND_S = 15.0  # only turns a hang into a failure: nothing is timed


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    root = tmp_path_factory.mktemp("forklocks")
    dsutil.write_parquet(str(root / "a"), dsutil.table(60), 30, 10)
    dsutil.write_parquet(str(root / "b"), dsutil.table(40), 20, 10)
    return [Source(str(root / "a"), weight=0.6), Source(str(root / "b"), weight=0.4)]


def _forking(thread: threading.Thread) -> bool:
    """Whether `thread` is inside multiprocessing's fork (`popen_fork.Popen._launch`)."""
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code.co_name == "_launch" and frame.f_code.co_filename.endswith("popen_fork.py"):
            return True
        frame = frame.f_back
    return False


def _held_until_forking(lock) -> threading.Thread:
    """A thread that takes `lock` and lets it go once the main thread is forking (or after the bound)."""
    main, held = threading.main_thread(), threading.Event()

    def hold():
        with lock:
            held.set()
            try:
                dsutil.wait_until(lambda: _forking(main), "the main thread forking", timeout=_BOUND_S)
            except AssertionError:
                pass  # forked without being seen: the child has the lock held (the bug)
    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    held.wait()
    return thread


def test_mix_worker_processes_forked_while_a_thread_holds_the_grid_lock_read_their_lanes(mix):
    """A mix's lanes take `mixgrid._SHARED_LOCK` to find the epoch's block grid: a worker process
    forked while a lane thread of another loader held it waited for it for ever."""
    loader = sparkfeed.DataLoader(mix, batch_size=5, num_workers=2, worker_type="process",
                                  multiprocessing_context="fork", timeout=_BOUND_S, columns=["id"])
    expected = len(loader)
    holder = _held_until_forking(mixgrid._SHARED_LOCK)
    try:
        assert sum(1 for _ in loader) == expected
    finally:
        holder.join()
    assert not mixgrid._SHARED_LOCK.locked()
