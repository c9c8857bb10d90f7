"""Loader faults: a killed worker is a clear error within a bound; a killed training process
resumes from its checkpoint with exactly the samples it had not seen."""

import json
import os
import signal
import subprocess
import sys

import psutil
import pytest

import dsutil
import sparkfeed
from sparkfeed import WorkerError

HERE = os.path.dirname(__file__)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("lf") / "ds")
    dsutil.write_parquet(root, dsutil.table(400, image_bytes=64), 100, 20)
    return root


def test_killed_worker_is_a_clear_error_within_a_bound(ds):
    """Both workers SIGKILLed mid-epoch: the next batches end in WorkerError naming the rank.

    torch notices a dead worker two ways: its SIGCHLD handler (which raises wherever the main
    thread happens to be, possibly in this test's own kill loop, outside the loader) and its
    status check inside `next()` (every 5 s while no batch arrives). The test silences SIGCHLD
    while it kills, so the error always comes from inside the loader; the bound is then torch's
    status-check interval, by construction rather than by a clock in the test.
    """
    before = {p.pid for p in psutil.Process().children()}  # e.g. a Spark JVM of other tests
    L = sparkfeed.DataLoader(ds, batch_size=10, num_workers=2, prefetch=0, worker_type="process")
    it = iter(L)
    next(it)
    workers = [p for p in psutil.Process().children() if p.pid not in before]
    assert workers, "the loader should run worker processes"
    torch_handler = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        for w in workers:
            os.kill(w.pid, signal.SIGKILL)
        with pytest.raises(WorkerError, match="rank 0"):
            for _ in it:
                pass
    finally:
        signal.signal(signal.SIGCHLD, torch_handler)
    # The dead workers are forgotten: a child exiting now, and SIGCHLD delivered to this process
    # (os.kill to ourselves runs the handler before it returns), raise nothing.
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    os.kill(os.getpid(), signal.SIGCHLD)


@pytest.mark.slow  # four trainer processes per case
@pytest.mark.parametrize("workers", [0, 2])
def test_killed_trainer_resumes_exactly(ds, tmp_path, workers):
    ckpt = str(tmp_path / "ckpt.json")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, os.path.join(HERE, "crash_trainer.py"), ds, ckpt, str(workers)]
    kills = 0
    for stop_after_lines in (5, 9, 4):  # kill three times at different points
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        lines = 0
        for line in proc.stdout:
            lines += line.startswith("batch")
            if lines >= stop_after_lines:
                proc.kill()
                kills += 1
                break
        proc.wait(timeout=60)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=True)
    assert "done" in out.stdout
    seen = json.load(open(ckpt))["seen"]
    assert kills == 3
    assert sorted(seen) == list(range(400)), "every sample exactly once across three crashes"
