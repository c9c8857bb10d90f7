"""format("webdataset"): the JVM data source, checked from every reader that matters.

One dataset (200 samples: JPEG bytes, an int label, a caption with some nulls, a float feature
vector, a double) is written once per module and read back by Spark itself, the `webdataset`
library, DALI's `fn.readers.webdataset` (with the .idx files the writer made) and `tarfile`.
Retries and failed jobs need a master that retries tasks, so they run in a subprocess.
"""

import io
import json
import math
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

import dsutil

pytestmark = pytest.mark.spark
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

N = 200
PER_SHARD = 32
MANIFEST = "_sparkfeed.json"


def _jpeg(i):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8 + i % 5, 8), ((i * 37) % 256, (i * 11) % 256, i % 256)).save(buf, "JPEG")
    return buf.getvalue()


def _rows():
    return [
        (f"s{i:04d}", _jpeg(i), i % 10, None if i % 17 == 0 else f"a photo of thing {i}",
         [i / 4, -1.5, float(i % 3)], i * 0.125 - 3.0)
        for i in range(N)
    ]


SCHEMA = "key string, image binary, label int, caption string, feat array<float>, score double"


@pytest.fixture(scope="module")
def source(spark):
    return spark.createDataFrame(_rows(), SCHEMA).repartition(3)


@pytest.fixture(scope="module")
def dataset(spark, source, tmp_path_factory):
    path = tmp_path_factory.mktemp("wds") / "ds"
    (source.write.format("webdataset").option("samplesPerShard", PER_SHARD)
     .option("codecs", json.dumps({"image": "jpeg"})).save(str(path)))
    return path


@pytest.fixture(scope="module")
def manifest(dataset):
    return json.loads((dataset / MANIFEST).read_text())


def _shards(dataset, manifest):
    return [str(dataset / s["path"]) for s in manifest["shards"]]


def _by_key():
    return {r[0]: r for r in _rows()}


# --- Spark round trip ---------------------------------------------------------------------------

def test_spark_round_trip_gives_the_same_rows(spark, dataset, source):
    back = spark.read.format("webdataset").load(str(dataset))
    assert back.schema.simpleString() == source.schema.simpleString()
    assert back.rdd.getNumPartitions() == len(json.loads((dataset / MANIFEST).read_text())["shards"])
    assert sorted(back.collect()) == sorted(source.collect())


