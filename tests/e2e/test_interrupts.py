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
