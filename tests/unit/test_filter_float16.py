"""Filters over float16 (pyarrow halffloat) columns: Arrow has no comparison or `is_in` kernel for
halffloat, so sparkfeed filters such a column as its float32 values (a widening that changes no
value). What the loader delivers is what pyarrow's own filter keeps over the same files with the
column cast to float32, NaN, -0.0, infinities and nulls included; the column is still delivered
as float16."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import sparkfeed

VALUES = [0.5, 1.5, np.nan, 2.0, -0.0, 0.0, np.inf, -np.inf, 65504.0, 0.1]


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    """Two files of row groups of 3: `h` float16 with NaN, signed zeros, infinities and nulls."""
    root = tmp_path_factory.mktemp("halves")
    for f in range(2):
        values = np.array(VALUES[f * 5:] + VALUES[:f * 5], np.float16)
        h = pa.array(values, mask=np.arange(10) % 4 == 3)
        table = pa.table({"id": pa.array(range(10 * f, 10 * f + 10), pa.int64()), "h": h})
        pq.write_table(table, root / f"part-{f}.parquet", row_group_size=3)
    sparkfeed.index(str(root), progress=False)
    return str(root)


def _reference(root: str, expr) -> Counter:
    """What pyarrow keeps over every row with `h` widened to float32 (exact)."""
    table = ds.dataset(root).to_table()
    table = table.set_column(table.schema.get_field_index("h"), "h", table["h"].cast(pa.float32()))
    return Counter(table.filter(expr)["id"].to_pylist())


h = pc.field("h")


@pytest.mark.parametrize("expr", [
    h > 1.0, h >= 0.5, h < 0, h <= 0.0, h == 1.5, h != 1.5, h == 0.0, ~(h < 2), h.isin([0.5, 2.0]),
    ~h.isin([0.5]), h.isin([np.nan]), pc.is_nan(h), ~pc.is_nan(h), h.is_null(), h.is_valid(),
    h.is_null(nan_is_null=True), pc.is_finite(h), (h > 1) | (pc.field("id") < 3), h == np.inf,
    h > 60000, h.isin([1, 2]), h.isin(pa.array(np.array([1.5, np.nan], np.float16))),
], ids=str)
def test_a_float16_filter_keeps_what_arrow_keeps_over_its_float32_values(halves, expr):
    """Such filters were refused ("no kernel matching input types (halffloat, double)") when the
    loader was built; now each keeps the rows Arrow keeps over the widened column, in order and
    shuffled over workers, and delivers `h` as float16."""
    want = _reference(halves, expr)
    for kwargs in ({}, {"shuffle": True, "num_workers": 2}):
        loader = sparkfeed.DataLoader(halves, batch_size=4, columns=["id", "h"], filter=expr, **kwargs)
        batches = list(loader)
        assert Counter(i for b in batches for i in b["id"].tolist()) == want, kwargs
        assert all(b["h"].dtype == __import__("torch").float16 for b in batches)


def test_a_float16_filter_as_dnf_tuples(halves):
    """The DNF form takes the same path."""
    expr = [("h", ">", 0.25), ("h", "<", 10)]
    loader = sparkfeed.DataLoader(halves, batch_size=4, columns=["id"], filter=expr)
    assert Counter(i for b in loader for i in b["id"].tolist()) == _reference(halves, (h > 0.25) & (h < 10))


def test_a_float16_literal_is_refused_when_the_loader_is_built_with_the_way_out(halves):
    """Arrow compares no float16 value, literals included: `h > float16(1)` is refused naming the
    dataset, with the way out (a Python float)."""
    with pytest.raises(ValueError, match=rf"cannot apply to dataset '{halves}'.*compare it with Python floats"):
        sparkfeed.DataLoader(halves, batch_size=4, filter=h > pa.scalar(np.float16(1.0)))
