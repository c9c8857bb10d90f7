"""What `sparkfeed.write` checks around its Spark jobs: a job that fails is told as the write of
this dataset in this format (the Spark error its cause), and the rows Spark's write tasks saw are
counted in the write job itself (an Observation, no extra job) and compared with what the
manifest is about to record, so a driver that cannot see what the executors wrote (a path local
to the driver on a cluster) fails naming the dataset instead of writing a manifest short of rows; and a Spark Connect server
that stops answering is told as such.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import re
import time

from . import storage
from .errors import SparkfeedError

__all__ = ["WriteFailedError", "job_failure_named", "observed_rows",
           "rows_written", "check_rows", "restore_manifest", "left_after_failure",
           "warn_rows_left_out"]

log = logging.getLogger(__name__)

# How long to wait for the write's observed row count once Spark returned (it arrives through
# Spark's listener bus, normally within milliseconds); past it the count is not checked.
_OBSERVATION_WAIT_S = 30.0
_PART = re.compile(r"part-(\d+)-")


class WriteFailedError(SparkfeedError):
    """A Spark job of `sparkfeed.write` failed (a UDF raising, executors lost for good, ...), or
    what Spark's tasks wrote is not what the driver finds at the path. The message names the
    dataset, the format and the first line of the reason; the Spark error is its `__cause__`."""


def reason(exc: BaseException) -> str:
    """One line saying why a Spark job failed: a Python worker's exception line (`ValueError:
    bad row 37`), else the first line of Spark's error that is not py4j's `An error occurred
    while calling o123.parquet`."""
    text = str(exc).split("JVM stacktrace:")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "Traceback (most recent call last):" in text:
        tail = [line for line in text.splitlines() if line.strip() and not line[0].isspace()]
        if tail:
            return tail[-1].strip()[:500]
    lines = [line.lstrip(": ") for line in lines if not line.startswith("An error occurred while")]
    return (lines[0] if lines else type(exc).__name__)[:500]


@contextlib.contextmanager
def job_failure_named(dataset: str, format: str, left, lost_connection, cancel=None):
    """Inside: an exception from Spark (not already a SparkfeedError, and not a lost Spark
    Connect server, `lost_connection(exc)`, told elsewhere) is a WriteFailedError naming the
    dataset and format and saying what the path holds now (`left`, or what `left()` says, which
    may put an overwritten dataset's manifest back: also done on Ctrl-C, after `cancel()` has
    cancelled the write's jobs)."""
    try:
        yield
    except SparkfeedError:
        raise
    except KeyboardInterrupt:  # cancel the jobs, then put back what `left()` can
        if cancel is not None:
            cancel()
        if callable(left):
            left()
        raise
    except Exception as exc:
        if lost_connection(exc):
            raise
        said = left() if callable(left) else left
        raise WriteFailedError(f"dataset {dataset!r}: the {format} write failed in Spark "
                               f"({type(exc).__name__}: {reason(exc)}); {said}") from exc


def restore_manifest(fs, name: str, old: bytes | None, shards) -> bool:
    """Put the overwritten dataset's manifest `old` back at `name` when every shard it names
    (`shards`: (path, bytes)) is still there with its size: the job failed before Spark deleted
    the old files (a failure in a stage before the write tasks). True when it was put back."""
    if old is None:
        return False
    try:
        if not all(fs.size(path) == size for path, size in shards):
            return False
    except OSError:  # a shard gone: Spark had deleted the old data
        return False
    storage.write_atomic(fs, name, old)
    return True


def left_after_failure(fs, root: str, manifest: str, overwrite: bool) -> str:
    """What the path holds after the write job failed, looked at: the old dataset (its manifest
    there), or no dataset, Spark's (and the webdataset source's) abort having removed the part
    files (and the old dataset's, when overwrite deleted them before writing)."""
    fs.invalidate_cache(root)
    if fs.exists(f"{root}/{manifest}"):
        return ("the dataset that was at the path is unchanged (the job failed before Spark "
                "replaced it); fix the cause and write again")
    gone = (" The dataset that was there is gone: overwrite deletes it before writing."
            if overwrite else "")
    parts = _part_files(fs, root)
    held = ("the failed job's part files were removed" if not parts else
            f"{len(parts)} part file(s) are there without a manifest, such as {parts[0]!r}: old "
            "data Spark had not deleted yet, or files of tasks that committed in place")
    return (f"no manifest was written, so the path holds no dataset ({held}).{gone} Fix the "
            "cause and write again")


def _part_files(fs, root: str) -> list[str]:
    """The names of the part files directly under `root` (none when it is not there)."""
    try:
        names = [posixpath.basename(n.rstrip("/")) for n in fs.ls(root, detail=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if n.startswith("part-"))


def observed_rows(df):
    """(`df` with a count of its rows observed, the Observation): the count comes with the job
    that writes `df`, so it costs no job of its own."""
    from pyspark.sql import functions as F

    from .session import is_connect

    if is_connect(df.sparkSession):
        from pyspark.sql.connect.observation import Observation
    else:
        from pyspark.sql.observation import Observation
    observation = Observation()
    return df.observe(observation, F.count(F.lit(1)).alias("rows")), observation


def rows_written(observation) -> int | None:
    """The observed row count of the finished write, or None where Spark did not report it
    (logged; the check is then skipped, never waited on without end)."""
    jo = getattr(observation, "_jo", None)
    if jo is not None:  # classic: the count arrives through the listener bus
        deadline = time.monotonic() + _OBSERVATION_WAIT_S
        while not jo.future().isCompleted():
            if time.monotonic() > deadline:
                log.warning("Spark did not report the write's row count; not compared with the "
                            "manifest")
                return None
            time.sleep(0.01)
    try:
        return int(observation.get["rows"])
    except Exception as exc:  # Connect without the metrics, or a Spark that lacks them
        log.warning("Spark did not report the write's row count (%s); not compared with the "
                    "manifest", exc)
        return None


def check_rows(dataset: str, format: str, written: int | None, shards, partitions: int) -> None:
    """A WriteFailedError when the shards the driver found (`shards`: (file name, rows)) hold
    fewer or more rows than Spark's write tasks wrote (`written`), naming those of the
    `partitions` write tasks (0 .. partitions-1) that left no file the driver sees."""
    found = sum(rows for _, rows in shards)
    if shards and written in (None, found):  # Spark writes one file even of no rows
        return
    seen = {int(m[1]) for name, _ in shards if (m := _PART.match(name))}
    missing = [f"part-{i:05d}-*" for i in range(partitions) if i not in seen]
    shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
    which = (f"; write tasks without a file there: {shown} (a task given no rows writes none)"
             if missing else "")
    raise WriteFailedError(
        f"dataset {dataset!r}: Spark's tasks wrote {'some' if written is None else f'{written:,}'}"
        f" rows, but the {format} shards "
        f"found at the path hold {found:,} ({len(shards)} files){which}. The executors and this "
        "driver do not see the same files there (a path local to one machine, on a cluster? or "
        "storage_options= sending fsspec elsewhere than Spark's Hadoop configuration, such as "
        "another S3 endpoint); no manifest was written, and the part files found there were "
        "removed. Write to storage every machine shares (HDFS, S3, a shared mount)")


def warn_rows_left_out(dataset: str, counted: int, samples: int) -> None:
    """Logs, where the write's caller sees it (not only in Spark's driver log, which a log level
    of ERROR hides), how many rows of a webdataset write are not in the dataset: a row whose
    every member is null writes no tar sample."""
    if samples < counted:
        log.warning("dataset %r: %d of the %d rows written had every member null (no key-only "
                    "sample can exist in a tar) and are not in the dataset; fill or drop those "
                    "rows, or add a column written to the json member", dataset,
                    counted - samples, counted)


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

