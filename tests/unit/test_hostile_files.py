"""Hostile and corrupt files found by a bug hunt: each is a clear error naming the dataset and
shard (and the tar offset or row group where known), or a counted skip under on_error="skip";
never a hang, an absurd allocation or a crash of the process."""

import io
import json
import os
import subprocess
import sys
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dsutil
import sparkfeed
from sparkfeed import footer, footercheck
from sparkfeed.errors import ShardReadError
from sparkfeed.read.tarinfo import StrictTarInfo, pax_problem


def _header(name: bytes, size: int, kind: bytes = b"0") -> bytes:
    """A ustar header with a right checksum."""
    head = bytearray(512)
    head[:len(name)] = name
    head[100:108], head[108:116], head[116:124] = b"0000644\0", b"0000000\0", b"0000000\0"
    head[124:136], head[136:148] = b"%011o\0" % size, b"00000000000\0"
    head[156:157], head[257:263], head[263:265] = kind, b"ustar\0", b"00"
    head[148:156] = b" " * 8
    head[148:156] = b"%06o\0 " % sum(head)
    return bytes(head)


def _member(name: bytes, data: bytes, kind: bytes = b"0") -> bytes:
    return _header(name, len(data), kind) + data + b"\0" * (-len(data) % 512)


def _samples(first: int, n: int) -> bytes:
    return b"".join(_member(b"s%05d.cls" % k, b"%d" % k) for k in range(first, first + n))


def _tar_dataset(tmp_path, raw: bytes, n: int) -> str:
    """A webdataset dataset of one (unindexed: streamed) shard `raw` of `n` samples."""
    root = tmp_path / "ds"
    root.mkdir()
    (root / "s.tar").write_bytes(raw)
    doc = {"sparkfeed_manifest": 1, "format": "webdataset", "created_by": {"sparkfeed": "test"},
           "schema": [{"name": "key", "type": "string", "member": "__key__"},
                      {"name": "cls", "type": "int64", "member": "cls"}],
           "num_samples": n, "num_bytes": len(raw),
           "shards": [{"path": "s.tar", "num_samples": n, "num_bytes": len(raw), "members": ["cls"]}]}
    (root / "_sparkfeed.json").write_text(json.dumps(doc))
    return str(root)


# ------------------------------------------------------------------ pax extended headers


def _record(keyword: bytes, value: bytes) -> bytes:
    """A pax record, its length field counting itself."""
    body = b" %s=%s\n" % (keyword, value)
    return next(b"%d%s" % (k, body) for k in range(len(body), len(body) + 30) if len(b"%d%s" % (k, body)) == k)

# "4 a\n" records whose keyword `tarfile` (before Python 3.11.10) extends to the one "=" at the
# end: quadratic time, and every record's keyword a copy of the rest (40 s and 7 GB for 240 KB)
BACKTRACKING = b"4 a\n" * 20000 + b"="
DIGITS = b"100010 comment=" + b"1" * 99994 + b"\n"  # quadratic in tarfile's hdrcharset search


@pytest.mark.parametrize("data", [BACKTRACKING, DIGITS, b"-5 path=x\n", b"0 path=x\n", b"99 path=x\n",
                                  b"9 pathx\n", b"5 a=\nxyz"], ids=[
    "backtracking", "digit run", "negative length", "zero length", "length past the end",
    "no equals sign", "trailing garbage"])
def test_a_hostile_pax_header_is_refused_naming_its_offset(tmp_path, data):
    raw = _samples(0, 2) + _member(b"././@PaxHeader", data, b"x") + _samples(2, 2) + b"\0" * 1024
    root = _tar_dataset(tmp_path, raw, 4)
    with pytest.raises(ShardReadError, match=r"shard 's.tar', tar offset 2048: corrupt tar: pax extended header"):
        list(sparkfeed.DataLoader(root, batch_size=2))
    loader = sparkfeed.DataLoader(root, batch_size=2, on_error="skip")
    assert sum(len(b["key"]) for b in loader) == 0 and loader.stats()["samples_skipped"] == 4


def test_well_formed_pax_records_are_read_as_before():
    records = b"5 a=\n" * 1000 + _record(b"path", b"s00002.cls") + _record(b"mtime", b"1700000000.123456789")
    assert pax_problem(records) is None and pax_problem(records + b"\0" * 100) is None
    raw = _samples(0, 2) + _member(b"././@PaxHeader", records, b"x") + _member(b"x.cls", b"2") + b"\0" * 1024
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r|", tarinfo=StrictTarInfo) as tar:
        assert [(m.name, tar.extractfile(m).read()) for m in tar] == [
            ("s00000.cls", b"0"), ("s00001.cls", b"1"), ("s00002.cls", b"2")]


# ------------------------------------------------------------------ Parquet footers that crash pyarrow


def _rewrite_footer(path: str, old: bytes, new: bytes) -> None:
    """The file's footer with the one occurrence of `old` (Thrift bytes) made `new`, as long."""
    raw = open(path, "rb").read()
    start = len(raw) - 8 - int.from_bytes(raw[-8:-4], "little")
    thrift = raw[start:-8]
    assert thrift.count(old) == 1 and len(old) == len(new)
    with open(path, "wb") as f:
        f.write(raw[:start] + thrift.replace(old, new) + raw[-8:])


