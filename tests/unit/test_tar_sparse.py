"""A tar holding a sparse member (`tar --sparse`, GNU format), as indexed by `sparkfeed index`:
its data is not one run of bytes, which is all a DALI index line can say, so no DALI index is
written for that shard (DALI's own reader would read the wrong bytes), and sparkfeed reads the
member whole, expanded, through `tarfile`."""

import io
import logging
import tarfile

import pytest

import sparkfeed


def _octal(n: int, width: int) -> bytes:
    return f"{n:0{width - 1}o}".encode() + b"\0"


def _sparse_header(name: str, real_size: int, runs: list[tuple[int, int]]) -> bytes:
    """An old-GNU sparse header (type 'S'): up to 4 (offset, bytes) runs of data in the header,
    the member's real size after them; the stored data is the runs, one after another."""
    h = bytearray(512)
    h[0:len(name)] = name.encode()
    h[100:108], h[108:116], h[116:124] = _octal(0o644, 8), _octal(0, 8), _octal(0, 8)
    h[124:136] = _octal(sum(n for _, n in runs), 12)
    h[136:148] = _octal(0, 12)
    h[156:157] = b"S"
    h[257:265] = b"ustar  \0"
    for i, (offset, n) in enumerate(runs):
        h[386 + 24 * i:398 + 24 * i], h[398 + 24 * i:410 + 24 * i] = _octal(offset, 12), _octal(n, 12)
    h[483:495] = _octal(real_size, 12)
    h[148:156] = b" " * 8
    h[148:156] = _octal(sum(h), 7) + b" "
    return bytes(h)


def _member(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info.tobuf(tarfile.GNU_FORMAT) + data + b"\0" * (-len(data) % 512)


def _sparse_tar(path) -> bytes:
    """Sample a: a.cls "3", a.dat (30,000 zero bytes then "tail", stored as one run), a.txt;
    sample b: plain members. Returns a.dat's expanded bytes."""
    real = b"\0" * 30000 + b"tail"
    run = b"tail"
    blob = (_member("a.cls", b"3") + _sparse_header("a.dat", len(real), [(30000, len(run))])
            + run + b"\0" * (512 - len(run)) + _member("a.txt", b"hello")
            + _member("b.cls", b"4") + _member("b.dat", b"plain") + _member("b.txt", b"bye") + b"\0" * 1024)
    path.write_bytes(blob)
    with tarfile.open(fileobj=io.BytesIO(blob)) as t:  # what every tar reader makes of it
        member = t.getmember("a.dat")
        assert member.issparse() and t.extractfile(member).read() == real
    return real


def test_a_tar_with_a_sparse_member_gets_no_dali_index_and_reads_expanded(tmp_path, caplog):
    real = _sparse_tar(tmp_path / "s.tar")
    sparse_free = tmp_path / "plain"
    sparse_free.mkdir()
    (sparse_free / "p.tar").write_bytes(_member("c.dat", b"x") + b"\0" * 1024)
    with caplog.at_level(logging.WARNING, logger="sparkfeed"):
        m = sparkfeed.index(str(tmp_path / "s.tar"), manifest=str(tmp_path / "m"), progress=False)
    assert [s.index for s in m.shards] == [None]
    assert not (tmp_path / "m" / "_sparkfeed_index").exists()
    said = [r.getMessage() for r in caplog.records if "sparse" in r.getMessage()]
    assert len(said) == 1 and "member 'a.dat' (tar offset 1024)" in said[0] and "s.tar" in said[0]
    loader = sparkfeed.DataLoader(str(tmp_path), manifest=str(tmp_path / "m"), batch_size=8)
    (batch,) = list(loader)
    assert batch["dat"] == [real, b"plain"] and batch["txt"] == ["hello", "bye"]
    assert batch["cls"].tolist() == [3, 4]
    # a tar without one keeps its index
    assert sparkfeed.index(str(sparse_free), progress=False).shards[0].index is not None


@pytest.mark.parametrize("batch_size", [1, 2])
def test_the_sparse_shard_reads_the_same_in_any_batch_size_and_shuffled(tmp_path, batch_size):
    real = _sparse_tar(tmp_path / "s.tar")
    sparkfeed.index(str(tmp_path / "s.tar"), manifest=str(tmp_path / "m"), progress=False)
    loader = sparkfeed.DataLoader(str(tmp_path), manifest=str(tmp_path / "m"), batch_size=batch_size,
                                  shuffle=True, seed=3, columns=["key", "dat"])
    got = {k: d for b in loader for k, d in zip(b["key"], b["dat"])}
    assert got == {"a": real, "b": b"plain"}
