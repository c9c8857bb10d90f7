"""WebDataset tars from any writer -> manifest entries, one pass over each tar's headers.

Members `<key>.<ext>` are grouped by key exactly as webdataset groups them (the key ends at the
first dot of the base name; a sample's members are adjacent); a member in no sample (no
extension, "README"; an empty key, ".txt"; `is_sample_member`) is skipped, as webdataset skips
it, and counted in the log. A damaged member header (bad checksum, cut short) is an error naming
the shard and its offset, never the archive's end (`StrictTarInfo`). Columns are the union of the
extensions, typed by the last part of the extension (`TYPE_RULES`); a sample without some member
gets a null there. Small text members (class labels, captions) are read for their statistics;
image and other binary members are skipped over by seeking, and nothing is ever unpickled.
Each scan also produces the shard's DALI index (`wds2idx` v1.2), written beside the manifest.
"""

from __future__ import annotations

import logging
import tarfile

from .. import retries, storage
from ..errors import ShardReadError
from ..read.tarinfo import (MAX_MEMBER_BYTES, StrictTarInfo, TarHeaderError, compressed_kind, compressed_words,
                            split_name)
from ..read.tarnames import is_sample_member
from ..read.tartable import parse_int
from ..footer import json_value

__all__ = ["scan_tar", "column_of", "key_column", "tar_stats", "warn_of_split_samples", "INT_EXTS", "TEXT_EXTS", "IMAGE_CODECS", "CODECS"]

# webdataset's own integer and text extensions (its `basichandlers`), plus `.idx`.
INT_EXTS = frozenset({"cls", "cls2", "class", "count", "index", "inx", "id", "idx"})
TEXT_EXTS = frozenset({"txt", "text", "transcript", "json", "jsn"})
IMAGE_CODECS = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png", "webp": "webp"}
CODECS = {**IMAGE_CODECS, "npy": "npy"}  # recorded in the schema: what decodes the bytes
KEY_MEMBER = "__key__"
KEY_COLUMNS = ("key", "sample_key", "__key__")  # the first that no extension takes
DALI_INDEX_VERSION = "v1.2"
log = logging.getLogger(__name__)


def column_of(ext: str) -> dict:
    """The manifest column of one extension: `.cls`/`.idx` -> int64, `.txt`/`.json` -> string,
    jpg/jpeg/png/webp -> binary with that codec (`ImageDecode`), npy -> binary with codec npy
    (`NpyDecode`), anything else -> binary."""
    last = ext.rsplit(".", 1)[-1].lower()
    if last in INT_EXTS:
        return {"name": ext, "type": "int64", "member": ext}
    if last in TEXT_EXTS:
        return {"name": ext, "type": "string", "member": ext}
    codec = CODECS.get(last)
    return {"name": ext, "type": "binary", "member": ext, **({"codec": codec} if codec else {})}


def key_column(exts) -> dict:
    """The sample key as a string column (webdataset's `__key__`), named `key` unless an
    extension is called that."""
    name = next(n for n in KEY_COLUMNS if n not in set(exts))
    return {"name": name, "type": "string", "member": KEY_MEMBER}


def _check_member(info: tarfile.TarInfo, dataset: str, shard: str) -> None:
    name = info.name
    problem = None
    if info.issym() or info.islnk():
        problem = f"member {name!r} is a link; links are refused"
    elif not info.isreg():
        problem = f"member {name!r} is not a regular file (type {info.type!r})"
    elif (escape := storage.path_problem(name)) is not None:  # the reader's rule: refused here, not when read
        problem = f"member name {name!r} could escape the dataset: it {escape}"
    elif info.size > MAX_MEMBER_BYTES:
        problem = f"member {name!r} is {info.size} bytes, over the {MAX_MEMBER_BYTES}-byte limit"
    if problem:
        raise ShardReadError(problem, dataset=dataset, shard=shard, offset=info.offset)


