"""A filter is evaluated with helper columns (each row's number, whether it was read, which unit
it came from); a user column of the same name (`__i__`, `__ok_in__`, `__sparkfeed_unit__`) made
the filter fail ('Multiple matches for FieldRef') or read the wrong column. Invariant: the rows
delivered are those pyarrow's own filter keeps, whatever the columns are named."""

import json
import os

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import dsutil
import sparkfeed
from sparkfeed.manifest import MANIFEST_NAME

NAMES = ("__i__", "__ok_in__", "__sparkfeed_unit__", "___i__")


@pytest.fixture
def parquet_with_helper_names(tmp_path):
    n = 60
    table = pa.table({"x": list(range(n)), **{name: [k * 1000 + i for i in range(n)]
                                               for k, name in enumerate(NAMES, 1)}})
    root = str(tmp_path / "pq")
    dsutil.write_parquet(root, table, rows_per_shard=20, rows_per_group=10)
    return root, table


@pytest.mark.parametrize("expr", [
    pc.field("__i__") > 1030,
    (pc.field("x") > 10) & (pc.field("__ok_in__") < 2050),
    pc.field("__sparkfeed_unit__").isin([3005, 3017, 3042]),
    (pc.field("___i__") > 4005) | (pc.field("__i__") < 1002),
])
@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_filters_over_columns_named_as_the_helpers_keep_pyarrows_rows(parquet_with_helper_names, expr, on_error):
    root, table = parquet_with_helper_names
    loader = sparkfeed.DataLoader(root, batch_size=7, filter=expr, on_error=on_error)
    got = sorted((b["x"][i].item(), *(b[name][i].item() for name in NAMES))
                 for b in loader for i in range(len(b["x"])))
    want = sorted(tuple(r.values()) for r in table.filter(expr).to_pylist())
    assert got == want and got


def test_a_tar_column_named_ok_in_with_a_skipped_sample(tmp_path):
    """The tar reader marks each row read or skipped beside the filter's columns: a column of
    that name (here the label, member `.cls`) failed every filtered read."""
    root = str(tmp_path / "wds")
    dsutil.write_tar(root, dsutil.table(30), rows_per_shard=10)
    dsutil.rewrite_tar(root, "shard-00001.tar", lambda info, data: [
        (info, b"{not json" if info.name == "s00000017.json" else data)])
    with open(os.path.join(root, MANIFEST_NAME)) as f:
        doc = json.load(f)
    for col in doc["schema"]:
        if col["name"] == "label":
            col["name"] = "__ok_in__"
    for shard in doc["shards"]:
        shard["stats"]["__ok_in__"] = shard["stats"].pop("label")
    with open(os.path.join(root, MANIFEST_NAME), "w") as f:
        json.dump(doc, f)
    expr = pc.field("__ok_in__") >= 5
    loader = sparkfeed.DataLoader(root, batch_size=4, filter=expr, columns=["id", "__ok_in__"],
                                  on_error="skip")
    got = sorted(i for b in loader for i in b["id"].tolist())
    assert got == [i for i in range(30) if i % 10 >= 5 and i != 17]
    assert loader.stats()["samples_skipped"] == 1
