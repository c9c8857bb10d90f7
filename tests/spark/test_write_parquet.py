"""sparkfeed.write(format="parquet"): shards, row groups, statistics, atomicity, validation.

Two datasets are written once per module (plain and clustered) and checked from every side;
the statistics in the manifest are compared with the files' own footers and with a fresh
computation from the data.
"""

import datetime as dt
import math
import os
import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import dsutil
import sparkfeed
from sparkfeed.manifest import MANIFEST_NAME, read_manifest
from sparkfeed.write import DatasetExistsError, WriteFailedError

pytestmark = pytest.mark.spark
# Python workers must be this interpreter (the one with sparkfeed); PySpark otherwise runs
# `python3` from PATH. Set before the session fixture starts the SparkContext.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

N = 3000
PER_SHARD = 1000
PER_ROW_GROUP = 128
STAT_COLUMNS = ["label", "caption", "score", "flag", "day", "ts", "small"]


def _frame(spark, n=N):
    from pyspark.sql import functions as F

    i = F.col("id")
    return spark.range(n).select(
        i.alias("id"),
        (i % 10).cast("int").alias("label"),
        F.when(i % 97 == 0, None).otherwise(F.concat(F.lit("caption "), i.cast("string"))).alias("caption"),
        F.array((i / 10).cast("float"), F.lit(1.5).cast("float")).alias("feature"),
        F.when(i % 50 == 0, None).otherwise(i * 0.5).alias("score"),
        (i % 3 == 0).alias("flag"),
        F.date_add(F.lit("2024-01-01").cast("date"), (i % 365).cast("int")).alias("day"),
        F.timestamp_seconds(F.lit(1_700_000_000) + i * 61).alias("ts"),
        (i % 100).cast("tinyint").alias("small"),
        i.cast("string").cast("binary").alias("blob"),
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("write_parquet")


@pytest.fixture(scope="module")
def plain(spark, base):
    path = base / "plain"
    m = sparkfeed.write(_frame(spark), str(path), samples_per_shard=PER_SHARD,
                        samples_per_row_group=PER_ROW_GROUP, codecs={"blob": "npy"})
    return path, m


@pytest.fixture(scope="module")
def clustered(spark, base):
    path = base / "clustered"
    m = sparkfeed.write(_frame(spark), str(path), samples_per_shard=600,
                        samples_per_row_group=PER_ROW_GROUP, cluster_by="label")
    return path, m


def _part_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name.startswith("part-") and p.name.endswith(".parquet"))


def _as_json(value):
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return value


# ---------------------------------------------------------------- shape of the dataset

def test_counts_add_up_and_bytes_are_file_sizes(plain):
    path, m = plain
    assert m.num_samples == N == sum(s.num_samples for s in m.shards)
    for s in m.shards:
        assert s.num_bytes == os.path.getsize(path / s.path)
        assert s.num_samples == pq.ParquetFile(path / s.path).metadata.num_rows
        assert sum(rg.num_samples for rg in s.row_groups) == s.num_samples
    assert m.num_bytes == sum(s.num_bytes for s in m.shards)


def test_manifest_lists_exactly_the_files_on_disk_sorted(plain):
    path, m = plain
    paths = [s.path for s in m.shards]
    assert paths == sorted(paths) == _part_files(path)


def test_shards_hold_about_samples_per_shard(plain):
    _, m = plain
    assert all(s.num_samples <= PER_SHARD for s in m.shards)
    assert math.ceil(N / PER_SHARD) <= len(m.shards) <= math.ceil(N / PER_SHARD) + 2
    assert max(s.num_samples for s in m.shards) >= 0.9 * PER_SHARD


def test_row_groups_hold_exactly_samples_per_row_group(plain, clustered):
    for path, m in (plain, clustered):
        for s in m.shards:
            md = pq.ParquetFile(path / s.path).metadata
            sizes = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
            assert sizes == [rg.num_samples for rg in s.row_groups]
            assert all(n == PER_ROW_GROUP for n in sizes[:-1]), (s.path, sizes)
            assert 0 < sizes[-1] <= PER_ROW_GROUP


