"""`sparkfeed index` over a tar cut short (an interrupted download or upload) names the tar
offset where it ends, whatever the cut: right after an extended (pax) header, which webdataset's
`TarWriter` puts before every member (one cut in five of such a shard), the error was "cannot
scan the tar (ReadError: empty header)", naming no offset; inside the first header, "(ReadError:
truncated header)"."""

import io
import tarfile

import pytest

import sparkfeed
from sparkfeed.errors import ShardReadError


def _shard() -> tuple[bytes, list[tarfile.TarInfo]]:
    """6 members, each after an extended header (a fractional mtime, as `TarWriter` writes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for k in range(3):
            for ext, data in (("cls", str(k).encode()), ("jpg", bytes([k]) * 1500)):
                info = tarfile.TarInfo(f"s{k}.{ext}")
                info.size, info.mtime = len(data), 1.5
                tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return raw, tar.getmembers()


def _index_error(tmp_path, data: bytes) -> ShardReadError:
    root = tmp_path / "cut"
    root.mkdir()
    (root / "a.tar").write_bytes(data)
    with pytest.raises(ShardReadError) as info:
        sparkfeed.index(str(root), progress=False)
    return info.value


@pytest.mark.parametrize("member", [0, 3])
@pytest.mark.parametrize("past", [0, 100, 511], ids=["at its end", "in its padding", "a byte short"])
def test_a_tar_cut_after_an_extended_header_names_that_header(tmp_path, member, past):
    raw, members = _shard()
    pax = members[member].offset  # (tarfile gives a member the offset of its extended header)
    data_end = pax + 512 + 512 if past == 0 else pax + 512 + past  # (the pax data takes one block)
    err = _index_error(tmp_path, raw[:data_end] if past else raw[:pax + 1024])
    assert (err.shard, err.offset) == ("a.tar", pax), str(err)  # before: no offset
    assert "cut short (or zeroed) after the extended (pax) header at this offset" in str(err)


def test_a_file_shorter_than_a_header_names_offset_0(tmp_path):
    err = _index_error(tmp_path, b"x" * 100)
    assert (err.shard, err.offset) == ("a.tar", 0)
    assert "cut short inside the member header at this offset, or is no tar" in str(err)
