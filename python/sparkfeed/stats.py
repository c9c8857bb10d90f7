"""Counters every stage adds to; `loader.stats()` returns their sum as a flat dict.

Workers count in their own process and ship deltas with each batch (see `dataset.py`); the main
process folds them into one `Stats`. A lock keeps the prefetch thread and the consumer honest.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

# Counters always present in `loader.stats()`, even when zero.
BASE_COUNTERS = (
    "samples", "batches", "bytes_read", "shards_planned", "shards_pruned", "row_groups_planned",
    "row_groups_pruned", "shards_emptied", "row_groups_emptied", "rows_filtered", "samples_skipped",
    "wait_s",
)


class Stats:
    """A thread-safe bag of named float counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, float] = dict.fromkeys(BASE_COUNTERS, 0)

    def forked(self) -> None:
        """In a forked child: a lock of its own, for the one copied may have been held by a
        parent's thread (the prefetch thread counting) as the child forked, by a thread the child
        does not have. The counters are the child's copy; it has no other thread yet."""
        self._lock = threading.Lock()

    def add(self, name: str, value: float = 1) -> None:
        """Add `value` to counter `name` (created at zero)."""
        with self._lock:
            self._values[name] = self._values.get(name, 0) + value

    def set(self, name: str, value: float) -> None:
        """Set a gauge (a value that is not a sum, such as a queue depth)."""
        with self._lock:
            self._values[name] = value

    def merge(self, delta: Mapping[str, float]) -> None:
        """Add every counter of `delta` (a worker's report)."""
        with self._lock:
            for name, value in delta.items():
                self._values[name] = self._values.get(name, 0) + value

    def take(self) -> dict[str, float]:
        """Return the counters and reset them to zero (a worker's delta to ship)."""
        with self._lock:
            values, self._values = self._values, {}
        return values

    def snapshot(self) -> dict[str, float]:
        """A copy of the counters, integers where the value is whole."""
        with self._lock:
            return {k: (int(v) if float(v).is_integer() and not k.endswith("_s") else v)
                    for k, v in self._values.items()}