def _value(tar, info, ext: str, key: str, dataset: str, shard: str):
    """The value of a small integer or text member, for statistics; integers as webdataset and
    the reader parse them (`parse_int`: "007", "+5")."""
    data = tar.extractfile(info).read()
    try:
        return parse_int(data) if ext.rsplit(".", 1)[-1].lower() in INT_EXTS else data.decode("utf-8")
    except (UnicodeDecodeError, ValueError) as exc:
        raise ShardReadError(f"sample {key!r}: member .{ext} cannot be read as "
                             f"{column_of(ext)['type']} ({exc})", dataset=dataset, shard=shard,
                             offset=info.offset) from exc


class _Scan:
    """What one pass over a tar collects: keys, per-extension values, the DALI index lines."""

    def __init__(self, dataset: str, shard: str):
        self.dataset, self.shard = dataset, shard
        self.keys: list[str] = []
        self.seen_keys: set[str] = set()
        self.exts_in_sample: set[str] = set()
        self.present: dict[str, int] = {}
        self.values: dict[str, list] = {}
        self.lines: list[str] = []
        self.skipped = 0  # members in no sample (`is_sample_member`)
        self.last: tarfile.TarInfo | None = None  # the last header read, for errors
        self.sparse: tarfile.TarInfo | None = None  # the first sparse member: no DALI index
        self.spaced: tarfile.TarInfo | None = None  # the first member named with a space: no DALI index

    def member(self, tar, info) -> None:
        _check_member(info, self.dataset, self.shard)
        if not is_sample_member(info.name):
            self.skipped += 1
            return
        key, ext = split_name(info.name)
        if ext == KEY_MEMBER:
            raise ShardReadError(f"member {info.name!r} has the extension {KEY_MEMBER!r}, the name of the "
                                 "sample's key (webdataset refuses such a sample: a duplicate file name); "
                                 "rename it", dataset=self.dataset, shard=self.shard, offset=info.offset)
        if not self.keys or self.keys[-1] != key:
            if key in self.seen_keys:
                raise ShardReadError(f"key {key!r} appears in two places; members of a sample "
                                     "must be adjacent, as webdataset reads them (a tar of a "
                                     "directory: make it with `tar --sort=name`)",
                                     dataset=self.dataset, shard=self.shard,
                                     offset=info.offset)
            self.keys.append(key)
            self.seen_keys.add(key)
            self.exts_in_sample = set()
            self.lines.append("")
        if ext in self.exts_in_sample:
            raise ShardReadError(f"sample {key!r} has two .{ext} members", dataset=self.dataset,
                                 shard=self.shard, offset=info.offset)
        self.exts_in_sample.add(ext)
        if info.issparse() and self.sparse is None:
            self.sparse = info
        if " " in info.name and self.spaced is None:
            self.spaced = info
        self.present[ext] = self.present.get(ext, 0) + 1
        last = ext.rsplit(".", 1)[-1].lower()
        if last in INT_EXTS or (last in TEXT_EXTS and last not in ("json", "jsn")):
            self.values.setdefault(ext, []).append(_value(tar, info, ext, key, self.dataset, self.shard))
        sep = " " if self.lines[-1] else ""
        self.lines[-1] += f"{sep}{ext} {info.offset_data} {info.size} {info.name}"


def _scan_members(scan: _Scan, fs, full: str, stream: bool, size: int | None = None) -> None:
    """Every member's header into `scan`: seeking past member data where storage can, else
    reading the tar as one stream (fsspec's streaming file, tarfile's `r|` mode). A damaged
    header is a ShardReadError at its offset (`StrictTarInfo`)."""
    f = fs.open(full, "rb", block_size=0) if stream else fs.open(full, "rb")
    try:
        with f, tarfile.open(fileobj=f, mode="r|" if stream else "r:", errorlevel=2,
                             tarinfo=StrictTarInfo) as tar:
            for info in tar:
                scan.last = info
                if not info.isdir():
                    scan.member(tar, info)
            if stream:  # the rest of the one stream: the end's padding, or members after a zero block
                _check_rest(scan, tar.fileobj.read, tar.offset)
            elif size is not None:
                _check_end(scan, f, tar.offset, size)
    except TarHeaderError as exc:
        raise ShardReadError(f"corrupt tar: {exc.reason}", dataset=scan.dataset, shard=scan.shard,
                             offset=exc.offset) from exc


