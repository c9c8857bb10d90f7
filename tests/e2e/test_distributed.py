"""Real torch.distributed: torchrun --nproc_per_node=2 (gloo on CPU) x num_workers=2."""

import json
import os
import subprocess
import sys

import pytest

import dsutil
import sparkfeed

pytestmark = [pytest.mark.distributed, pytest.mark.slow]  # torchrun: 2 ranks x 2 workers per run
HERE = os.path.dirname(__file__)


def torchrun(out, jobs: dict, nproc=2) -> dict:
    """One torchrun for every job; {job: [rank 0's result, rank 1's, ...]}."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", f"--master_port={29500 + os.getpid() % 1000}",
           os.path.join(HERE, "distributed_worker.py"), str(out), json.dumps(jobs)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, timeout=240, env=env, capture_output=True)
    return {name: [json.load(open(os.path.join(out, name, f"rank-{r}.json"))) for r in range(nproc)]
            for name in jobs}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    dsutil.write_parquet(str(root / "pq"), dsutil.table(1000), 250, 64)
    dsutil.write_tar(str(root / "wds"), dsutil.table(500), 125)
    return {"parquet": (str(root / "pq"), 1000), "webdataset": (str(root / "wds"), 500)}


@pytest.fixture(scope="module")
def runs(datasets, tmp_path_factory):
    """2 ranks x 2 workers each: both formats, and Parquet again with drop_last."""
    jobs = {fmt: {"path": path, "workers": 2, "drop_last": False} for fmt, (path, _) in datasets.items()}
    jobs["drop_last"] = {"path": datasets["parquet"][0], "workers": 2, "drop_last": True}
    return torchrun(tmp_path_factory.mktemp("runs"), jobs)


@pytest.mark.parametrize("fmt", ["parquet", "webdataset"])
def test_exactly_once_under_torchrun(datasets, runs, fmt):
    path, n = datasets[fmt]
    ranks = runs[fmt]
    assert {r["world"] for r in ranks} == {2}
    ids = [i for r in ranks for i in r["ids"]]
    assert sorted(ids) == list(range(n))
    # the gathered global state after 3 batches per rank resumes with exactly the rest, on 1 rank
    state = ranks[0]["state"]
    assert state["scope"] == "global" and state == ranks[1]["state"]
    seen = set(ranks[0]["ids"][:48]) | set(ranks[1]["ids"][:48])
    L = sparkfeed.DataLoader(path, batch_size=16, shuffle=True, seed=7, num_workers=0, rank=0, world_size=1)
    L.load_state_dict(state)
    rest = [i for b in L for i in b["id"].tolist()]
    assert sorted(rest + list(seen)) == list(range(n))


def test_drop_last_equal_batches_under_torchrun(datasets, runs):
    _, n = datasets["parquet"]
    ranks = runs["drop_last"]
    assert ranks[0]["batches"] == ranks[1]["batches"] == n // 32
    ids = [i for r in ranks for i in r["ids"]]
    assert len(ids) == len(set(ids)) == 2 * 16 * (n // 32)
