"""Hive partition keys typed from their directories. A key whose every directory is
`__HIVE_DEFAULT_PARTITION__` (null) is typed string, as Spark types it (its column stays
deliverable): a filter comparing it with a number is refused when the loader is built, with a
sentence that says why and what to do, not Arrow's text-versus-number hint that reads as if the
key held text. Values a double would round are kept exact as text."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import sparkfeed
from sparkfeed.index.hive import HIVE_NULL


@pytest.fixture()
def null_keyed(tmp_path):
    """Two files, both under p=__HIVE_DEFAULT_PARTITION__/, and a key `q` with values."""
    for f, q in enumerate(["1", "2"]):
        folder = tmp_path / f"p={HIVE_NULL}" / f"q={q}"
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"id": pa.array([2 * f, 2 * f + 1], pa.int64())}), folder / "part-0.parquet")
    sparkfeed.index(str(tmp_path), progress=False)
    return str(tmp_path)


@pytest.mark.parametrize("filter", [pc.field("p") < 3, [("p", "<", 3)], (pc.field("q") > 0) & (pc.field("p") == 2)],
                         ids=str)
def test_a_number_beside_an_all_null_key_is_refused_naming_the_key_and_the_way_out(null_keyed, filter):
    types = {c.name: c.type for c in sparkfeed.read_manifest(null_keyed).schema}
    assert (types["p"], types["q"]) == ("string", "int32")
    with pytest.raises(ValueError, match=r"partition key 'p' is null in every directory \(__HIVE_DEFAULT_PARTITION__\)"
                                         r".*typed string.*is_null\(\).*index the data again") as caught:
        sparkfeed.DataLoader(null_keyed, batch_size=2, filter=filter, columns=["id"])
    assert "Arrow compares text with text only" not in str(caught.value)


@pytest.mark.parametrize("filter,ids", [(pc.field("p").is_null(), [0, 1, 2, 3]), (pc.field("p") == "3", []),
                                        ((pc.field("q") == 2) & pc.field("p").is_null(), [2, 3])], ids=str)
def test_an_all_null_key_filters_as_the_string_column_it_is(null_keyed, filter, ids):
    loader = sparkfeed.DataLoader(null_keyed, batch_size=2, filter=filter, columns=["id"])
    assert sorted(i for b in loader for i in b["id"].tolist()) == ids


def test_a_key_with_values_keeps_arrows_hint(null_keyed):
    """A key that holds values elsewhere is no null key: its own refusal is unchanged."""
    with pytest.raises(ValueError, match="cannot apply") as caught:
        sparkfeed.DataLoader(null_keyed, batch_size=2, filter=pc.field("q") == "x", columns=["id"])
    assert "__HIVE_DEFAULT_PARTITION__" not in str(caught.value)


@pytest.mark.parametrize("values", [["9223372036854775808", "9223372036854775809"], ["0.5", "9007199254740993"]],
                         ids=str)
def test_partition_values_a_double_would_round_stay_exact_as_text(tmp_path, values):
    """Integers past int64's range (or past 2**53 beside fractions) were typed double, so two
    directories (`p=9223372036854775808`, `p=9223372036854775809`) delivered one value and a
    filter on either matched both. The key is now text, each directory its own value."""
    for f, value in enumerate(values):
        (tmp_path / f"p={value}").mkdir()
        pq.write_table(pa.table({"id": pa.array([f], pa.int64())}), tmp_path / f"p={value}" / "part-0.parquet")
    sparkfeed.index(str(tmp_path), progress=False)
    assert {c.name: c.type for c in sparkfeed.read_manifest(str(tmp_path)).schema}["p"] == "string"
    for f, value in enumerate(values):
        loader = sparkfeed.DataLoader(str(tmp_path), batch_size=2, filter=[("p", "==", value)], columns=["id"])
        assert [i for b in loader for i in b["id"].tolist()] == [f]
