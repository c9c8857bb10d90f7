"""write(df, path, format=...) -> Manifest: the Spark side of sparkfeed.

Spark writes the shards; sparkfeed validates the DataFrame before any Spark job runs, sizes the
shards and row groups, and writes the manifest last, atomically, only after Spark committed. The
per-shard statistics are gathered by a Spark job that opens each Parquet footer on an executor,
so writing 10,000 shards does not mean 10,000 footer reads on the driver. Only DataFrame
operations are used (no sparkContext, no RDDs), so `df` may come from a Spark Connect session.

    spark = sparkfeed.spark_session()
    m = sparkfeed.write(df, "s3a://bucket/ds", cluster_by="label", codecs={"image": "jpeg"})

The loader never imports this module (it needs pyspark; pyspark is imported where used).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import posixpath
import threading
import time
from collections.abc import Mapping

from . import checks, storage
from .errors import SparkfeedError
from .manifest import MANIFEST_NAME, Manifest, parse_manifest, read_manifest, write_manifest
from .session import jobs_cancelled_on_interrupt
from .writecheck import (WriteFailedError, _connection_lost, _lost_server_named, check_rows,
                         job_failure_named, left_after_failure, observed_rows, restore_manifest,
                         rows_written, warn_rows_left_out)
from .writecolumns import check_cluster_by, check_codecs, check_columns, columns
from .writefooters import _build_manifest, _committed_parquet, _gather_entries
from .writeoptions import SampleKeyError, _key_and_cls, check_options, webdataset_members
from .writepaths import (OverwriteInputError, _is_nonempty, _refuse_json_root,
                         _refuse_overwriting_input, _shown, _spark_path)
from .writeshards import (RANGE_SAMPLE_CONF, RANGE_SAMPLE_POINTS, clustered, clustered_shards,
                          count_rows, even_shards, key_as_written, refuse_bad_keys,
                          refuse_duplicate_keys)
from .writewebdataset import _check_webdataset_source, _refuse_key_only, _save_webdataset

__all__ = ["write", "DatasetExistsError", "OverwriteInputError", "SampleKeyError",
           "WriteFailedError"]

log = logging.getLogger(__name__)

FORMATS = ("parquet", "webdataset")
MODES = ("error", "overwrite")
# Bytes never cut a row group before `samples_per_row_group` rows do (unless a row group would
# buffer more than this in the writer's memory).
ROW_GROUP_MAX_BYTES = 1 << 30
# The largest row count the JVM takes where it reads a count as a Java int: parquet-mr's
# `parquet.block.row.count.limit` (a larger one failed every task with NumberFormatException,
# after the count job) and the webdataset source's `samplesPerShard`.
JAVA_INT_MAX = (1 << 31) - 1
# Longer string statistics are truncated (min to a prefix, max to a prefix rounded up) so a
# manifest of a caption column stays small; both remain valid bounds for pruning.
_TS_CONF = "spark.sql.parquet.outputTimestampType"


class DatasetExistsError(SparkfeedError, FileExistsError):
    """`mode="error"` and something is already at the path."""



def _refuse_streaming(df, dataset: str) -> None:
    """A ValueError for a streaming DataFrame: a dataset is written once, from a batch (before,
    the count failed with Spark's 'must be executed with writeStream.start()')."""
    if df.isStreaming:
        raise ValueError(f"dataset {dataset!r}: `df` is a streaming DataFrame, and sparkfeed.write "
                         "writes a batch one; write each micro-batch as a dataset of its own, e.g. "
                         "df.writeStream.foreachBatch(lambda b, i: sparkfeed.write(b, "
                         "f'{root}/batch={i}')).start()")



def _check_java_int(format: str, samples_per_shard: int, samples_per_row_group: int) -> None:
    """A ValueError, before any Spark job, for a count the JVM reads as a Java int and that
    does not fit one: Parquet's row group size, webdataset's shard size. (Parquet's shard size is
    Spark's `maxRecordsPerFile`, a long, and webdataset has no row groups.)"""
    name, value = (("samples_per_row_group", samples_per_row_group) if format == "parquet" else
                   ("samples_per_shard", samples_per_shard))
    if value > JAVA_INT_MAX:
        raise ValueError(f"`{name}` should be at most {JAVA_INT_MAX:,} with format={format!r} "
                         f"(the JVM writer reads it as a Java int), but got {name}={value!r}")


def _remove_old_manifest(fs, root: str, dataset: str) -> tuple[bytes, list] | None:
    """Removes the manifest of the dataset a Parquet overwrite replaces, before Spark runs: a
    failed overwrite must never leave a manifest over a mix of old and new files. Returns its
    bytes and its shards' (path, size), to put it back if the job fails before Spark deleted
    them. (The webdataset source removes its own, after refusing a DataFrame that reads it.)"""
    name = f"{root}/{MANIFEST_NAME}"
    if not fs.exists(name):
        return None
    text = fs.cat_file(name)
    try:
        m = parse_manifest(text.decode(), dataset=dataset)
        shards = [(f"{root}/{s.path}", s.num_bytes) for s in m.shards] if m.data_root is None \
            else None  # data kept elsewhere: not this write's to judge
    except (ValueError, SparkfeedError):  # an unreadable manifest is not put back
        shards = None
    log.info("removing the old manifest of %s before overwriting it", dataset)
    fs.rm(name)
    return (text, shards) if shards is not None else None


def _spark_mode(mode: str, existing: bool | None) -> str:
    return "overwrite" if mode == "overwrite" or existing is False else "error"  # Connect knows "error", not "errorifexists"


def _write_parquet(df, spark_path: str, spark_mode: str, samples_per_shard: int,
                   samples_per_row_group: int) -> None:
    """Spark's Parquet write (the session confs of `_write_confs` set for its duration)."""
    with _write_confs(df.sparkSession):
        (df.write.mode(spark_mode)
         .option("maxRecordsPerFile", samples_per_shard)
         .option("parquet.block.row.count.limit", samples_per_row_group)
         .option("parquet.block.size", ROW_GROUP_MAX_BYTES)
         .parquet(spark_path))


# Session confs a write sets for its duration (Spark has no writer option for them):
# timestamps as TIMESTAMP_MICROS, and the range partitioning of `cluster_by` sampling up to
# Spark's cap of 1e6 points (`writeshards.clustered`).
_WRITE_CONFS = {_TS_CONF: "TIMESTAMP_MICROS", RANGE_SAMPLE_CONF: str(RANGE_SAMPLE_POINTS)}
# Per session (by id): [writes of this process running on it, its confs before the first].
_TS_HELD: dict[int, list] = {}
_TS_LOCK = threading.Lock()


@contextlib.contextmanager
def _write_confs(spark):
    """The session confs `_WRITE_CONFS` while any write of this process runs on `spark`: the
    first sets them, the last puts the user's values back. (Writes from threads each put back
    what they had found: one ending unset TIMESTAMP_MICROS under another still planning, which
    wrote INT96, without statistics, and the session kept MICROS.) Not put back when a Connect
    server went away: each call to it would wait out pyspark's retries again (ten more minutes)
    and then hide the write's error."""
    key = id(spark)
    with _TS_LOCK:
        held = _TS_HELD.setdefault(key, [0, None])
        if held[0] == 0:
            held[1] = {k: spark.conf.get(k, None) for k in _WRITE_CONFS}
            for k, value in _WRITE_CONFS.items():
                spark.conf.set(k, value)
        held[0] += 1
    lost = False
    try:
        yield
    except Exception as exc:
        lost = _connection_lost(exc)
        raise
    finally:
        with _TS_LOCK:
            held[0] -= 1
            if held[0] == 0:
                del _TS_HELD[key]
                if not lost:
                    _restore_confs(spark, held[1])


def _restore_confs(spark, before: dict) -> None:
    for k, value in before.items():
        if value is None:
            spark.conf.unset(k)
        else:
            spark.conf.set(k, value)


def write(df, path: str, format: str = "parquet", *, samples_per_shard: int = 10_000,
          samples_per_row_group: int = 1_024, cluster_by: str | list[str] | None = None,
          codecs: Mapping[str, str] | None = None, mode: str = "error",
          storage_options: dict | None = None,
          options: Mapping[str, object] | None = None) -> Manifest:
    """Write `df` as a sparkfeed dataset at `path` and return its manifest.

    Shards hold at most `samples_per_shard` rows (default 10,000) and Parquet row groups exactly
    `samples_per_row_group` rows (default 1,024; the last of a file may hold fewer).
    `cluster_by` range-partitions and sorts by those columns, so each shard covers a narrow range
    and filters on them prune shards and row groups. `codecs` records what binary columns hold
    (`{"image": "jpeg"}`). `mode="error"` refuses a non-empty path; `mode="overwrite"` replaces
    it, deleting the old manifest first, and refuses a DataFrame that reads from the path (the
    old data would be deleted before Spark reads it). `path` is a local path or a URL Spark and
    fsspec both understand (`s3a://` is read as `s3://` by fsspec); `storage_options` go to
    fsspec. `options` go to the webdataset data source (`maxShardBytes`, `keyColumn`,
    `clsColumn`, `invalidKeys`; docs/webdataset.md), values made strings as Spark makes them;
    `format="parquet"` takes none.

    Example: `m = sparkfeed.write(df, "ds/", cluster_by="label", codecs={"image": "jpeg"})`,
    `sparkfeed.write(df, "wds/", format="webdataset", options={"invalidKeys": "sanitize"})`.
    """
    if format not in FORMATS:
        raise ValueError(f"`format` should be one of {FORMATS}, but got format={format!r}")
    checks.positive_int("samples_per_shard", samples_per_shard)
    checks.positive_int("samples_per_row_group", samples_per_row_group)
    _check_java_int(format, samples_per_shard, samples_per_row_group)
    if mode not in MODES:
        raise ValueError(f"`mode` should be one of {MODES}, but got mode={mode!r}")
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"`path` should be a local path or URL, but got path={path!r}")
    spark_path = _spark_path(os.fspath(path))
    dataset = os.fspath(path) if "://" in os.fspath(path) else _shown(spark_path)
    _refuse_json_root(spark_path, dataset)
    with _lost_server_named(dataset), \
            jobs_cancelled_on_interrupt(df.sparkSession) as cancel:  # from the first call to Spark on
        _refuse_streaming(df, dataset)
        conf = df.sparkSession.conf
        case_sensitive = str(conf.get("spark.sql.caseSensitive", "false")).lower() == "true"
        types = check_columns(df.schema, format, case_sensitive)
        keys = check_cluster_by(cluster_by, types, case_sensitive)
        codecs = check_codecs(codecs, types, case_sensitive)
        options = check_options(options, format, types, case_sensitive)
        key_column = written_key = None
        if format == "webdataset":
            _refuse_key_only(types, options, dataset)
            webdataset_members(types, options, codecs)  # the JVM's refusals, before the count job
            _check_webdataset_source(df.sparkSession, spark_path, dataset)
            key_column = _key_and_cls(types, options)[0]
            written_key = key_as_written(key_column, options)

        fs, root = storage.resolve(spark_path, storage_options)
        existing = _is_nonempty(fs, root)
        if existing and mode == "error":
            raise DatasetExistsError(f"{dataset!r} already exists and is not empty; pass "
                                     "mode='overwrite' to replace it, or choose another path")
        if existing and mode == "overwrite":
            _refuse_overwriting_input(df, spark_path, dataset)
        started = time.monotonic()
        with job_failure_named(dataset, format, "nothing was written, and the path is as it was",
                               _connection_lost, cancel):
            counts, twice, missing, invalid = count_rows(
                df, written_key, options.get("invalidKeys", "error").lower() == "error")
        refuse_bad_keys(dataset, key_column, missing, invalid)
        refuse_duplicate_keys(dataset, key_column, twice, options)
        count = sum(counts)
        n = max(1, math.ceil(count / samples_per_shard))
        log.info("writing %d samples of %s as %d %s shards to %s", count, dataset, n, format,
                 spark_path)
        if keys:
            n = clustered_shards(count, samples_per_shard)
            df = clustered(df, columns(df.schema, keys), n)
        else:
            df = even_shards(df, counts, samples_per_shard, n)
        spark_mode = _spark_mode(mode, existing)
        overwrite = bool(mode == "overwrite" and existing)
        if format == "webdataset":
            with job_failure_named(dataset, format, lambda: left_after_failure(
                    fs, root, MANIFEST_NAME, overwrite), _connection_lost, cancel):
                with _write_confs(df.sparkSession):
                    _save_webdataset(df, spark_path, spark_mode, dataset, samples_per_shard,
                                     codecs, options)
            manifest = read_manifest(dataset, storage_options)
            warn_rows_left_out(dataset, count, manifest.num_samples)
            return manifest

        old = _remove_old_manifest(fs, root, dataset) if mode == "overwrite" else None
        there = {posixpath.basename(n.rstrip("/")) for n in fs.ls(root, detail=False)} \
            if existing else set()
        df, observation = observed_rows(df)  # counted in the write job itself

        def left() -> str:
            restore_manifest(fs, f"{root}/{MANIFEST_NAME}", *(old or (None, ())))
            return left_after_failure(fs, root, MANIFEST_NAME, overwrite)
        with job_failure_named(dataset, format, left, _connection_lost, cancel):
            _write_parquet(df, spark_path, spark_mode, samples_per_shard, samples_per_row_group)
        files = _committed_parquet(fs, root)
        log.info("Spark committed %d files in %.1fs; gathering their statistics in a Spark job",
                 len(files), time.monotonic() - started)
        written = rows_written(observation)
        if not files:
            check_rows(dataset, format, written, [], n)
        entries = _gather_entries(df.sparkSession, files, spark_path, storage_options)
        try:
            check_rows(dataset, format, written, [(e["path"], e["num_samples"]) for e in entries], n)
        except WriteFailedError:  # part of a dataset must not pass for one without a manifest
            # only this write's files (Spark names them by its job): never others fsspec finds
            fs.rm([full for full, rel, _ in files if rel not in there] +
                  [f"{root}/_SUCCESS"] * (fs.exists(f"{root}/_SUCCESS") and "_SUCCESS" not in there))
            raise
        manifest = _build_manifest(df.sparkSession, entries, codecs, dataset)
        write_manifest(manifest, spark_path, storage_options)
        log.info("wrote %s/%s: %d samples in %d shards, %.1fs in all", dataset, MANIFEST_NAME,
                 manifest.num_samples, len(manifest.shards), time.monotonic() - started)
        return manifest