def test_schema_types_codecs_and_manifest_file(plain):
    path, m = plain
    types = {c.name: c.type for c in m.schema}
    assert m.column_names == ["id", "label", "caption", "feature", "score", "flag", "day", "ts",
                              "small", "blob"]
    assert types["label"] == "int32" and types["id"] == "int64" and types["small"] == "int8"
    assert types["caption"] == "string" and types["score"] == "double" and types["flag"] == "bool"
    assert types["day"] == "date32[day]" and types["ts"] == "timestamp[us, tz=UTC]"
    assert types["feature"].startswith("list<") and "float" in types["feature"]
    assert m.column("blob").codec == "npy" and m.column("blob").type == "binary"
    assert m.format == "parquet" and m.created_by["sparkfeed"] == sparkfeed.__version__
    assert read_manifest(str(path)).to_dict() == m.to_dict()
    assert m.root == str(path)


# ---------------------------------------------------------------- statistics

def test_stats_equal_the_footers(plain):
    path, m = plain
    for s in m.shards:
        md = pq.ParquetFile(path / s.path).metadata
        index = {md.schema.column(j).path: j for j in range(md.num_columns)}
        for i, rg in enumerate(s.row_groups):
            assert set(rg.stats) == set(STAT_COLUMNS + ["id", "blob"])  # binary too: binstats.py
            for name, got in rg.stats.items():
                st = md.row_group(i).column(index[name]).statistics
                assert (got.min, got.max, got.null_count) == (
                    _as_json(st.min), _as_json(st.max), st.null_count), (s.path, i, name)
        assert "feature" not in s.stats


def test_stats_equal_a_recomputation_from_the_data(plain):
    path, m = plain
    for s in m.shards:
        pf = pq.ParquetFile(path / s.path)
        parts = [(rg.stats, pf.read_row_group(i)) for i, rg in enumerate(s.row_groups)]
        parts.append((s.stats, pf.read()))
        for stats, table in parts:
            for name in STAT_COLUMNS:
                col = table.column(name)
                mm = pc.min_max(col)
                want = (_as_json(mm["min"].as_py()), _as_json(mm["max"].as_py()), col.null_count)
                assert (stats[name].min, stats[name].max, stats[name].null_count) == want, name


def test_nulls_are_counted(plain):
    _, m = plain
    assert sum(s.stats["caption"].null_count for s in m.shards) == math.ceil(N / 97)
    assert sum(s.stats["score"].null_count for s in m.shards) == N // 50
    assert sum(s.stats["label"].null_count for s in m.shards) == 0


def test_cluster_by_gives_selective_shard_ranges(clustered):
    path, m = clustered
    assert m.num_samples == N
    for label in range(10):
        hit = [s for s in m.shards if s.stats["label"].min <= label <= s.stats["label"].max]
        assert 1 <= len(hit) <= 2, (label, [(s.stats["label"].min, s.stats["label"].max) for s in m.shards])
        assert sum(s.num_samples for s in hit) <= 0.4 * N
    for s in m.shards:  # sorted within each shard: row groups span at most two labels
        assert all(rg.stats["label"].max - rg.stats["label"].min <= 1 for rg in s.row_groups)
        labels = pq.read_table(path / s.path, columns=["label"]).column("label").to_pylist()
        assert labels == sorted(labels)


# ---------------------------------------------------------------- modes and atomicity

def test_mode_error_refuses_an_existing_dataset_before_spark_runs(spark, plain):
    path, m = plain
    before = sorted(os.listdir(path))

    def attempt():
        with pytest.raises(DatasetExistsError, match=str(path)) as info:
            sparkfeed.write(_frame(spark, 10), str(path))
        assert isinstance(info.value, FileExistsError)
        assert "mode='overwrite'" in str(info.value)

    assert dsutil.spark_jobs_started(spark, attempt) == []
    assert sorted(os.listdir(path)) == before
    assert read_manifest(str(path)).to_dict() == m.to_dict()


