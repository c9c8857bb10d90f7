"""A mix under real torch.distributed (torchrun --nproc_per_node=2, gloo on CPU, x num_workers=2),
and the training example's `--mix`."""

import collections
import io
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import dsutil
import sparkfeed

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


@pytest.mark.distributed
@pytest.mark.slow
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


def _jpeg_dataset(root: str, n: int, offset: int) -> None:
    from PIL import Image

    def jpeg(i):
        buf = io.BytesIO()
        Image.new("RGB", (24, 20), ((i * 37) % 256, (i * 91) % 256, 7)).save(buf, format="JPEG")
        return buf.getvalue()
    data = dsutil.table(n)
    data = data.set_column(0, "id", pc.add(data["id"], offset))
    dsutil.write_parquet(root, data.append_column("image", pa.array([jpeg(i) for i in range(n)], pa.binary())),
                         n // 2, n // 4, codecs={"image": "jpeg"})


@pytest.mark.slow
def test_train_example_with_mix(tmp_path):
    _jpeg_dataset(str(tmp_path / "laion"), 56, 0)
    _jpeg_dataset(str(tmp_path / "cc"), 40, T)
    cmd = [sys.executable, os.path.join(os.path.dirname(HERE), "..", "examples", "train.py"),
           "--mix", f"{tmp_path / 'laion'}=0.7,{tmp_path / 'cc'}=0.3", "--workers", "0",
           "--batch-size", "8", "--image-size", "16", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, check=True, timeout=240, env=env, capture_output=True, text=True).stdout
    # 56 / 0.7 = 80 positions: 56 + 24; drop_last at batch 8 keeps all 80 (10 steps)
    assert "done: 10 steps" in out
    per_source = out.split("samples per source (rank 0): ")[1].splitlines()[0]
    assert per_source == f"{tmp_path / 'laion'} 56, {tmp_path / 'cc'} 24"
    bad = subprocess.run(cmd[:2] + ["--mix", "laion"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "'laion' should be PATH=WEIGHT" in bad.stderr
