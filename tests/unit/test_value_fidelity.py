"""Every value written comes out of `DataLoader` as documented, for every column type.

The rule (README, "Batches are dicts" and "Reliability"): numbers become tensors of their own
dtype (uint64 past 2**63 included), booleans bool tensors, dates int32 days and timestamps int64
in the column's unit (the UTC instant for a zone), fixed-size and equal-length lists 2-D tensors,
`ragged=` lists a list of 1-D tensors, strings `str` and binary `bytes` (None for a null), floats
keep NaN, -0.0, infinities and subnormals, and a null where a tensor needs a value is an error
naming the column, or a counted skip under on_error="skip". Data are pyarrow-written Parquet
files, indexed in memory, with row groups and files cut across batches.
"""

import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

import sparkfeed
from sparkfeed.batch import lists_holding_nulls, ragged_as_binary
from sparkfeed.errors import ShardReadError

N = 90


def _rep(values, n=N):
    return [values[i % len(values)] for i in range(n)]


def _typed_table() -> pa.Table:
    """One column per deliverable type, holding the edge values of each."""
    return pa.table({
        "id": pa.array(np.arange(N, dtype=np.int64)),
        "b": pa.array(_rep([True, False, True, True])),
        "i8": pa.array(_rep([-128, 127, 0, -1]), pa.int8()),
        "i16": pa.array(_rep([-32768, 32767, 5]), pa.int16()),
        "i32": pa.array(_rep([-2**31, 2**31 - 1, 7]), pa.int32()),
        "i64": pa.array(_rep([-2**63, 2**63 - 1, 9]), pa.int64()),
        "u8": pa.array(_rep([0, 255, 128]), pa.uint8()),
        "u16": pa.array(_rep([0, 65535, 40000]), pa.uint16()),
        "u32": pa.array(_rep([0, 2**32 - 1, 2**31 + 5]), pa.uint32()),
        "u64": pa.array(_rep([0, 2**64 - 1, 2**63 + 5]), pa.uint64()),
        "f16": pa.array(np.array(_rep([0.0, -0.0, np.inf, -np.inf, np.nan, 6e-8, 65504.0]), np.float16)),
        "f32": pa.array(np.array(_rep([0.0, -0.0, np.inf, np.nan, 1e-45, 3.4e38]), np.float32)),
        "f64": pa.array(_rep([0.0, -0.0, -np.inf, np.nan, 5e-324, 1.7e308])),
        "day": pa.array(_rep([-719162, -1, 2932896]), pa.date32()),  # 0001-01-01, 1969-12-31, 9999-12-31
        "ms": pa.array(_rep([-62135596800000, -1, 253402300799999]), pa.timestamp("ms")),
        "us_ny": pa.array(_rep([-62135596800000000, -1, 253402300799999999]), pa.timestamp("us", tz="America/New_York")),
        "ns_utc": pa.array(_rep([-2**63 + 1, -1, 2**63 - 1]), pa.timestamp("ns", tz="UTC")),
        "s": pa.array(_rep(["", "héllo ☃ 𝄞", "a\x00b", "x" * 5000, None])),
        "ls": pa.array(_rep(["", "日本", None]), pa.large_string()),
        "bin": pa.array(_rep([b"", b"\x00\x00", b"abc", None])),
        "fsb": pa.array(_rep([b"\x00" * 4, b"abcd"]), pa.binary(4)),
        "li": pa.array(_rep([[1, 2], [3, 4], [-2**63, 2**63 - 1]]), pa.list_(pa.int64())),
        "lu64": pa.array(_rep([[2**64 - 1, 0]]), pa.list_(pa.uint64())),
        "emb": pa.array(_rep([[0.5, -0.0, float("nan")], [1e-45, 2.0, 3.0]]), pa.list_(pa.float32(), 3)),
        "ll": pa.array(_rep([[1], [2]]), pa.large_list(pa.int32())),
        "lb": pa.array(_rep([[True, False]]), pa.list_(pa.bool_())),
        "tok": pa.array(_rep([[], [1], [2, 3, 4], [-5]]), pa.list_(pa.int32())),
        "cat": pa.array(_rep(["a", "bb", "", None])).dictionary_encode(),
        "st": pa.array(_rep([{"x": 1, "y": "a"}, {"x": 2, "y": None}]),
                       pa.struct([("x", pa.int64()), ("y", pa.string())])),
    })


