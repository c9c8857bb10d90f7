"""Hive partition keys typed double (`p=0.5/`): each directory's statistics are its one value, so
no NaN hides beside them. Pruning took such a key for a float column that may hold NaN (Parquet
leaves NaN out of min and max), and a filter a NaN passes (`p != 0.5`, `not in`, `~(p < 2)`)
pruned no directory: every file was opened by the count pass. Such filters now prune the
directories they rule out, with the rows pyarrow keeps."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import sparkfeed

p = pc.field("p")


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """Three directories p=0.5, 1.5, 2.5 of one file of two row groups each."""
    root = tmp_path_factory.mktemp("keyed")
    for k, value in enumerate(["0.5", "1.5", "2.5"]):
        (root / f"p={value}").mkdir()
        pq.write_table(pa.table({"id": pa.array(range(4 * k, 4 * k + 4), pa.int64())}),
                       root / f"p={value}" / "part-0.parquet", row_group_size=2)
    sparkfeed.index(str(root), progress=False)
    assert {c.name: c.type for c in sparkfeed.read_manifest(str(root)).schema}["p"] == "double"
    return str(root)


@pytest.mark.parametrize("expr,pruned", [(p != 0.5, 1), (~(p < 2), 2), (~p.isin([0.5, 1.5]), 2),
                                         ([("p", "not in", [0.5])], 1), (p > 1, 1), (pc.is_nan(p), 3)],
                         ids=str)
def test_a_double_partition_key_prunes_filters_a_nan_would_pass(keyed, expr, pruned):
    """The directories ruled out are pruned; the rows are pyarrow's."""
    table = ds.dataset(keyed, partitioning=ds.partitioning(pa.schema([("p", pa.float64())]), flavor="hive")).to_table()
    reference = expr if isinstance(expr, pc.Expression) else pq.filters_to_expression(expr)
    loader = sparkfeed.DataLoader(keyed, batch_size=4, columns=["id"], filter=expr)
    assert sorted(i for b in loader for i in b["id"].tolist()) == sorted(table.filter(reference)["id"].to_pylist())
    assert loader.stats()["shards_pruned"] == pruned
