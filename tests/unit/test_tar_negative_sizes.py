"""Sizes a header declares that `tarfile` cannot honour. A member header whose size is negative (base 256 with its sign bit set, or a pax `size`
record "-512"): `tarfile` steps back to the same header or before it and reads the same headers
again without end. Before, `sparkfeed index` hung on such a tar (a member in no sample, which no
key check stops), and so did the reader's index check on a header between members; now each is
an error naming the shard and tar offset, or the index is not taken."""

import json
import os
import tarfile

import pytest

import sparkfeed
from sparkfeed.errors import ShardReadError
from sparkfeed.read import tarindex
from sparkfeed.read.tarinfo import split_name


def _member(name: str, data: bytes, kind=tarfile.REGTYPE, pax: dict | None = None) -> bytearray:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.pax_headers = len(data), kind, pax or {}
    fmt = tarfile.PAX_FORMAT if pax else tarfile.GNU_FORMAT
    return bytearray(info.tobuf(fmt)) + data + b"\0" * (-len(data) % 512)


def _negative(block: bytearray, size: int = -512) -> bytearray:
    """The header's size field made `size` in base 256 (a leading 0xff: negative), checksum anew."""
    block[124:136] = (size % (1 << 96)).to_bytes(12, "big")
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block[:512])
    assert tarfile.nti(bytes(block[124:136])) == size
    return block


def _shard(tmp_path, raw: bytes) -> str:
    root = str(tmp_path / "ds")
    os.makedirs(root)
    with open(os.path.join(root, "a.tar"), "wb") as f:
        f.write(raw)
    return root


CASES = {
    "base 256, a member in no sample": lambda: _member("k1.jpg", b"1") + _negative(_member("README", b"2"))
    + _member("k3.jpg", b"3"),
    "pax size record": lambda: _member("k1.jpg", b"1") + _member("k2.jpg", b"2", pax={"size": "-512"})
    + _member("k3.jpg", b"3"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_index_refuses_a_negative_size_naming_its_offset(tmp_path, case):
    raw = bytes(CASES[case]()) + b"\0" * 1024
    root = _shard(tmp_path, raw)
    with pytest.raises(ShardReadError, match=r"negative size \(-512\)") as info:
        sparkfeed.index(root, progress=False)
    assert (info.value.shard, info.value.offset) == ("a.tar", 1024)


def test_the_streamed_reader_refuses_a_negative_size_and_skips_counted(tmp_path):
    raw = bytes(CASES["base 256, a member in no sample"]()) + b"\0" * 1024
    root = _shard(tmp_path, raw)
    doc = {"sparkfeed_manifest": 1, "format": "webdataset", "created_by": {"sparkfeed": "test"},
           "schema": [{"name": "key", "type": "string", "member": "__key__"},
                      {"name": "jpg", "type": "binary", "member": "jpg"}],
           "num_samples": 2, "num_bytes": len(raw),
           "shards": [{"path": "a.tar", "num_samples": 2, "num_bytes": len(raw)}]}
    with open(os.path.join(root, "_sparkfeed.json"), "w") as f:
        json.dump(doc, f)
    with pytest.raises(ShardReadError, match="negative size") as info:
        list(sparkfeed.DataLoader(root, batch_size=4))
    assert (info.value.shard, info.value.offset) == ("a.tar", 1024)
    loader = sparkfeed.DataLoader(root, batch_size=4, on_error="skip")
    assert sum(len(b["key"]) for b in loader) == 0 and loader.stats()["samples_skipped"] == 2


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME])
def test_the_index_check_refuses_a_header_of_negative_size_between_members(kind):
    """An extended header between two members, its size -512: the walk over the gap stayed at it."""
    raw = bytes(_member("a.cls", b"1") + _negative(_member("x", b"", kind)) + _member("b.cls", b"2")) + b"\0" * 1024
    text = "v1.2 2\ncls 512 1 a.cls\ncls 2048 1 b.cls\n"
    assert tarindex.members(raw, text, {"cls"}, split_name, 1 << 30) is None


def _declaring(kind, size: int) -> bytes:
    """A tar whose second header is an extended header of `kind` declaring `size` bytes (base 256)."""
    head = _member("x", b"", kind)
    head[124:136] = size.to_bytes(12, "big")
    head[124] = 0x80
    head[148:156] = b" " * 8
    head[148:156] = b"%06o\0 " % sum(head[:512])
    return bytes(_member("k1.jpg", b"1") + head + _member("k3.jpg", b"3")) + b"\0" * 1024


@pytest.mark.parametrize("kind, what", [(tarfile.XHDTYPE, "pax extended header"), (tarfile.XGLTYPE, "pax extended header"),
                                        (tarfile.GNUTYPE_LONGNAME, "GNU long name")])
@pytest.mark.parametrize("size, words", [(1 << 50, "declares 1125899906842624 bytes"), (1 << 29, "is cut short")])
def test_an_extended_header_declaring_more_than_the_file_names_its_offset(tmp_path, kind, what, size, words):
    """`tarfile` reads an extended header whole: one declaring a petabyte was a bare MemoryError
    with no shard named; a GNU long name cut short a ReadError ("empty header") with no offset."""
    root = _shard(tmp_path, _declaring(kind, size))
    with pytest.raises(ShardReadError, match=f"{what} {words}") as info:
        sparkfeed.index(root, progress=False)
    assert (info.value.shard, info.value.offset) == ("a.tar", 1024)
