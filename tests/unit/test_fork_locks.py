"""Worker processes forked while one of sparkfeed's threads holds a short lock: the child inherits
the lock held, by a thread it does not have, and would wait for it for ever the first time it
needs it. Each test holds the lock on a thread, as a lane thread does for a moment, until the
main thread is forking; the loader's `timeout` turns a hang into a failure."""

import io
import os
import sys
import threading

import pyarrow as pa
import pytest
from PIL import Image

import dsutil
import sparkfeed
from sparkfeed import Source, blocks, mixgrid, pilopen

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
    main = threading.main_thread()
    return _held_until(lock, lambda: _forking(main))


def _held_until(lock, forking) -> threading.Thread:
    """A thread that takes `lock` and lets it go once `forking()` (or after the bound)."""
    held = threading.Event()

    def hold():
        with lock:
            held.set()
            try:
                dsutil.wait_until(forking, "the main thread forking", timeout=_BOUND_S)
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


@pytest.fixture(scope="module")
def parquet(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("forklocks") / "pq")
    dsutil.write_parquet(root, dsutil.table(200), 50, 10)
    return root


def _fork() -> int:
    """os.fork(), in a frame of its own: the holding thread sees the main thread forking."""
    return os.fork()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("forklocks") / "img")
    data = dsutil.table(24)
    dsutil.write_parquet(root, data.append_column("image", pa.array([_png(i) for i in range(24)], pa.binary())),
                         12, 6, codecs={"image": "png"})
    return root


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (i * 9 % 256, 7, 3)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("which", ["lane shares", "engine", "pil", "loader stats"])
def test_a_forked_child_reads_with_thread_lanes_whatever_its_parents_threads_held(parquet, images, which):
    """Thread lanes find what they share through a class-wide registry (`blocks._LaneShare`) and
    the engine (`Engine._lanes_shared`), PIL decoding sets its pixel limit (`pilopen`) and the
    prefetch thread counts into the loader's `Stats`, each under a short lock: a child forked (os.fork, as a notebook or a fork server does) while a
    thread of the parent held one waited for ever."""
    if which == "pil":
        loader = sparkfeed.DataLoader(images, batch_size=4, num_workers=2, columns=["id", "image"],
                                      decode={"image": sparkfeed.ImageDecode(size=4, device="cpu", backend="pil")})
    else:
        loader = sparkfeed.DataLoader(parquet, batch_size=10, num_workers=2, shuffle=True, columns=["id"])
    n = len(loader)
    lock = {"lane shares": blocks._LaneShare._registry_lock, "engine": loader.dataset.engine._shared_lock,
            "pil": pilopen._installing, "loader stats": loader._stats._lock}[which]
    main = threading.main_thread()

    def in_fork() -> bool:
        frame = sys._current_frames().get(main.ident)
        return frame is not None and frame.f_code is _fork.__code__
    holder = _held_until(lock, in_fork)
    pid = _fork()
    if pid == 0:  # the child: never back into pytest
        code = 1
        try:
            code = 0 if sum(1 for _ in loader) == n else 2
        finally:
            os._exit(code)
    holder.join()
    assert dsutil.child_exit_code(pid, "the forked child hung on a lock its parent's thread held when it forked",
                                  _BOUND_S) == 0
    assert sum(1 for _ in loader) == n, "the parent's own epoch too"
