"""`loader.stats()` accounts for every row: what the row groups left after pruning hold is either
delivered (`samples`) or dropped by the filter (`rows_filtered`), over real Parquet files."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import sparkfeed
from dsutil import write_parquet


def _trailing_empty(root: str) -> sparkfeed.DataLoader:
    """400 rows in 4 row groups of 100; the last holds only labels 0 and 9, so its statistics
    (min 0, max 9) admit `label == 5` while none of its rows passes."""
    label = np.array([i % 10 for i in range(300)] + [0 if i % 2 else 9 for i in range(100)], np.int32)
    write_parquet(root, pa.table({"id": np.arange(400), "label": label}), rows_per_shard=400,
                  rows_per_group=100)
    return root


def _rows_left(stats: dict, rows_per_group: int) -> int:
    left = stats["row_groups_planned"] - stats["row_groups_pruned"] - stats["row_groups_emptied"]
    return left * rows_per_group


@pytest.mark.parametrize("kw", [dict(num_workers=0), dict(num_workers=2),
                                dict(num_workers=2, worker_type="process", shuffle=True)])
def test_rows_of_row_groups_left_are_delivered_or_filtered(tmp_path, kw):
    """A row group that the filter's count pass finds without a matching row is never read by an
    epoch: `row_groups_emptied` counts it, beside the statistics' `row_groups_pruned` (before: in
    neither that nor rows_filtered, so its 100 rows went unaccounted)."""
    loader = sparkfeed.DataLoader(_trailing_empty(str(tmp_path)), batch_size=10,
                                  filter=[("label", "==", 5)], **kw)
    delivered = sum(len(b["id"]) for b in loader)
    stats = loader.stats()
    assert delivered == stats["samples"] == 30
    assert (stats["row_groups_pruned"], stats["row_groups_emptied"], stats["shards_emptied"]) == (0, 1, 0)
    if kw.get("worker_type") != "process":  # (processes read a shared shuffle block on each side)
        assert stats["samples"] + stats["rows_filtered"] == _rows_left(stats, 100)


def test_a_mix_counts_what_a_source_count_pass_emptied(tmp_path):
    """A mix's totals count it too, and its source's rows are delivered or filtered."""
    first = _trailing_empty(str(tmp_path / "a"))
    second = str(tmp_path / "b")
    write_parquet(second, pa.table({"id": np.arange(50), "label": np.full(50, 5, np.int32)}),
                  rows_per_shard=50, rows_per_group=50)
    loader = sparkfeed.DataLoader([sparkfeed.Source(first, filter=[("label", "==", 5)]),
                                   sparkfeed.Source(second)], batch_size=10, columns=["id", "label"])
    assert sum(len(b["id"]) for b in loader) == 80
    stats = loader.stats()
    assert (stats["row_groups_pruned"], stats["row_groups_emptied"]) == (0, 1)
    assert stats["source.0.samples"] + stats["source.0.rows_filtered"] == 300
