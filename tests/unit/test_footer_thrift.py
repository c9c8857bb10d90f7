"""The footer check's Thrift decoder (`sparkfeed.thrift`): one-byte integers take an inlined
path (the footer check's cost on a footer's first sight), which must decode as the general path
does and refuse a footer cut short the same way, never with an IndexError."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sparkfeed.thrift import _struct, _Undecodable


def test_a_struct_of_small_and_large_ints_and_a_list_decodes_exactly():
    # field 1 i32 = -3 (zigzag 5), field 2 i64 = 300 (zigzag 600: two bytes), field 3 a list of
    # three i32 (1, -1, 200), a stop
    buf = bytes([0x15, 0x05, 0x16, 0xD8, 0x04, 0x19, 0x35, 0x02, 0x01, 0x90, 0x03, 0x00])
    assert _struct(buf, 0, 0) == ({1: -3, 2: 300, 3: [1, -1, 200]}, len(buf))


@pytest.mark.parametrize("buf", [bytes([0x15]), bytes([0x15, 0x05]), bytes([0x19, 0x25, 0x80, 0x01]),
                                 bytes([0x19, 0x25, 0x02])], ids=lambda b: b.hex())
def test_a_footer_cut_short_is_undecodable_not_an_index_error(buf):
    with pytest.raises(_Undecodable):
        _struct(buf, 0, 0)


def test_a_real_footer_decodes_its_row_groups():
    table = pa.table({"i": pa.array(range(1000), pa.int64()), "s": pa.array([str(i) for i in range(1000)])})
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=100)
    md = pq.ParquetFile(pa.BufferReader(sink.getvalue())).metadata
    out = io.BytesIO()
    md.write_metadata_file(out)
    meta = _struct(out.getvalue()[4:-8], 0, 0)[0]
    assert meta[3] == 1000 and len(meta[4]) == 10  # num_rows; row groups
    assert [g[3] for g in meta[4]] == [100] * 10  # each group's num_rows
    assert [len(g[1]) for g in meta[4]] == [2] * 10  # column chunks
