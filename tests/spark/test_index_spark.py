"""sparkfeed.index on Spark's own `df.write.partitionBy(...).parquet(...)` output (no sparkfeed
in the write), with the footers read locally and on Spark executors; the indexed dataset then
loads exactly once across 2 workers (and 2 ranks) and resumes exactly."""

import json
import os
import sys

import pyarrow.dataset as pads
import pytest

import sparkfeed
from sparkfeed.manifest import MANIFEST_NAME

pytestmark = pytest.mark.spark
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

N = 1200


@pytest.fixture(scope="module")
def plain(spark, tmp_path_factory):
    """A plain Spark write partitioned by split, several files per partition; and the rows as
    pyarrow reads them (the independent expectation)."""
    from pyspark.sql import functions as F

    root = tmp_path_factory.mktemp("spark_index") / "plain"
    df = spark.range(N).select(
        F.col("id"), (F.col("id") % 10).cast("int").alias("label"),
        F.when(F.col("id") % 5 == 0, "val").otherwise("train").alias("split"),
        F.struct(F.col("id").alias("a")).alias("meta"))
    df.repartition(3).write.partitionBy("split").parquet(str(root))
    expected = pads.dataset(str(root), format="parquet", partitioning="hive").to_table()
    return root, expected


def _ids(loader):
    return [i for batch in loader for i in batch["id"].tolist()]


@pytest.mark.slow
def test_spark_footer_job_and_local_threads_give_the_same_manifest(spark, plain, tmp_path):
    root, expected = plain
    local = sparkfeed.index(str(root), manifest=str(tmp_path / "local.json"), progress=False)
    on_spark = sparkfeed.index(str(root), manifest=str(tmp_path / "spark.json"), spark=spark)
    assert local.to_dict()["shards"] == on_spark.to_dict()["shards"]
    assert local.num_samples == expected.num_rows == N
    assert {c.name: c.unsupported for c in local.schema} == {
        "id": None, "label": None, "meta.a": None, "split": None}  # a struct as its leaves
    assert not (root / MANIFEST_NAME).exists()
    loader = sparkfeed.DataLoader(str(root), manifest=str(tmp_path / "spark.json"), batch_size=64)
    pairs = [(i, a) for batch in loader for i, a in zip(batch["id"].tolist(), batch["meta.a"].tolist())]
    assert len(pairs) == N and all(i == a for i, a in pairs)


@pytest.mark.slow
def test_partition_filter_prunes_whole_files(plain):
    root, expected = plain
    sparkfeed.index(str(root), mode="overwrite", progress=False)
    loader = sparkfeed.DataLoader(str(root), batch_size=64, filter=[("split", "==", "val")])
    got = _ids(loader)
    want = [r["id"] for r in expected.to_pylist() if r["split"] == "val"]
    assert sorted(got) == sorted(want)
    stats = loader.stats()
    m = json.loads((root / MANIFEST_NAME).read_text())
    train_files = sum(1 for s in m["shards"] if s["partition"]["split"] == "train")
    assert stats["shards_pruned"] == train_files > 0


@pytest.mark.parametrize("world", [1, 2])
def test_exactly_once_and_resume_with_two_workers(plain, world):
    root, _ = plain
    sparkfeed.index(str(root), mode="overwrite", progress=False)
    kw = dict(batch_size=50, shuffle=True, seed=5, num_workers=2, columns=["id", "split"])
    seen, states = [], []
    for r in range(world):
        L = sparkfeed.DataLoader(str(root), rank=r, world_size=world, **kw)
        it = iter(L)
        for _ in range(3):
            seen += next(it)["id"].tolist()
        states.append(L.state_dict())
        it.close()
    rest = []
    for r in range(world):
        L = sparkfeed.DataLoader(str(root), rank=r, world_size=world, **kw)
        L.load_state_dict(states[r])
        rest += _ids(L)
    assert sorted(seen + rest) == list(range(N))


