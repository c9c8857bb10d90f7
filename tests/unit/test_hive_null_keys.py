"""A Hive partition key whose every directory is `__HIVE_DEFAULT_PARTITION__` (null) is typed
string, as Spark types it (its column stays deliverable). A filter comparing it with a number is
refused when the loader is built, with a sentence that says why and what to do, not Arrow's
text-versus-number hint that reads as if the key held text."""

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
