"""A tar shard whose last byte of data a test changes in place (same size, a new mtime and so a
new ETag): the shard replaced mid-epoch of tests/unit/test_tar_replaced_midway.py and
tests/deploy/test_s3_replaced_tar_midway.py."""

import io
import os
import tarfile

N, TEXT = 400, 10_000


def write_shard(path) -> None:
    """N samples: `.cls` one digit (i % 7, never 9), `.txt` TEXT bytes of filler."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as t:
        for i in range(N):
            for ext, data in (("cls", str(i % 7).encode()), ("txt", b"x" * TEXT)):
                info = tarfile.TarInfo(f"s{i:05d}.{ext}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))


def replace_last_label(path) -> None:
    """The shard rewritten in place: same size, the last sample's label digit made 9."""
    data = bytearray(path.read_bytes())
    at = data.rindex(f"s{N - 1:05d}.cls".encode()) + 512  # (its one byte, after its header)
    data[at:at + 1] = b"9"
    st = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # (a new ETag whatever the clock)
