"""Training-loop habits under real torchrun ranks (gloo on CPU): one torchrun of 2 ranks x 2
workers runs every job of `training_usage_worker.py`."""

import json
import os
import subprocess
import sys

import pytest

import dsutil

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
HERE = os.path.dirname(__file__)
N = 640


def torchrun(out, nproc: int, *args: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={28500 + os.getpid() % 1000}", os.path.join(HERE, "training_usage_worker.py"),
           str(out), *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, timeout=240, env=env, capture_output=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """{job: [rank 0's result, rank 1's, ...]}: 2 ranks run every job, then 3 ranks resume the
    state the 2 gathered (`elastic`)."""
    root = tmp_path_factory.mktemp("usage")
    dsutil.write_parquet(str(root / "pq"), dsutil.table(N), 160, 32)
    out = root / "out"
    torchrun(out, 2, str(root / "pq"))
    found = {job: [json.load(open(out / job / f"rank-{r}.json")) for r in range(2)]
             for job in ("seed_by_rank", "resume_loop")}
    with open(root / "state.json", "w") as f:
        json.dump(found["resume_loop"][0]["state"], f)
    torchrun(out, 3, str(root / "pq"), str(root / "state.json"))
    found["elastic"] = [json.load(open(out / "elastic" / f"rank-{r}.json")) for r in range(3)]
    return found


def test_a_seed_derived_from_the_rank_is_named_when_the_state_is_gathered(runs):
    """Ranks seeded apart read overlapping shares (samples twice and never); the gathered state
    says so on every rank, naming the seeds, rather than saving a state no loader can load."""
    errors = [r["error"] for r in runs["seed_by_rank"]]
    assert errors[0] == errors[1] and errors[0] is not None
    assert "seed by rank: [7, 8]" in errors[0] and "the same seed=" in errors[0]


def test_the_resume_loop_with_set_epoch_delivers_each_sample_once(runs):
    """After a restart, `load_state_dict(gathered)` then `set_epoch(saved_epoch)` on every rank:
    the epoch goes on with exactly the samples no rank has delivered; the next one is whole."""
    ranks = runs["resume_loop"]
    epoch1 = [i for r in ranks for i in r["head"] + r["epochs"][0]]
    epoch2 = [i for r in ranks for i in r["epochs"][1]]
    assert sorted(epoch1) == list(range(N))
    assert sorted(epoch2) == list(range(N))


def test_a_state_gathered_on_2_ranks_resumes_on_3_exactly_once(runs):
    """The gathered state of 2 torchrun ranks, loaded by 3: the rest of the epoch, each sample once
    across the 3, and `len()` the batches each rank then delivers."""
    saved = runs["resume_loop"]
    assert saved[0]["state"] == saved[1]["state"]
    head = [i for r in saved for i in r["head"]]
    ranks = runs["elastic"]
    assert {r["epoch"] for r in ranks} == {1}
    assert all(r["batches"] == len(r["ids"]) for r in ranks)
    rest = [i for r in ranks for b in r["ids"] for i in b]
    assert len(head) == 2 * 3 * 16 and sorted(head + rest) == list(range(N))
