"""A sample whose member cannot be parsed (a `.cls` that is no integer, a `.json` that is no
object) is an error naming the dataset, the shard, the key and the tar offset of the sample's
first member header, read through the shard's index (whole or a piece) or streamed: the offset
was named only for a member twice in a sample, so an indexed read said "shard 'x.tar': sample
's00000150': member .cls ... cannot be parsed" with no offset."""

import os
import tarfile

import pytest

import dsutil
import sparkfeed
from sparkfeed.errors import CorruptSampleError
from sparkfeed.read import tar


def _spoilt(tmp_path, index: bool, member: str) -> tuple[str, int]:
    """A one-shard dataset of 300 samples, the first byte of `member` replaced (its size and
    the file's time kept); (its root, that sample's first header offset)."""
    root = str(tmp_path / "wds")
    dsutil.write_tar(root, dsutil.table(300, image_bytes=3000), 300, index=index)
    path = os.path.join(root, "shard-00000.tar")
    with tarfile.open(path) as t:
        members = t.getmembers()
    first = next(m for m in members if m.name.startswith(member.split(".")[0]))
    spoilt = next(m for m in members if m.name == member)
    st = os.stat(path)
    raw = bytearray(open(path, "rb").read())
    raw[spoilt.offset_data] = ord("x")
    open(path, "wb").write(bytes(raw))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return root, first.offset


@pytest.mark.parametrize("index", [True, False], ids=["indexed", "streamed"])
@pytest.mark.parametrize("pieces", [False, True], ids=["whole", "in pieces"])
@pytest.mark.parametrize("member", ["s00000150.cls", "s00000007.json"])
def test_an_unparsable_member_names_its_samples_tar_offset(tmp_path, monkeypatch, index, pieces, member):
    if pieces:
        monkeypatch.setattr(tar, "FIRST_CHUNK_BYTES", 64 << 10)
        monkeypatch.setattr(tar, "CHUNK_BYTES", 128 << 10)
        monkeypatch.setattr(tar, "MIN_CHUNK_ROWS", 4)
    root, at = _spoilt(tmp_path, index, member)
    with pytest.raises(CorruptSampleError) as info:
        for _ in sparkfeed.DataLoader(root, batch_size=50, columns=["key", "label", "id"]):
            pass
    err = info.value
    assert (err.shard, err.key, err.offset) == ("shard-00000.tar", member.split(".")[0], at), str(err)
    assert f"tar offset {at}: sample {err.key!r}: member .{member.split('.')[1]}" in str(err)
