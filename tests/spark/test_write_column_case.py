"""The columns `sparkfeed.write` is told to use (`cluster_by`, `codecs`, the webdataset options
`keyColumn` and `clsColumn`) are resolved as Spark resolves names under the session's
`spark.sql.caseSensitive`: in any case when it is false (the default), exactly when it is true;
what is written keeps the DataFrame's own spelling. Before, `cluster_by=["LABEL"]` on a column
`label` was refused as "not in the DataFrame"."""

import contextlib
import os
import sys

import pytest

import dsutil
import sparkfeed

pytestmark = pytest.mark.spark
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


@contextlib.contextmanager
def case_sensitive(spark, value: bool):
    """spark.sql.caseSensitive set to `value` inside, the session's own value put back after."""
    key = "spark.sql.caseSensitive"
    before = spark.conf.get(key, None)
    spark.conf.set(key, str(value).lower())
    try:
        yield
    finally:
        spark.conf.unset(key) if before is None else spark.conf.set(key, before)


def _df(spark, rows: int = 40):
    """key (string), image (binary), label (int, 4 values), score (double)."""
    return spark.range(rows).selectExpr("concat('k', id) as key", "cast(cast(id as string) as binary) as image",
                                        "cast(id % 4 as int) as label", "id / 2.0 as score")


def _ranges_apart(manifest, column: str) -> bool:
    """Each shard's range of `column` ends where the next one's begins: the shards are clustered."""
    ranges = sorted((s.stats[column].min, s.stats[column].max) for s in manifest.shards)
    return all(hi <= lo for (_, hi), (lo, _) in zip(ranges, ranges[1:]))


def test_parquet_names_in_another_case_resolve_to_the_dataframes_columns(spark, tmp_path):
    """Invariant: with caseSensitive false, `LABEL` and `IMAGE` are `label` and `image`: the
    shards are clustered by label and the manifest records the codec on `image`."""
    with case_sensitive(spark, False):
        m = sparkfeed.write(_df(spark), str(tmp_path / "ds"), samples_per_shard=10,
                            cluster_by=["LABEL"], codecs={"IMAGE": "jpeg"})
    assert [c.name for c in m.schema] == ["key", "image", "label", "score"]
    assert m.column("image").codec == "jpeg"
    assert m.num_samples == 40 and len(m.shards) == 4
    assert _ranges_apart(m, "label"), [(s.stats["label"].min, s.stats["label"].max) for s in m.shards]


def test_webdataset_options_in_another_case_resolve_to_the_dataframes_columns(spark, tmp_path):
    """Invariant: keyColumn='KEY' and clsColumn='Label' name `key` and `label`; the tar samples
    take their keys from `key` and their .cls from `label`, the image its codec's extension."""
    with case_sensitive(spark, False):
        m = sparkfeed.write(_df(spark, 12), str(tmp_path / "wds"), format="webdataset",
                            cluster_by="Label", codecs={"Image": "jpeg"},
                            options={"keyColumn": "KEY", "clsColumn": "Label"})
    members = {c.name: c.member for c in m.schema}
    assert members["key"] == "__key__" and members["label"] == "cls"
    assert members["image"] == "jpg" and m.column("image").codec == "jpeg"
    rows = {r["key"]: r["label"] for r in
            spark.read.format("webdataset").load(str(tmp_path / "wds")).collect()}
    assert rows == {f"k{i}": i % 4 for i in range(12)}


def test_case_sensitive_sessions_resolve_names_exactly(spark, tmp_path):
    """Invariant: with caseSensitive true, `LABEL` is refused on a DataFrame of `label`, before
    any Spark job, saying why; where both `label` and `LABEL` exist each names its own."""
    with case_sensitive(spark, True):
        for kwargs in ({"cluster_by": "LABEL"}, {"codecs": {"IMAGE": "jpeg"}}):
            def attempt():
                with pytest.raises(ValueError, match=r"which is not in the DataFrame \(spark\.sql"
                                                     r"\.caseSensitive is true, so '(label|image)' "
                                                     r"is another column\)"):
                    sparkfeed.write(_df(spark), str(tmp_path / "never"), **kwargs)
            assert dsutil.spark_jobs_started(spark, attempt) == []
        both = _df(spark).selectExpr(  # LABEL: 0 for k0..k9, 1 for k10..k19, ...
            "key", "label", "cast(floor(cast(substr(key, 2) as int) / 10) as int) as LABEL")
        m = sparkfeed.write(both, str(tmp_path / "both"), samples_per_shard=10, cluster_by="LABEL")
    assert [c.name for c in m.schema] == ["key", "label", "LABEL"]
    assert _ranges_apart(m, "LABEL") and not _ranges_apart(m, "label")


def test_names_that_fold_to_several_columns_are_refused_as_ambiguous(spark, tmp_path):
    """Invariant: under caseSensitive false, a name matching two struct leaves that differ only
    in case (`s.a`, `s.A`) is ambiguous to Spark: refused before any job, naming both; and one
    codec given under two spellings of a column is refused rather than one silently kept."""
    df = spark.sql("select 1 as id, named_struct('a', 1, 'A', 2) as s, cast('x' as binary) as img")
    with case_sensitive(spark, False):
        def ambiguous():
            with pytest.raises(ValueError, match=r"`cluster_by` names column 's\.a', which is "
                                                 r"ambiguous: the DataFrame has \['s\.a', 's\.A'\]"):
                sparkfeed.write(df, str(tmp_path / "never"), cluster_by="s.a")

        def twice():
            with pytest.raises(ValueError, match=r"`codecs` names column 'img' twice"):
                sparkfeed.write(df, str(tmp_path / "never"), codecs={"img": "jpeg", "IMG": "png"})
        assert dsutil.spark_jobs_started(spark, ambiguous) == []
        assert dsutil.spark_jobs_started(spark, twice) == []
