"""Every schema, column name and codec that the JVM webdataset writer (SampleLayout.plan) or
Spark's Parquet writer refuses is refused by sparkfeed.write before any Spark job runs: before,
they failed only when the write was planned, after the count job (a pass over the whole
DataFrame). And the member names sparkfeed predicts are the ones the JVM writes."""

import os
import sys

import pytest

import sparkfeed
from sparkfeed.manifest import MANIFEST_NAME
from sparkfeed.writeoptions import webdataset_members

pytestmark = pytest.mark.spark
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

SAFE = r"may hold only letters, digits, '_' and '-'"

# (schema, codecs, options, the column or codec the message names)
REFUSED = [
    ("key string, `caption text` string, title string", {}, {}, "'caption text'"),
    ("key string, `raw img` binary, mask binary", {}, {}, "'raw img'"),
    ("key string, img binary, `my caption` string", {"img": "txt"}, {}, "'my caption'"),
    ("key string, `a b` binary, score double", {"a b": "json"}, {}, "'a b'"),
    ("key string, `x y` binary, label int", {"x y": "cls"}, {}, "'x y'"),
    ("key string, img binary, v int", {"img": "x+y"}, {}, "codec 'x+y' of column 'img'"),
    ("id string, `a.b` string, c string", {}, {"keyColumn": "id"}, "'a.b'"),
]


def _jobs(spark) -> int:
    """Jobs submitted so far, in any job group (sparkfeed.write runs its jobs in a group of its
    own, which a count of the jobs without a group never saw: `dsutil.spark_jobs_started`)."""
    return spark.sparkContext._jsc.sc().dagScheduler().nextJobId()


def _df(spark, schema: str):
    """One row of `schema` (strings 'k', binaries b'x', numbers 1)."""
    from pyspark.sql import types as T

    st = T._parse_datatype_string(schema)
    value = {T.StringType: "k", T.BinaryType: b"x", T.DoubleType: 1.0, T.IntegerType: 1,
             T.LongType: 1, T.ShortType: 1}
    return spark.createDataFrame([tuple(value[type(f.dataType)] for f in st.fields)], st)


@pytest.mark.parametrize("schema, codecs, options, named", REFUSED)
def test_webdataset_member_name_refusals_come_before_any_spark_job(spark, tmp_path, schema,
                                                                   codecs, options, named):
    df = _df(spark, schema)
    path = tmp_path / "wds"
    before = _jobs(spark)
    with pytest.raises(ValueError, match=SAFE) as info:
        sparkfeed.write(df, str(path), format="webdataset", codecs=codecs, options=options)
    assert named in str(info.value)
    assert _jobs(spark) == before, "a Spark job ran before the refusal"
    assert not path.exists()


def test_the_member_names_predicted_are_those_the_jvm_writes(spark, tmp_path):
    """The Python mirror of SampleLayout.plan agrees with the JVM on layouts it lets through,
    collisions included (then `<column>.<ext>`)."""
    layouts = [
        ("key string, caption_text string, title string", {}, {}),
        ("key string, raw_img binary, mask binary, label int", {}, {}),
        ("key string, img binary, caption string", {"img": "txt"}, {}),
        ("key string, a binary, score double, n bigint, m int", {"a": "json"}, {}),
        ("key string, x binary, label int, other smallint", {"x": "cls"}, {"clsColumn": "label"}),
        ("key string, img binary, v int", {"img": "JPEG"}, {}),
    ]
    from pyspark.sql import types as T

    for i, (schema, codecs, options) in enumerate(layouts):
        df = _df(spark, schema)
        m = sparkfeed.write(df, str(tmp_path / f"w{i}"), format="webdataset", codecs=codecs,
                            options=options)
        written = {c.name: c.member for c in m.schema if c.member != "__key__"}
        types = {f.name: f.dataType for f in T._parse_datatype_string(schema).fields}
        assert webdataset_members(types, options, codecs) == written, schema


def test_an_empty_struct_is_refused_before_any_spark_job(spark, tmp_path):
    """Spark's Parquet writer refuses an empty struct (EMPTY_SCHEMA_NOT_SUPPORTED_FOR_DATASOURCE)
    only once the write is planned, after the count job; the struct had no leaves to check."""
    df = spark.sql("select 1 as id, named_struct('a', 1, 'e', named_struct()) as s")
    path = tmp_path / "ds"
    before = _jobs(spark)
    with pytest.raises(ValueError, match=r"column 's\.e' is a struct with no fields"):
        sparkfeed.write(df, str(path))
    assert _jobs(spark) == before
    assert not path.exists()
    assert not (path / MANIFEST_NAME).exists()


def test_a_struct_with_two_fields_of_one_name_is_told_so(spark, tmp_path):
    """named_struct('a', 1, 'a', 2) was refused as 'columns ['s.a'] are each both a column and a
    struct's leaf', naming a column that does not exist."""
    df = spark.sql("select 1 as id, named_struct('a', 1, 'a', 2) as s")
    before = _jobs(spark)
    with pytest.raises(ValueError, match=r"struct leaves \['s\.a'\] are each named twice .*two "
                                         r"fields of one struct have that name"):
        sparkfeed.write(df, str(tmp_path / "ds"))
    assert _jobs(spark) == before
    column = spark.sql("select 1 as `s.a`, named_struct('a', 1) as s")
    with pytest.raises(ValueError, match=r"columns \['s\.a'\] are each both a column and a struct's"):
        sparkfeed.write(column, str(tmp_path / "ds"))


@pytest.mark.parametrize("fmt", ["parquet", "webdataset"])
def test_a_column_named_like_the_writes_helper_columns_is_refused_before_any_job(spark, tmp_path, fmt):
    """The write numbers rows into shards with a helper column `_sparkfeed_shard` that it adds
    and drops: a user's column of that name was replaced by it and dropped, so the dataset lost
    that column without a word."""
    df = spark.sql("select 'k' as key, cast('x' as binary) as img, 7 as _sparkfeed_shard")
    before = _jobs(spark)
    with pytest.raises(ValueError, match=r"column\(s\) \['_sparkfeed_shard'\] start with '_sparkfeed_'"):
        sparkfeed.write(df, str(tmp_path / "ds"), format=fmt)
    assert _jobs(spark) == before
    assert not (tmp_path / "ds").exists()
