"""Sample keys the webdataset writer refuses (null, empty, or holding '.', '/', whitespace or a
control character under invalidKeys=error) are refused by `sparkfeed.write`'s count job, before
the write starts. Before, the writer's task refused them once the write ran: under
`mode="overwrite"` the data source had by then deleted the old dataset, so a key from a file
name (`img001.jpg`) or a null key destroyed the dataset being replaced."""

import os
import sys

import pytest

import sparkfeed
from sparkfeed.manifest import MANIFEST_NAME
from sparkfeed.write import SampleKeyError

pytestmark = pytest.mark.spark
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def _rows(spark, key_expr: str):
    """Twelve rows: key from `key_expr` over id, a label and an image."""
    return spark.range(0, 12, 1, 3).selectExpr(f"{key_expr} as key", "cast(id % 3 as int) as label",
                                               "cast(concat('img', id) as binary) as image")


@pytest.mark.parametrize("key_expr, message", [
    ("if(id % 5 = 0, null, concat('k', id))",
     r'sample key in column "key" is null or empty in 3 row\(s\); every sample needs a non-empty '
     r"key; nothing was written"),
    ("if(id = 7, '', concat('k', id))", r'is null or empty in 1 row\(s\)'),
    ("concat('img', lpad(id, 3, '0'), if(id > 8, '.jpg', ''))",
     r'invalid sample key "img009\.jpg" in column "key": keys may not contain .* found \'\.\' at '
     r"index 6\. Pass options=\{'invalidKeys': 'sanitize'\} to sparkfeed.write to replace them by "
     r"'_' \(3 row\(s\) hold such keys; nothing was written\)"),
    ("concat('k', id, if(id = 4, '\\n', ''))", r'invalid sample key "k4\\u000A" .* found U\+000A at index 2'),
])
def test_an_overwrite_with_keys_the_writer_refuses_keeps_the_old_dataset(spark, tmp_path, key_expr,
                                                                        message):
    """Invariant: a key the writer would refuse is a SampleKeyError naming it (or counting the
    null ones) before the write; the dataset at the path stays whole, manifest and shards."""
    path = tmp_path / "ds"
    old = sparkfeed.write(_rows(spark, "concat('k', id)"), str(path), format="webdataset")
    files = sorted(os.listdir(path))
    with pytest.raises(SampleKeyError, match=message) as info:
        sparkfeed.write(_rows(spark, key_expr), str(path), format="webdataset", mode="overwrite")
    assert str(info.value).startswith(f"dataset {str(path)!r}: ") and "\n" not in str(info.value)
    assert sorted(os.listdir(path)) == files
    assert sparkfeed.read_manifest(str(path)) == old
    assert (path / MANIFEST_NAME).exists()


def test_keys_the_writer_sanitizes_are_not_refused(spark, tmp_path):
    """Invariant: under invalidKeys=sanitize a '.' in a key is written as '_', not refused; a
    null key still is (the writer refuses it whatever the option)."""
    m = sparkfeed.write(_rows(spark, "concat('k.', id)"), str(tmp_path / "ok"), format="webdataset",
                        options={"invalidKeys": "sanitize"})
    assert m.num_samples == 12
    with pytest.raises(SampleKeyError, match=r"is null or empty in 1 row\(s\)"):
        sparkfeed.write(_rows(spark, "if(id = 3, null, concat('k.', id))"), str(tmp_path / "no"),
                        format="webdataset", options={"invalidKeys": "sanitize"})
    assert not (tmp_path / "no").exists()


def test_the_count_job_computes_the_dataframe_once(spark, tmp_path):
    """Invariant: a webdataset write with a key column computes the user's DataFrame twice in
    all, once for the count job (rows, duplicate and refused keys) and once for the write: a
    `mapInPandas` sees each row twice. The count job's branches were planned apart and ran it
    once each (three times in all before the refused keys were counted, five after)."""
    seen = spark.sparkContext.accumulator(0)

    def through(batches):
        for b in batches:
            seen.add(len(b))
            yield b
    df = _rows(spark, "concat('k', id)")
    m = sparkfeed.write(df.mapInPandas(through, df.schema), str(tmp_path / "ds"),
                        format="webdataset", samples_per_shard=5)
    assert m.num_samples == 12
    assert seen.value == 2 * 12


def test_duplicate_keys_over_partitions_are_named_most_rows_first(spark, tmp_path):
    """Invariant: the keys that several rows write are named with their rows over all input
    partitions, the most first and then by key, five at most; nothing is written."""
    counts = {"a": 2, "b": 5, "c": 3, "d": 3, "e": 2, "f": 2, "g": 4}  # over 4 partitions
    keys = [k for k, n in counts.items() for _ in range(n)] + [f"u{i}" for i in range(9)]
    df = spark.createDataFrame([(k, i % 3, b"x") for i, k in enumerate(keys)],
                               "key string, label int, image binary").repartition(4)
    with pytest.raises(SampleKeyError, match=r"are not unique: 'b' \(5 rows\), 'g' \(4 rows\), "
                                             r"'c' \(3 rows\), 'd' \(3 rows\), 'a' \(2 rows\) and "
                                             r"maybe more;"):
        sparkfeed.write(df, str(tmp_path / "ds"), format="webdataset")
    assert not (tmp_path / "ds").exists()
