"""Forked workers never destroy what they inherited (`sparkfeed.forks`). Each case runs in a
fresh interpreter: it switches the garbage collector off to keep a dropped loader's DALI
pipeline as garbage until the fork, which must not leak into the test session."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap

import pytest

from sparkfeed import forks

pytest.importorskip("nvidia.dali")

# Writes 64 JPEGs, decodes them with DALI, drops the loader as cyclic garbage (gc off), then reads
# with forked workers that collect garbage: the collection that met the dropped pipeline in CI and
# hung or crashed the worker in `~Pipeline`. "torch": a plain torch DataLoader whose workers
# collect in `worker_init_fn` (the child's at-fork freeze protects them); "sparkfeed": the loader's
# process workers, with a collection in the child before sparkfeed's at-fork hook (the parent's
# freeze while forking protects them).
_SCRIPT = textwrap.dedent("""
    import gc, io, os, sys
    import pyarrow as pa, torch
    from PIL import Image
    sys.path.insert(0, {tests!r})
    import dsutil, sparkfeed

    if {mode!r} != "torch":  # a collection in the child before sparkfeed's at-fork hook runs
        os.register_at_fork(after_in_child=gc.collect)
    if {mode!r} == "sparkfeed, a freeze before":  # something froze objects at start (seen on a GPU machine)
        gc.freeze()

    def jpeg(i):
        buf = io.BytesIO()
        Image.new("RGB", (24, 16), (i % 256, 7, 9)).save(buf, format="JPEG")
        return buf.getvalue()

    root = {root!r}
    t = dsutil.table(64)
    dsutil.write_parquet(root, t.append_column("image", pa.array([jpeg(i) for i in range(64)])),
                         32, 16, codecs={{"image": "jpeg"}})
    gc.disable()
    L = sparkfeed.DataLoader(root, batch_size=16, decode={{"image": sparkfeed.ImageDecode(size=16)}})
    assert sum(len(b["image"]) for b in L) == 64
    L.cycle = L  # only the collector can free it, and with it the decoder's DALI pipeline
    del L

    def collect(_worker):
        gc.collect()

    if {mode!r} != "torch":
        loader = sparkfeed.DataLoader(root, batch_size=16, num_workers=2, worker_type="process",
                                      columns=["id"], timeout=60, multiprocessing_context="fork")
        rows = [i for b in loader for i in b["id"].tolist()]
    else:
        ds = sparkfeed.Dataset(root, columns=["id"])
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, timeout=60,
                                             multiprocessing_context="fork", worker_init_fn=collect)
        rows = [int(r["id"]) for r in loader]
    assert sorted(rows) == list(range(64)), rows
    print("rows", len(rows))
""")


@pytest.mark.parametrize("mode", ["torch", "sparkfeed", "sparkfeed, a freeze before"])
def test_forked_workers_survive_a_dali_pipeline_dropped_in_the_parent(tmp_path, mode):
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = _SCRIPT.format(tests=tests, root=str(tmp_path / "ds"), mode=mode)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0 and "rows 64" in out.stdout, out.stderr[-3000:]


def test_the_parents_freeze_is_undone_after_the_workers_start_and_a_users_freeze_kept():
    """In a fresh interpreter of its own, which first undoes any freeze its start-up made (one GPU
    machine's Python starts with 375 objects frozen, even with `-S`), so that start-up cannot
    decide the first half; forks.py needs only the standard library."""
    code = textwrap.dedent(f"""
        import gc, importlib.util
        gc.unfreeze()
        spec = importlib.util.spec_from_file_location("forks", {forks.__file__!r})
        forks = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(forks)
        assert gc.get_freeze_count() == 0, gc.get_freeze_count()
        with forks.frozen_while_forking():
            assert gc.get_freeze_count() > 0
        assert gc.get_freeze_count() == 0
        gc.freeze()
        with forks.frozen_while_forking():
            pass
        # someone else's freeze is theirs to undo (`gc.unfreeze` would leave 0; the count itself
        # moves as frozen objects die, so it is not compared with the count before)
        assert gc.get_freeze_count() > 0
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


class _Cycle:
    """Cyclic garbage that says in which process it was destroyed."""

    destroyed_in: list[int] = []

    def __init__(self):
        self.me = self

    def __del__(self):
        _Cycle.destroyed_in.append(os.getpid())


def test_under_someone_elses_freeze_the_parents_garbage_is_collected_before_the_fork():
    """Where a freeze is already in place sparkfeed cannot freeze and unfreeze its own part, so a
    dropped pipeline must be destroyed in the parent before the workers fork, not left for them."""
    gc.freeze()
    try:
        _Cycle.destroyed_in.clear()
        _Cycle()
        with forks.frozen_while_forking():
            assert _Cycle.destroyed_in == [os.getpid()]
    finally:
        gc.unfreeze()