def test_read_without_manifest_gives_key_and_one_binary_column_per_extension(spark, dataset, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in dataset.glob("*.tar"):
        (bare / f.name).write_bytes(f.read_bytes())
    back = spark.read.format("webdataset").load(str(bare))
    assert back.columns == ["key", "cls", "jpg", "json", "txt"]
    rows = {r.key: r for r in back.collect()}
    assert len(rows) == N
    assert rows["s0003"].jpg == _jpeg(3) and rows["s0003"].cls == b"3"
    assert rows["s0017"].txt is None


# --- the manifest ----------------------------------------------------------------------------

def test_manifest_counts_bytes_members_and_schema(dataset, manifest):
    assert manifest["sparkfeed_manifest"] == 1 and manifest["format"] == "webdataset"
    assert manifest["created_by"]["spark"].startswith("4.")
    assert manifest["num_samples"] == N
    assert sum(s["num_samples"] for s in manifest["shards"]) == N
    assert all(0 < s["num_samples"] <= PER_SHARD for s in manifest["shards"])
    for s in manifest["shards"]:
        assert s["num_bytes"] == (dataset / s["path"]).stat().st_size
        assert s["index"] == s["path"] + ".idx" and (dataset / s["index"]).is_file()
        assert s["members"] == ["cls", "jpg", "json", "txt"]
    assert manifest["num_bytes"] == sum(s["num_bytes"] for s in manifest["shards"])
    paths = [s["path"] for s in manifest["shards"]]
    assert paths == sorted(paths)
    assert sorted(p.name for p in dataset.iterdir() if p.suffix == ".tar") == paths
    assert manifest["schema"] == [
        {"name": "key", "type": "string", "member": "__key__"},
        {"name": "image", "type": "binary", "codec": "jpeg", "member": "jpg"},
        {"name": "label", "type": "int32", "member": "cls"},
        {"name": "caption", "type": "string", "member": "txt"},
        {"name": "feat", "type": "list<item: float>", "member": "json"},
        {"name": "score", "type": "double", "member": "json"},
    ]


def test_manifest_stats_match_pandas(dataset, manifest):
    import pandas as pd

    frame = pd.DataFrame(_rows(), columns=["key", "image", "label", "caption", "feat", "score"])
    for s in manifest["shards"]:
        with tarfile.open(dataset / s["path"]) as tar:
            keys = {m.name.split(".", 1)[0] for m in tar.getmembers()}
        part = frame[frame.key.isin(keys)]
        assert len(part) == s["num_samples"]
        assert set(s["stats"]) == {"key", "label", "caption", "score"}
        for col in ["key", "label", "caption", "score"]:
            st = s["stats"][col]
            assert st["null_count"] == int(part[col].isna().sum()), (s["path"], col)
            assert st["min"] == part[col].dropna().min(), (s["path"], col)
            assert st["max"] == part[col].dropna().max(), (s["path"], col)


# --- standard readers --------------------------------------------------------------------------

def test_tarfile_sees_regular_members_with_dot_free_keys(dataset, manifest):
    for s in manifest["shards"]:
        with tarfile.open(dataset / s["path"]) as tar:
            members = tar.getmembers()
        keys = []
        for m in members:
            assert m.isreg(), m.name
            key, ext = m.name.split(".", 1)
            assert "/" not in m.name and key and "." not in key
            assert ext in s["members"]
            if not keys or keys[-1] != key:
                keys.append(key)
        assert len(keys) == len(set(keys)) == s["num_samples"]   # grouped by key


def test_index_files_match_wds2idx_format(dataset, manifest):
    for s in manifest["shards"]:
        lines = (dataset / s["index"]).read_text().splitlines()
        assert lines[0] == f"v1.2 {s['num_samples']}"
        with tarfile.open(dataset / s["path"]) as tar:
            expected = {}
            for m in tar.getmembers():
                expected.setdefault(m.name.split(".", 1)[0], []).append(
                    [m.name.split(".", 1)[1], str(m.offset_data), str(m.size), m.name])
        got = [line.split(" ") for line in lines[1:]]
        assert [[g[i:i + 4] for i in range(0, len(g), 4)] for g in got] == list(expected.values())


def test_webdataset_library_iterates_exactly_the_samples(dataset, manifest):
    import webdataset as wds

    rows = _by_key()
    seen = []
    for sample in wds.WebDataset(_shards(dataset, manifest), shardshuffle=False, empty_check=False):
        key = sample["__key__"]
        seen.append(key)
        assert sample["jpg"] == rows[key][1]
        assert int(sample["cls"]) == rows[key][2]
        assert sample.get("txt") == (None if rows[key][3] is None else rows[key][3].encode())
        assert json.loads(sample["json"]) == {"feat": rows[key][4], "score": rows[key][5]}
    assert sorted(seen) == sorted(rows) and len(seen) == N


def test_dali_reads_all_samples_with_the_written_index_files(dataset, manifest):
    import numpy as np
    from nvidia.dali import fn, pipeline_def

    batch = 64

    @pipeline_def(batch_size=batch, num_threads=1, device_id=None)
    def pipe():
        jpg, cls = fn.readers.webdataset(
            paths=_shards(dataset, manifest),
            index_paths=[str(dataset / s["index"]) for s in manifest["shards"]],
            ext=["jpg", "cls"], missing_component_behavior="error", name="reader")
        return jpg, cls

    p = pipe()
    p.build()
    assert p.reader_meta("reader")["epoch_size"] == N
    got = []
    for _ in range(math.ceil(N / batch)):
        jpg, cls = p.run()
        got += [(bytes(np.array(jpg[i])), int(bytes(np.array(cls[i])))) for i in range(batch)]
    got = got[:N]
    assert sorted(got) == sorted((r[1], r[2]) for r in _rows())


# --- modes, validation, keys ----------------------------------------------------------------------

def _error_text(excinfo):
    return str(excinfo.value)


def test_mode_error_on_an_existing_dataset_raises_naming_the_path(source, dataset):
    with pytest.raises(Exception, match="already exists") as e:
        source.write.format("webdataset").save(str(dataset))
    assert str(dataset) in _error_text(e)
    with pytest.raises(Exception, match="already exists"):
        source.write.format("webdataset").mode("append").save(str(dataset))


def test_overwrite_replaces_and_ignore_keeps(spark, tmp_path):
    path = str(tmp_path / "ow")
    df = spark.createDataFrame(_rows()[:10], SCHEMA).coalesce(1)
    df.write.format("webdataset").save(path)
    df.limit(4).write.format("webdataset").mode("ignore").save(path)
    assert json.loads(Path(path, MANIFEST).read_text())["num_samples"] == 10
    df.limit(4).write.format("webdataset").mode("overwrite").save(path)
    m = json.loads(Path(path, MANIFEST).read_text())
    assert m["num_samples"] == 4
    assert sorted(p.name for p in Path(path).iterdir()) == [
        MANIFEST, "part-00000-0000.tar", "part-00000-0000.tar.idx"]


def test_max_shard_bytes_closes_shards_early(spark, tmp_path):
    path = tmp_path / "small"
    df = spark.createDataFrame(_rows()[:10], SCHEMA).coalesce(1)
    df.write.format("webdataset").option("maxShardBytes", 3000).save(str(path))
    m = json.loads((path / MANIFEST).read_text())
    assert [s["num_samples"] for s in m["shards"]] == [1] * 10   # every sample is > 3000 bytes
    assert [s["path"] for s in m["shards"]] == [f"part-00000-{i:04d}.tar" for i in range(10)]


def test_unsupported_column_type_raises_before_tasks_run(spark, tmp_path):
    from pyspark.sql import functions as F

    path = tmp_path / "bad"
    df = spark.range(3).withColumn("meta", F.create_map(F.lit("a"), F.col("id")))
    with pytest.raises(Exception, match='column "meta" has type map<string,bigint>'):
        df.write.format("webdataset").save(str(path))
    assert not path.exists()


def test_invalid_keys_raise_or_are_sanitised(spark, tmp_path):
    df = spark.createDataFrame([("a.b", 1), ("c/d", 2), ("ok", 3)], "key string, label int").coalesce(1)
    with pytest.raises(Exception, match=r'invalid sample key "a\.b" in column "key"'):
        df.write.format("webdataset").save(str(tmp_path / "strict"))
    assert not (tmp_path / "strict" / MANIFEST).exists()
    assert not list((tmp_path / "strict").rglob("*.tar"))
    df.write.format("webdataset").option("invalidKeys", "sanitize").save(str(tmp_path / "clean"))
    with tarfile.open(tmp_path / "clean" / "part-00000-0000.tar") as tar:
        assert tar.getnames() == ["a_b.cls", "c_d.cls", "ok.cls"]


def test_generated_keys_and_null_members(spark, tmp_path):
    df = spark.createDataFrame([(b"x", 1), (None, 2), (b"z", None)], "data binary, n int").coalesce(1)
    path = tmp_path / "gen"
    df.write.format("webdataset").save(str(path))
    with tarfile.open(path / "part-00000-0000.tar") as tar:
        assert tar.getnames() == ["p00000_000000000.bin", "p00000_000000000.cls",
                                  "p00000_000000001.cls", "p00000_000000002.bin"]
    back = spark.read.format("webdataset").load(str(path))
    assert sorted(back.collect(), key=str) == sorted(df.collect(), key=str)



def test_a_row_with_every_member_null_adds_nothing_to_the_stats(spark, tmp_path):
    """Invariant: a shard's null_count never exceeds its samples, so a filter on a column keeps
    every sample that has a value there. A row whose members are all null writes no sample; it
    used to count as a null, making `label` look all-null and the filter prune the good sample."""
    import sparkfeed

    df = spark.createDataFrame([(1, b"x"), (None, None)], "label int, image binary").coalesce(1)
    path = tmp_path / "ds"
    df.write.format("webdataset").save(str(path))
    shard = sparkfeed.read_manifest(str(path)).shards[0]
    assert shard.num_samples == 1
    assert shard.stats["label"].null_count == 0
    loader = sparkfeed.DataLoader(str(path), batch_size=4, columns=["label"], filter=[("label", ">=", 0)])
    assert [b["label"].tolist() for b in loader] == [[1]]


def test_sanitised_keys_have_the_stats_of_the_keys_written(spark, tmp_path):
    """Invariant: the key column's stats bound the keys that readers deliver (the sanitised ones),
    so filtering on a delivered key finds it; the raw keys' range `x.y..x.z` excluded `x_y`."""
    import sparkfeed

    df = spark.createDataFrame([("x.y", 1), ("x.z", 2)], "key string, label int").coalesce(1)
    path = tmp_path / "ds"
    df.write.format("webdataset").option("invalidKeys", "sanitize").save(str(path))
    stats = sparkfeed.read_manifest(str(path)).shards[0].stats["key"]
    assert (stats.min, stats.max) == ("x_y", "x_z")
    loader = sparkfeed.DataLoader(str(path), batch_size=4, filter=[("key", "==", "x_y")])
    assert [b["key"] for b in loader] == [["x_y"]]


def test_a_key_twice_in_one_shard_fails_the_task_naming_it(spark, tmp_path):
    """Invariant: a committed tar never holds one key in two places (readers group members by
    key; sparkfeed's reader refuses such a tar). Keys repeated apart used to be written."""
    df = spark.createDataFrame([("a", 1), ("b", 2), ("a", 3)], "key string, label int").coalesce(1)
    path = tmp_path / "dup"
    with pytest.raises(Exception, match=r'duplicate sample key "a" in column "key" \(partition 0, '
                                        r'rows 0 and 2, shard part-00000-0000.tar\)'):
        df.write.format("webdataset").save(str(path))
    assert not (path / MANIFEST).exists()
    # the same key in two shards fails the job commit (tests/spark/test_webdataset_duplicate_keys.py)
    with pytest.raises(Exception, match=r'wrote sample keys in two shards: "a" \(in part-00000-0000.tar '
                                        r'and part-00000-0001.tar\)'):
        df.write.format("webdataset").option("samplesPerShard", 2).save(str(tmp_path / "two"))
    assert not (tmp_path / "two" / MANIFEST).exists()


# --- sparkfeed.write(format="webdataset", options=...) -----------------------------------------

def test_write_passes_options_to_the_webdataset_source(spark, tmp_path):
    """Invariant: what `options=` sets is what the data source does (names in any case, values
    made strings as Spark makes them): sanitised keys, shards cut by bytes, keys from keyColumn,
    .cls from clsColumn. `write` took no such argument: a dotted key could not be written."""
    import sparkfeed

    df = spark.createDataFrame([("a.b", 1, 7, b"x" * 600), ("c d", 2, 8, b"y" * 600)],
                               "id string, n int, cls int, blob binary").coalesce(1)
    m = sparkfeed.write(df, str(tmp_path / "ds"), format="webdataset",
                        options={"invalidKeys": "sanitize", "MAXSHARDBYTES": 1000,
                                 "keyColumn": "id", "clsColumn": "cls"})
    assert [s.num_samples for s in m.shards] == [1, 1]   # each sample > 1000 bytes of tar
    names = []
    for s in m.shards:
        with tarfile.open(tmp_path / "ds" / s.path) as tar:
            names += tar.getnames()
    assert sorted(names) == ["a_b.bin", "a_b.cls", "a_b.json", "c_d.bin", "c_d.cls", "c_d.json"]


@pytest.mark.parametrize("format, options, message", [
    ("webdataset", {"maxShardByte": 10}, "`options` has 'maxShardByte', which format='webdataset' "
     "does not know; it takes 'maxShardBytes', 'keyColumn', 'clsColumn', 'invalidKeys'"),
    ("webdataset", {"samplesPerShard": 5}, "sparkfeed.write's own argument samples_per_shard="),
    ("webdataset", {"codecs": "{}"}, "sparkfeed.write's own argument codecs="),
    ("webdataset", {"invalidKeys": "fix"}, "should be 'error' or 'sanitize', but got invalidKeys='fix'"),
    ("webdataset", {"invalidKeys": True}, "but got invalidKeys='true'"),
    ("webdataset", {"maxShardBytes": 0}, "should be a positive integer, but got maxShardBytes='0'"),
    ("webdataset", {"maxShardBytes": 1.5}, "but got maxShardBytes='1.5'"),
    # Refused by the JVM after the count job before: past a Java long, and a space String.trim()
    # keeps (Python's str.strip() took it away).
    ("webdataset", {"maxShardBytes": 2**63}, "but got maxShardBytes='9223372036854775808' (the "
                                             "source reads a Java long: at most 9223372036854775807"),
    ("webdataset", {"maxShardBytes": "\u2003" + "5000"}, r"but got maxShardBytes='\u20035000'"),
    ("webdataset", {"keyColumn": "label"}, "names column 'label' of type int; sample keys must be strings"),
    ("webdataset", {"keyColumn": "nope"}, "names column 'nope', which is not in the DataFrame"),
    ("webdataset", {"clsColumn": "key"}, "names column 'key' of type string"),
    ("webdataset", {"invalidKeys": None}, "is None; leave the option out"),
    ("webdataset", {"invalidKeys": "error", "INVALIDKEYS": "error"}, "sets 'invalidKeys' twice"),
    ("webdataset", ["invalidKeys"], "`options` should map data source option names to values"),
    ("parquet", {"invalidKeys": "sanitize"}, "which format='parquet' does not know; it takes none"),
])
def test_write_refuses_bad_options_before_spark_runs(spark, tmp_path, format, options, message):
    """Invariant: an option the format does not know, or a value its source would refuse, is a
    ValueError naming it before any Spark job runs, never ignored."""
    import re

    import sparkfeed

    df = spark.createDataFrame([("k", 1)], "key string, label int")

    def attempt():
        with pytest.raises(ValueError, match=re.escape(message)):
            sparkfeed.write(df, str(tmp_path / "never"), format=format, options=options)

    assert dsutil.spark_jobs_started(spark, attempt) == []
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("rows, message", [
    ([("a.b", 1)], r'invalid sample key "a\.b" in column "key": .* found \'\.\' at index 1\. '
                   r"Pass options=\{'invalidKeys': 'sanitize'\} to sparkfeed.write to replace"),
    ([("a\nb", 1)], r'invalid sample key "a\\u000Ab" in column "key"'),
    ([(None, 1)], r'sample key in column "key" is null'),
])
def test_bad_keys_through_write_are_a_sample_key_error_naming_what_to_pass(spark, tmp_path, rows, message):
    """Invariant: a write that fails on a sample key raises sparkfeed's SampleKeyError whose first
    line is the writer's sentence, advising what `sparkfeed.write` takes, naming the dataset, with
    no Java stack trace in it. It was a Py4JJavaError advising `option invalidKeys=sanitize`."""
    import sparkfeed
    from sparkfeed.write import SampleKeyError

    df = spark.createDataFrame(rows, "key string, label int").coalesce(1)
    path = tmp_path / "ds"
    with pytest.raises(SampleKeyError, match=message) as info:
        sparkfeed.write(df, str(path), format="webdataset")
    text = str(info.value)
    assert text.startswith(f"dataset {str(path)!r}: ") and "\n" not in text
    assert "Exception" not in text and "\tat " not in text and "option invalidKeys" not in text
    assert isinstance(info.value, (sparkfeed.SparkfeedError, ValueError))
    assert not path.exists()  # refused by the count job, before the write (test_write_bad_keys.py)
    assert not (path / MANIFEST).exists()


def test_overwriting_the_dataset_a_dataframe_reads_is_refused_and_keeps_it(spark, tmp_path):
    """Invariant: an overwrite never destroys the data it is computed from. The old dataset used
    to be deleted before the tasks read it: sparkfeed.write then committed an empty dataset
    (its count read no manifest) and the data source failed half-way, the old one gone."""
    import sparkfeed
    from sparkfeed.write import OverwriteInputError

    path, sibling = tmp_path / "ds", tmp_path / "ds2"
    df = spark.createDataFrame([(f"k{i}", i) for i in range(10)], "key string, label int")
    for p in (path, sibling):
        df.write.format("webdataset").save(str(p))
    even = spark.read.format("webdataset").load(str(path)).where("label % 2 = 0")
    refused = r"cannot overwrite file:.*/ds: the DataFrame being written reads from it"
    with pytest.raises(Exception, match=refused):
        even.write.format("webdataset").mode("overwrite").save(str(path))
    # sparkfeed.write refuses it before any Spark job, as Parquet too: that overwrite used to
    # find no dataset to read and commit 0 samples, the 10 gone
    for format in ("webdataset", "parquet"):
        with pytest.raises(OverwriteInputError, match=r"cannot overwrite '.*/ds': the DataFrame "
                                                      r"being written reads from it \(file:/.*/ds\)"):
            sparkfeed.write(even, str(path), format=format, mode="overwrite")
    assert sorted(x for b in sparkfeed.DataLoader(str(path), batch_size=4) for x in b["label"].tolist()) \
        == list(range(10))
    # a path that merely starts with the same characters is another dataset: overwritten
    even.write.format("webdataset").mode("overwrite").save(str(sibling))
    assert sparkfeed.read_manifest(str(sibling)).num_samples == 5


def test_long_string_stats_are_cut_as_the_parquet_writer_cuts_them(spark, tmp_path):
    """Invariant: both writers record the same, small, valid bounds for a long string column (a
    caption's min/max used to be copied whole into the webdataset manifest, once per shard)."""
    import sparkfeed

    df = spark.createDataFrame([("a" * 70 + str(i), "é" * 63 + "\U0010ffff" * 3 + str(i)) for i in range(4)],
                               "caption string, note string").coalesce(1)
    pq_stats = sparkfeed.write(df, str(tmp_path / "pq"), samples_per_shard=10).shards[0].stats
    wds_stats = sparkfeed.write(df, str(tmp_path / "wds"), format="webdataset").shards[0].stats
    for column in ("caption", "note"):
        assert (wds_stats[column].min, wds_stats[column].max) == (pq_stats[column].min, pq_stats[column].max)
    assert (wds_stats["caption"].min, wds_stats["caption"].max) == ("a" * 64, "a" * 63 + "b")
    loader = sparkfeed.DataLoader(str(tmp_path / "wds"), batch_size=4, filter=[("caption", "==", "a" * 70 + "2")])
    assert [b["caption"] for b in loader] == [["a" * 70 + "2"]]


def _rename_members(tar_path, prefix):
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            info.name = prefix + info.name
            tar.addfile(info, io.BytesIO(data))


def test_member_names_follow_the_shared_path_rule(spark, tmp_path):
    """The JVM reader takes `a..b` and `./` inside names and refuses `..` parts, as Python does."""
    df = spark.createDataFrame([("k1", 1), ("k2", 2)], "key string, label int").coalesce(1)
    df.write.format("webdataset").save(str(tmp_path / "ok"))
    _rename_members(tmp_path / "ok" / "part-00000-0000.tar", "./v1..2/")
    back = spark.read.format("webdataset").load(str(tmp_path / "ok")).collect()
    assert sorted((r.key, r.label) for r in back) == [("./v1..2/k1", 1), ("./v1..2/k2", 2)]
    df.write.format("webdataset").save(str(tmp_path / "bad"))
    _rename_members(tmp_path / "bad" / "part-00000-0000.tar", "../")
    with pytest.raises(Exception, match=r"shard 'part-00000-0000.tar', tar offset 0: member name '../k1.cls' "
                                        r"could escape the dataset: it has a '\.\.' part"):
        spark.read.format("webdataset").load(str(tmp_path / "bad")).collect()

# --- commit protocol under failures ---------------------------------------------------------------
# A retried task needs a master that retries (local[2,4]); the shared session (local[2]) does not,
# so the retry case runs in a subprocess, started when the module starts and read at its end.

_RETRY_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import sparkfeed
    from pyspark import TaskContext
    from pyspark.sql import functions as F

    base = Path(sys.argv[1])
    spark = sparkfeed.spark_session(master="local[2,4]")

    def flaky(i):
        ctx = TaskContext.get()
        if ctx.partitionId() == 1 and i == 500 and ctx.attemptNumber() == 0:
            (base / "failed-0").touch()
            raise RuntimeError("injected failure")
        return i

    df = spark.range(0, 600, numPartitions=2)
    df = df.select(F.udf(flaky, "long")("id").alias("id"), F.col("id").cast("int").alias("label"))
    df.write.format("webdataset").option("samplesPerShard", 50).save(str(base / "retried"))
    print("RESULT ok")
""")


@pytest.fixture(scope="module", autouse=True)
def _retry_job(request, tmp_path_factory):
    if not any(item.name == _RETRY_TEST for item in request.session.items):
        yield None, None  # deselected (e.g. -m "not slow"): no job to start
        return
    base = tmp_path_factory.mktemp("retry")
    env = dict(os.environ, SPARKFEED_SPARK_LOG_LEVEL="ERROR")
    proc = subprocess.Popen([sys.executable, "-c", _RETRY_SCRIPT, str(base)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield base, proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


_RETRY_TEST = "test_task_failure_mid_shard_is_retried_without_partial_shards"


@pytest.mark.slow  # a Spark job of its own (a master that retries tasks)
def test_task_failure_mid_shard_is_retried_without_partial_shards(_retry_job):
    base, proc = _retry_job
    out, err = proc.communicate(timeout=300)
    assert "RESULT ok" in out, out[-2000:] + err[-4000:]
    assert (base / "failed-0").exists()           # the first attempt of partition 1 did fail
    path = base / "retried"
    m = json.loads((path / MANIFEST).read_text())
    assert m["num_samples"] == 600
    assert [s["num_samples"] for s in m["shards"]] == [50] * 12
    on_disk = sorted(p.name for p in path.iterdir())
    assert on_disk == sorted([MANIFEST] + [s["path"] for s in m["shards"]]
                             + [s["index"] for s in m["shards"]])
    labels = []
    for s in m["shards"]:
        with tarfile.open(path / s["path"]) as tar:
            labels += [int(tar.extractfile(x).read()) for x in tar.getmembers() if x.name.endswith(".cls")]
    assert sorted(labels) == list(range(600))


def _wait_for_tasks_of(spark, group: str, limit_s: float = 60.0) -> None:
    """Until Spark counts no running task in the jobs of `group`: `save` raises as soon as one
    task fails the job, while the job's other tasks are still being killed; each then aborts
    (removing what it wrote) before Spark counts it ended."""
    import time

    tracker, deadline = spark.sparkContext.statusTracker(), time.monotonic() + limit_s
    while True:
        jobs = [tracker.getJobInfo(j) for j in tracker.getJobIdsForGroup(group)]
        stages = [tracker.getStageInfo(s) for job in jobs if job is not None for s in job.stageIds]
        if jobs and not sum(stage.numActiveTasks for stage in stages if stage is not None):
            return
        assert time.monotonic() < deadline, f"tasks of {group!r} still running after {limit_s} s"
        time.sleep(0.05)


def _leftovers(path) -> list:
    """What a failed write left: a manifest, shards, indexes, temporary files or directories."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")
                  if p.suffix in (".tar", ".idx", ".json", ".tmp") or p.name == "_temporary")


