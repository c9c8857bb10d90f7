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
import io
import json
import logging
import math
import os
import posixpath
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping

from urllib.parse import unquote, urlsplit

from . import checks, storage
from ._version import __version__
from .errors import SparkfeedError
from .manifest import MANIFEST_NAME, Manifest, parse_manifest, read_manifest, write_manifest
from .writecheck import (WriteFailedError, check_rows, job_failure_named, left_after_failure,
                         observed_rows, restore_manifest, rows_written, warn_rows_left_out)
from .writecolumns import check_cluster_by, check_codecs, check_columns, columns
from .writeoptions import SampleKeyError, check_options, webdataset_members, writer_failure

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


class OverwriteInputError(SparkfeedError, ValueError):
    """`mode="overwrite"` of a path the DataFrame reads: the old data would be deleted before
    Spark reads it."""


# ---------------------------------------------------------------- paths and inputs (no Spark job)

# A URL without an authority, as Hadoop prints one: `file:/data/ds`, `hdfs:/data/ds` (the default
# namenode). Two letters at least: `C:/x` is no scheme.
_NO_AUTHORITY = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):(?!//)(.*)", re.DOTALL)


def _spark_path(path: str) -> str:
    """What Spark is given: a URL as is, a local path as an absolute file:/// URL. Hadoop's
    spelling without an authority is that URL with an empty one: `file:/a` is `file:///a` (and
    `file:a` a relative local path), `hdfs:/a` is `hdfs:///a`. (Before, `file:/data/ds`, which
    Spark itself prints, was taken for a relative local path: the dataset went to
    `./file:/data/ds`; `hdfs:/data/ds` went there too, on the driver's disk.)"""
    bare = _NO_AUTHORITY.fullmatch(path)
    if bare and bare[1].lower() == "file":
        path = bare[2]
    elif bare and bare[2].startswith("/"):
        return f"{bare[1]}://{bare[2]}".rstrip("/")
    if "://" in path:
        return path.rstrip("/")
    return "file://" + os.path.abspath(os.path.expanduser(path))


def _location(url: str) -> tuple[str, str, str]:
    """(scheme, authority, path) of a Spark or fsspec path, so that two spellings of one place
    compare equal: `file:/a`, `file:///a` and `/a`; `s3a://b/k` and `s3://b/k`; `%20` and ` `.
    A local path is resolved (symlinks, `..`)."""
    url = storage.normalise_url(url)
    if "://" not in url and not url.startswith("file:"):
        return "file", "", os.path.realpath(os.path.expanduser(url))
    parts = urlsplit(url)
    path = posixpath.normpath(unquote(parts.path) or "/")
    if parts.scheme in ("", "file", "local"):
        return "file", "", os.path.realpath(path)
    return parts.scheme.lower(), parts.netloc.lower(), path


# A webdataset dataset read with spark.read.format("webdataset") is no input file to Spark; its
# table (jvm/.../WebDatasetTable.java) names its qualified root in the logical plan instead.
_WEBDATASET_RELATION = re.compile(r"RelationV2\[.*\] webdataset:(.+)$", re.MULTILINE)


def _inputs(df) -> list[str]:
    """The files `df` reads (`inputFiles()`) and the roots of the webdataset datasets it reads
    (from its plan as `explain` prints it). Both are DataFrame methods, so this runs the same on
    a classic session and over Spark Connect."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text):  # explain() prints, on both kinds of session
        df.explain(extended=True)
    return list(df.inputFiles()) + sorted(set(_WEBDATASET_RELATION.findall(text.getvalue())))


def _refuse_overwriting_input(df, spark_path: str, dataset: str) -> None:
    """An OverwriteInputError when `df` reads a file at or under `spark_path`, or the webdataset
    dataset there: overwrite deletes the old data before Spark reads it (Spark's own
    `df.write.mode("overwrite")` then fails with FILE_NOT_EXIST, the data gone, or, where a shuffle
    happened to read first, works by luck; a webdataset read found nothing and 0 samples were
    committed). A host given on one side only still counts as the same place (`hdfs:///a` and
    `hdfs://nn/a`)."""
    scheme, host, root = _location(spark_path)
    for f in _inputs(df):
        s, h, p = _location(f)
        if s == scheme and (h == host or not h or not host) and \
                (p == root or p.startswith(root.rstrip("/") + "/")):
            raise OverwriteInputError(
                f"cannot overwrite {dataset!r}: the DataFrame being written reads from it ({f}), "
                "and overwrite deletes the old data before Spark reads it; write to a new path "
                "instead")


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


def _refuse_streaming(df, dataset: str) -> None:
    """A ValueError for a streaming DataFrame: a dataset is written once, from a batch (before,
    the count failed with Spark's 'must be executed with writeStream.start()')."""
    if df.isStreaming:
        raise ValueError(f"dataset {dataset!r}: `df` is a streaming DataFrame, and sparkfeed.write "
                         "writes a batch one; write each micro-batch as a dataset of its own, e.g. "
                         "df.writeStream.foreachBatch(lambda b, i: sparkfeed.write(b, "
                         "f'{root}/batch={i}')).start()")


def _refuse_json_root(spark_path: str, dataset: str) -> None:
    """A ValueError, before any Spark job, for a dataset root whose name ends in `.json`:
    `read_manifest`, `DataLoader` and `index` take such a path for the manifest file itself (one
    kept apart from its data), so the dataset could not be loaded by its path. (Before, the
    Parquet write put its manifest inside as a stray `<name>.json.tmp-…` and returned as if it had
    succeeded; the webdataset write committed and then failed reading its manifest back.)"""
    if spark_path.rstrip("/").endswith(".json"):
        raise ValueError(f"`path` should not end in '.json', but got {dataset!r}: sparkfeed reads "
                         "a path ending in '.json' as a manifest file, not as a dataset directory, "
                         "so the dataset could not be loaded by its path; choose another name "
                         "(for example without the '.json')")


def _is_nonempty(fs, root: str) -> bool | None:
    """None: nothing there; False: an empty directory; True: a file or a non-empty directory."""
    fs.invalidate_cache(root)
    if not fs.exists(root):
        return None
    return not fs.isdir(root) or bool(fs.ls(root, detail=False))


# ---------------------------------------------------------------- footer statistics (executors)

def _footer_entry(fs, full: str, rel: str, size: int) -> dict:
    """The manifest entry of one committed Parquet file, from its footer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from . import footer
    from .arrowtypes import INT96_UNIT

    def footer_of(source):
        pf = pq.ParquetFile(source, **INT96_UNIT)
        return pf.metadata, pf.schema_arrow

    def read_footer():
        """The footer; the storage's I/O errors stay as they are (transient ones are retried),
        pyarrow's own parse errors are `storage.CorruptData` (a corrupt footer fails at once)."""
        try:
            with fs.open(full, "rb") as f, storage.parsing(f) as watched:
                return footer_of(watched)
        except ValueError as exc:
            if not storage.ignores_ranges(exc, full, "reading each file whole for its footer"):
                raise
        data = fs.cat_file(full)  # one GET, no Range header
        with storage.parsing():
            return footer_of(pa.BufferReader(data))

    md, schema = storage.with_retries(read_footer, f"reading the footer of {full}")
    return footer.entry(md, schema, rel, size)


def _footer_entries(items: Iterable[tuple[str, str, int]], url: str,
                    storage_options: dict | None) -> Iterator[dict]:
    """Manifest entries of (full path, relative path, size) files, one fs per call. A footer
    that cannot be read is a ShardReadError naming the dataset and the file, as the local
    index's is: on an executor, a raw pyarrow error named neither (`gather.executor_failure`
    raises it again on the driver as the ShardReadError)."""
    import pyarrow as pa

    from .errors import ShardReadError

    fs, _ = storage.resolve(url, storage_options)
    dataset = _shown(url)
    for full, rel, size in items:
        try:
            entry = _footer_entry(fs, full, rel, size)
        except (OSError, ValueError, pa.ArrowException) as exc:
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line: it travels as text
            raise ShardReadError(f"cannot read the Parquet footer ({reason}); not a Parquet file, "
                                 "or truncated", dataset=dataset, shard=rel) from exc
        yield entry


# ---------------------------------------------------------------- the write

def _committed_parquet(fs, root: str) -> list[tuple[str, str, int]]:
    """(full path, relative path, size) of the committed part files, from one listing."""
    fs.invalidate_cache(root)
    found = []
    for info in fs.ls(root, detail=True):
        name = info["name"].rstrip("/")
        base = posixpath.basename(name)
        if info.get("type") == "file" and base.startswith("part-") and base.endswith(".parquet"):
            found.append((name, base, int(info["size"])))
    return sorted(found, key=lambda t: t[1])


def _shown(url: str) -> str:
    """A dataset's path as messages show it: a local path without `file://`."""
    return url[len("file://"):] if url.startswith("file://") else url


def _gather_entries(spark, files: list, url: str, storage_options) -> list[dict]:
    """Manifest entries of the committed (full, rel, size) files, each footer read on an
    executor (`gather.run_spark`: DataFrame operations only, so also over Spark Connect)."""
    from .index import gather

    entries = gather.run_spark(spark, lambda rows: _footer_entries(rows, url, storage_options), files,
                               "full string, rel string, size long",
                               "the statistics of the written shards (no manifest was written)",
                               _shown(url))
    return sorted(entries, key=lambda e: e["path"])


def _build_manifest(spark, entries: list[dict], codecs: Mapping[str, str], path: str) -> Manifest:
    schemas = {json.dumps(e.pop("schema")) for e in entries}
    if len(schemas) != 1:
        raise SparkfeedError(f"dataset {path!r}: the written Parquet files disagree on their "
                             f"schema ({sorted(schemas)}); no manifest was written")
    schema = [{"name": n, "type": t, **({"codec": codecs[n]} if n in codecs else {})}
              for n, t in json.loads(schemas.pop())]
    doc = {"sparkfeed_manifest": 1, "format": "parquet",
           "created_by": {"sparkfeed": __version__, "spark": spark.version},
           "schema": schema,
           "num_samples": sum(e["num_samples"] for e in entries),
           "num_bytes": sum(e["num_bytes"] for e in entries),
           "shards": entries}
    return parse_manifest(doc, dataset=path)


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


def _connection_lost(exc: BaseException) -> bool:
    """True when `exc`, or an error it was raised from, is gRPC's UNAVAILABLE: the Spark Connect
    server stopped answering and pyspark's client gave up retrying (by default after about ten
    minutes: its DefaultPolicy, 15 retries with backoff up to 60 s)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = getattr(exc, "code", None)
        if callable(code) and type(exc).__module__.startswith("grpc"):
            try:
                if str(code()) == "StatusCode.UNAVAILABLE":
                    return True
            except Exception:  # a code() that is not gRPC's: not a lost connection
                pass
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def _lost_server_named(dataset: str):
    """Inside: a Spark Connect server that stops answering (pyspark's client having retried for
    about ten minutes) is a SparkfeedError saying so and what the path may hold, not a gRPC dump."""
    try:
        yield
    except Exception as exc:
        if not _connection_lost(exc):
            raise
        raise SparkfeedError(
            f"dataset {dataset!r}: the Spark Connect server stopped answering (pyspark's client "
            "gave up retrying); no manifest was written, and the path may hold part files of the "
            "failed write. Write again, with mode='overwrite', once the server is back") from exc


def _write_parquet(df, spark_path: str, spark_mode: str, samples_per_shard: int,
                   samples_per_row_group: int) -> None:
    """Spark's Parquet write, with timestamps as TIMESTAMP_MICROS for its duration."""
    with _micros_timestamps(df.sparkSession):
        (df.write.mode(spark_mode)
         .option("maxRecordsPerFile", samples_per_shard)
         .option("parquet.block.row.count.limit", samples_per_row_group)
         .option("parquet.block.size", ROW_GROUP_MAX_BYTES)
         .parquet(spark_path))


# Per session (by id): [writes of this process running on it, its conf before the first].
_TS_HELD: dict[int, list] = {}
_TS_LOCK = threading.Lock()


@contextlib.contextmanager
def _micros_timestamps(spark):
    """The session conf TIMESTAMP_MICROS (no writer option for it: Spark reads the session's)
    while any Parquet write of this process runs on `spark`: the first sets it, the last puts
    the user's value back. (Writes from threads each put back what they had found: one ending
    unset it under another still planning, which wrote INT96, without statistics, and the
    session kept MICROS.) Not put back when a Connect server went away: each call to it would
    wait out pyspark's retries again (ten more minutes) and then hide the write's error."""
    key = id(spark)
    with _TS_LOCK:
        held = _TS_HELD.setdefault(key, [0, None])
        if held[0] == 0:
            held[1] = spark.conf.get(_TS_CONF, None)
            spark.conf.set(_TS_CONF, "TIMESTAMP_MICROS")
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
                    _restore_conf(spark, held[1])


def _restore_conf(spark, before: str | None) -> None:
    if before is None:
        spark.conf.unset(_TS_CONF)
    else:
        spark.conf.set(_TS_CONF, before)


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
    with _lost_server_named(dataset):  # from the first call to Spark on
        _refuse_streaming(df, dataset)
        conf = df.sparkSession.conf
        case_sensitive = str(conf.get("spark.sql.caseSensitive", "false")).lower() == "true"
        types = check_columns(df.schema, format, case_sensitive)
        keys = check_cluster_by(cluster_by, types)
        codecs = check_codecs(codecs, types)
        options = check_options(options, format, types)
        if format == "webdataset":
            _refuse_key_only(types, options, dataset)
            webdataset_members(types, options, codecs)  # the JVM's refusals, before the count job
            _check_webdataset_source(df.sparkSession, spark_path, dataset)

        fs, root = storage.resolve(spark_path, storage_options)
        existing = _is_nonempty(fs, root)
        if existing and mode == "error":
            raise DatasetExistsError(f"{dataset!r} already exists and is not empty; pass "
                                     "mode='overwrite' to replace it, or choose another path")
        if existing and mode == "overwrite":
            _refuse_overwriting_input(df, spark_path, dataset)
        started = time.monotonic()
        with job_failure_named(dataset, format, "nothing was written, and the path is as it was",
                               _connection_lost):
            count = df.count()
        n = max(1, math.ceil(count / samples_per_shard))
        log.info("writing %d samples of %s as %d %s shards to %s", count, dataset, n, format,
                 spark_path)
        if keys:
            cols = columns(df.schema, keys)
            df = df.repartitionByRange(n, *cols).sortWithinPartitions(*cols)
        else:
            df = df.repartition(n)
        spark_mode = _spark_mode(mode, existing)
        overwrite = bool(mode == "overwrite" and existing)
        if format == "webdataset":
            with job_failure_named(dataset, format, lambda: left_after_failure(
                    fs, root, MANIFEST_NAME, overwrite), _connection_lost):
                _save_webdataset(df, spark_path, spark_mode, dataset, samples_per_shard, codecs,
                                 options)
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
        with job_failure_named(dataset, format, left, _connection_lost):
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

