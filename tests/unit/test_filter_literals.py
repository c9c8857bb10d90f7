"""Integer filter values beside uint64 columns: DNF tuples are typed so that values past int64's
range and uint64 columns holding them compare as numbers (they failed: "Python int too large to
convert to C long", or a bare ArrowInvalid from the statistics naming no dataset)."""

import datetime as dt
import os
import zoneinfo

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import sparkfeed

BIG = 2**63
U64 = [BIG + i for i in range(5)] + list(range(5))  # row i holds U64[i]; row groups of 5: one past int64


@pytest.fixture(scope="module")
def u64_path(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("u64"))
    table = pa.table({"id": pa.array(range(len(U64)), pa.int64()), "u64": pa.array(U64, pa.uint64())})
    pq.write_table(table, os.path.join(root, "a.parquet"), row_group_size=5)
    sparkfeed.index(root)
    return root


def _ids(root, filter, **kw):
    return sorted(int(i) for b in sparkfeed.DataLoader(root, batch_size=4, filter=filter, **kw) for i in b["id"])


@pytest.mark.parametrize("filter,keep", [
    ([("u64", ">", BIG)], lambda v: v > BIG),
    ([("u64", "<", 10)], lambda v: v < 10),
    ([("u64", ">=", 3)], lambda v: v >= 3),
    ([("u64", "==", BIG + 2)], lambda v: v == BIG + 2),
    ([("u64", "!=", 4)], lambda v: v != 4),
    ([("u64", "in", [1, BIG + 1])], lambda v: v in (1, BIG + 1)),
    ([("u64", "not in", (0, BIG))], lambda v: v not in (0, BIG)),
    ([[("u64", "<", 2)], [("u64", ">", BIG + 3)]], lambda v: v < 2 or v > BIG + 3),
    ([("id", "<", 3), ("u64", ">", 1)], lambda v: v > 1 and U64.index(v) < 3),
])
def test_dnf_integers_beside_a_uint64_column_select_exactly_the_rows(u64_path, filter, keep):
    want = [i for i, v in enumerate(U64) if keep(v)]
    assert _ids(u64_path, filter) == want
    assert _ids(u64_path, filter, shuffle=True, num_workers=2) == want


def test_a_dnf_value_past_int64_on_a_signed_column_is_refused_saying_so(u64_path):
    with pytest.raises(ValueError, match=r"`filter` should be DNF tuples .*it compares column 'id' \(int64\) "
                                         r"with 9223372036854775808, past what that type holds"):
        sparkfeed.DataLoader(u64_path, batch_size=4, filter=[("id", "<", BIG)])


def test_an_expression_arrow_cannot_prune_is_an_error_naming_the_dataset_and_the_way_out(u64_path):
    loader = sparkfeed.DataLoader(u64_path, batch_size=4, filter=pc.field("u64") < 10)
    with pytest.raises(ValueError, match=rf"`filter` \(u64 < 10\) cannot be checked against the statistics "
                                         rf"of dataset '{u64_path}'.*pa.scalar\(value, pa.uint64\(\)\)"):
        list(loader)
    typed = pc.field("u64") < pa.scalar(10, pa.uint64())
    assert _ids(u64_path, typed) == [i for i, v in enumerate(U64) if v < 10]


TIMES = [dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(hours=7 * i) for i in range(10)]


