"""Files that hold one list column as a fixed-size list and as a list (or fixed-size lists of
two sizes) merge to a list, as Spark reads all of them as an array; they were refused as a
schema disagreement."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import sparkfeed


@pytest.mark.parametrize("kinds,merged", [
    ((pa.list_(pa.float32(), 2), pa.list_(pa.float32())), "list<element: float>"),
    ((pa.list_(pa.float32()), pa.list_(pa.float32(), 2)), "list<element: float>"),
    ((pa.list_(pa.float32(), 2), pa.large_list(pa.float32())), "large_list<element: float>"),
    ((pa.list_(pa.float32(), 2), pa.list_(pa.float32(), 3)), "list<element: float>"),
])
def test_a_fixed_size_list_beside_a_list_is_read_as_a_list(tmp_path, kinds, merged):
    rows = {}
    for f, kind in enumerate(kinds):
        ids = [2 * f, 2 * f + 1]
        values = [[float(i)] * (kind.list_size if pa.types.is_fixed_size_list(kind) else 2) for i in ids]
        rows.update(zip(ids, values))
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "v": pa.array(values, kind)}),
                       tmp_path / f"part-{f}.parquet")
    m = sparkfeed.index(str(tmp_path), progress=False)
    assert {c.name: c.type for c in m.schema}["v"] == merged
    got = {}
    for batch in sparkfeed.DataLoader(str(tmp_path), batch_size=1, num_workers=2):
        assert batch["v"].dtype == torch.float32
        got.update({i: v.tolist() for i, v in zip(batch["id"].tolist(), batch["v"])})
    assert got == rows