def test_overwrite_replaces_the_dataset(spark, base):
    path = base / "overwrite"
    first = sparkfeed.write(_frame(spark, 500), str(path), samples_per_shard=100)
    assert len(first.shards) >= 5
    second = sparkfeed.write(_frame(spark, 50), f"file://{path}", mode="overwrite")
    assert second.num_samples == 50 and len(second.shards) == 1
    assert _part_files(path) == [s.path for s in second.shards]
    assert read_manifest(str(path)).num_samples == 50


@pytest.mark.parametrize("aqe", ["true", "false"])
def test_overwriting_the_dataset_a_dataframe_reads_is_refused_before_anything_is_deleted(spark, base, aqe):
    """Invariant: an overwrite never deletes the data it is computed from, with or without
    adaptive execution. It used to delete the old manifest and Spark the old files before the
    tasks read them: with AQE off that failed with FILE_NOT_EXIST and the dataset was gone (with
    it on, a shuffle happened to read everything first)."""
    from sparkfeed.write import OverwriteInputError

    path, sibling = base / f"self_{aqe}", base / f"self_{aqe}2"
    for p in (path, sibling):
        sparkfeed.write(_frame(spark, 200), str(p), samples_per_shard=50)
    before = {p: sorted(os.listdir(p)) for p in (path, sibling)}
    saved = spark.conf.get("spark.sql.adaptive.enabled")
    spark.conf.set("spark.sql.adaptive.enabled", aqe)
    try:
        reads = spark.read.parquet(str(path)).where("label < 5")
        for target, fmt in [(str(path), "parquet"), (f"file://{path}/", "parquet"),
                            (str(base / ".." / base.name / path.name), "parquet"),
                            (str(path), "webdataset")]:
            def attempt():
                with pytest.raises(OverwriteInputError, match=rf"cannot overwrite '.*{path.name}/?': the "
                                   rf"DataFrame being written reads from it \(file:.*/{path.name}/part-"):
                    sparkfeed.write(reads, target, format=fmt, mode="overwrite")

            assert dsutil.spark_jobs_started(spark, attempt) == []
        assert sorted(os.listdir(path)) == before[path]
        assert read_manifest(str(path)).num_samples == 200
        # a path that merely starts with the same characters is another dataset: overwritten
        m = sparkfeed.write(spark.read.parquet(str(path)).where("label < 5"), str(sibling),
                            mode="overwrite")
        assert m.num_samples == 100
    finally:
        spark.conf.set("spark.sql.adaptive.enabled", saved)


def _failing(spark, n=N):
    from pyspark.sql import functions as F

    @F.udf("int")
    def boom(x):
        if x == 1234:
            raise RuntimeError("boom at row 1234")
        return x

    return _frame(spark, n).withColumn("checked", boom("id"))


def test_failed_job_leaves_no_manifest(spark, base):
    path = base / "failed"
    with pytest.raises(Exception, match="boom at row 1234"):
        sparkfeed.write(_failing(spark), str(path))
    assert not (path / MANIFEST_NAME).exists()
    with pytest.raises(sparkfeed.ManifestError, match="not a sparkfeed dataset"):
        read_manifest(str(path))


def test_failed_overwrite_leaves_no_manifest_over_a_mix(spark, base):
    """The UDF fails before Spark deleted the old files (in the stage before the write's
    shuffle): the old manifest, removed first, is put back over the untouched old dataset; a
    manifest never describes a mix of old and new files."""
    path = base / "failed_overwrite"
    sparkfeed.write(_frame(spark, 100), str(path))
    assert (path / MANIFEST_NAME).exists()
    with pytest.raises(WriteFailedError,
                       match="boom at row 1234.*the dataset that was at the path is unchanged"):
        sparkfeed.write(_failing(spark), str(path), mode="overwrite")
    assert sparkfeed.read_manifest(str(path)).num_samples == 100
    assert sum(len(b["id"]) for b in sparkfeed.DataLoader(str(path), batch_size=50,
                                                          columns=["id"])) == 100