def _check_end(scan: _Scan, f, end: int, size: int) -> None:
    """Warn where the tar may hold more than `tarfile` read: it ends without the end-of-archive
    blocks (cut short at a member boundary, which webdataset reads without a word too), or
    bytes that are not zero follow its end-of-archive block (a zeroed header, tars joined)."""
    if end >= size:
        log.warning("%s: shard %s ends at byte %d without the end-of-archive blocks: if it was "
                    "cut short, the samples after its last member are missing", scan.dataset,
                    scan.shard, end)
        return
    f.seek(end)
    _check_rest(scan, f.read, end)


def _check_rest(scan: _Scan, read, end: int) -> None:
    """Warn when bytes that are not zero follow the end-of-archive block at tar offset `end`
    (`read(n)`: the next bytes after it, b"" at the file's end)."""
    while block := read(1 << 20):
        if block.strip(b"\0"):
            log.warning("%s: shard %s: bytes that are not zero follow its end-of-archive block at "
                        "tar offset %d; the members after it (if any) are not read, as webdataset "
                        "does not read them", scan.dataset, scan.shard, end)
            return


def scan_tar(fs, full: str, rel: str, size: int, dataset: str) -> dict:
    """One tar's manifest entry (without schema), its extensions' values summary and DALI index."""
    scan = _Scan(dataset, rel)
    try:
        try:
            _scan_members(scan, fs, full, stream=False, size=size)
        except ValueError as exc:
            if not retries.ignores_ranges(exc, full, "scanning each tar as one stream"):
                raise
            scan = _Scan(dataset, rel)
            _scan_members(scan, fs, full, stream=True)
    except ShardReadError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise _scan_error(exc, scan, fs, full) from exc
    if scan.skipped:
        log.info("%s: shard %s: %d member(s) in no sample (no extension, or no key) skipped, as "
                 "webdataset skips them", dataset, rel, scan.skipped)
    _warn_of_cases(scan)
    n = len(scan.keys)
    return {"path": rel, "num_samples": n, "num_bytes": size,
            "members": sorted(scan.present), "present": scan.present,
            "stats": tar_stats(scan.values), "dali_index": _dali_index(scan),
            "ends": [scan.keys[0], scan.keys[-1]] if n else None}


def warn_of_split_samples(ends: list, paths: list[str], dataset: str) -> None:
    """Warn where a key ends one shard and starts the next (`ends`: each shard's first and last
    key, None when it holds none): the sample's members were split between the two files (a
    listing of files cut into tars by count), and it is read as two samples, each without the
    other's members, as webdataset reads it; its missing members are nulls, or errors where a
    column becomes tensors."""
    held = [(path, e) for path, e in zip(paths, ends) if e is not None]  # (an empty tar splits nothing)
    split = [(p, q, a[1]) for (p, a), (q, b) in zip(held, held[1:]) if a[1] == b[0]]
    if split:
        first, after, key = split[0]
        more = f" ({len(split) - 1} more shard boundaries split a sample too)" if len(split) > 1 else ""
        log.warning("%s: key %r ends shard %s and starts shard %s: its members are split between the "
                    "two files and it is read as two samples, each without the other's members, as "
                    "webdataset reads it%s; write each sample's members into one tar", dataset, key,
                    first, after, more)


def _warn_of_cases(scan: _Scan) -> None:
    """Warn of extensions that differ in case alone ("jpg" and "JPG"): webdataset lowercases
    them into one field, while each is a column of its own here (null where the other is set)."""
    spellings: dict[str, list[str]] = {}
    for ext in sorted(scan.present):
        spellings.setdefault(ext.lower(), []).append(ext)
    for same in (v for v in spellings.values() if len(v) > 1):
        log.warning("%s: shard %s: extensions %s differ in case alone: each is a column of its own "
                    "(null where another is set), where webdataset lowercases them into one field; "
                    "rename the members to one spelling to read them as one column", scan.dataset,
                    scan.shard, ", ".join(repr(e) for e in same))


