"""sparkfeed.write as a data engineer uses it from Spark: the edges a bug hunt found.

Each test writes a few rows on the fly and compares what was written (the manifest, the files,
what Spark and the loader read back) with what went in, or checks that an argument that could
not work is refused before any Spark job runs and leaves nothing at the path.
"""

import json
import math
import os
import sys

import pytest

import sparkfeed
from sparkfeed.manifest import MANIFEST_NAME

pytestmark = pytest.mark.spark
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def _strict_json(text: str):
    """json.loads refusing NaN and +-Infinity, as jq, JavaScript and Jackson's defaults do."""
    def refuse(token):
        raise ValueError(f"not JSON: {token}")
    return json.loads(text, parse_constant=refuse)


def test_infinite_floats_leave_no_range_and_the_webdataset_reads_back_with_spark(spark, tmp_path):
    """A float column holding an infinity gave a manifest with a bare `Infinity` in its stats,
    which spark.read.format("webdataset") (Jackson) refused: the dataset could not be read."""
    rows = [("a", 1.5, 0.25), ("b", math.inf, -1.0), ("c", 2.0, -math.inf), ("d", None, 3.0)]
    df = spark.createDataFrame(rows, "key string, x double, y float")
    path = tmp_path / "wds"
    sparkfeed.write(df, str(path), format="webdataset")
    doc = _strict_json((path / MANIFEST_NAME).read_text())
    (shard,) = doc["shards"]
    assert shard["num_samples"] == 4
    for column in ("x", "y"):  # an infinite bound: no range at all, as the Parquet manifest has it
        assert (shard["stats"][column]["min"], shard["stats"][column]["max"]) == (None, None)
    assert shard["stats"]["x"]["null_count"] == 1
    back = {r["key"]: (r["x"], r["y"]) for r in spark.read.format("webdataset").load(str(path)).collect()}
    assert back == {k: (x, y) for k, x, y in rows}
    # No range means no pruning: a filter that only the infinity passes still finds its row.
    got = [k for b in sparkfeed.DataLoader(str(path), batch_size=4, columns=["key"],
                                           filter=[("x", ">", 1e308)]) for k in b["key"]]
    assert got == ["b"]


@pytest.mark.parametrize("format, argument", [("parquet", "samples_per_row_group"),
                                              ("webdataset", "samples_per_shard")])
def test_counts_beyond_a_java_int_are_refused_before_spark_runs(spark, tmp_path, format, argument):
    """samples_per_row_group=2**31 failed every Parquet task with NumberFormatException (after
    the count job); samples_per_shard=2**31 failed the webdataset write in the JVM likewise."""
    df = spark.createDataFrame([("a", 1)], "key string, v int")
    path = tmp_path / "ds"
    with pytest.raises(ValueError, match=rf"`{argument}` should be at most 2,147,483,647 .*"
                                         rf"got {argument}=2147483648"):
        sparkfeed.write(df, str(path), format=format, **{argument: 2**31})
    assert not path.exists()
    m = sparkfeed.write(df, str(path), format=format, **{argument: 2**31 - 1})
    assert m.num_samples == 1


@pytest.mark.parametrize("format", ["parquet", "webdataset"])
def test_a_path_ending_in_json_is_refused_before_spark_runs(spark, tmp_path, format):
    """A dataset directory named `*.json`: the Parquet write put its manifest inside as a stray
    `<name>.json.tmp-…` and returned; the webdataset write committed and then raised reading its
    manifest back. Readers take such a path for the manifest file, so it is refused up front."""
    df = spark.createDataFrame([("a", 1)], "key string, v int")
    path = tmp_path / "events.json"
    with pytest.raises(ValueError, match=r"`path` should not end in '\.json'.*events\.json"):
        sparkfeed.write(df, str(path) + "/", format=format)
    assert not path.exists()


def test_a_webdataset_of_only_the_key_column_is_refused_before_spark_runs(spark, tmp_path):
    """Every row of a key-only DataFrame has no member, so the write made a dataset of 0
    samples, said only in a Spark log warning."""
    df = spark.createDataFrame([("a",), ("b",)], "key string")
    path = tmp_path / "wds"
    with pytest.raises(ValueError, match=r"only column is the sample key 'key'"):
        sparkfeed.write(df, str(path), format="webdataset")
    assert not path.exists()
    named = spark.createDataFrame([("a",)], "id string")  # a key column named by keyColumn
    with pytest.raises(ValueError, match=r"only column is the sample key 'id'"):
        sparkfeed.write(named, str(path), format="webdataset", options={"keyColumn": "id"})
    as_data = sparkfeed.write(named, str(path), format="webdataset")  # 'id' is data: a txt member
    assert as_data.num_samples == 1


@pytest.mark.parametrize("format", ["parquet", "webdataset"])
def test_paths_with_spaces_percent_hash_and_unicode_round_trip(spark, tmp_path, format):
    """Spark gets `file:///…` and fsspec the plain path: both must name the same directory."""
    df = spark.range(7).selectExpr("id", "cast(id as string) as s")
    path = tmp_path / "a b%20c#d ü"
    m = sparkfeed.write(df, str(path), format=format, samples_per_shard=3)
    on_disk = sorted(f for f in os.listdir(path) if f.endswith((".parquet", ".tar")))
    assert on_disk == sorted(s.path for s in m.shards)
    ids = sorted(i for b in sparkfeed.DataLoader(str(path), batch_size=4, columns=["id"])
                 for i in b["id"].tolist())
    assert ids == list(range(7))


@pytest.mark.parametrize("format", ["parquet", "webdataset"])
def test_a_hadoop_file_url_without_authority_names_that_path(spark, tmp_path, monkeypatch, format):
    """`file:/data/ds` (as Spark and Hadoop print a local path) was taken for a relative local
    path: the dataset went to `./file:/data/ds` under the working directory, and the path given
    held nothing."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    path = tmp_path / "ds"
    m = sparkfeed.write(spark.range(5).selectExpr("cast(id as string) key", "id"),
                        f"file:{path}", format=format)
    assert m.num_samples == 5
    assert os.listdir(cwd) == []
    assert sparkfeed.read_manifest(str(path)).num_samples == 5


def test_a_streaming_dataframe_is_refused_before_spark_runs(spark, tmp_path):
    """A streaming DataFrame failed in the count with Spark's 'Queries with streaming sources
    must be executed with writeStream.start()', naming no dataset and no way out."""
    df = spark.readStream.format("rate").option("rowsPerSecond", 1).load()
    path = tmp_path / "ds"
    with pytest.raises(ValueError, match=r"is a streaming DataFrame.*foreachBatch"):
        sparkfeed.write(df, str(path))
    assert not path.exists()
