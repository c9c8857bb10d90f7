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
