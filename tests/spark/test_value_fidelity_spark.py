"""Values Spark writes through `sparkfeed.write` come out of `DataLoader` exactly, both formats:
extreme integers (2**53 + 1 too, which a double would round), NaN, -0.0, infinities and
subnormals, dates and UTC / NTZ timestamps from year 1 to 9999 as their integers, NUL inside a
string, empty and null strings and bytes, arrays of floats and longs."""

import datetime as dt
import math

import pytest
import torch

import sparkfeed

pytestmark = pytest.mark.spark

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1)


def _micros(t: dt.datetime) -> int:
    """Microseconds since the epoch, exactly (the loader's int64 for a timestamp[us])."""
    d = t.replace(tzinfo=None) - EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


ROWS = [
    (0, True, -128, -2**63, float("nan"), -0.0, "", b"", dt.date(1, 1, 1), dt.datetime(1, 1, 1, tzinfo=UTC),
     dt.datetime(1, 1, 1), [1.0, float("nan")], [1, 2]),
    (1, False, 127, 2**63 - 1, float("inf"), 5e-324, "héllo ☃ 𝄞 a\x00b", b"\x00\x01", dt.date(1969, 12, 31),
     dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
     [-0.0, 1e-45], [-2**63, 2**63 - 1]),
    (2, True, 0, 2**53 + 1, -0.0, 1.7e308, "x" * 10_000, b"a" * 3, dt.date(9999, 12, 31),
     dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), dt.datetime(1900, 1, 1), [3.0, -float("inf")], [0, 0]),
    (3, False, 1, 1, 1.0, float("nan"), None, None, dt.date(2024, 2, 29),
     dt.datetime(2024, 2, 29, 12, 0, 0, 1, tzinfo=UTC), dt.datetime(2024, 2, 29), [0.0, 0.0], [3, 4]),
]


def _same(got, want) -> bool:
    if isinstance(want, float):
        return (math.isnan(got) and math.isnan(want)) or (got == want and math.copysign(1, got) == math.copysign(1, want))
    if isinstance(want, list):
        return len(got) == len(want) and all(_same(a, b) for a, b in zip(got, want))
    return got == want


def _expected(row: tuple) -> dict:
    i, b, by, big, f, d, s, raw, day, ts, ntz, arr, longs = row
    arr = [float(torch.tensor(x, dtype=torch.float32)) for x in arr]  # a Spark FloatType
    return {"id": i, "b": b, "by": by, "l": big, "f": float(torch.tensor(f, dtype=torch.float32)), "d": d,
            "s": s, "bin": raw, "day": (day - EPOCH.date()).days, "ts": _micros(ts), "ntz": _micros(ntz),
            "arr": arr, "ai": longs}


@pytest.mark.parametrize("fmt", ["parquet", "webdataset"])
def test_spark_written_values_come_back_exactly(spark, tmp_path, fmt):
    from pyspark.sql import types as T

    schema = T.StructType([T.StructField(n, t) for n, t in [
        ("id", T.LongType()), ("b", T.BooleanType()), ("by", T.ByteType()), ("l", T.LongType()),
        ("f", T.FloatType()), ("d", T.DoubleType()), ("s", T.StringType()), ("bin", T.BinaryType()),
        ("day", T.DateType()), ("ts", T.TimestampType()), ("ntz", T.TimestampNTZType()),
        ("arr", T.ArrayType(T.FloatType())), ("ai", T.ArrayType(T.LongType()))]])
    path = str(tmp_path / fmt)
    sparkfeed.write(spark.createDataFrame(ROWS, schema), path, format=fmt, samples_per_shard=3,
                    samples_per_row_group=2)
    for batch_size in (1, 3):
        got = {}
        for batch in sparkfeed.DataLoader(path, batch_size=batch_size, shuffle=True):
            ids = batch["id"].tolist()
            for name, value in batch.items():
                for i, v in zip(ids, value.tolist() if isinstance(value, torch.Tensor) else value):
                    got.setdefault(i, {})[name] = v
        assert sorted(got) == [0, 1, 2, 3]
        wrong = [(i, k, v) for i, row in got.items() for k, v in row.items()
                 if not _same(v, _expected(ROWS[i])[k])]
        assert wrong == []
