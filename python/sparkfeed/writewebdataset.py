"""The webdataset side of `sparkfeed.write`: its refusals before the count job (a key-only
DataFrame, a Spark without the sparkfeed jar) and the data source's save, its failures named."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from .errors import SparkfeedError
from .writecheck import _connection_lost
from .writeoptions import writer_failure


def _refuse_key_only(types: Mapping, options: Mapping[str, str], dataset: str) -> None:
    """A ValueError, before any Spark job, for a webdataset write whose only column is the
    sample key: a tar sample exists only through its members, so every row would be left out
    (before: a dataset of 0 samples, said only in a Spark log warning). The key column is
    `keyColumn`, else `key` when it is a string column (jvm/.../SampleLayout.java)."""
    from pyspark.sql import types as T

    key = options.get("keyColumn", "key")
    if list(types) == [key] and isinstance(types[key], T.StringType):
        raise ValueError(f"dataset {dataset!r}: the DataFrame's only column is the sample key "
                         f"{key!r}, and a tar sample exists only through its members, so no row "
                         "would be written; add the columns to write (or write format='parquet')")



# Spark's error for a format no jar on the classpath provides, classic and Connect alike.
_NO_SOURCE = re.compile(r"DATA_SOURCE_NOT_FOUND\]? Failed to find the data source: webdataset\b")


def _jar_missing(exc: BaseException, dataset: str) -> SparkfeedError | None:
    """The SparkfeedError for a webdataset read or write that failed because Spark has no
    sparkfeed jar (the driver's classpath, or the Connect server's); None for other failures.
    Spark's own DATA_SOURCE_NOT_FOUND says only that the provider name may be wrong."""
    if not _NO_SOURCE.search(str(exc)):
        return None
    return SparkfeedError(
        f"dataset {dataset!r}: Spark has no sparkfeed jar, so format='webdataset' is unknown to "
        "it (DATA_SOURCE_NOT_FOUND); start the Spark application, or the Spark Connect server, "
        "with --jars \"$(sparkfeed jar)\" (a session of your own: sparkfeed.configure_spark("
        "builder) or sparkfeed.spark_session()), or write format='parquet', which needs no jar")


def _check_webdataset_source(spark, spark_path: str, dataset: str) -> None:
    """Fail before the count job (a pass over the whole DataFrame) when Spark, or the Connect
    server, has no sparkfeed jar: one analysis of a read of a path that does not exist, which
    the source refuses with its own error when it is there."""
    probe = spark_path.rstrip("/") + "/_sparkfeed_no_such_dataset"
    try:
        _ = spark.read.format("webdataset").load(probe).schema  # Connect analyses lazily
    except Exception as exc:
        if _connection_lost(exc):  # told once, by _lost_server_named
            raise
        mapped = _jar_missing(exc, dataset)
        if mapped is not None:
            raise mapped from exc


def _save_webdataset(df, spark_path: str, spark_mode: str, dataset: str, samples_per_shard: int,
                     codecs: Mapping[str, str], options: Mapping[str, str]) -> None:
    """The webdataset data source's write; a task failing on a sample key is a SampleKeyError
    whose message is the writer's, its advice worded for `sparkfeed.write` (the Spark error,
    with the Java stack trace, is its cause)."""
    writer = (df.write.format("webdataset").mode(spark_mode)
              .option("samplesPerShard", samples_per_shard).option("codecs", json.dumps(codecs)))
    for name, value in options.items():
        writer = writer.option(name, value)
    try:
        writer.save(spark_path)
    except Exception as exc:
        mapped = writer_failure(exc, dataset) or _jar_missing(exc, dataset)
        if mapped is None:
            raise
        raise mapped from exc

