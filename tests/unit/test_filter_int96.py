"""Filters over INT96 timestamps (Spark's default layout, Impala's, Hive's): Parquet defines no
order for INT96, so writers record no statistics for it (and readers must ignore any), and the
manifest holds none: a filter on such a column prunes nothing and keeps exactly the rows pyarrow
keeps, dates past 2262 (read at microseconds, `arrowtypes.INT96_UNIT`) included; another column
of the same filter still prunes."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import sparkfeed
from sparkfeed.arrowtypes import INT96_UNIT

TIMES = [dt.datetime(2024, 1, 1) + dt.timedelta(days=400 * i, microseconds=i) for i in range(9)] + \
        [dt.datetime(9999, 12, 31, 23, 59, 59, 999999), dt.datetime(1, 1, 1), None]


@pytest.fixture(scope="module")
def int96(tmp_path_factory):
    """One file of row groups of 4: `t` INT96, `id` sorted."""
    root = tmp_path_factory.mktemp("int96")
    table = pa.table({"id": pa.array(range(len(TIMES)), pa.int64()), "t": pa.array(TIMES, pa.timestamp("us"))})
    pq.write_table(table, root / "part-0.parquet", row_group_size=4, use_deprecated_int96_timestamps=True)
    assert pq.ParquetFile(root / "part-0.parquet").metadata.row_group(0).column(1).physical_type == "INT96"
    sparkfeed.index(str(root), progress=False)
    return pq.read_table(root / "part-0.parquet", **INT96_UNIT), str(root)


t = pc.field("t")
LATE = dt.datetime(2027, 1, 1)


@pytest.mark.parametrize("expr", [
    t > LATE, t <= LATE, t == TIMES[3], t != TIMES[3], t.isin([TIMES[3], TIMES[9]]), ~t.isin([TIMES[0]]),
    t >= dt.datetime(9999, 1, 1), t < dt.datetime(1000, 1, 1), t.is_null(), (t > LATE) & (pc.field("id") < 6),
], ids=str)
def test_an_int96_filter_keeps_what_arrow_keeps_and_prunes_only_by_other_columns(int96, expr):
    """The rows are pyarrow's; the manifest holds no statistics of `t`, so only `id < 6` prunes
    (the last of the three row groups)."""
    table, root = int96
    manifest = sparkfeed.read_manifest(root)
    assert all("t" not in rg.stats for rg in manifest.shards[0].row_groups) and "t" not in manifest.shards[0].stats
    loader = sparkfeed.DataLoader(root, batch_size=4, columns=["id"], filter=expr)
    assert sorted(i for b in loader for i in b["id"].tolist()) == sorted(table.filter(expr)["id"].to_pylist())
    assert loader.stats()["row_groups_pruned"] == (1 if "id" in str(expr) else 0)
