"""End to end: every example, at a tiny scale, as a user runs it (subprocesses with timeouts).

corpus -> spark-submit preprocessing (parquet) -> train a few steps -> resume -> torchrun with 2
ranks -> resume that at world size 1; a JSON-lines corpus preprocessed into WebDataset and
trained on by TorchDistributor with 2 processes, in one Spark application; and the
missing-input error. (Each Spark application is a JVM start, the cost that dominates here.)

The tests share one corpus and one dataset (module fixtures) and run in file order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.spark, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
PY = sys.executable
BATCH = 8
TRAIN_ARGS = ["--batch-size", str(BATCH), "--image-size", "32", "--device", "cpu"]


def run(args, timeout: float, cwd=None) -> str:
    """Run a command to completion; its combined output, or a failure showing the output's end."""
    env = dict(os.environ, PYSPARK_PYTHON=PY, PYSPARK_DRIVER_PYTHON=PY,
               SPARKFEED_SPARK_LOG_LEVEL="ERROR", OMP_NUM_THREADS="1")
    try:
        proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, timeout=timeout,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"timed out after {timeout}s: {' '.join(map(str, args))}\n{out[-4000:]}")
    if proc.returncode != 0:
        pytest.fail(f"exit code {proc.returncode}: {' '.join(map(str, args))}\n{proc.stdout[-6000:]}")
    return proc.stdout


def keys(prefix: Path, ranks: int = 1) -> list[list[str]]:
    return [Path(f"{prefix}.rank{r}.txt").read_text().split("\n")[:-1] for r in range(ranks)]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "raw"
    run([PY, EXAMPLES / "make_raw_corpus.py", "--output", out, "--images", 60, "--bad", 3], timeout=60)
    return out


@pytest.fixture(scope="module")
def ds(raw, tmp_path_factory) -> Path:
    """The parquet dataset, written by spark-submit (--jars sparkfeed.jar_path())."""
    import pyspark

    import sparkfeed

    out = tmp_path_factory.mktemp("ds") / "ds"
    submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    text = run([submit, "--master", "local[2]", "--conf", "spark.log.level=WARN", "--jars", sparkfeed.jar_path(),
                EXAMPLES / "preprocess_images.py", "--input", raw, "--output", out,
                "--format", "parquet", "--samples-per-shard", 25], timeout=300)
    assert "preprocessed" in text
    return out


def test_corpus_layout(raw):
    expected = json.loads((raw / "_expected.json").read_text())
    lines = (raw / "captions.csv").read_text().splitlines()
    assert lines[0] == "path,caption,label"
    assert len(lines) - 1 == expected["records"] == 60 + 2 + 3 + 3
    files = list((raw / "images").rglob("*.jpg"))
    assert len(files) == expected["records"] - expected["missing_image"]
    assert {p.parent.name for p in files} == set(expected["classes"])