# ---------------------------------------------------------------- validation before Spark runs

@pytest.mark.parametrize("value", [0, -1, "x", 2.5, True])
def test_bad_samples_per_shard(spark, base, value):
    def attempt():
        with pytest.raises(ValueError, match=r"`samples_per_shard` should be a positive integer, "
                                             rf"but got samples_per_shard={value!r}"):
            sparkfeed.write(_frame(spark, 10), str(base / "never"), samples_per_shard=value)

    assert dsutil.spark_jobs_started(spark, attempt) == []
    assert not (base / "never").exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"samples_per_row_group": 0}, "`samples_per_row_group` should be a positive integer"),
    ({"format": "csv"}, "`format` should be one of"),
    ({"mode": "append"}, "`mode` should be one of"),
    ({"cluster_by": "nope"}, "column 'nope', which is not in the DataFrame"),
    ({"cluster_by": "blob"}, "`cluster_by` column 'blob' has type binary"),
    ({"cluster_by": []}, "`cluster_by` should be a column name"),
    ({"codecs": {"caption": "jpeg"}}, "column 'caption' of type string"),
    ({"codecs": {"blob": "bad codec"}}, "the codec of column 'blob'"),
    ({"codecs": {"nope": "jpeg"}}, "column 'nope', which is not in the DataFrame"),
])
def test_bad_arguments(spark, base, kwargs, message):
    def attempt():
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
            sparkfeed.write(_frame(spark, 10), str(base / "never"), **kwargs)

    assert dsutil.spark_jobs_started(spark, attempt) == []


@pytest.mark.parametrize("expr, name, typename", [
    ("map('a', id)", "m", "map<string,bigint>"),
    ("named_struct('a', array(cast(id as string)))", "st", "array<string>"),  # named by its leaf, st.a
    ("array(cast(id as string))", "strs", "array<string>"),
    ("array(array(id))", "nested", "array<array<bigint>>"),
])
def test_unsupported_column_types_are_named(spark, base, expr, name, typename):
    df = spark.range(3).selectExpr("id", f"{expr} as {name}")

    def attempt():
        leaf = f"{name}.a" if expr.startswith("named_struct") else name
        with pytest.raises(ValueError, match=rf"column '{leaf}' has type {typename.replace('(', '[(]').replace(')', '[)]')}"):
            sparkfeed.write(df, str(base / "never"))

    assert dsutil.spark_jobs_started(spark, attempt) == []


@pytest.mark.parametrize("format", ["parquet", "webdataset"])
def test_decimal_columns_are_written_left_out_of_batches_and_filtered_exactly(spark, base, format, caplog):
    """A DecimalType column (prices from SQL) is written as it is; batches leave it out (torch
    has no decimal type, and the writer says so), and a filter on it prunes by exact bounds."""
    import logging
    from decimal import Decimal

    df = spark.range(40).selectExpr("id", "cast(id * 1.25 as decimal(10, 2)) as price")
    path = base / f"prices-{format}"
    with caplog.at_level(logging.WARNING, logger="sparkfeed.write"):
        m = sparkfeed.write(df, str(path), format=format, samples_per_shard=10, cluster_by="price")
    assert "decimal column(s) ['price'] are written, but batches leave them out" in caplog.text
    assert {c.name: c.unsupported for c in m.schema}["price"] == "decimal"
    assert set(next(iter(sparkfeed.DataLoader(str(path), batch_size=8)))) == {"id"}
    loader = sparkfeed.DataLoader(str(path), batch_size=8, filter=[("price", ">=", Decimal("40.00"))])
    assert sorted(i for b in loader for i in b["id"].tolist()) == list(range(32, 40))
    if format == "parquet":  # the JVM writer keeps no decimal statistics
        assert loader.stats()["shards_pruned"] == 3


