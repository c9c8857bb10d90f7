"""Fetching a remote Parquet file's bytes: its footer, its small whole, the column chunks of some
row groups (what read-ahead's tasks run), and the options every ParquetFile is opened with."""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from concurrent.futures import Future

import pyarrow.parquet as pq

from .. import arrowtypes, footercheck, remotefiles
from .parquetcols import _paths_above

def read_options(verify_checksums: bool = True) -> dict:
    """What every ParquetFile of a read opens with. Pages that carry a CRC (parquet-mr, so Spark,
    writes one per page; pyarrow with write_page_checksum=True) are checked against it unless the
    user turned that off (`verify_checksums=False`): a damaged page of an uncompressed column, or
    a flipped literal byte in a snappy page, was delivered as wrong bytes without a word. Pages
    without one cost nothing."""
    return {**arrowtypes.INT96_UNIT, "page_checksum_verification": verify_checksums}

_FOOTER_BYTES = 64 << 10  # a footer's fetch: the file's tail (pyarrow's own footer read); a file
# no larger is fetched whole by it, and its row groups served from those bytes (`SharedReads.hold`)



def _fetch_whole(ctx, rel: str, path: str, size: int) -> io.BytesIO:
    """A small file read in place (the filter's count pass, a lane ahead of read-ahead): the
    bytes the iteration's readers hold (`SharedReads.hold`), else fetched whole in one request
    (its footer and row groups would otherwise be a request each) and held for them, as
    read-ahead holds what it fetches: the count pass's, for the first epoch's readers
    (`Engine.plan`; before, each small file was fetched again there). Not retried here: the
    read that needs it is (`ParquetReader._retrying`)."""
    data = ctx.shared.whole(rel)
    if data is None:
        shard = ctx.shards.get(rel)
        data = remotefiles.fetch_whole(ctx.fs, path, size, retry=False, etag=shard and shard.etag)
        if shard is not None and shard.row_groups:  # (held until each is read, bounded in bytes)
            ctx.shared.hold(rel, data, len(shard.row_groups))
    return io.BytesIO(data)


def _fetch_footer(fs, path: str, size: int | None, etag: str | None = None) -> tuple:
    """(the file's parsed footer, the whole file's bytes if the request brought all of it, else
    None): one request for its last `_FOOTER_BYTES` (`remotefiles.fetch_ranges`, which checks the
    server's size against the manifest's and that it honoured the range), a second one only
    for a footer longer than that. Without a known size, fsspec's file reads the tail. Over HTTP
    with `etag` (the file's indexed version), conditional on it (`remotefiles.fetch_ranges`)."""
    if size is None:
        with remotefiles.open_remote(fs, path, size, etag) as f:
            metadata = pq.ParquetFile(f).metadata
        footercheck.check(metadata)
        return metadata, None
    start = max(0, size - _FOOTER_BYTES)
    parts = remotefiles.fetch_ranges(fs, path, [(start, size)], size, etag=etag)
    with remotefiles.KnownRanges(parts, size, functools.partial(remotefiles.open_remote, fs, path, size, etag)) as src:
        metadata = pq.ParquetFile(src).metadata
    footercheck.check(metadata)  # read-ahead reads no row group of a damaged footer (`footercheck.damage`)
    return metadata, (parts[(start, size)] if start == 0 else None)


def _fetch_groups(fs, path: str, footer, groups: list[int], names: list[str], size: int | None = None,
                  whole: Callable[[], object] | None = None, head: tuple | None = None, etag: str | None = None):
    """Read-ahead task: (footer, {range: bytes}) of the column chunks of `names` in row groups
    `groups` of one file, adjacent chunks in one request (a file whose size is not the
    manifest's `size` fails it: read in place, where the error is named), or no request where
    `whole()` gives the small file's bytes its footer's fetch brought (`SharedReads.hold`); what
    `head` ((range, future) of the file's head, fetched beside its footer:
    `ParquetReader._head`) holds is taken from it, and only the rest is fetched.
    `footer` is the file's metadata, or the future of its fetch (`_fetch_footer`, submitted
    before this task, so never behind it). `etag`: the file's indexed version, each request
    conditional on it (`remotefiles.fetch_ranges`)."""
    metadata = footer.result() if isinstance(footer, Future) else footer
    if metadata is None:  # not fetched ahead (read-ahead's once-fetches are off): read it here
        metadata = _fetch_footer(fs, path, None, etag)[0]
    data = None if whole is None else whole()
    if data is not None:
        return metadata, {(0, len(data)): data}
    wanted, ranges = set(names), []
    for g in groups:
        rg = metadata.row_group(g)
        for j in range(rg.num_columns):
            col = rg.column(j)
            if not wanted.isdisjoint(_paths_above(col.path_in_schema)):
                start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
                ranges.append((start, start + col.total_compressed_size))
    held, rest = _from_head(head, ranges)
    return metadata, {**held, **(remotefiles.fetch_ranges(fs, path, rest, size, etag=etag) if rest else {})}


def _from_head(head: tuple | None, ranges: list[tuple[int, int]]) -> tuple[dict, list[tuple[int, int]]]:
    """({range: bytes} of the head fetch (`head`: its range and future) if it holds any part of
    `ranges`, else nothing; the pieces of `ranges` it does not hold). Only a fetch that wants
    some of its bytes waits for it; a failed head is no fetch's failure: the ranges are then
    fetched as without it."""
    if head is None or not any(x < head[0][1] and y > head[0][0] for x, y in ranges):
        return {}, ranges
    try:
        parts = head[1].result()
    except Exception:
        parts = None
    if not parts:
        return {}, ranges
    (a, b), = parts
    rest = []
    for x, y in ranges:
        if y <= a or x >= b:
            rest.append((x, y))
            continue
        if x < a:
            rest.append((x, a))
        if y > b:
            rest.append((b, y))
    overlaps = any(x < b and y > a for x, y in ranges)
    return (parts if overlaps else {}), rest