# ColumnMetaData.type (field 1, compact i32) of an INT64 column made INT96; a FIXED_LEN_BYTE_ARRAY
# schema column's type_length 4 made 8 (its 4-byte statistics then too short): pyarrow 26 aborts
# the process on either in `ColumnChunkMetaData.statistics` ("terminate called after throwing")
FOOTER_DAMAGE = {
    "chunk type": (pa.table({"id": pa.array(range(8), pa.int64())}), b"\x1c\x15\x04", b"\x1c\x15\x06",
                   "the chunk of column 'id' has physical type INT96 where the schema says INT64"),
    "short statistics": (pa.table({"h": pa.array([b"abcd", b"efgh"] * 4, pa.binary(4))}),
                         b"\x15\x0e\x15\x08", b"\x15\x0e\x15\x10",
                         "the chunk of column 'h' has a min or max statistic shorter than 8 byte"),
}

_READ = """
import sys, sparkfeed
for on_error in ("raise", "skip"):
    loader = sparkfeed.DataLoader(sys.argv[1], batch_size=4, on_error=on_error)
    try:
        print(on_error, sum(len(next(iter(b.values()))) for b in loader), loader.stats()["samples_skipped"])
    except sparkfeed.SparkfeedError as exc:
        print(on_error, "error:", str(exc).splitlines()[0])
"""


@pytest.mark.parametrize("case", list(FOOTER_DAMAGE))
def test_a_footer_that_crashes_pyarrow_is_an_error_naming_shard_and_row_group(tmp_path, case):
    data, old, new, what = FOOTER_DAMAGE[case]
    root = str(tmp_path / "ds")
    dsutil.write_parquet(root, data, 8, 8)
    _rewrite_footer(os.path.join(root, "part-00000.parquet"), old, new)
    run = subprocess.run([sys.executable, "-c", _READ, root], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]  # not aborted
    raised, skipped = run.stdout.splitlines()
    assert raised.startswith("raise error:") and "shard 'part-00000.parquet', row group 0: damaged " \
        f"Parquet footer: {what}" in raised
    assert skipped == "skip 0 8"


def test_a_sound_footer_is_not_damaged_and_its_verdict_is_kept(tmp_path):
    path = str(tmp_path / "f.parquet")
    table = dsutil.table(50).append_column("objs", pa.array(
        [[{"a": i, "b": str(i)}] * (i % 3) for i in range(50)],
        pa.list_(pa.struct([("a", pa.int32()), ("b", pa.string())]))))
    pq.write_table(table, path, row_group_size=7)
    md = pq.ParquetFile(path).metadata
    assert footercheck.damage(md) is None and footercheck.damage(md) is None
    assert footer.entry(md, pq.ParquetFile(path).schema_arrow, "f.parquet", 1)["num_samples"] == 50


def test_the_indexer_refuses_a_footer_that_crashes_pyarrow(tmp_path):
    path = str(tmp_path / "f.parquet")
    pq.write_table(pa.table({"id": pa.array(range(8), pa.int64())}), path)
    _rewrite_footer(path, b"\x1c\x15\x04", b"\x1c\x15\x06")
    pf = pq.ParquetFile(path)
    with pytest.raises(ValueError, match="damaged Parquet footer: row group 0: the chunk of column 'id'"):
        footer.entry(pf.metadata, pf.schema_arrow, "f.parquet", 1)


# ------------------------------------------------------------------ .npy members


def _npy(shape, descr: str = "<f4", body: bytes = b"") -> bytes:
    """A .npy v1.0 header saying `shape` of `descr`, then `body`."""
    head = "{'descr': '%s', 'fortran_order': False, 'shape': %r, }" % (descr, shape)
    head += " " * (-(len(head) + 11) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(head).to_bytes(2, "little") + head.encode() + body


# numpy's int64 product of (2**32, 2**32) wraps to 0 bytes, which an empty body matched; the
# whole-batch path then raised numpy's ValueError out of `decode` (past on_error)
@pytest.mark.parametrize("shape", [(2**32, 2**32), (2**31, 2**31, 4), (-1, 2), (0, 2**61)])
def test_a_hostile_npy_shape_is_a_failed_row_never_an_exception(shape):
    from sparkfeed.arrays import NpyDecoder

    decoder = NpyDecoder(sparkfeed.NpyDecode())
    alone = decoder.decode([_npy(shape)] * 3)  # one header for the batch: the whole-batch path
    assert [r for r, _ in alone.failures] == [0, 1, 2] and alone.ok_rows.tolist() == []
    mixed = decoder.decode([_npy(shape)] * 3 + [_npy((2,), body=b"\0" * 8)])  # row by row
    assert [r for r, _ in mixed.failures] == [0, 1, 2] and "shape" in mixed.failures[0][1]
    assert mixed.ok_rows.tolist() == [3] and tuple(mixed.images.shape) == (1, 2)
