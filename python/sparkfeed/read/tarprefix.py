"""The headers before a window of an indexed tar shard, checked before the window is trusted.

A window's own check (`tarindex.Index.members` with a window) covers its bytes alone, from the
end of the member before it. `tarfile` reads the archive from its start, and what lies before
the window can change how it reads the window: a global pax header (`g`) with a `path` or
`size` record renames or resizes every later member that has an extended header of its own
(webdataset's `TarWriter` gives each one), an extended header's `size` moves every header after
it. `sparkfeed index` scans with `tarfile`, so its index then no longer matches the headers and
the window falls back; an index written by hand could lie, and a window read through it gave
other members than `tarfile` reads of the same shard. So a window past sample 0 is trusted only
once the headers before it (each member's header and the headers between members, not its
data) agree with the index (`tarheaders._headers_agree`, as for a whole shard); else the shard
is read whole (streamed where the index does not match), as `tarfile` reads it. The pieces
(`TarReader.chunks`) of a shard read in order check it as they go: only a lane that starts
inside a shard checks the headers before its first piece, once.
"""

from __future__ import annotations

import mmap

import numpy as np

from .. import remotefiles, retries, storage
from ..plan import WorkUnit
from . import tarindex
from .tarheaders import _padded


class TarPrefix:
    """`TarReader`'s check of the headers before a window (a mixin: it uses the reader's
    context and `_verified`, shard -> samples from the first whose headers agree)."""

    def _prefix_agrees(self, unit: WorkUnit, index: tarindex.Index, start: int, path: str, size: int) -> bool:
        """Whether the headers before sample `start` agree with the shard's index (checked
        once per shard: pieces read in order extend what was checked, `_agreed_to`)."""
        if start == 0 or self._verified.get(unit.path, 0) >= start:
            return True
        ranges, end = header_ranges(index, start)
        if storage.is_local(self.ctx.fs):
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                if len(mapped) != size:
                    return False
                with memoryview(mapped) as view, view[:end] as part:  # (pages of headers alone are read)
                    ok = index.members(part, set(), (0, start)) is not None
        else:
            ok = index.members(self._fetch_headers(path, size, ranges, end), set(), (0, start)) is not None
        if ok:
            self._verified[unit.path] = start
        return ok

    def _agreed_to(self, unit: WorkUnit, window: tuple[int, int]) -> None:
        """Samples `window` read through the index, the headers before it checked: the
        headers agree up to its end."""
        if self._verified.get(unit.path, 0) >= window[0]:
            self._verified[unit.path] = max(self._verified.get(unit.path, 0), window[1])

    def _fetch_headers(self, path: str, size: int, ranges: list[tuple[int, int]], end: int) -> bytearray:
        """The shard's first `end` bytes with only `ranges` (headers) fetched, the rest zeros."""
        got = retries.with_retries(lambda: remotefiles.fetch_ranges(self.ctx.fs, path, ranges, size, retry=False),
                                   f"reading {path} headers before byte {end}")
        buf = bytearray(end)
        for (a, b), data in got.items():
            buf[a:b] = data
        return buf


def header_ranges(index: tarindex.Index, start: int) -> tuple[list[tuple[int, int]], int]:
    """(the byte ranges of the headers before sample `start`: each member's header with what
    lies between it and the member before (pax headers, directory entries), where the member
    before the sample ends)."""
    m = int(np.searchsorted(index.sample, start))
    if m == 0:
        return [], 0
    ends = np.concatenate(([0], index.offsets[:m] + _padded(index.sizes[:m])))
    return [(a, b) for a, b in zip(ends[:-1].tolist(), index.offsets[:m].tolist()) if b > a], int(ends[-1])