def test_a_column_named_like_a_structs_leaf_is_refused_before_spark_runs(spark, base):
    """`a.b` and the leaf `b` of struct `a` would be one column of the manifest (one silently
    lost, and a reader that cannot tell them apart)."""
    df = spark.range(3).selectExpr("id", "id as `a.b`", "named_struct('b', id) as a")

    def attempt():
        with pytest.raises(ValueError, match=r"columns \['a.b'\] are each both a column and a struct's leaf"):
            sparkfeed.write(df, str(base / "never"))

    assert dsutil.spark_jobs_started(spark, attempt) == []


def test_struct_columns_are_written_and_loaded_as_their_leaves(spark, base):
    """A struct (a Hugging Face image: bytes and path) is written as Spark writes it, and the
    manifest, `codecs`, `cluster_by` and the loader see its leaves by their paths."""
    from pyspark.sql import functions as F

    df = spark.range(300).select(
        F.col("id"),
        F.struct(F.col("id").cast("string").cast("binary").alias("bytes"),
                 F.concat(F.lit("img"), F.col("id").cast("string")).alias("path")).alias("image"),
        F.struct(F.struct((F.col("id") % 7).alias("b")).alias("a")).alias("meta"))
    m = sparkfeed.write(df, str(base / "structs"), samples_per_shard=100, cluster_by="meta.a.b",
                        codecs={"image.bytes": "jpeg"})
    assert [(c.name, c.type, c.codec) for c in m.schema] == [
        ("id", "int64", None), ("image.bytes", "binary", "jpeg"), ("image.path", "string", None),
        ("meta.a.b", "int64", None)]
    loader = sparkfeed.DataLoader(str(base / "structs"), batch_size=32, filter=[("meta.a.b", "==", 3)])
    rows = sorted(r for b in loader for r in zip(b["id"].tolist(), b["image.path"], b["image.bytes"]))
    assert rows == [(i, f"img{i}", str(i).encode()) for i in range(300) if i % 7 == 3]
    assert loader.stats()["shards_pruned"] >= 1  # clustered by the leaf: its statistics prune

    def attempt():
        with pytest.raises(ValueError, match=r"column 'image' has type struct<.*df.select\('col.\*'\)"):
            sparkfeed.write(df, str(base / "never_wds"), format="webdataset")

    assert dsutil.spark_jobs_started(spark, attempt) == []


@pytest.mark.parametrize("format", ["parquet", "webdataset"])
@pytest.mark.parametrize("name", ["a.b", "we`ird"])
def test_cluster_by_a_column_whose_name_holds_a_dot_or_backtick(spark, base, format, name):
    """Invariant: every column `write` accepts can be clustered by, whatever its name. Spark read
    `a.b` as field b of a struct a, and refused a backtick, after the count job had run."""
    df = spark.range(60).selectExpr("id", f"cast(id % 6 as int) as `{name.replace('`', '``')}`")
    path = base / f"cluster-odd-{format}-{name.replace('`', '_')}"
    m = sparkfeed.write(df, str(path), format=format, samples_per_shard=10, cluster_by=name)
    assert m.num_samples == 60
    for s in m.shards:  # clustered: each shard holds one or two values of the column
        assert s.stats[name].max - s.stats[name].min <= 1


@pytest.mark.parametrize("format", ["parquet", "webdataset"])
def test_columns_differing_only_in_case_are_refused_before_spark_runs(spark, base, format):
    """Invariant: what Spark takes for duplicate columns is refused up front, in a sentence. With
    spark.sql.caseSensitive false (the default) `id` and `ID` used to pass the checks: Parquet
    then failed after the count job, webdataset wrote a dataset Spark cannot read back."""
    df = spark.range(3).selectExpr("id", "id + 1 as ID")

    def attempt():
        with pytest.raises(ValueError, match=r"duplicate column names \['ID', 'id'\] \(names "
                                             r"differing only in case"):
            sparkfeed.write(df, str(base / f"never-case-{format}"), format=format)

    assert dsutil.spark_jobs_started(spark, attempt) == []
