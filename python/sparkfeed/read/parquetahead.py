"""Read-ahead of Parquet row groups from remote files: upcoming row groups' column chunks fetched
as coalesced range requests, each file's footer once, a first fetch's head beside its footer."""

from __future__ import annotations

import functools
from concurrent.futures import Future

import pyarrow.parquet as pq

from .. import readahead, remotefiles, storage
from ..plan import WorkUnit
from .parquetfetch import _FOOTER_BYTES, _fetch_footer, _fetch_groups, read_options

_FETCH_BYTES = 8 << 20  # bytes of consecutive row groups of a file fetched ahead as one request
_FIRST_FETCH_BYTES = 2 << 20  # a reader's first fetch: about one row group, for the first batch
_HEAD_SLACK = 1.25  # a first fetch's head range: its row groups' share of the file, times this
NO_RANGES_INSTEAD = "reading whole files, without read-ahead"  # (`ParquetReader._no_ranges`' warning)


class ParquetAhead:
    """`ParquetReader`'s read-ahead (remote files only): what a reader fetches before it reads."""

    def _ahead_columns(self) -> list[str]:
        """What a unit's first read needs: with a filter only the filter columns (the others
        are read only for row groups where some row survives, so pushdown still saves bytes)."""
        return list(self.ctx.filter_columns) if self.ctx.expr is not None else self.ctx.read_columns

    def read_ahead(self, units) -> None:
        """Upcoming row groups: consecutive row groups of a file fetched together up to
        `_FETCH_BYTES` (one coalesced range request), each fetch after its file's footer (one
        request, once per file; for indexed data its version check too), started file by file
        for the bytes kept ahead and the next as many (`readahead.Deferred`); the reader's first
        fetch is smaller (`_FIRST_FETCH_BYTES`), so the first batch waits for little while the
        rest streams in."""
        self._follow_ranges()
        if self._ahead is None:
            return
        names, items, first = self._ahead_columns(), [], {}
        for unit in units:
            first.setdefault(unit.path, unit)
        self._drop_heads(first)
        for unit in units:
            key = (unit.path, unit.row_group)
            if unit.row_group is None:
                continue
            if key in self._ahead:  # still wanted, already fetched or in flight
                items.append(([key], 0, None))
                continue
            if self.ctx.shared.claimed(key):  # read in place by the lane sharing its block
                continue
            nbytes = self._unit_bytes(unit, names)
            limit = _FETCH_BYTES if self._fetched or len(items) > 1 else _FIRST_FETCH_BYTES
            last = items[-1] if items else None
            if last and last[2] is not None and last[0][0][0] == unit.path and last[1] + nbytes <= limit:
                items[-1] = (last[0] + [key], last[1] + nbytes, last[2] + [unit.row_group])
            else:
                items.append(([key], nbytes, [unit.row_group]))
        head = None if self._fetched else next((i for i, (_, _, groups) in enumerate(items) if groups), None)
        self._fetched = self._fetched or any(groups is not None for _, _, groups in items)
        reserved = self._reserve([key for keys, _, groups in items if groups is not None for key in keys])
        try:
            self._ahead.ahead([(keys, 0, None) if groups is None else
                               (keys, nbytes, self._deferred(first[keys[0][0]], groups,
                                                             nbytes if i == head else 0))
                               for i, (keys, nbytes, groups) in enumerate(items)])
        finally:  # every reserved place resolved, even if submitting failed: nobody waits forever
            self._offer(reserved)

    def _deferred(self, unit: WorkUnit, groups: list[int], head_bytes: int = 0) -> readahead.Deferred:
        """The fetch of row groups `groups` of the unit's file, made as read-ahead submits it;
        the file's version check and footer started then (or earlier, `prepare`), in the order
        the reader meets the files (`readahead.ReadAhead`), not all at once for every file told.
        `head_bytes` (the reader's first fetch): about that much of the file's head is fetched
        beside its footer (`_head`)."""
        prepare = functools.partial(self.open_ahead, [unit])

        def make():
            prepare()
            self._head(unit.path, groups, head_bytes)
            return self._fetcher(unit.path, groups)
        return readahead.Deferred(make, (self._ahead.order(unit.path), 2, groups[0]), prepare)

    def _drop_heads(self, upcoming) -> None:
        """Let go of the heads (`_head`) of the files the reader has left (none of `upcoming`):
        a head is most of a file's first 8 MiB, and it was held to the iteration's end."""
        for rel in [r for r in self._heads if r not in upcoming]:
            del self._heads[rel]
            self._ahead.forget(("head", rel))

    def _head(self, rel: str, groups: list[int], nbytes: int) -> None:
        """The reader's first fetch, when it starts at the file's first row group and the footer
        is not known yet: the file's head (after the 4-byte magic, about `nbytes` times
        `_HEAD_SLACK`) is fetched beside the footer instead of after it. Row groups follow one
        another from the head of a Parquet file, so the first batch waits for one round trip
        instead of two (the footer's, then the ranges it gives). The file's fetches take from it
        what it holds and fetch only the rest (`_fetch_groups`), so no byte comes twice. Never
        into the tail the footer's fetch reads, so a file smaller than `_FIRST_FETCH_BYTES` plus
        two footers' fetches gets none."""
        size = self.ctx.manifest_bytes.get(rel)
        if not nbytes or groups[0] != 0 or size is None or size < _FIRST_FETCH_BYTES + 2 * _FOOTER_BYTES:
            return
        footer = self._footer(rel)  # (started by `prepare` already: known, or its fetch's future)
        if not isinstance(footer, Future) or footer.done():
            return
        end = min(size - _FOOTER_BYTES, 4 + int(nbytes * _HEAD_SLACK) + _FOOTER_BYTES)
        path = storage.join(self.ctx.root, rel, self.ctx.dataset)
        fetch = functools.partial(self._ranged, remotefiles.fetch_ranges, self.ctx.fs, path, [(4, end)], size,
                                  etag=self._etag(path))
        self._heads[rel] = ((4, end), self._ahead.once(("head", rel), fetch, (self._ahead.order(rel), 0)))

    def _meta_ahead(self, units: list[WorkUnit]) -> None:
        """The footer of each file of `units`, fetched once, concurrently (`_footer`)."""
        for rel in dict.fromkeys(u.path for u in units if u.row_group is not None):
            self._footer(rel)

    def _unit_bytes(self, unit: WorkUnit, names: list[str]) -> int:
        """Bytes a fetch of the unit's columns `names` moves: from the footer when the file is
        open, else the shard's size in the manifest shared out by rows (all columns: at most)."""
        if unit.path in self._files:
            return self._chunk_bytes(unit.path, unit.row_group, names)
        shard = self.ctx.shards.get(unit.path)
        if shard is None or not shard.num_samples or not shard.num_bytes:
            return _FETCH_BYTES
        return max(1, shard.num_bytes * unit.num_rows // shard.num_samples)

    def _footer(self, rel: str):
        """The file's footer where this reader or another of its iteration has it, else the future
        of its fetch (once, concurrently)."""
        known = self._files.get(rel)
        if known is not None:
            return known[0].metadata
        shared = self.ctx.shared.get(rel)
        if shared is not None:
            return shared[0]
        return self.ctx.shared.fetching(rel, lambda: self._ahead.once(
            ("footer", rel), functools.partial(self._ranged, self._footer_task, rel), (self._ahead.order(rel), 0)))

    def _footer_task(self, rel: str):
        """Read-ahead task: the file's parsed footer (`_fetch_footer`, one request); a small
        file's whole bytes, which that request brought, held for the iteration's readers
        (`SharedReads.hold`) so its row groups are served from them, not fetched again."""
        path = storage.join(self.ctx.root, rel, self.ctx.dataset)
        metadata, whole = _fetch_footer(self.ctx.fs, path, self._size(path), self._etag(path))
        if whole is not None:
            self.ctx.shared.hold(rel, whole, metadata.num_row_groups)
        return metadata

    def _fetcher(self, rel: str, groups: list[int]):
        """The fetch of row groups `groups` of the file (`_fetch_groups`). A small file's is
        queued once its footer's fetch is done (`readahead.After`): it only serves the bytes that
        fetch brought, and a thread waiting for it (as a large file's fetch does, to go out the
        moment its ranges are known) would leave 3 of the 6 threads fetching (2.2 s an epoch
        over 200 files of 23 KB with 20 ms per request)."""
        path, footer = storage.join(self.ctx.root, rel, self.ctx.dataset), self._footer(rel)
        fetch = functools.partial(self._ranged, _fetch_groups, self.ctx.fs, path, footer, groups,
                                  self._ahead_columns(), self._size(path),
                                  functools.partial(self.ctx.shared.whole, rel), self._heads.get(rel),
                                  self._etag(path))
        return readahead.After(footer, fetch) if self._small(rel) and isinstance(footer, Future) else fetch

    def _ranged(self, fetch, *args, **kwargs):
        """`fetch(*args, **kwargs)` unless the server ignores Range requests (`SharedReads.ranged`)."""
        return self.ctx.shared.ranged(self.ctx.dataset, NO_RANGES_INSTEAD, fetch, *args, **kwargs)

    def _small(self, rel: str) -> bool:
        """Whether read-ahead fetches the file whole with its footer (`_FOOTER_BYTES`)."""
        size = self.ctx.manifest_bytes.get(rel)
        return self._ahead is not None and size is not None and size <= _FOOTER_BYTES

    def _whole(self, rel: str):
        """(footer, {(0, size): bytes}) of a small file whose bytes read-ahead holds (waiting
        for its footer's fetch if one is under way), else None."""
        if not self._small(rel):
            return None
        metadata = self.ctx.shared.fetched(rel)
        data = self.ctx.shared.whole(rel)
        return None if metadata is None or data is None else (metadata, {(0, len(data)): data})

    def _read_done(self, rel: str, groups) -> None:
        """Row groups `groups` of the file were read (None: all): a small file's bytes are
        dropped after its last (`SharedReads.done`)."""
        if not self._small(rel):
            return
        if groups is None:
            known = self._files.get(rel)
            if known is None:
                return
            groups = range(known[0].metadata.num_row_groups)
        self.ctx.shared.done(rel, groups)

    def _ahead_footer(self, unit: WorkUnit):
        """The footer of the unit's file if read-ahead (this reader's or another's of this
        iteration) fetched it, None otherwise."""
        if self._ahead is None or unit.path in self._files:
            return None
        return self.ctx.shared.fetched(unit.path)

    def _arrived(self, rel: str, groups: list[int]) -> list[int]:
        """`groups` (a run) cut before the first row group whose bytes are in another fetch
        still in flight: the run converts what has arrived while the rest downloads, instead of
        waiting for all of it (what makes the first batch wait for one small fetch)."""
        if self._ahead is None:
            return groups
        first = self._ahead.fetch_of((rel, groups[0]))
        for i, g in enumerate(groups[1:], 1):
            fetch = self._ahead.fetch_of((rel, g))
            if fetch is not None and fetch is not first and not fetch.done():
                return groups[:i]
        return groups

    def _take_ahead(self, unit: WorkUnit, names: list[str], groups) -> tuple | None:
        """(footer, {range: bytes}) fetched ahead for the row groups of this read, or None."""
        if self._ahead is None:
            return None
        wanted = [unit.row_group] if groups is None else groups
        md, parts, taken = None, {}, 0
        for g in wanted:
            got = None if g is None else self._take_fetched((unit.path, g))
            if got is not None:
                md, parts, taken = got[0], {**parts, **got[1]}, taken + 1
        if taken < len(wanted):  # some read in place: from a small file's bytes if held
            return self._whole(unit.path) or ((md, parts) if parts else None)
        return (md, parts) if parts else None

    def _from_parts(self, unit: WorkUnit, pf: pq.ParquetFile, parts: dict) -> tuple:
        """(the unit's file served from the fetched ranges, anything else read in place; the
        `remotefiles.KnownRanges` under it)."""
        path = storage.join(self.ctx.root, unit.path, self.ctx.dataset)
        size = self._size(path) or self.ctx.fs.size(path)
        opener = functools.partial(remotefiles.open_remote, self.ctx.fs, path, size, self._etag(path))
        src = remotefiles.KnownRanges(parts, size, opener)
        # no pre-buffering: it would ask for a run's chunks as one range across fetches (a copy);
        # chunk by chunk, each read is a view into the fetched bytes
        return pq.ParquetFile(src, metadata=pf.metadata, pre_buffer=False,
                              **read_options(self.ctx.verify_checksums)), src
