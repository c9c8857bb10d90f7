"""String bytes that are not UTF-8 in a Parquet file: the rows that hold them are the bad samples,
not their row group. Under on_error="raise" the error names the dataset, shard, row group and
row; under on_error="skip" exactly those rows are skipped and counted, every other row of the
row group is delivered, whether the bad bytes are in a plain string column, inside a list or a
struct, in a filter column or in a column read after the filter."""

import logging

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import sparkfeed
from sparkfeed.errors import CorruptSampleError

BAD = {13, 17, 31}  # ids whose caption is not UTF-8 (row groups of 10: rows 3 and 7 of group 1, 1 of 3)


def _caption(i: int) -> bytes:
    return b"bad \xff\xfe text" if i in BAD else f"caption {i}".encode()


def _write(tmp_path, column: str = "plain", **write) -> str:
    """40 rows in row groups of 10 (uncompressed, no statistics: what a damaged or careless file
    looks like), with the captions of `BAD` not UTF-8 in a column of the given shape; indexed."""
    root = tmp_path / "ds"
    root.mkdir()
    raw = pa.array([_caption(i) for i in range(40)], pa.binary()).view(pa.string())
    cols = {"id": pa.array(range(40), pa.int64())}
    if column == "plain":
        cols["caption"] = raw
    elif column == "list":
        cols["tags"] = pa.ListArray.from_arrays(pa.array(range(41), pa.int32()), raw)
    elif column == "struct":
        cols["meta"] = pa.StructArray.from_arrays([raw, pa.array(range(40), pa.int32())], ["caption", "n"])
    write = {"row_group_size": 10, "compression": "none", "write_statistics": False, **write}
    pq.write_table(pa.table(cols), str(root / "part-0.parquet"), **write)
    sparkfeed.index(str(root), progress=False)
    return str(root)


def _ids(root: str, columns: list[str], **kw) -> tuple[list[int], dict]:
    loader = sparkfeed.DataLoader(root, batch_size=4, columns=columns, **kw)
    return [i for b in loader for i in b["id"].tolist()], loader.stats()


# a list of strings cannot be delivered, but a filter may read it
@pytest.mark.parametrize("column, columns, expr", [
    ("plain", ["id", "caption"], None), ("struct", ["id", "meta.caption"], None),
    ("list", ["id"], pc.list_value_length(pc.field("tags")) > 0)])
def test_only_the_rows_with_bad_text_are_skipped_and_each_is_counted(tmp_path, column, columns, expr, caplog):
    root = _write(tmp_path, column)
    caplog.set_level(logging.WARNING)
    ids, stats = _ids(root, columns, filter=expr, on_error="skip")
    assert ids == [i for i in range(40) if i not in BAD]
    assert stats["samples_skipped"] == len(BAD)
    assert any("part-0.parquet row group 1: skipping 2 sample(s)" in r.getMessage() for r in caplog.records)


def test_the_error_names_the_row_group_and_the_row(tmp_path):
    root = _write(tmp_path)
    with pytest.raises(CorruptSampleError, match=r"sample 'row 3'.*column 'caption' holds bytes that are "
                       r"not UTF-8.*2 such row\(s\) in this row group, rows \[3, 7\]") as info:
        _ids(root, ["id", "caption"])
    assert (info.value.dataset, info.value.shard, info.value.row_group) == (root, "part-0.parquet", 1)


def test_delivered_captions_are_the_good_ones_in_place(tmp_path):
    """The rows kept keep their own values (no shift after the skipped rows)."""
    root = _write(tmp_path)
    loader = sparkfeed.DataLoader(root, batch_size=8, columns=["id", "caption"], on_error="skip")
    pairs = [(i, c) for b in loader for i, c in zip(b["id"].tolist(), b["caption"])]
    assert pairs == [(i, f"caption {i}") for i in range(40) if i not in BAD]


def test_bad_text_in_a_filter_column_is_a_counted_skip_not_a_filtered_row(tmp_path):
    """The filter cannot judge bytes that are not text: such a row is skipped and counted whatever
    the filter would say, by the count pass and the read alike (no 'shard changed' mismatch)."""
    root = _write(tmp_path)
    expr = pc.field("caption") != "caption 5"
    ids, stats = _ids(root, ["id", "caption"], filter=expr, on_error="skip")
    assert ids == [i for i in range(40) if i not in BAD and i != 5]
    assert (stats["samples_skipped"], stats["rows_filtered"]) == (len(BAD), 1)


def test_bad_text_in_a_column_read_after_the_filter(tmp_path):
    """The filter reads `id`; the captions of the rows it keeps are read after it and checked."""
    root = _write(tmp_path)
    ids, stats = _ids(root, ["id", "caption"], filter=pc.field("id") < 20, on_error="skip")
    assert ids == [i for i in range(20) if i not in BAD]
    assert stats["samples_skipped"] == len(BAD & set(range(20)))
    with pytest.raises(CorruptSampleError, match="sample 'row 3'") as info:
        _ids(root, ["id", "caption"], filter=pc.field("id") >= 12)
    assert info.value.row_group == 1


def test_a_run_of_row_groups_with_bad_text_skips_rows_not_groups(tmp_path):
    """Consecutive row groups are read as one run; a run holding bad text is read group by
    group, so each skip is still one row and each error names its own row group."""
    root = _write(tmp_path, row_group_size=5)
    ids, stats = _ids(root, ["id", "caption"], on_error="skip")
    assert ids == [i for i in range(40) if i not in BAD]
    assert stats["samples_skipped"] == len(BAD)
    with pytest.raises(CorruptSampleError) as info:
        _ids(root, ["id", "caption"])
    assert info.value.row_group == 2  # id 13: row 3 of the third group of 5


def test_bad_text_in_a_filter_column_under_raise_names_the_row(tmp_path):
    root = _write(tmp_path)
    with pytest.raises(CorruptSampleError, match="sample 'row 3'.*column 'caption'") as info:
        _ids(root, ["id", "caption"], filter=pc.field("caption") != "caption 5")
    assert (info.value.shard, info.value.row_group) == ("part-0.parquet", 1)
