"""Run one indexing job per file: on a local thread pool with a progress bar, or on Spark.

Reading a footer or scanning a tar waits on storage, so threads overlap the waits (pyarrow and
file reads release the GIL); `spark=` spreads the same work over executors for 10,000+ files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ..errors import SparkfeedError

__all__ = ["run_local", "run_spark", "THREADS"]
log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

# Footer and header reads mostly wait on storage: many more threads than cores pay off on
# object stores and cost little locally.
THREADS = min(32, 4 * (os.cpu_count() or 1))


def run_local(fn: Callable[[T], R], items: Sequence[T], what: str, dataset: str,
              progress: bool = True) -> list[R]:
    """`fn` over `items` on a thread pool, results in order, with a tqdm bar named `what`."""
    from tqdm.auto import tqdm

    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(THREADS, len(items)),
                            thread_name_prefix="sparkfeed-index") as pool:
        results = pool.map(fn, items)
        return list(tqdm(results, total=len(items), desc=what, unit="file", disable=not progress,
                         leave=False))


def run_spark(spark, task: Callable, items: Sequence, what: str) -> list:
    """`task(iterator of items) -> iterator of results` over Spark partitions; results in the
    order of `items` (each result is a (position, value) pair internally)."""
    sc = spark.sparkContext
    slices = max(1, min(len(items), 4 * sc.defaultParallelism))
    sc.setJobDescription(f"sparkfeed index: {what} ({len(items)} files)")
    try:
        pairs = (sc.parallelize(list(enumerate(items)), slices)
                 .mapPartitions(lambda it: _positioned(task, it)).collect())
    except Exception as exc:
        if "No module named 'sparkfeed'" in str(exc):
            raise SparkfeedError("the Spark executors' Python cannot import sparkfeed; install it "
                                 "where the executors run, or point PYSPARK_PYTHON at it") from exc
        raise
    finally:
        sc.setJobDescription(None)
    return [value for _, value in sorted(pairs, key=lambda p: p[0])]


def _positioned(task: Callable, pairs):
    pairs = list(pairs)
    for (i, _), value in zip(pairs, task(item for _, item in pairs)):
        yield i, value