def _expected(table: pa.Table) -> dict[int, dict]:
    """Each row as the loader should deliver it: dates and timestamps as their integers, the
    struct as its leaves, everything else as `to_pylist` gives it."""
    for name in ("day", "ms", "us_ny", "ns_utc"):
        t = table.schema.field(name).type
        table = table.set_column(table.column_names.index(name), name,
                                 table.column(name).cast(pa.int32() if pa.types.is_date(t) else pa.int64()))
    out = {}
    for row in table.to_pylist():
        st = row.pop("st")
        row["st.x"], row["st.y"] = st["x"], st["y"]
        out[row["id"]] = row
    return out


@pytest.fixture(scope="module")
def typed(tmp_path_factory):
    """Two pyarrow-written files with odd row-group sizes, so batches cut across both."""
    root = str(tmp_path_factory.mktemp("typed"))
    table = _typed_table()
    pq.write_table(table.slice(0, 40), os.path.join(root, "a.parquet"), row_group_size=7)
    pq.write_table(table.slice(40), os.path.join(root, "b.parquet"), row_group_size=11)
    return root, _expected(table)


def _same(got, want) -> bool:
    """Equal, NaN equal to NaN and -0.0 told from 0.0; lists element by element."""
    if isinstance(got, float) and isinstance(want, float):
        return (math.isnan(got) and math.isnan(want)) or (got == want and math.copysign(1, got) == math.copysign(1, want))
    if isinstance(got, list) and isinstance(want, list):
        return len(got) == len(want) and all(_same(a, b) for a, b in zip(got, want))
    return type(got) is type(want) and got == want


def _delivered(loader) -> dict[int, dict]:
    """Every delivered row by id (checking that no id comes twice)."""
    out = {}
    for batch in loader:
        ids = batch["id"].tolist()
        for name, value in batch.items():
            assert len(value) == len(ids), name
            values = value.tolist() if isinstance(value, torch.Tensor) else \
                [v.tolist() for v in value] if name == "tok" else value
            for i, v in zip(ids, values):
                out.setdefault(i, {})[name] = v
    assert len(out) == sum(1 for _ in out)
    return out


_DTYPES = {"b": torch.bool, "i8": torch.int8, "u8": torch.uint8, "u16": torch.uint16, "u32": torch.uint32,
           "u64": torch.uint64, "f16": torch.float16, "day": torch.int32, "ms": torch.int64,
           "ns_utc": torch.int64, "li": torch.int64, "lu64": torch.uint64, "emb": torch.float32,
           "lb": torch.bool, "ll": torch.int32}


@pytest.mark.parametrize("batch_size", [1, 3, 7, 256])
@pytest.mark.parametrize("shuffle,workers", [(False, 0), (True, 2)])
def test_every_type_round_trips_exactly(typed, batch_size, shuffle, workers):
    root, expected = typed
    loader = sparkfeed.DataLoader(root, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                                  ragged=["tok"])
    got = _delivered(loader)
    assert sorted(got) == sorted(expected)
    wrong = [(i, k, v, expected[i][k]) for i, row in got.items() for k, v in row.items()
             if not _same(v, expected[i][k])]
    assert wrong == []
    first = next(iter(sparkfeed.DataLoader(root, batch_size=4, ragged=["tok"])))
    assert {k: first[k].dtype for k in _DTYPES} == _DTYPES
    assert all(t.dtype == torch.int32 for t in first["tok"])


def test_every_type_round_trips_under_a_filter(typed):
    root, expected = typed
    keep = pc.field("u64") > pa.scalar(2**63, pa.uint64())  # ids 1, 2, 4, 5, ...
    got = _delivered(sparkfeed.DataLoader(root, batch_size=5, shuffle=True, filter=keep, ragged=["tok"]))
    assert sorted(got) == [i for i in expected if i % 3 != 0]
    assert all(_same(v, expected[i][k]) for i, row in got.items() for k, v in row.items())


def _write(tmp_path, table: pa.Table, row_group_size: int = 2) -> str:
    root = str(tmp_path / "d")
    os.makedirs(root)
    pq.write_table(table, os.path.join(root, "a.parquet"), row_group_size=row_group_size)
    return root