def test_preprocess_missing_input_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-corpus"
    proc = subprocess.run([PY, EXAMPLES / "preprocess_images.py", "--input", missing, "--output",
                           tmp_path / "ds"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert str(missing) in proc.stderr and "does not exist" in proc.stderr
    assert not (tmp_path / "ds").exists()


def test_spark_submit_preprocess_counts_every_bad_record(raw, ds):
    import sparkfeed

    expected = json.loads((raw / "_expected.json").read_text())
    s = json.loads((ds / "_summary.json").read_text())
    assert s["read"] == expected["records"]
    for name in ("missing_image", "undecodable", "too_small", "bad_aspect"):
        assert s[name] == expected[name], name
    assert s["duplicate"] == expected["duplicates"]
    assert s["train"] + s["val"] == expected["good"]
    assert s["val"] > 0 and s["train"] > s["val"]
    train, val = sparkfeed.read_manifest(str(ds / "train")), sparkfeed.read_manifest(str(ds / "val"))
    assert (train.num_samples, val.num_samples) == (s["train"], s["val"])
    assert len(train.shards) >= 2  # --samples-per-shard 25
    assert train.column("image").codec == "jpeg"
    import pyarrow.parquet as pq

    images = pq.read_table(ds / "train" / train.shards[0].path, columns=["width", "height"])
    assert max(max(images["width"].to_pylist()), max(images["height"].to_pylist())) <= 128


def test_train_then_resume_delivers_the_rest_of_the_epoch_exactly_once(ds, tmp_path):
    ckpt, first, second = tmp_path / "ckpt.pt", tmp_path / "first", tmp_path / "second"
    common = [PY, EXAMPLES / "train.py", "--data", ds / "train", "--workers", 1, "--checkpoint", ckpt,
              *TRAIN_ARGS]
    out = run([*common, "--steps", 2, "--record-keys", first], timeout=120)
    assert "epoch 0 step 2 loss" in out and "loader.stats()" in out and "samples/s" in out
    assert ckpt.is_file()
    out = run([*common, "--resume", "--val", ds / "val", "--record-keys", second], timeout=120)
    assert "starting at epoch 0 step 2" in out and "val accuracy" in out
    (a,), (b,) = keys(first), keys(second)
    n = json.loads((ds / "_summary.json").read_text())["train"]
    assert len(a) == 2 * BATCH
    assert len(a) + len(b) == n // BATCH * BATCH  # drop_last: the whole epoch, in full batches
    assert not set(a) & set(b) and len(set(a + b)) == len(a + b)


def test_torchrun_two_ranks_then_resume_on_one(ds, tmp_path):
    ckpt, two, one = tmp_path / "ckpt.pt", tmp_path / "two", tmp_path / "one"
    out = run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               EXAMPLES / "train.py", "--data", ds / "train", "--workers", 1, "--steps", 2,
               "--checkpoint", ckpt, "--record-keys", two, *TRAIN_ARGS], timeout=180)
    assert "rank 0 of 2" in out and "epoch 0 step 2 loss" in out
    r0, r1 = keys(two, ranks=2)
    assert len(r0) == len(r1) == 2 * BATCH and not set(r0) & set(r1)
    run([PY, EXAMPLES / "train.py", "--data", ds / "train", "--workers", 0, "--checkpoint", ckpt,
         "--resume", "--record-keys", one, *TRAIN_ARGS], timeout=120)
    (rest,) = keys(one)
    assert not set(rest) & set(r0 + r1) and len(set(rest)) == len(rest)
    n = json.loads((ds / "_summary.json").read_text())["train"]
    assert len(r0) + len(r1) + len(rest) == n // (2 * BATCH) * 2 * BATCH


def test_torch_distributor_preprocesses_jsonl_to_webdataset_then_trains(tmp_path):
    """One Spark application: the JSON-lines corpus preprocessed into WebDataset (the example's
    `--data` has no manifest yet), then TorchDistributor trains 2 ranks on it."""
    import sparkfeed

    raw, out = tmp_path / "raw", tmp_path / "wds"
    run([PY, EXAMPLES / "make_raw_corpus.py", "--output", raw, "--images", 30, "--bad", 2,
         "--seed", 1, "--jsonl"], timeout=60)
    text = run([PY, EXAMPLES / "torch_distributor.py", "--data", out / "train", "--raw", raw,
                "--format", "webdataset", "--samples-per-shard", 25, "--num-processes", 2,
                "--", "--steps", 1, "--workers", 0, *TRAIN_ARGS], timeout=300)
    s = json.loads((out / "_summary.json").read_text())
    m = sparkfeed.read_manifest(str(out / "train"))
    assert m.format == "webdataset" and m.num_samples == s["train"]
    expected = json.loads((raw / "_expected.json").read_text())
    assert s["read"] == expected["records"] and s["undecodable"] == expected["undecodable"]
    assert s["missing_image"] == expected["missing_image"] and s["duplicate"] == expected["duplicates"]
    assert "Finished local training with 2 processes" in text
    assert "rank 0 of 2" in text and "epoch 0 step 1 loss" in text
