"""A tar shard streamed member by member with `tarfile`: each header checked, members grouped into samples as webdataset groups them."""

from __future__ import annotations

import io
import logging
import tarfile

from .. import remotefiles, storage
from ..plan import WorkUnit
from . import tarindex, tarinfo
from .tarinfo import StrictTarInfo, TarHeaderError, split_name
from .tarnames import is_sample_member

log = logging.getLogger(__name__)
ZEROS_LOOKED_AT = 1 << 20  # bytes past a streamed shard's end read to tell its own end (`_zeros_past`)


class TarStreaming:
    """`TarReader`'s streamed read of a shard (a mixin: it uses the reader's context and
    `_error`)."""

    def _open(self, unit: WorkUnit, path: str, data: bytes | memoryview | None):
        """The shard streamed: bytes fetched ahead, or the file in place, each read conditional
        on its indexed ETag (`remotefiles.open_remote`)."""
        if data is not None:
            return io.BytesIO(data)
        if storage.is_local(self.ctx.fs):
            return self.ctx.fs.open(path, "rb")
        # fsspec's block cache: tarfile reads 10 KiB at a time
        return remotefiles.open_remote(self.ctx.fs, path, self.ctx.manifest_bytes.get(unit.path),
                                       self.etag(unit.path), cached=True)

    def _check_member(self, unit: WorkUnit, info: tarfile.TarInfo) -> None:
        name = info.name
        where = info.offset
        if info.issym() or info.islnk():
            raise self._error(unit, f"member {name!r} is a link; links are refused", where)
        if not info.isreg():
            raise self._error(unit, f"member {name!r} is not a regular file (type {info.type!r})", where)
        problem = storage.path_problem(name)  # the same rule as manifest paths and the JVM
        if problem is not None:
            raise self._error(unit, f"member name {name!r} could escape the dataset: it {problem}",
                              where)
        if info.size > tarinfo.MAX_MEMBER_BYTES:
            raise self._error(unit, f"member {name!r} is {info.size} bytes, over the "
                              f"{tarinfo.MAX_MEMBER_BYTES}-byte limit", where)

    def _stream(self, unit: WorkUnit, path: str, data: bytes | None, wanted_members: set[str],
                where: dict, seen: list, present: dict) -> tarindex.Members:
        """One pass over the shard's members with `tarfile` (`StrictTarInfo`: a damaged header
        is an error, not the archive's end); `where["offset"]` tracks the last member header,
        `seen` gets each sample member's (header offset, name) and `present` each extension's
        count. Members in no sample (`is_sample_member`) are skipped, as webdataset skips them."""
        keys: list[str] = []
        starts: list[int] = []
        samples: list[dict] = []
        exts: set[str] = set()  # the current sample's members
        repeated: dict[int, tuple[str, int]] = {}  # sample -> (a member it holds twice, its second header)
        read = skipped = 0
        with self._open(unit, path, data) as f:
            self._check_size(unit, getattr(f, "size", len(f.getbuffer()) if isinstance(f, io.BytesIO) else None))
            try:
                with tarfile.open(fileobj=f, mode="r|", errorlevel=2, tarinfo=StrictTarInfo) as tar:
                    for info in tar:
                        where["offset"] = info.offset
                        if info.isdir():
                            continue
                        self._check_member(unit, info)
                        read += info.size + 512
                        if not is_sample_member(info.name):
                            skipped += 1
                            continue
                        seen.append((info.offset, info.name))
                        key, ext = split_name(info.name)
                        present[ext] = present.get(ext, 0) + 1
                        if not keys or keys[-1] != key:
                            keys.append(key)
                            starts.append(info.offset)
                            samples.append({})
                            exts = set()
                        if ext in exts:
                            repeated.setdefault(len(keys) - 1, (ext, info.offset))
                        exts.add(ext)
                        if ext in wanted_members:
                            samples[-1][ext] = tar.extractfile(info).read()
                    where["end"] = tar.offset  # the end-of-archive block (or the file's end)
            except TarHeaderError as exc:
                raise self._error(unit, f"corrupt tar: {exc.reason}", exc.offset) from exc
        if skipped:
            log.debug("%s: shard %s: %d member(s) in no sample (no extension or no key) skipped",
                      self.ctx.dataset, unit.path, skipped)
        values = {m: [s.get(m) for s in samples] for m in wanted_members}
        return tarindex.Members(keys, values, read, starts, repeated)

    def _check_complete(self, unit: WorkUnit, found: tarindex.Members, end: int, path: str | None = None,
                        data=None) -> None:
        """A streamed shard holds the samples its manifest counts: `tarfile` ends the archive at
        the first zero block (a header zeroed in the middle of the shard) or at the file's end
        without a word, and the samples after it would only be missed by the count. The error
        names the tar offset where the archive ended and what the file holds past it: nothing
        but zeros (`_zeros_past`: the tar's own end, a shard replaced by a shorter one padded to
        the same size) or more bytes, which tarfile and webdataset do not read."""
        shard = self.ctx.shards.get(unit.path)
        n = len(found.keys)
        if shard is None or n >= shard.num_samples:
            return
        size = self.ctx.manifest_bytes.get(unit.path)
        if size is not None and end >= size:
            how = "at the end of the file"
        elif size is not None and path is not None and self._zeros_past(path, data, end, size):
            how = f"at its end-of-archive blocks (the {size - end} bytes past them are zeros: the tar's own end)"
        else:
            how = "at a zero block (the end-of-archive mark)" + (
                "" if size is None else f", with {size - end} more bytes in the file past it "
                "(a member header zeroed?), which tarfile and webdataset do not read")
        raise self._error(unit, f"the tar ends here, {how}, after {n} samples where the manifest "
                          f"counts {shard.num_samples}: the shard was damaged or changed after the "
                          "manifest was written", end)

    def _zeros_past(self, path: str, data, end: int, size: int) -> bool:
        """Whether the shard's bytes from `end` to its `size` are all zeros (looked at up to
        `ZEROS_LOOKED_AT` bytes; `data`: the shard's bytes, when held)."""
        if size - end > ZEROS_LOOKED_AT:
            return False
        try:
            tail = bytes(data[end:size]) if data is not None else self.ctx.fs.cat_file(path, start=end, end=size)
        except Exception:  # noqa: BLE001 - only a better word for an error about to be raised
            return False
        return len(tail) == size - end and not tail.strip(b"\0")

    def _check_present(self, unit: WorkUnit, present: dict[str, int], seen: list[tuple[int, str]],
                       index: tarindex.Index | None) -> None:
        """A shard that `sparkfeed.index` scanned holds as many of each member as its manifest
        counts (samples less the column's nulls): else its headers changed after indexing (a
        renamed member with a valid checksum), and the sample counts alone would let samples
        through with members missing. The error names the first member that differs from the
        shard's index, when it has one (only named: the index decides nothing)."""
        shard = self.ctx.shards.get(unit.path)
        if shard is None or (shard.mtime is None and shard.etag is None):
            return  # written by sparkfeed (a sample without members leaves no trace there)
        for col in self.ctx.schema:
            member, stats = col.member or col.name, shard.stats.get(col.name)
            if member == "__key__" or stats is None or stats.null_count is None:
                continue
            want, got = shard.num_samples - stats.null_count, present.get(member, 0)
            if got != want:
                raise self._error(unit, f"the tar holds {got} .{member} member(s) where its manifest "
                                  f"counts {want}: the shard was damaged or changed after it was "
                                  "indexed (index it again if the change is wanted)",
                                  _first_difference(seen, index))


def _repeated_key(found: tarindex.Members) -> tuple[str, int | None]:
    """(the error, the tar offset of the key's second place) for a streamed shard whose key
    appears in two places (an index never gives one: its check refuses repeated keys)."""
    first: dict[str, int] = {}
    for i, key in enumerate(found.keys):
        if first.setdefault(key, i) != i:
            return (f"key {key!r} appears in two places (samples {first[key]} and {i}); members of a "
                    "sample must be adjacent, as webdataset reads them"), \
                found.starts[i] if found.starts else None
    return "a key appears in two places; members of a sample must be adjacent", None


def _first_difference(seen: list[tuple[int, str]], index: tarindex.Index | None) -> int | None:
    """The tar offset of the first member whose name is not the one the shard's index names
    there (`seen`: the streamed members' header offsets and names); None without an index."""
    if index is None:
        return None
    names = index.names()
    got = [name for _, name in seen]
    i = next((i for i, (a, b) in enumerate(zip(got, names)) if a != b), min(len(got), len(names)))
    if i < len(seen):
        return seen[i][0]
    return int(index.offsets[i]) - 512 if i < len(names) else None
