"""A mix under real torch.distributed: torchrun --nproc_per_node=2 (gloo on CPU) x num_workers=2."""

import collections
import json
import os
import subprocess
import sys

import pyarrow.compute as pc
import pytest

import dsutil
import sparkfeed

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
HERE = os.path.dirname(__file__)
T = 100_000  # the tar source's ids start here


def torchrun(pq, wds, out, workers=2, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", f"--master_port={30500 + os.getpid() % 1000}",
           os.path.join(HERE, "mix_distributed_worker.py"), pq, wds, str(out), str(workers)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, timeout=240, env=env, capture_output=True)
    return [json.load(open(os.path.join(out, f"rank-{r}.json"))) for r in range(nproc)]


def test_mix_exactly_once_equal_batches_and_resume_under_torchrun(tmp_path):
    pq, wds = str(tmp_path / "pq"), str(tmp_path / "wds")
    dsutil.write_parquet(pq, dsutil.table(600), 150, 50)
    tar = dsutil.table(400)
    dsutil.write_tar(wds, tar.set_column(0, "id", pc.add(tar["id"], T)), 100)
    ranks = torchrun(pq, wds, tmp_path)
    # shares: 600 / 0.75 = 800 positions, 600 + 200; drop_last: 800 // 32 = 25 batches per rank
    assert {r["world"] for r in ranks} == {2} and ranks[0]["batches"] == ranks[1]["batches"] == 25
    rows = [tuple(x) for r in ranks for x in r["rows"]]
    ids = [i for i, _ in rows]
    assert len(ids) == len(set(ids)) == 800                     # at most once across ranks x workers
    assert all((i >= T) == s for i, s in rows)
    assert collections.Counter(s for _, s in rows) == {0: 600, 1: 200}
    assert sum(r["stats"]["source.1.samples"] for r in ranks) == 200
    # the gathered state after 3 batches per rank resumes with exactly the rest, on 1 rank
    state = ranks[0]["state"]
    assert state["scope"] == "global" and state == ranks[1]["state"]
    seen = {tuple(x) for r in ranks for x in r["rows"][:48]}
    L = sparkfeed.DataLoader([sparkfeed.Source(pq, weight=0.75), sparkfeed.Source(wds, weight=0.25)],
                             batch_size=16, shuffle=True, seed=7, drop_last=True, columns=["id", "label"],
                             with_source=True, rank=0, world_size=1)
    L.load_state_dict(state)
    rest = [(i, s) for b in L for i, s in zip(b["id"].tolist(), b["__source__"].tolist())]
    assert sorted(rest + list(seen)) == sorted(rows)