@pytest.fixture(scope="module")
def tokyo_path(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tokyo"))
    table = pa.table({"id": pa.array(range(len(TIMES)), pa.int64()),
                      "t": pa.array(TIMES, pa.timestamp("ms", tz="Asia/Tokyo"))})
    pq.write_table(table, os.path.join(root, "a.parquet"), row_group_size=3)
    sparkfeed.index(root)
    return root


@pytest.mark.parametrize("filter,keep", [
    ([("t", ">", TIMES[4])], lambda t: t > TIMES[4]),
    ([("t", "<=", TIMES[2].astimezone(dt.timezone(dt.timedelta(hours=-5))))], lambda t: t <= TIMES[2]),
    ([("t", "==", TIMES[6].astimezone(zoneinfo.ZoneInfo("Europe/Paris")))], lambda t: t == TIMES[6]),
    ([("t", "in", [TIMES[1], TIMES[8]])], lambda t: t in (TIMES[1], TIMES[8])),
    ([("t", ">=", TIMES[3].astimezone(zoneinfo.ZoneInfo("Asia/Tokyo")))], lambda t: t >= TIMES[3]),
])
def test_datetimes_of_another_zone_compare_as_the_instants_they_are(tokyo_path, filter, keep):
    """A timestamp column with a zone (Asia/Tokyo) and a datetime of another zone (UTC, a fixed
    offset, Paris): Arrow has no comparison across zones ("no kernel matching input types");
    the value takes the column's zone, the same instant."""
    assert _ids(tokyo_path, filter) == [i for i, t in enumerate(TIMES) if keep(t)]


def test_a_naive_datetime_beside_a_zoned_column_is_still_refused_with_the_way_out(tokyo_path):
    with pytest.raises(ValueError, match="give the datetime a time zone where the column has one"):
        sparkfeed.DataLoader(tokyo_path, batch_size=4, filter=[("t", ">", dt.datetime(2024, 1, 1))])


def test_a_dnf_value_arrow_cannot_take_is_a_value_error_naming_the_filter():
    """A numpy datetime64 in hours (Arrow takes s, ms, us, ns) in DNF tuples raised pyarrow's bare
    ArrowNotImplementedError ("Unsupported datetime64 time unit"), not the ValueError every other
    bad filter gets, naming the filter."""
    import numpy as np
    from sparkfeed.filters import to_expression

    with pytest.raises(ValueError, match=r"`filter` should be DNF tuples.*Unsupported datetime64 time unit"):
        to_expression([("ts", ">", np.datetime64("2024-01-01T05"))])


def test_a_filter_on_a_whole_struct_names_its_fields(tmp_path):
    """`pc.field("st").is_null()` over a struct column (read as its leaves `st.a`, `st.b`) was
    refused with Arrow's "No match for FieldRef.Name(st)" alone; the refusal now names the
    struct's fields and how to filter on them."""
    st = pa.array([None, {"a": 1, "b": "x"}], pa.struct([("a", pa.int32()), ("b", pa.string())]))
    pq.write_table(pa.table({"id": [0, 1], "st": st}), tmp_path / "part-0.parquet")
    sparkfeed.index(str(tmp_path), progress=False)
    with pytest.raises(ValueError, match=r"No match for FieldRef.Name\(st\); struct 'st' is read as its fields "
                                         r"\['st.a', 'st.b'\]"):
        sparkfeed.DataLoader(str(tmp_path), batch_size=2, filter=pc.field("st").is_null())


def test_a_date_beside_a_hive_key_of_dates_says_the_key_is_text(tmp_path):
    """Hive directories `pd=2024-01-02` are typed string (as pyarrow types them; Spark makes them
    dates), so `pd == date(2024, 1, 2)` is refused. The hint told the user to compare "a date or
    timestamp column with datetime.date values", which they had done, and `pd.isin([date])` got
    Arrow's bare "string vs date32[day]"; both now say the key is text and to compare it with ISO
    text, which then prunes the other directories."""
    for k, day in enumerate(["2024-01-01", "2024-01-02"]):
        os.makedirs(tmp_path / f"pd={day}")
        pq.write_table(pa.table({"id": pa.array([k], pa.int64())}), tmp_path / f"pd={day}" / "part-0.parquet")
    sparkfeed.index(str(tmp_path), progress=False)
    for expr in (pc.field("pd") == dt.date(2024, 1, 2), pc.field("pd") > dt.datetime(2024, 1, 1),
                 pc.field("pd").isin([dt.date(2024, 1, 2)])):
        with pytest.raises(ValueError, match=rf"dataset '{tmp_path}'.*the column is text .*ISO text"):
            sparkfeed.DataLoader(str(tmp_path), batch_size=2, filter=expr)
    loader = sparkfeed.DataLoader(str(tmp_path), batch_size=2, columns=["id"], filter=pc.field("pd") == "2024-01-02")
    assert [i for b in loader for i in b["id"].tolist()] == [1] and loader.stats()["shards_pruned"] == 1


def test_a_dictionary_encoded_value_set_is_refused_saying_what_arrow_matches(tmp_path):
    """`isin(pa.array([...]).dictionary_encode())` is refused by Arrow itself ("Array type doesn't
    match type of values set"): the refusal names the dataset and now says to pass the values
    decoded, which then filter and prune."""
    pq.write_table(pa.table({"id": pa.array(range(4), pa.int64()), "s": ["a", "b", "c", "d"]}),
                   tmp_path / "part-0.parquet", row_group_size=2)
    sparkfeed.index(str(tmp_path), progress=False)
    values = pa.array(["b", "z"]).dictionary_encode()
    with pytest.raises(ValueError, match=rf"dataset '{tmp_path}'.*dictionary_decode"):
        sparkfeed.DataLoader(str(tmp_path), batch_size=2, filter=pc.field("s").isin(values))
    loader = sparkfeed.DataLoader(str(tmp_path), batch_size=2, columns=["id"],
                                  filter=pc.field("s").isin(values.dictionary_decode()))
    assert [i for b in loader for i in b["id"].tolist()] == [1] and loader.stats()["row_groups_pruned"] == 1