def _dali_index(scan: _Scan) -> str | None:
    """The shard's DALI index (`wds2idx` v1.2: per sample, each member's extension, data offset,
    size and name), or None for a tar holding a sparse member (`tar --sparse`): its data is not
    one run of bytes at one offset, which is all an index line can say, so DALI's own reader
    would read the wrong bytes (DALI's `wds2idx` writes such a line anyway); or a member named
    with a space, which an index line (fields split at spaces) cannot hold: "my photo.jpg" was
    written as two fields, shifting the line's later ones. Without an index, sparkfeed reads the
    shard streamed, through `tarfile`, which expands sparse members."""
    for member, why in ((scan.sparse, "is a sparse file, which DALI's reader cannot read in place"),
                        (scan.spaced, "has a space in its name, which a DALI index line cannot hold "
                                      "(its fields are separated by spaces)")):
        if member is not None:
            log.warning("%s: shard %s: member %r (tar offset %d) %s: no DALI index is written for "
                        "this shard; sparkfeed reads it streamed", scan.dataset, scan.shard,
                        member.name, member.offset, why)
            return None
    return f"{DALI_INDEX_VERSION} {len(scan.keys)}\n" + "".join(line + "\n" for line in scan.lines)


def _scan_error(exc: Exception, scan: _Scan, fs, full: str) -> ShardReadError:
    """The error for a tar that `tarfile` could not read, saying what it is where that can be
    told: a compressed stream named `.tar` (tarfile's words were "truncated header"), or a tar
    cut short inside a member's data (named, with its header's offset)."""
    where = {"dataset": scan.dataset, "shard": scan.shard}
    if scan.last is None:
        try:
            head = fs.cat_file(full, start=0, end=12)
        except OSError:
            head = b""
        kind = compressed_kind(head)
        if kind:
            return ShardReadError(compressed_words(kind), **where)
    elif isinstance(exc, tarfile.ReadError) and "unexpected end of data" in str(exc):
        return ShardReadError(f"the tar is cut short inside the data of member {scan.last.name!r} "
                              f"({scan.last.size} bytes from tar offset {scan.last.offset_data})",
                              offset=scan.last.offset, **where)
    cut = _cut_after_header(exc, scan)
    if cut is not None:
        return ShardReadError(cut[0], offset=cut[1], **where)
    return ShardReadError(f"cannot scan the tar ({type(exc).__name__}: {exc})", **where)


def _cut_after_header(exc: Exception, scan: _Scan) -> tuple[str, int] | None:
    """(what is wrong, the tar offset) for a tar that ends, or holds zeros, where a member
    header must be: after an extended (pax) header, which `tarfile` then says is an "empty
    header" (one in five cuts of a webdataset `TarWriter` shard, which puts one before each
    member: the error named no offset), or inside the first header ("truncated header")."""
    if not isinstance(exc, tarfile.ReadError) or str(exc) not in ("empty header", "truncated header"):
        return None
    at = 0 if scan.last is None else scan.last.offset_data + -(-scan.last.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    if str(exc) == "empty header":
        return ("the tar is cut short (or zeroed) after the extended (pax) header at this offset: no member "
                "header follows it (tarfile: empty header)"), at
    return f"the tar is cut short inside the member header at this offset, or is no tar (tarfile: {exc})", at


def tar_stats(values: dict[str, list]) -> dict:
    """Min and max of the integer and text members read (null counts are added per column)."""
    out = {}
    for ext, vals in values.items():
        if vals:
            out[ext] = {"min": json_value(min(vals), False), "max": json_value(max(vals), True)}
    return out


def scan_task(items, url: str, dataset: str, storage_options: dict | None):
    """Spark task: scan (full, rel, size) tars with one filesystem per task."""
    from .. import storage

    fs, _ = storage.resolve(url, storage_options)
    for full, rel, size in items:
        yield scan_tar(fs, full, rel, size, dataset)
