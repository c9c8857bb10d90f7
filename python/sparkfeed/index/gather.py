"""Run one indexing job per file: on a local thread pool with a progress bar, or on Spark.

Reading a footer or scanning a tar waits on storage, so threads overlap the waits (pyarrow and
file reads release the GIL); `spark=` spreads the same work over executors for 10,000+ files,
on a classic session or over Spark Connect (the writer's footer job runs here too).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ..errors import SparkfeedError
from ..session import is_connect

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


def run_spark(spark, task: Callable, items: Sequence[tuple], schema: str, what: str) -> list:
    """`task(iterator of item tuples) -> iterator of JSON-ready results` over Spark tasks (the
    `schema` of an item: "full string, rel string, size long"); results in the order of
    `items`. DataFrame operations only (createDataFrame -> repartition -> mapInArrow ->
    collect), so it runs the same on a classic session and over Spark Connect, which has no
    sparkContext and no RDDs; results travel as JSON."""
    if not items:
        return []
    frame = spark.createDataFrame([(i, *item) for i, item in enumerate(items)], f"pos long, {schema}")
    job = frame.repartition(max(1, min(len(items), TASKS))).mapInArrow(
        lambda batches: _json_results(task, batches), "pos long, result string")
    classic = not is_connect(spark)
    if classic:
        spark.sparkContext.setJobDescription(f"sparkfeed: {what} ({len(items)} files)")
    try:
        rows = job.collect()
    except Exception as exc:
        if "No module named 'sparkfeed'" in str(exc):
            raise SparkfeedError(f"the Spark executors' Python cannot import sparkfeed, so {what} "
                                 "could not run; install sparkfeed where the executors run, or point "
                                 "PYSPARK_PYTHON at the Python that has it") from exc
        raise
    finally:
        if classic:
            spark.sparkContext.setJobDescription(None)
    return [json.loads(r.result) for r in sorted(rows, key=lambda r: r.pos)]


def _json_results(task: Callable, batches):
    """mapInArrow body: batches of (pos, item...) rows -> batches of (pos, JSON result)."""
    import pyarrow as pa

    for batch in batches:
        columns = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
        results = [json.dumps(r) for r in task(zip(*columns[1:]))]
        yield pa.RecordBatch.from_arrays([pa.array(columns[0], pa.int64()), pa.array(results, pa.string())],
                                         names=["pos", "result"])