def test_index_cli_with_spark_and_tars_on_executors(spark, tmp_path):
    wds = pytest.importorskip("webdataset")
    root = tmp_path / "tars"
    root.mkdir()
    for s in range(4):
        with wds.TarWriter(str(root / f"{s}.tar")) as w:
            for i in range(6):
                w.write({"__key__": f"k{s}_{i}", "cls": s * 6 + i, "png": b"x" * (i + 1)})
    local = sparkfeed.index(str(root), manifest=str(tmp_path / "l.json"), progress=False)
    remote = sparkfeed.index(str(root), manifest=str(tmp_path / "s.json"), spark=spark)
    assert local.to_dict()["shards"] == remote.to_dict()["shards"]
    assert remote.num_samples == 24 and remote.column("png").codec == "png"
    got = _ids_cls(sparkfeed.DataLoader(str(root), manifest=str(tmp_path / "s.json"), batch_size=5,
                                        num_workers=2))
    assert sorted(got) == list(range(24))


def _ids_cls(loader):
    return [i for batch in loader for i in batch["cls"].tolist()]


@pytest.mark.slow
def test_open_data_example_indexes_and_loads_a_plain_partitioned_write(spark, tmp_path, capsys):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
    try:
        import open_data
    finally:
        sys.path.pop(0)
    assert open_data.main(["--output", str(tmp_path), "--rows", "2000"]) == 0
    out = capsys.readouterr().out
    assert "DataLoader(filter split == 'val'): 200 samples" in out


def test_jvm_reader_reads_indexed_tars_like_the_python_loader(spark, tmp_path):
    wds = pytest.importorskip("webdataset")
    root = tmp_path / "jvm"
    root.mkdir()
    with wds.TarWriter(str(root / "a.tar")) as w:
        for i in range(8):
            sample = {"__key__": f"k{i}", "cls": i, "json": json.dumps({"i": i}).encode()}
            if i % 2:
                sample["txt"] = f"odd {i}"
            w.write(sample)
    sparkfeed.index(str(root), progress=False)
    rows = spark.read.format("webdataset").load(str(root)).collect()
    jvm = sorted((r["key"], r["cls"], r["json"], r["txt"]) for r in rows)
    batch = next(iter(sparkfeed.DataLoader(str(root), batch_size=8)))
    py = sorted(zip(batch["key"], batch["cls"].tolist(), batch["json"], batch["txt"]))
    assert jvm == py
    assert py[1] == ("k1", 1, '{"i": 1}', "odd 1") and py[0][3] is None


def test_ctrl_c_in_an_index_job_on_spark_cancels_it(spark, tmp_path):
    """`sparkfeed index --spark`'s job (gather.run_spark), its tasks held until Ctrl-C: the
    KeyboardInterrupt reaches the caller and the job is cancelled. pyspark's own SIGINT handler
    cancels over the py4j connection the waiting call holds, which fails ('reentrant call'), so
    the job read on after the interrupt; and the thread's job group is put back afterwards."""
    import time

    import dsutil
    from sparkfeed.index.gather import run_spark

    running = str(tmp_path / "running")

    def held(rows):
        open(running, "w").close()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.05)
        for row in rows:
            yield {"n": row[0]}

    sc = spark.sparkContext
    sc.setJobGroup("the-callers-group", "the caller's own")
    try:
        dsutil.sigint_once_exists(running)
        with pytest.raises(KeyboardInterrupt):
            run_spark(spark, held, [(f"f{i}",) for i in range(4)], "name string", "reading footers")
        assert os.path.exists(running), "the index job never ran"
        tracker = sc.statusTracker()
        deadline = time.monotonic() + 60  # cancelling is asynchronous: wait for it, not a time limit
        while tracker.getActiveJobsIds() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert tracker.getActiveJobsIds() == []
        assert sc.getLocalProperty("spark.jobGroup.id") == "the-callers-group"
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
        sc.setLocalProperty("spark.job.description", None)
