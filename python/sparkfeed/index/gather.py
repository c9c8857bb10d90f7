"""Run one indexing job per file: on a local thread pool with a progress bar, or on Spark.

Reading a footer or scanning a tar waits on storage, so threads overlap the waits (pyarrow and
file reads release the GIL); `spark=` spreads the same work over executors for 10,000+ files,
on a classic session or over Spark Connect (the writer's footer job runs here too).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from .. import errors
from ..errors import SparkfeedError
from ..session import is_connect, jobs_cancelled_on_interrupt

__all__ = ["run_local", "run_spark", "bar_options", "THREADS", "TASKS"]
log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

# Footer and header reads mostly wait on storage: many more threads than cores pay off on
# object stores and cost little locally.
THREADS = min(32, 4 * (os.cpu_count() or 1))
# Spark tasks per job: enough for every core of a large cluster, never more than the files.
TASKS = 256


# A bar written to a log file (CI) rather than a terminal: one update per this many seconds,
# not several per second (each update is a line's worth of bytes in the log)
LOG_BAR_INTERVAL_S = 10.0


def bar_options(enabled: bool, stream=None) -> dict:
    """tqdm's options for a progress bar: off when not asked for; to a terminal, tqdm's own
    refresh; to anything else (a CI log), an update every `LOG_BAR_INTERVAL_S` seconds, so a
    long job still shows progress there without filling the log."""
    stream = sys.stderr if stream is None else stream
    live = (hasattr(stream, "isatty") and stream.isatty()) or "ipykernel" in sys.modules  # a notebook's widget
    return {"disable": not enabled, "file": stream, **({} if live else {"mininterval": LOG_BAR_INTERVAL_S})}


def run_local(fn: Callable[[T], R], items: Sequence[T], what: str, dataset: str,
              progress: bool = True) -> list[R]:
    """`fn` over `items` on a thread pool, results in order, with a tqdm bar named `what`."""
    from tqdm.auto import tqdm

    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(THREADS, len(items)),
                            thread_name_prefix="sparkfeed-index") as pool:
        results = pool.map(fn, items)
        return list(tqdm(results, total=len(items), desc=what, unit="file", **bar_options(progress),
                         leave=False))


def run_spark(spark, task: Callable, items: Sequence[tuple], schema: str, what: str,
              dataset: str | None = None) -> list:
    """`task(iterator of item tuples) -> iterator of JSON-ready results` over Spark tasks (the
    `schema` of an item: "full string, rel string, size long"); results in the order of
    `items`. DataFrame operations only (createDataFrame -> repartition -> mapInArrow ->
    collect), so it runs the same on a classic session and over Spark Connect, which has no
    sparkContext and no RDDs; results travel as JSON. A task's failure that sparkfeed can name
    (a module the executors' Python lacks, a sparkfeed error of the task) is raised as a
    sparkfeed error (`executor_failure`), the Spark error its cause."""
    if not items:
        return []
    frame = spark.createDataFrame([(i, *item) for i, item in enumerate(items)], f"pos long, {schema}")
    job = frame.repartition(max(1, min(len(items), TASKS))).mapInArrow(
        lambda batches: _json_results(task, batches), "pos long, result string")
    # a job group of its own, described in Spark's UI, that Ctrl-C cancels (pyspark's own
    # handler cannot while this thread waits on its py4j connection)
    with jobs_cancelled_on_interrupt(spark, f"sparkfeed: {what} ({len(items)} files)"):
        try:
            rows = job.collect()
        except Exception as exc:
            mapped = executor_failure(exc, what, dataset, _python_of(spark))
            if mapped is None:
                raise
            raise mapped from exc
    return [json.loads(r.result) for r in sorted(rows, key=lambda r: r.pos)]


# The last line of a Python worker's traceback, as Spark's error text carries it (classic and
# Connect): a module the executors' Python lacks, or an error sparkfeed raised in the task.
_NO_MODULE = re.compile(r"ModuleNotFoundError: No module named '([\w.]+)'")
_RAISED = re.compile(r"sparkfeed\.errors\.(ShardReadError|ManifestError|SparkfeedError): ([^\n]+)")


def _python_of(spark) -> str | None:
    """The Python the executors run (a classic session's `pythonExec`); None over Connect,
    where the server's configuration decides it."""
    return None if is_connect(spark) else getattr(spark.sparkContext, "pythonExec", None)


def executor_failure(exc: BaseException, what: str, dataset: str | None = None,
                     python: str | None = None) -> SparkfeedError | None:
    """The sparkfeed error a failed executor job stands for, or None when it failed for another
    reason. A missing module names the module and the executors' Python (before, only a missing
    `sparkfeed` was told; a missing dependency such as fsspec was a raw PythonException). An
    error sparkfeed raised in the task (a ShardReadError naming the dataset and shard) is raised
    again as itself, not as a PythonException wrapping its traceback."""
    text = str(exc)
    where = f"dataset {dataset!r}: " if dataset else ""
    missing = _NO_MODULE.search(text)
    if missing:
        runs = f" (they run {python!r})" if python else ""
        return SparkfeedError(
            f"{where}the Spark executors' Python{runs} cannot import {missing[1]!r} (No module named "
            f"{missing[1]!r}), so {what} could not run; install sparkfeed with its dependencies "
            "(pip install 'sparkfeed[spark]') where the executors run, or point PYSPARK_PYTHON (or "
            "spark-submit's --conf spark.pyspark.python) at the Python that has them")
    raised = _RAISED.search(text)
    if raised:
        return getattr(errors, raised[1])(raised[2].strip())
    return None


def _json_results(task: Callable, batches):
    """mapInArrow body: batches of (pos, item...) rows -> batches of (pos, JSON result)."""
    import pyarrow as pa

    for batch in batches:
        columns = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
        results = [json.dumps(r) for r in task(zip(*columns[1:]))]
        yield pa.RecordBatch.from_arrays([pa.array(columns[0], pa.int64()), pa.array(results, pa.string())],
                                         names=["pos", "result"])
