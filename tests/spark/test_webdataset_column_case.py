"""The webdataset data source used directly (`df.write.format("webdataset")`) resolves the
columns its options name (keyColumn, clsColumn, codecs) as Spark resolves names under the
session's `spark.sql.caseSensitive`, as `sparkfeed.write` does: in any case when it is false
(the default), exactly when it is true; what is written keeps the DataFrame's spelling. Before,
keyColumn="KEY" on a column `key` was refused as "not in the DataFrame" whatever the setting."""

import json
import os
import sys

import pytest

import sparkfeed
from test_write_column_case import case_sensitive

pytestmark = pytest.mark.spark
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def _df(spark):
    """key (string), image (binary), label (int), score (double): 8 rows."""
    return spark.range(8).selectExpr("concat('k', id) as key",
                                     "cast(cast(id as string) as binary) as image",
                                     "cast(id % 4 as int) as label", "id / 2.0 as score")


def _save(df, path, **options):
    writer = df.write.format("webdataset")
    for name, value in options.items():
        writer = writer.option(name, value)
    writer.save(path)


def test_options_in_another_case_name_the_dataframes_columns(spark, tmp_path):
    """Invariant: caseSensitive false: keyColumn='KEY', clsColumn='Label', codecs IMAGE name
    key, label and image; the manifest and the samples read back use their own spelling."""
    path = str(tmp_path / "wds")
    with case_sensitive(spark, False):
        _save(_df(spark), path, keyColumn="KEY", clsColumn="Label",
              codecs=json.dumps({"IMAGE": "jpeg"}))
    m = sparkfeed.read_manifest(path)
    assert {c.name: c.member for c in m.schema} == {
        "key": "__key__", "image": "jpg", "label": "cls", "score": "json"}
    assert m.column("image").codec == "jpeg"
    rows = {r["key"]: r["label"] for r in spark.read.format("webdataset").load(path).collect()}
    assert rows == {f"k{i}": i % 4 for i in range(8)}


def test_case_sensitive_sessions_match_exactly_and_ambiguous_names_are_refused(spark, tmp_path):
    """Invariant: caseSensitive true: keyColumn='KEY' on a column key is refused, naming it, and
    nothing is written; caseSensitive false: a codec for 'Img' where img and IMG both exist is
    refused as ambiguous, naming both, while 'IMG' names its exact column."""
    with case_sensitive(spark, True):
        with pytest.raises(Exception, match=r'keyColumn names column "KEY", which is not in the '
                                            r"DataFrame"):
            _save(_df(spark), str(tmp_path / "never"), keyColumn="KEY")
    assert not os.path.exists(tmp_path / "never" / "_sparkfeed.json")
    both = _df(spark).selectExpr("key", "image as img", "image as IMG")
    with case_sensitive(spark, False):
        with pytest.raises(Exception, match=r'codecs names column "Img", which is ambiguous: '
                                            r"the DataFrame has img, IMG"):
            _save(both, str(tmp_path / "never2"), codecs=json.dumps({"Img": "png"}))
        _save(both, str(tmp_path / "exact"), codecs=json.dumps({"IMG": "png"}))
    m = sparkfeed.read_manifest(str(tmp_path / "exact"))
    assert {c.name: c.member for c in m.schema} == {"key": "__key__", "img": "bin", "IMG": "png"}