def _null_inside_table() -> pa.Table:
    """Row 1's lists hold a null element; row 2's integer list is null."""
    return pa.table({
        "id": pa.array([0, 1, 2, 3], pa.int64()),
        "li": pa.array([[1, 2], [3, None], None, [7, 8]], pa.list_(pa.int64())),
        "fixed": pa.array([[1, 2], [3, None], [5, 6], [7, 8]], pa.list_(pa.int16(), 2)),
        "lb": pa.array([[True], [None], [False], [True]], pa.list_(pa.bool_())),
        "lf": pa.array([[1.0, 2.0], [3.0, None], [5.0, 6.0], [7.0, 8.0]], pa.list_(pa.float64())),
    })


@pytest.mark.parametrize("column", ["li", "fixed", "lb"])
def test_a_null_inside_a_list_is_a_sample_error_naming_the_column(tmp_path, column):
    """A null element of a list of integers or booleans failed the whole batch when it became a
    tensor, and on_error='skip' could not skip it; it is now a sample without a value."""
    root = _write(tmp_path, _null_inside_table())
    said = rf"row 1 has no value in \['{column}'\] \(a null list, or a null inside its list\)"
    with pytest.raises(ShardReadError, match=said):
        list(sparkfeed.DataLoader(root, batch_size=4, columns=["id", column]))
    loader = sparkfeed.DataLoader(root, batch_size=4, columns=["id", column], on_error="skip")
    batches = list(loader)
    skipped = [1, 2] if column == "li" else [1]
    assert torch.cat([b["id"] for b in batches]).tolist() == [i for i in range(4) if i not in skipped]
    assert loader.stats()["samples_skipped"] == len(skipped)
    if column == "li":
        assert torch.cat([b["li"] for b in batches]).tolist() == [[1, 2], [7, 8]]


def test_a_null_inside_a_list_of_floats_is_nan_ragged_or_not(tmp_path):
    """As in a float column; with `ragged=` such a list was refused (the whole unit failed)."""
    root = _write(tmp_path, _null_inside_table())
    plain = next(iter(sparkfeed.DataLoader(root, batch_size=4, columns=["id", "lf"])))["lf"]
    ragged = next(iter(sparkfeed.DataLoader(root, batch_size=4, columns=["id", "lf"], ragged=["lf"])))["lf"]
    for rows in (plain.tolist(), [t.tolist() for t in ragged]):
        assert rows[0] == [1.0, 2.0] and rows[1][0] == 3.0 and math.isnan(rows[1][1]) and rows[3] == [7.0, 8.0]


def test_a_null_inside_a_ragged_list_of_integers_is_skipped_not_delivered_as_none(tmp_path):
    """A ragged column delivers a null list as None, so a list holding a null element must not
    become one: it is an error naming the column, or a counted skip."""
    root = _write(tmp_path, _null_inside_table())
    with pytest.raises(ShardReadError, match="'li' holds null values inside its lists"):
        list(sparkfeed.DataLoader(root, batch_size=4, columns=["id", "li"], ragged=["li"]))
    loader = sparkfeed.DataLoader(root, batch_size=4, columns=["id", "li"], ragged=["li"], on_error="skip")
    (batch,) = list(loader)
    assert batch["id"].tolist() == [0, 2, 3]
    assert [None if t is None else t.tolist() for t in batch["li"]] == [[1, 2], None, [7, 8]]
    assert loader.stats()["samples_skipped"] == 1


def test_ragged_values_under_a_null_list_are_never_looked_at():
    """A null list may span values (nulls among them): it is None, not a refusal of the column."""
    arr = pa.ListArray.from_arrays(pa.array([0, 2, 4, 5], pa.int32()), pa.array([1, None, None, 2, 3]),
                                   mask=pa.array([False, True, False]))
    assert lists_holding_nulls(arr).tolist() == [True, False, False]
    arr = pa.ListArray.from_arrays(pa.array([0, 1, 3, 4], pa.int32()), pa.array([1, None, None, 3]),
                                   mask=pa.array([False, True, False]))
    assert lists_holding_nulls(arr) is None
    carried = ragged_as_binary(arr, "x")
    assert carried.is_null().to_pylist() == [False, True, False]
    assert np.frombuffer(carried[2].as_py(), np.int64).tolist() == [3]
    assert lists_holding_nulls(arr.slice(1)) is None and lists_holding_nulls(
        pa.array([[1], [None], [2]]).slice(2)) is None
