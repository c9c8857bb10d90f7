"""Ctrl-C while worker processes start: the KeyboardInterrupt reaches the training loop and the
workers are shut down, whether or not they are kept between epochs.

A Ctrl-C delivered while a worker forks is handled in the parent's first at-fork hook (logging
registers one), where CPython reports it as "ignored" and goes on. Stress-tested (a loop that
breaks and restarts iterations of two process workers, SIGINT 1.5 s in; each lost Ctrl-C left
the script running until killed), 4 of 8 and 3 of 6 runs ignored the Ctrl-C, 1 of them in the
fork's hook (the others in a shutdown run from a finaliser, which is not fixed: see
docs/INTERNALS.md); torch's own DataLoader ignored it in 2 of 2 such runs. Here the hook is made
to raise, as a Ctrl-C landing there does, so the test is deterministic; before the fix the loop
read every batch ("not interrupted")."""

import textwrap

import pytest

import dsutil

SCRIPT = textwrap.dedent("""
    import os, sys
    import psutil
    import sparkfeed

    hits = []

    def ctrl_c_during_fork():  # what a SIGINT delivered during the fork does in the parent
        if not hits:
            hits.append(1)
            raise KeyboardInterrupt

    loader = sparkfeed.DataLoader(sys.argv[1], batch_size=10, num_workers=2, worker_type="process",
                                  persistent_workers=sys.argv[2] == "persistent")
    os.register_at_fork(after_in_parent=ctrl_c_during_fork)
    try:
        for batch in loader:
            pass
        print("not interrupted", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    print("workers left", len(psutil.Process().children()), flush=True)
""")


@pytest.fixture(scope="module")
def tars(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("interrupts") / "tars")
    dsutil.write_tar(root, dsutil.table(200), 20, index=False)
    return root


@pytest.mark.parametrize("workers", ["per_epoch", "persistent"])
def test_ctrl_c_while_workers_fork_reaches_the_loop(tars, workers, tmp_path):
    done = dsutil.run_script(SCRIPT, tmp_path, tars, workers, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "interrupted\n" in done.stdout and "not interrupted" not in done.stdout, done.stdout
    assert "workers left 0" in done.stdout, done.stdout


AFTER_BREAK = textwrap.dedent("""
    import sys, time
    import psutil
    import torch.utils.data.dataloader as torch_loader
    import sparkfeed
    from sparkfeed import lanes

    hits = []

    def ctrl_c_once(close):  # what a SIGINT landing in the shutdown does there
        def patched(self, *args, **kwargs):
            if not hits:
                hits.append(1)
                raise KeyboardInterrupt
            return close(self, *args, **kwargs)
        return patched

    if sys.argv[2] == "process":  # in torch's worker iterator's shutdown (its __del__ runs it)
        cls = torch_loader._MultiProcessingDataLoaderIter
        cls._shutdown_workers = ctrl_c_once(cls._shutdown_workers)
    else:
        lanes.LaneReader.close = ctrl_c_once(lanes.LaneReader.close)
    loader = sparkfeed.DataLoader(sys.argv[1], batch_size=10, num_workers=2, worker_type=sys.argv[2])
    try:
        for batch in loader:
            break
        time.sleep(2)  # the training loop going on
        print("not interrupted", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    time.sleep(1)
    print("workers left", len(psutil.Process().children()), "hits", len(hits), flush=True)
""")


@pytest.mark.parametrize("workers", ["thread", "process"])
def test_ctrl_c_during_the_shutdown_after_a_break_reaches_the_loop(tars, workers, tmp_path):
    """After a `break`, the iteration's shutdown runs while Python finalises the abandoned
    iterator, where what is raised is reported as ignored: a Ctrl-C landing there was lost and
    the loop went on (2 of 6 stress runs). The shutdown finishes and the Ctrl-C is delivered
    again. Made deterministic by a shutdown that raises it once (the old code printed "not
    interrupted"). Worker processes whose own shutdown (torch's `_shutdown_workers`) the Ctrl-C
    cut short are left to torch's watchdog, as torch's loader leaves them: not counted there."""
    done = dsutil.run_script(AFTER_BREAK, tmp_path, tars, workers, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "interrupted\n" in done.stdout and "not interrupted" not in done.stdout, (done.stdout, done.stderr[-2000:])
    assert "hits 1" in done.stdout and (workers == "process" or "workers left 0" in done.stdout), done.stdout


INSIDE_A_PUT = textwrap.dedent("""
    import faulthandler, os, signal, sys, threading
    import multiprocessing.queues as mp_queues
    import psutil
    import sparkfeed

    armed = []

    class CtrlCOnceTaken(threading.Condition):
        \"\"\"A queue's lock that a real SIGINT reaches right after it is taken, before `with`
        has entered its block: the race a Ctrl-C loses in `Queue.put`.\"\"\"
        def __enter__(self):
            taken = super().__enter__()
            if armed and armed.pop():
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(1000):  # Python runs its SIGINT handler here, between bytecodes
                    pass
            return taken

    reset = mp_queues.Queue._reset
    def with_racy_lock(self, *args, **kwargs):
        reset(self, *args, **kwargs)
        self._notempty = CtrlCOnceTaken(threading.Lock())
    mp_queues.Queue._reset = with_racy_lock

    def main():  # (spawned workers import this script: nothing runs at its top level)
        faulthandler.dump_traceback_later(60, exit=True)  # a hang fails the test, with its stacks
        loader = sparkfeed.DataLoader(sys.argv[1], batch_size=10, num_workers=2, worker_type="process",
                                      persistent_workers=sys.argv[2] == "persistent",
                                      multiprocessing_context=sys.argv[3])
        first = sum(len(b["id"]) for b in loader)
        armed.append(True)  # the next put to a worker: at the next epoch's start
        try:
            for batch in loader:
                pass
            print("not interrupted", flush=True)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        again = sum(len(b["id"]) for b in loader)  # the loop goes on after a caught Ctrl-C
        del loader
        workers = [p for p in psutil.Process().children()  # (spawn starts a resource tracker)
                   if not any("resource_tracker" in part for part in p.cmdline())]
        print("epochs", first, again, "workers left", len(workers), flush=True)

    if __name__ == "__main__":
        main()
""")


@pytest.mark.parametrize("workers,context", [("persistent", "fork"), ("per_epoch", "fork"),
                                             ("persistent", "spawn")])
def test_ctrl_c_inside_a_put_to_a_worker_leaves_no_lock_held(tars, workers, context, tmp_path):
    """A Ctrl-C landing inside a `put` to a worker's queue, just after the queue's lock was
    taken, left that lock held, and torch's shutdown then waited forever in its own `put` (1 in
    ~25 runs of Ctrl-C at an epoch start with kept workers). The queues now hold a Ctrl-C until
    their `put` returns: the loop gets the KeyboardInterrupt, the workers are shut down, and the
    loader reads a whole epoch afterwards (the old code hung at the shutdown)."""
    done = dsutil.run_script(INSIDE_A_PUT, tmp_path, tars, workers, context, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "interrupted\n" in done.stdout and "not interrupted" not in done.stdout, (done.stdout, done.stderr[-2000:])
    assert "epochs 200 200 workers left 0" in done.stdout, (done.stdout, done.stderr[-2000:])