def _eventually_clean(path, limit_s: float = 30.0) -> list:
    """`_leftovers(path)` once it is empty, or what is still there after `limit_s` (Spark's
    task accounting arrives through its listener bus, so a killed task may still be finishing
    its abort when it counts as ended)."""
    import time

    deadline = time.monotonic() + limit_s
    while _leftovers(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _leftovers(path)


def test_failed_job_leaves_no_manifest_and_no_shard(spark, tmp_path):
    from pyspark.sql import functions as F

    def always_fails(i):
        if i == 500:
            raise RuntimeError("injected failure")
        return i

    path = tmp_path / "failed"
    df = spark.range(0, 600, numPartitions=2)
    df = df.select(F.udf(always_fails, "long")("id").alias("id"), F.col("id").cast("int").alias("label"))
    group = f"failing-write-{tmp_path.name}"
    spark.sparkContext.setJobGroup(group, "a webdataset write that one task fails")
    try:
        # The other task's shard create races with the failed task's clean-up, which removes
        # `_temporary` when it looks empty; `DatasetDir.createInTask` makes the directories again,
        # so the failure Spark names is the injected one (the race surfaced once in CI under load)
        with pytest.raises(Exception, match="injected failure"):
            df.write.format("webdataset").option("samplesPerShard", 50).save(str(path))
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    _wait_for_tasks_of(spark, group)
    assert _eventually_clean(path) == []


def test_ragged_arrays_written_as_webdataset_load_as_lists_of_tensors(spark, tmp_path):
    """An array column of any lengths (token ids) goes into each sample's .json member and comes
    back, with `ragged=`, as one 1-D tensor per sample, shuffled across shards."""
    import sparkfeed

    rows = [(f"k{i:03d}", i, list(range(i % 9))) for i in range(60)]
    df = spark.createDataFrame(rows, "key string, label int, tokens array<int>").repartition(3)
    path = tmp_path / "ragged"
    df.write.format("webdataset").option("samplesPerShard", 25).save(str(path))
    loader = sparkfeed.DataLoader(str(path), batch_size=8, ragged="tokens", shuffle=True, num_workers=2)
    got = {}
    for batch in loader:
        got.update((k, t.tolist()) for k, t in zip(batch["label"].tolist(), batch["tokens"]))
    assert got == {i: list(range(i % 9)) for i in range(60)}


def test_dates_and_timestamps_written_as_webdataset_load_exactly_and_filter(spark, tmp_path):
    """The JVM writer keeps dates and timestamps in `.json` as ISO 8601 text; the loader read
    them as a bad value in every sample (a string where a number was expected)."""
    import datetime as dt

    import sparkfeed

    utc, epoch = dt.timezone.utc, dt.datetime(1970, 1, 1)
    rows = [(i, dt.datetime(2024, 1, 1, 0, 0, 0, i, tzinfo=utc), dt.datetime(1999, 12, 31, 23, 59, 59, i),
             dt.date(2024, 2, 28) + dt.timedelta(days=i)) for i in range(30)]
    df = spark.createDataFrame(rows, "id long, ts timestamp, local timestamp_ntz, day date").repartition(2)
    path = tmp_path / "times"
    df.write.format("webdataset").save(str(path))
    got = {}
    for batch in sparkfeed.DataLoader(str(path), batch_size=8, shuffle=True, num_workers=2):
        got.update((i, (t, n, d)) for i, t, n, d in zip(*(batch[k].tolist() for k in ("id", "ts", "local", "day"))))
    micros = lambda t: (t.replace(tzinfo=None) - epoch) // dt.timedelta(microseconds=1)  # noqa: E731
    assert got == {i: (micros(ts), micros(local), (day - epoch.date()).days) for i, ts, local, day in rows}
    late = sparkfeed.DataLoader(str(path), batch_size=30, columns=["id"],
                                filter=[("day", ">=", dt.date(2024, 3, 20))])
    assert sorted(i for b in late for i in b["id"].tolist()) == list(range(21, 30))


def test_decimals_written_as_webdataset_are_left_out_by_default_and_filter_exactly(spark, tmp_path):
    """The JVM writer keeps decimals in `.json` (`"p": 12.34`): the default columns delivered
    them and failed on every sample; now they are left out, as for indexed data, and a filter
    reads them as exact decimals, not through a double."""
    from decimal import Decimal

    import sparkfeed

    rows = [(i, Decimal("12.34") + i, i * 0.5) for i in range(6)]
    path = tmp_path / "prices"
    spark.createDataFrame(rows, "id long, p decimal(10,2), f double").write.format("webdataset").save(str(path))
    batches = list(sparkfeed.DataLoader(str(path), batch_size=6))
    assert set(batches[0]) == {"id", "f"} and sorted(batches[0]["id"].tolist()) == list(range(6))
    exact = sparkfeed.DataLoader(str(path), batch_size=6, filter=[("p", "==", Decimal("15.34"))], num_workers=2)
    assert [i for b in exact for i in b["id"].tolist()] == [3]
    with pytest.raises(ValueError, match=r"'p'.*a decimal column"):
        sparkfeed.DataLoader(str(path), columns=["id", "p"])


def test_npy_bytes_written_as_webdataset_members_decode_as_one_tensor(spark, tmp_path):
    """A binary column of .npy bytes with the codec `npy` becomes `.npy` members (what
    webdataset's TarWriter writes for arrays) and comes back through NpyDecode as one tensor per
    batch, every sample once."""
    import numpy as np
    import torch

    import sparkfeed

    def npy(a) -> bytearray:
        buf = io.BytesIO()
        np.save(buf, a)
        return bytearray(buf.getvalue())

    rows = [(f"k{i:03d}", i, npy(np.arange(4, dtype=np.float32) + i)) for i in range(50)]
    df = spark.createDataFrame(rows, "key string, label int, emb binary").repartition(2)
    path = tmp_path / "npy"
    df.write.format("webdataset").option("codecs", json.dumps({"emb": "npy"})).save(str(path))
    tars = [m for t in sorted(path.glob("*.tar")) for m in tarfile.open(t).getnames()]
    assert sum(name.endswith(".npy") for name in tars) == 50
    loader = sparkfeed.DataLoader(str(path), batch_size=16, shuffle=True, num_workers=2,
                                  decode={"emb": sparkfeed.NpyDecode()})
    labels = []
    for batch in loader:
        assert torch.equal(batch["emb"], batch["label"][:, None].float() + torch.arange(4.0))
        labels += batch["label"].tolist()
    assert sorted(labels) == list(range(50))


def test_a_shard_copied_over_another_of_the_same_size_is_refused(spark, tmp_path):
    """Invariant: a dataset reads each written sample once, or fails naming the shard that is not
    the one written. Three shards of 100 samples (sanitised keys over 64 characters; generated
    keys in three partitions) read once, shuffled and filtered on the key; with one shard copied
    over another of the same size the loader delivered the copy's samples twice (300 samples, 200
    keys) without a word."""
    import shutil

    import sparkfeed
    from sparkfeed.errors import ShardReadError

    rows = [(f"row.{i:04d}." + "k" * 70, bytes([i % 251]) * 700, i % 7) for i in range(300)]
    df = spark.createDataFrame(rows, "key string, image binary, label int").coalesce(1)
    named = tmp_path / "named"
    df.write.format("webdataset").option("samplesPerShard", 100).option("invalidKeys", "sanitize").save(str(named))
    generated = tmp_path / "generated"
    (spark.range(0, 300, 1, 3).selectExpr("cast(id % 7 as int) as label", "cast(repeat('x', 700) as binary) as image")
     .write.format("webdataset").option("samplesPerShard", 100).save(str(generated)))
    keys = sorted(f"row_{i:04d}_" + "k" * 70 for i in range(300))

    def read(path, **kw):
        loader = sparkfeed.DataLoader(str(path), batch_size=64, num_workers=0, **kw)
        return [k for b in loader for k in (b["key"] if "key" in b else b["label"].tolist())]

    assert sorted(read(named, columns=["key"])) == keys
    assert sorted(read(named, columns=["key"], shuffle=True)) == keys
    assert sorted(read(named, columns=["key"], filter=[("key", ">=", "row_0150")])) == keys[150:]
    assert len(read(generated, columns=["label"])) == 300
    for path, source, target, key in [(named, "part-00000-0001.tar", "part-00000-0000.tar", "row_0100_k"),
                                      (generated, "part-00001-0000.tar", "part-00000-0000.tar", "p00001_000000000")]:
        manifest = sparkfeed.read_manifest(str(path))
        sizes = {s.path: s.num_bytes for s in manifest.shards}
        assert sizes[source] == sizes[target] and len(sizes) == 3
        shutil.copyfile(path / source, path / target)
        with pytest.raises(ShardReadError, match=rf"shard '{target}', tar offset 0: sample key '{key}.*replaced"):
            read(path, columns=["label"])
        loader = sparkfeed.DataLoader(str(path), batch_size=64, columns=["label"], num_workers=0, on_error="skip")
        assert sum(len(b["label"]) for b in loader) == 200 and loader.stats()["samples_skipped"] == 100


def test_keys_made_one_by_sanitize_say_so(spark, tmp_path):
    """"a.b" and "a b" both become "a_b" under invalidKeys=sanitize; the duplicate-key error
    told the user to make keys unique that were unique, without a word about the sanitizing:
    the writer's (a task failing) and sparkfeed.write's (before any task) both say it."""
    import sparkfeed
    from sparkfeed.write import SampleKeyError

    df = spark.createDataFrame([("a.b", 1), ("a b", 2)], "key string, label int").coalesce(1)
    path = tmp_path / "ds"
    with pytest.raises(Exception, match=r'duplicate sample key "a_b" .*invalidKeys=sanitize '
                                        r"replaced .* can become this one"):
        df.write.format("webdataset").option("invalidKeys", "sanitize").save(str(path))
    assert not (path / MANIFEST).exists()
    with pytest.raises(SampleKeyError, match=r"'a_b' \(2 rows\).*invalidKeys=sanitize replaced "
                                             r".* can become one"):
        sparkfeed.write(df, str(tmp_path / "w"), format="webdataset",
                        options={"invalidKeys": "sanitize"})
    assert not (tmp_path / "w" / MANIFEST).exists()


def test_an_unknown_write_option_is_refused_naming_it(spark, tmp_path):
    """Invariant: every option a webdataset write is given does something. A misspelt one
    (`samplesPerShards`) was ignored: one shard of 30 samples where shards of 5 were asked for."""
    df = spark.range(30).selectExpr("id", "cast(id % 3 as int) as label")
    path = tmp_path / "typo"
    with pytest.raises(Exception, match=r'format\("webdataset"\) has no write option samplespershards; '
                                        r'it takes path, samplesPerShard, maxShardBytes'):
        df.write.format("webdataset").option("samplesPerShards", 5).save(str(path))
    assert not (path / MANIFEST).exists()
    df.write.format("webdataset").option("SAMPLESPERSHARD", 5).save(str(tmp_path / "ok"))
    assert len(json.loads((tmp_path / "ok" / MANIFEST).read_text())["shards"]) == 6
