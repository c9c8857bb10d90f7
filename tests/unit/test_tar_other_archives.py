"""A zip or cpio archive named `.tar` (a download repacked by the wrong tool) is refused saying
what it is, by `sparkfeed index` and by the reader; it was "cannot scan the tar (ReadError: bad
checksum)" or "(... invalid header)". A real tar whose first member's name looks like a cpio
magic ("070707.cls") is still read."""

import io
import os
import shutil
import subprocess
import tarfile
import zipfile

import pytest

import sparkfeed
from sparkfeed.errors import ShardReadError


def _members() -> list[tuple[str, bytes]]:
    return [(f"{k:06d}.cls", str(k).encode()) for k in (70707, 70708)]


def _zip(path: str) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in _members():
            z.writestr(name, data)


def _tar(path: str) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in _members():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _cpio(path: str) -> None:
    """A cpio archive (newc) of the members, made by bsdtar, or by hand where it is missing."""
    if shutil.which("bsdtar") is None:
        out = b""
        for i, (name, data) in enumerate(_members() + [("TRAILER!!!", b"")]):
            head = b"070701" + b"".join(b"%08X" % v for v in (i, 0o100644, 0, 0, 1, 0, len(data), 0, 0, 0, 0,
                                                               len(name) + 1, 0))
            out += head + name.encode() + b"\0"
            out += b"\0" * (-len(out) % 4) + data + b"\0" * (-len(data) % 4)
        open(path, "wb").write(out)
        return
    src = os.path.join(os.path.dirname(path), "src")
    os.makedirs(src)
    for name, data in _members():
        open(os.path.join(src, name), "wb").write(data)
    subprocess.run(["bsdtar", "--format", "newc", "-cf", path, "-C", src] + [n for n, _ in _members()], check=True)
    shutil.rmtree(src)


@pytest.mark.parametrize("make,kind", [(_zip, "zip"), (_cpio, "cpio")])
def test_another_archive_named_tar_is_refused_saying_what_it_is(tmp_path, make, kind):
    root = tmp_path / "ds"
    root.mkdir()
    make(str(root / "a.tar"))
    with pytest.raises(ShardReadError, match=rf"shard 'a.tar': is a {kind} archive, not a tar, though named "
                                             r"\.tar.*repack its files into a tar"):
        sparkfeed.index(str(root), progress=False)


def test_the_reader_says_it_too(tmp_path):
    """A tar indexed, then replaced by a zip of the same size (its time kept): the reader's
    error says what the file is."""
    root = tmp_path / "ds"
    root.mkdir()
    _tar(str(root / "a.tar"))
    sparkfeed.index(str(root), progress=False)
    path = str(root / "a.tar")
    st = os.stat(path)
    _zip(str(tmp_path / "z.zip"))
    data = open(tmp_path / "z.zip", "rb").read()
    open(path, "wb").write(data + b"\0" * (st.st_size - len(data)))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ShardReadError, match=r"shard 'a.tar': is a zip archive, not a tar"):
        list(sparkfeed.DataLoader(str(root), batch_size=2))


def test_a_tar_whose_first_name_looks_like_cpio_is_read(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    _tar(str(root / "a.tar"))
    assert open(root / "a.tar", "rb").read(6) == b"070707"
    sparkfeed.index(str(root), progress=False)
    assert [k for b in sparkfeed.DataLoader(str(root), batch_size=2) for k in b["key"]] == ["070707", "070708"]
