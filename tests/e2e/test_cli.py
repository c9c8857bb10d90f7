"""`sparkfeed inspect` and `sparkfeed jar` as a user runs them, on a dataset sparkfeed.write made."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import sparkfeed
from sparkfeed.manifest import read_manifest

pytestmark = pytest.mark.spark
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers need the Python with sparkfeed


def _cli(*args: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("sparkfeed")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "sparkfeed.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from pyspark.sql import functions as F

    spark = sparkfeed.spark_session(app_name="sparkfeed-tests", master="local[2]")
    i = F.col("id")
    df = spark.range(700).select(
        (i % 7).cast("int").alias("label"),
        F.when(i % 10 == 0, None).otherwise(F.concat(F.lit("cap "), i.cast("string"))).alias("caption"),
        F.array(i.cast("float"), (i * 2).cast("float")).alias("feature"),
        i.cast("string").cast("binary").alias("image"),
    )
    path = tmp_path_factory.mktemp("cli") / "ds"
    sparkfeed.write(df, str(path), samples_per_shard=250, samples_per_row_group=64,
                    cluster_by="label", codecs={"image": "jpeg"})
    return path


def test_inspect_prints_a_summary(dataset):
    r = _cli("inspect", str(dataset), "--shards", "2")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "format      parquet" in out
    assert "samples     700" in out
    m = read_manifest(str(dataset))
    assert f"shards      {len(m.shards)} (" in out and "row groups" in out
    for name in ("label", "caption", "feature", "image", "int32", "string", "jpeg"):
        assert name in out
    stats = {line.split()[0]: line.split()[1:] for line in out.split("statistics")[1].splitlines()[3:] if line.strip()}
    assert stats["label"][:3] == ["0", "6", "0"]
    assert stats["caption"][-1] == "70"
    assert f"first 2 of {len(m.shards)} shards" in out


def test_inspect_json_is_the_manifest(dataset):
    r = _cli("inspect", str(dataset), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == read_manifest(str(dataset)).to_dict()


def test_inspect_a_missing_dataset_exits_2_naming_it(tmp_path):
    missing = tmp_path / "no-such-dataset"
    r = _cli("inspect", str(missing))
    assert r.returncode == 2
    assert str(missing) in r.stderr and "no such file or directory" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _cli("inspect", str(empty))
    assert r.returncode == 2 and "sparkfeed.write" in r.stderr and "Traceback" not in r.stderr


def test_inspect_plain_parquet_indexes_it_in_memory_and_says_so(tmp_path):
    (tmp_path / "plain").mkdir()
    pq.write_table(pa.table({"id": np.arange(30), "x": np.ones(30)}), tmp_path / "plain" / "a.parquet",
                   row_group_size=10)
    r = _cli("inspect", str(tmp_path / "plain"))
    assert r.returncode == 0, r.stderr
    assert "indexed in memory" in r.stdout and f"sparkfeed index {tmp_path / 'plain'}`" in r.stdout
    assert "samples     30" in r.stdout and "row groups  3" in r.stdout
    r = _cli("inspect", f"{tmp_path}/plain/*.parquet", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["num_samples"] == 30
    assert not (tmp_path / "plain" / "_sparkfeed.json").exists()


def test_inspect_a_bad_manifest_exits_2(tmp_path):
    (tmp_path / "_sparkfeed.json").write_text('{"sparkfeed_manifest": 7}')
    r = _cli("inspect", str(tmp_path))
    assert r.returncode == 2 and "unknown manifest version 7" in r.stderr
    assert "Traceback" not in r.stderr


def test_jar_prints_an_existing_path():
    r = _cli("jar")
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).is_file() and r.stdout.strip().endswith(".jar")


@pytest.mark.parametrize("args, expect", [
    (["--help"], ["inspect", "jar", "--log-level", "example"]),
    (["inspect", "--help"], ["--json", "--shards", "manifest", "sparkfeed inspect ds/"]),
    (["jar", "--help"], ["spark-submit"]),
])
def test_help_explains(args, expect, capsys):
    from sparkfeed.cli import main  # in process: test_jar_prints_an_existing_path runs the command

    with pytest.raises(SystemExit, match="^0$"):
        main(args)
    out = capsys.readouterr().out
    for text in expect:
        assert text in out


def test_main_in_process_and_log_level(dataset, capsys):
    from sparkfeed.cli import main

    assert main(["--log-level", "debug", "inspect", str(dataset)]) == 0
    assert "samples     700" in capsys.readouterr().out
    assert main(["inspect", str(dataset / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
