"""Partition columns are made from each shard's partition values (the manifest's): a value that
is false or zero is that value, never a null, and one that does not fit the column's type is an
error naming the shard, not a null."""

import json
import os

import pyarrow as pa
import pytest

import sparkfeed

deltalake = pytest.importorskip("deltalake")


def _rows(loader, *names):
    return sorted(tuple(b[n][i] if isinstance(b[n], list) else b[n][i].item() for n in names)
                  for b in loader for i in range(len(b["id"])))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_delta_table_partitioned_by_a_boolean_reads_false_as_false(tmp_path, workers):
    """`write_deltalake(partition_by=["b"])`: the b=false files' rows came out with b null, so a
    read failed ("no value in ['b']"), `filter b == False` found nothing and on_error="skip"
    dropped them all without a word (a scalar False was taken for a missing value)."""
    root = str(tmp_path / "t")
    table = pa.table({"id": pa.array(range(6), pa.int64()), "b": [True, False, True, False, False, True],
                      "z": pa.array([0, 1, 0, 1, 0, 1], pa.int32())})
    deltalake.write_deltalake(root, table, partition_by=["b", "z"])
    sparkfeed.index(root)
    want = sorted((i, b, z) for i, b, z in zip(*(table[c].to_pylist() for c in ("id", "b", "z"))))
    got = _rows(sparkfeed.DataLoader(root, batch_size=4, num_workers=workers), "id", "b", "z")
    assert got == want
    false_only = sparkfeed.DataLoader(root, batch_size=4, num_workers=workers, filter=[("b", "==", False)])
    assert _rows(false_only, "id", "b", "z") == [r for r in want if not r[1]]
    zero_only = sparkfeed.DataLoader(root, batch_size=4, num_workers=workers, filter=[("z", "==", 0)])
    assert _rows(zero_only, "id", "b", "z") == [r for r in want if r[2] == 0]


def test_a_partition_value_that_does_not_fit_its_type_is_an_error_naming_the_shard(tmp_path):
    root = str(tmp_path / "t")
    deltalake.write_deltalake(root, pa.table({"id": pa.array([1, 2], pa.int64()), "z": pa.array([5, 6], pa.int32())}),
                              partition_by=["z"])
    sparkfeed.index(root)
    path = os.path.join(root, "_sparkfeed.json")
    with open(path) as f:
        manifest = json.load(f)
    shard = manifest["shards"][0]
    shard["partition"]["z"] = "not a number"
    with open(path, "w") as f:
        json.dump(manifest, f)
    with pytest.raises(sparkfeed.ShardReadError, match=rf"shard '{shard['path']}'.*'not a number'.*int32"):
        list(sparkfeed.DataLoader(root, batch_size=4))
