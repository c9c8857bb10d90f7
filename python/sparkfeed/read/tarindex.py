"""A tar shard's members through its DALI index, checked against the tar's own headers.

Python's `tarfile` costs ~40 µs of CPU per member (a TarInfo per header, a file object per
member): ~150 µs per 4-member sample, which capped a WebDataset epoch at a few thousand samples
per second per core. Every shard sparkfeed writes or indexes has a DALI index (`wds2idx` v1.2:
one line per sample, `ext offset size name` per member; the manifest's `index`), so the reader
takes the member ranges from it and cuts the bytes out of the shard in one pass.

The index is a hint, never trusted: `members` accepts it only when, checked with numpy over all
members at once, (1) the members tile the archive (each header right after the previous member's
padded data, from byte 0; only zero blocks after the last), so no member, link or extension
header hides between them, but for one pax extended header before a member whose records only
say what does not change where the member is or what it holds (`_PAX_HARMLESS`: webdataset's
`TarWriter` puts one with a fractional `mtime` before every member); (2) each header's name
(its ustar prefix field empty: `tarfile` reads "<prefix>/<name>"), size, type (regular file)
and checksum say what the index says; (3) every name passes `storage.path_problem`; (4) a
sample's members share its key, keys do not repeat, and every member is in a sample as webdataset groups them
(`is_sample_member`; the scan leaves other members out of the index, so a shard holding any is
streamed). Anything else (pax or GNU long-name headers, directories, damaged headers) returns
None and the reader streams the shard with `tarfile`, whose checks and errors (naming the shard
and tar offset) apply as before; a streamed shard must still hold as many of each member as
its manifest counts (`TarReader._check_present`), so a shard damaged after indexing is an error, not samples with
members missing.
"""

from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["Index", "Members", "is_sample_member", "members", "names_are_safe", "window_ranges"]

_BLOCK = 512
_PAX = ord("x")  # a pax extended header's type: records for the member after it
# pax keywords that leave a member's name, size, type and bytes as its ustar header says
_PAX_HARMLESS = ("mtime", "atime", "ctime", "uid", "gid", "uname", "gname", "comment")
_PAX_HARMLESS_RECORD = re.compile(rb"([1-9][0-9]*) (%s)=" % b"|".join(k.encode() for k in _PAX_HARMLESS))
# a pax header's data that is one such record (the usual: a fractional mtime), checked by Arrow
_PAX_ONE_RECORD = r"^[1-9][0-9]* (?:%s)=[^\n]*\n$" % "|".join(_PAX_HARMLESS)
_NAME = 100  # ustar name field; longer names need a prefix or an extension header (not taken here)
_PREFIX = 345  # the ustar prefix field's first byte: `tarfile` puts a non-empty prefix before the name
_REGULAR = (ord("0"), 0)
# A character that `storage.path_problem` refuses anywhere in a name (control, backslash, a
# lone surrogate: not UTF-8).
_BAD_CHAR = re.compile("[\x00-\x09\x0b-\x1f\x7f\\\\\ud800-\udfff]")
# With names joined by "\n": a ":" in a first part, a ".." part (searched only when the joined
# names hold ":" or "..", which they rarely do).
_COLON_FIRST = re.compile(r"(?:^|\n)[^/\n]*:")
_DOTDOT_PART = re.compile(r"(?:^|[/\n])\.\.(?:[/\n]|$)")
_OTHER_SPACE = "\t\r\x0b\x0c\x1c\x1d\x1e\x1f"  # ASCII whitespace to str.split besides " " and "\n"


# webdataset's `base_plus_ext` (`tariterators`): a member whose name it does not match is in no
# sample; where it matches, its groups are `split_name`'s key and extension
_WDS_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
# names webdataset's `tar_file_iterator` skips as metadata (its `skip_meta`, `meta_prefix` and
# `meta_suffix`): "__meta__/a.json", "__info.x__"
_WDS_META = re.compile(r"__[^/]*__($|/)")


def is_sample_member(name: str) -> bool:
    """Whether the member `name` belongs to a sample, as webdataset groups them: not a name
    without an extension ("README") or with an empty key (".txt"), which webdataset skips, nor
    one with an empty extension ("a."), which webdataset keeps as a field named "" but which no
    column can be named, nor metadata webdataset skips (`_is_meta`: "__meta__/a.json"). Such
    members are skipped (counted in the log) by the index and the reader alike."""
    match = _WDS_NAME.match(name)
    return match is not None and match.group(2) != "" and not _is_meta(name)


def _is_meta(name: str) -> bool:
    """Whether webdataset skips the member as metadata: a name in a top directory `__<x>__/`, or
    a top-level name that starts and ends with `__`; such members are in no sample."""
    return name.startswith("__") and (("/" not in name and name.endswith("__")) or _WDS_META.match(name) is not None)


def _in_samples(keys: list[str], firsts: list[str], exts) -> bool:
    """Whether an index's members are all sample members (`is_sample_member`), given its
    samples' keys and first names and its distinct extensions (each name being `key.ext`): an
    extension holds no "/", and only a key whose base name is empty ("", "dir/") or that starts
    with "__" (`_is_meta`) needs the full rule."""
    return not any("/" in e for e in exts) and \
        all(is_sample_member(f) for k, f in zip(keys, firsts) if not k or k.endswith("/") or k.startswith("__"))


@dataclass(frozen=True)
class Members:
    """A shard's samples: keys in shard order and, per wanted member extension, each sample's
    bytes: a list (None where a sample lacks it), or a binary Arrow array when every sample has
    one (cut out with one copy); `nbytes` is what the shard's members occupy; `starts` (streamed
    shards) where each sample's first member header lies, for errors."""

    keys: list[str]
    values: dict[str, "list | pa.Array"]
    nbytes: int
    starts: list[int] | None = None  # streamed: each sample's first member header's tar offset


def names_are_safe(names: list[str]) -> bool:
    """True when every name passes `storage.path_problem`: a few scans of the joined names at
    C speed instead of a Python call per name (tested against path_problem's own cases)."""
    return _joined_names_are_safe("\n".join(names), len(names), all(names))


def _joined_names_are_safe(joined: str, n: int, none_empty: bool, chars_checked: bool = False) -> bool:
    """`names_are_safe` of `n` names joined by newlines (`none_empty`: no name is "";
    `chars_checked`: the caller found no `_BAD_CHAR` in them)."""
    if not n or not none_empty or joined.count("\n") != n - 1 or (not chars_checked and _BAD_CHAR.search(joined)) \
            or joined.startswith(("/", "\n")) or joined.endswith(("/", "\n")) or "\n/" in joined or "/\n" in joined \
            or "//" in joined or "\n\n" in joined:
        return False
    return not (":" in joined and _COLON_FIRST.search(joined)) \
        and not (".." in joined and _DOTDOT_PART.search(joined))


def _parse(text: str) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray, list[str]] | None:
    """(sample of each member, extensions, data offsets, sizes, names) from a v1.2 index."""
    lines = text.split("\n")
    head = lines[0].split()
    if len(head) != 2 or head[0] != "v1.2" or not head[1].isdigit():
        return None
    tokens, counts = _tokens(text, lines)
    if len(counts) != int(head[1]) or any(not c or c % 4 for c in counts) or sum(counts) != len(tokens):
        return None
    try:
        offsets = np.array(tokens[1::4], dtype=np.int64)
        sizes = np.array(tokens[2::4], dtype=np.int64)
    except (ValueError, OverflowError):  # not a number, or over int64
        return None
    sample = np.repeat(np.arange(len(counts)), np.array(counts, dtype=np.int64) // 4)
    return sample, tokens[0::4], offsets, sizes, tokens[3::4]


def _tokens(text: str, lines: list[str]) -> tuple[list[str], list[int]]:
    """The tokens of the lines after the first, and how many each non-empty line has."""
    if _single_spaced(text):  # the usual index: one split of the whole text, no list per line
        return text.split()[len(lines[0].split()):], [line.count(" ") + 1 for line in lines[1:] if line]
    return _tokens_per_line(lines)


def _tokens_per_line(lines: list[str]) -> tuple[list[str], list[int]]:
    rows = [line.split() for line in lines[1:] if line]
    return [t for r in rows for t in r], [len(r) for r in rows]


def _single_spaced(text: str) -> bool:
    """True when the text's only whitespace is single spaces between tokens and newlines (what
    DALI's wds2idx and sparkfeed write): then each line's tokens are its spaces plus one."""
    return text.isascii() and not any(c in text for c in _OTHER_SPACE) and "  " not in text \
        and " \n" not in text and "\n " not in text and not text.startswith(" ") and not text.endswith(" ")


def _octal(fields: np.ndarray) -> np.ndarray:
    """Tar numeric fields (rows of bytes: optional leading spaces, octal digits, then NUL or
    space) as integers; -1 where a field is not that."""
    digit = (fields >= ord("0")) & (fields <= ord("7"))
    lead = (fields == ord(" ")) & (np.cumsum(digit, axis=1) == 0)
    fields = np.where(lead, ord("0"), fields)
    digit |= lead
    run = np.cumprod(digit, axis=1).astype(bool)
    width = run.sum(axis=1)
    power = width[:, None] - 1 - np.arange(fields.shape[1])
    values = np.where(run, (fields.astype(np.int64) - ord("0")) << (3 * np.maximum(power, 0)), 0).sum(axis=1)
    after = fields[np.arange(len(fields)), np.minimum(width, fields.shape[1] - 1)]
    ok = (width > 0) & ((width == fields.shape[1]) | (after == 0) | (after == ord(" ")))
    return np.where(ok, values, -1)


def _octal_is(fields: np.ndarray, values: np.ndarray, digits: int) -> bool:
    """Whether tar numeric fields (rows of bytes) hold `values`. Tar writers put `digits`
    zero-padded octal digits there, then NUL or space bytes, so the fields are compared with
    those digits made for all values at once; a field written another way (leading spaces,
    fewer digits) is parsed by `_octal`, whose rule this fast path is a case of."""
    shifts = 3 * np.arange(digits - 1, -1, -1, dtype=np.int64)
    made = ((values[:, None] >> shifts) & 7).astype(np.uint8) + np.uint8(ord("0"))
    tail = fields[:, digits:]
    plain = (fields[:, :digits] == made).all(axis=1) & ((tail == 0) | (tail == ord(" "))).all(axis=1) \
        & (values >> (3 * digits) == 0) & (values >= 0)
    if plain.all():
        return True
    other = ~plain
    return bool((_octal(fields[other]) == values[other]).all())


def _padded_names(names: list[str]) -> np.ndarray | None:
    """The members' names as the header's name field holds them (UTF-8, NUL-padded to 100
    bytes), one row each; None when one is longer (such a member has an extension header)."""
    encoded = [name.encode("utf-8") for name in names]
    if not encoded or max(len(e) for e in encoded) > _NAME:
        return None
    return np.frombuffer(b"".join(e.ljust(_NAME, b"\0") for e in encoded), dtype=np.uint8).reshape(len(names), _NAME)


def _headers_agree(buf: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, names: np.ndarray | None,
                   base: int = 0, trailer: bool = True) -> bool:
    """(1) and (2) of the module note, for all members at once. `buf` holds the tar's bytes from
    byte `base` (a window's, `window_ranges`); `trailer`: it runs to the tar's end, whose zero
    blocks are checked too. `names`: the members' name fields (`_padded_names`; None: a name
    too long for one, which the index cannot describe)."""
    n = len(offsets)
    if n == 0:
        return not buf.any()
    padded = _padded(sizes)
    starts = offsets - _BLOCK - base
    gaps = starts - np.concatenate(([0], offsets[:-1] - base + padded[:-1]))  # a pax header, or none
    if (gaps < 0).any() or (starts % _BLOCK).any() or (sizes < 0).any():
        return False
    end = int(offsets[-1] - base + padded[-1])
    if end > len(buf) or (trailer and buf[end:].any()):
        return False
    if names is None:
        return False
    blocks = buf[:len(buf) // _BLOCK * _BLOCK].reshape(-1, _BLOCK)
    heads = blocks[starts // _BLOCK]
    return bool((heads[:, :_NAME] == names).all() and not heads[:, _PREFIX].any()
                and np.isin(heads[:, 156], _REGULAR).all() and _numbers_parse(heads)
                and _octal_is(heads[:, 124:136], sizes, 11) and _checksums_agree(heads)
                and (not gaps.any() or _pax_harmless(buf, blocks, (starts - gaps)[gaps > 0], gaps[gaps > 0])))


# the numeric fields `tarfile` parses besides size and checksum: mode, uid, gid, mtime, devmajor, devminor
_NUMBERS = np.r_[100:124, 136:148, 329:345]
_NUMBER_FIELDS = ((100, 108), (108, 116), (116, 124), (136, 148), (329, 337), (337, 345))
_NUMBER_STARTS = np.cumsum([0] + [b - a for a, b in _NUMBER_FIELDS[:-1]])  # in `heads[:, _NUMBERS]`


def _numbers_parse(heads: np.ndarray) -> bool:
    """Whether `tarfile` parses every header's other numeric fields (mode, ids, mtime, device
    numbers), as it must to read the member at all: a header whose mode is "x" is refused
    streamed (and by webdataset), so the index must not be taken for it. The usual fields (spaces,
    octal digits, then only spaces and NULs) are checked at once; any other header field by field
    with `tarfile`'s own parser."""
    words = np.ascontiguousarray(heads).view(np.uint32)
    ids = (words[:, 25:37] & _WORD_MASK) ^ _WORD_WANT  # bytes 100-148: zero where usual
    devices = words[:, 82:87] & _DEV_MASK  # bytes 328-348: the device numbers (neighbours masked)
    if not ids.any() and (not devices.any() or not (devices ^ _DEV_WANT).any()):
        return True  # every header as writers usually write them (`_written_usually`): one pass
    usual = _written_usually(heads)
    other = heads[~usual]
    return all(_tarfile_parses(row) for row in other[~_numbers_usual(other)])


def _written_usually(heads: np.ndarray) -> np.ndarray:
    """Which headers hold the numeric fields as tar writers usually write them (octal digits,
    then a NUL or a space; device numbers may be all NULs, as Python writes them for a file):
    each 4-byte word of the fields masked and compared at once, a quarter of the work of a byte
    per element."""
    words = np.ascontiguousarray(heads).view(np.uint32)
    ids = ((words[:, 25:37] & _WORD_MASK) == _WORD_WANT).all(axis=1)  # bytes 100-148
    devices = words[:, 82:87]  # bytes 328-348: the device numbers and their neighbours (masked)
    return ids & (((devices & _DEV_MASK) == _DEV_WANT).all(axis=1) | ~(devices & _DEV_MASK).any(axis=1))


def _word_masks(start: int, stop: int, fields) -> tuple[np.ndarray, np.ndarray]:
    """(mask, wanted) of bytes [start, stop) as 4-byte words: in each field its digits' top five
    bits are "0"'s (0x30-0x37), its last byte a NUL or a space (bit 0x20 aside, zero)."""
    mask, want = bytearray(stop - start), bytearray(stop - start)
    for a, b in fields:
        mask[a - start:b - start - 1] = b"\xf8" * (b - a - 1)
        want[a - start:b - start - 1] = b"\x30" * (b - a - 1)
        mask[b - start - 1] = 0xDF
    return np.frombuffer(bytes(mask), np.uint32), np.frombuffer(bytes(want), np.uint32)


_WORD_MASK, _WORD_WANT = _word_masks(100, 148, ((100, 108), (108, 116), (116, 124), (124, 136), (136, 148)))
_DEV_MASK, _DEV_WANT = _word_masks(328, 348, ((329, 337), (337, 345)))


def _numbers_usual(heads: np.ndarray) -> np.ndarray:
    """Which headers' numeric fields are each spaces or NULs, one run of octal digits, then
    spaces or NULs (what `tarfile` parses; others are left to it)."""
    fields = heads[:, _NUMBERS]
    digit = (fields - np.uint8(ord("0"))) <= 7  # (wraps below "0")
    usual = (digit | (fields == ord(" ")) | (fields == 0)).all(axis=1)
    follows = np.zeros_like(digit)  # each field's digits one run: spaces/NULs, digits, spaces/NULs
    follows[:, 1:] = digit[:, :-1]
    follows[:, _NUMBER_STARTS] = False
    return usual & (np.add.reduceat(digit & ~follows, _NUMBER_STARTS, axis=1) <= 1).all(axis=1)


def _tarfile_parses(head: np.ndarray) -> bool:
    """Whether `tarfile` parses a header's (a row of 512 bytes) numeric fields."""
    raw = head.tobytes()
    try:
        for a, b in _NUMBER_FIELDS:
            tarfile.nti(raw[a:b])
    except (ValueError, tarfile.HeaderError):
        return False
    return True


def _padded(sizes: np.ndarray) -> np.ndarray:
    """Members' data sizes rounded up to whole tar blocks."""
    return (sizes + _BLOCK - 1) // _BLOCK * _BLOCK


def _checksums_agree(heads: np.ndarray) -> bool:
    """Whether each header (a row of 512 bytes) holds its own checksum."""
    # a header's bytes sum to at most 512 x 255: uint32 holds it, and sums twice as fast as int64
    checksum = heads.sum(axis=1, dtype=np.uint32).astype(np.int64) \
        - heads[:, 148:156].sum(axis=1, dtype=np.int64) + 8 * ord(" ")
    return _octal_is(heads[:, 148:156], checksum, 6)


def _pax_harmless(buf: np.ndarray, blocks: np.ndarray, at: np.ndarray, gaps: np.ndarray) -> bool:
    """Whether each gap before a member (`gaps` bytes from `at`) is one pax extended header
    (type "x", its checksum right) whose data fills the gap and holds only `_PAX_HARMLESS`
    records: such a member is read as its own header says, as `tarfile` reads it."""
    heads = blocks[at // _BLOCK]
    lengths = _octal(heads[:, 124:136])
    if not ((heads[:, 156] == _PAX).all() and (lengths >= 0).all() and (_BLOCK + _padded(lengths) == gaps).all()
            and _checksums_agree(heads)):
        return False
    data = at + _BLOCK
    one = _pax_one_record(buf, data, lengths)
    return all(_pax_records_harmless(buf[a:a + n].tobytes()) for a, n in zip(data[~one].tolist(), lengths[~one].tolist()))


def _pax_one_record(buf: np.ndarray, data: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Which pax data (`lengths` bytes from `data`) are one harmless record whose length field
    says its whole length: Arrow's regular expression over all at once (no copy), and the
    length digits compared with numpy."""
    n = len(data)
    bounds = np.empty(2 * n, dtype=np.int64)
    bounds[0::2], bounds[1::2] = data, data + lengths
    spans = pa.Array.from_buffers(pa.large_binary(), 2 * n - 1, [None, pa.py_buffer(bounds), pa.py_buffer(buf)])
    shaped = pc.match_substring_regex(spans, _PAX_ONE_RECORD).to_numpy(zero_copy_only=False)[0::2]
    width = np.floor(np.log10(np.maximum(lengths, 1))).astype(np.int64) + 1
    place = np.arange(int(width.max()))
    digits = buf[np.minimum(data[:, None] + place, len(buf) - 1)]
    made = (lengths[:, None] // 10 ** np.maximum(width[:, None] - 1 - place, 0)) % 10 + ord("0")
    said = ((digits == made) | (place >= width[:, None])).all(axis=1)
    return shaped & said


def _pax_records_harmless(data: bytes) -> bool:
    """Whether pax data, its records walked by their length fields as `tarfile` walks them
    (to the end or a NUL), are all `_PAX_HARMLESS` records."""
    pos = 0
    while pos < len(data) and data[pos] != 0:
        match = _PAX_HARMLESS_RECORD.match(data, pos)
        if match is None:
            return False
        end = pos + int(match.group(1))
        if not match.end() < end <= len(data) or data[end - 1] != ord("\n"):
            return False
        pos = end
    return True


def _keys(sample: np.ndarray, exts: list[str], names: list[str], split_name) -> list[str] | None:
    """Each sample's key, or None when a member is not `<its sample's key>.<its index ext>` or a
    key repeats ((4)); a key has no dot in its base name, so that is what `split_name` gives."""
    first = np.flatnonzero(np.r_[True, sample[1:] != sample[:-1]]).tolist()
    keys = [split_name(names[i])[0] for i in first]
    if len(set(keys)) != len(keys) or not _in_samples(keys, [names[i] for i in first], set(exts)):
        return None
    expected = [f"{keys[s]}.{e}" for s, e in zip(sample.tolist(), exts)]
    return keys if expected == names else None


def _kinds(exts: list[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Each member's extension as a code into the distinct extensions (first seen first)."""
    codes: dict[str, int] = {}
    kind = np.array([codes.setdefault(e, len(codes)) for e in exts], dtype=np.int32)
    return kind, tuple(codes)


@dataclass(frozen=True)
class Index:
    """A shard's DALI index, parsed and checked once ((3) and (4) of the module note): each
    member's sample, extension (a code into `kinds`), data offset, size and name field (the
    name as its header holds it), and each sample's key. What the shard's bytes hold is checked
    by `members`, for the samples read."""

    sample: np.ndarray
    kind: np.ndarray
    kinds: tuple[str, ...]
    offsets: np.ndarray
    sizes: np.ndarray
    keys: list[str]
    name_fields: np.ndarray | None  # `_padded_names`; None: a name too long for a ustar header
    key_array: pa.Array | None = None  # `keys` as Arrow parsed them (`_parse_usual`), for checks

    @staticmethod
    def parse(index_text: str, split_name, max_member: int) -> "Index | None":
        """The index, or None when it is malformed, names an unsafe path, a member over
        `max_member` bytes, or a member outside its sample's key. The usual index (ASCII,
        single spaces) is parsed with Arrow's string kernels (`_parse_usual`); any other text
        token by token in Python (`_parse_any`), with the same answer."""
        if _single_spaced(index_text):
            return _parse_usual(index_text, split_name, max_member)
        return _parse_any(index_text, split_name, max_member)

    def sample_offset(self, i: int) -> int:
        """The tar offset of sample `i`'s first member header."""
        return int(self.offsets[np.searchsorted(self.sample, i)]) - _BLOCK

    def names(self) -> list[str]:
        """Every member's name, in tar order (`<its sample's key>.<its extension>`, as parsed)."""
        return [f"{self.keys[s]}.{self.kinds[k]}" for s, k in zip(self.sample.tolist(), self.kind.tolist())]

    def _members_of(self, start: int, stop: int) -> slice:
        """The members of samples [start, stop) (members are in sample order)."""
        return slice(int(np.searchsorted(self.sample, start)), int(np.searchsorted(self.sample, stop)))

    def members(self, buf, wanted: set[str], window: tuple[int, int] | None = None) -> Members | None:
        """The wanted members of the tar held in `buf`, or of samples `window=(start, stop)`
        with `buf` holding the bytes `window_ranges` names for them (from the end of the member
        before the window, where a pax header of its first member starts); None when the bytes
        are not what the index says."""
        start, stop = (0, len(self.keys)) if window is None else window
        m = self._members_of(start, stop)
        if window is not None and (not 0 <= start < stop <= len(self.keys) or m.start >= m.stop):
            return None
        offsets, sizes = self.offsets[m], self.sizes[m]
        names = None if self.name_fields is None else self.name_fields[m]
        base = 0 if window is None or m.start == 0 else \
            int(self.offsets[m.start - 1] + _padded(self.sizes[m.start - 1]))
        data = np.frombuffer(buf, dtype=np.uint8)
        if not _headers_agree(data, offsets, sizes, names, base, stop == len(self.keys)):
            return None
        sample, kind = self.sample[m] - start, self.kind[m]
        values = {ext: _column(buf, np.flatnonzero(kind == self.kinds.index(ext)) if ext in self.kinds
                               else np.zeros(0, dtype=np.int64), sample, offsets - base, sizes, stop - start)
                  for ext in wanted}
        return Members(self.keys[start:stop], values, int((sizes + _BLOCK).sum()))


def _parse_any(text: str, split_name, max_member: int) -> Index | None:
    """`Index.parse` of any text: its tokens as Python strings, names split by `split_name`."""
    parsed = _parse(text)
    if parsed is None:
        return None
    sample, exts, offsets, sizes, names = parsed
    if (sizes > max_member).any() or not names_are_safe(names):
        return None
    keys = _keys(sample, exts, names, split_name)
    return None if keys is None else Index(sample, *_kinds(exts), offsets, sizes, keys, _padded_names(names))


# a member name's key: up to its base name's first dot (`tar.split_name` of a safe name)
_KEY = r"^(?P<key>(?:.*/)?[^/.]*)"


def _parse_usual(text: str, split_name, max_member: int) -> Index | None:
    """`Index.parse` of the usual index (`_single_spaced`: ASCII, single spaces) with Arrow's
    string kernels: one split of the lines, numbers cast at C speed, keys cut by a regular
    expression and checked against the names at once; about 2 µs per sample against 4.7 for a
    Python string per token (`_parse_any`, whose answer it gives: numbers written other than
    as plain decimal digits, which Python's `int` and Arrow's cast read differently, are left
    to it)."""
    split = _usual_tokens(text)
    if split is None:
        return None
    counts, tokens = split
    every = pa.array(np.arange(0, len(tokens), 4))
    numbers = [tokens.take(pc.add(every, k)) for k in (1, 2)]
    if not all(pc.all(pc.ascii_is_decimal(x)).as_py() for x in numbers):  # non-empty, 0-9 only
        return _parse_any(text, split_name, max_member)
    try:
        offsets, sizes = (x.cast(pa.int64()).to_numpy() for x in numbers)
    except pa.ArrowInvalid:  # over int64
        return None
    exts, names = tokens.take(every), tokens.take(pc.add(every, 3))
    if (sizes > max_member).any() or not _arrow_names_are_safe(names):
        return None
    sample = np.repeat(np.arange(len(counts)), counts // 4)
    keys = _sample_keys(names, exts, sample, counts)
    if keys is None:
        return None
    kinds = pc.dictionary_encode(exts)
    if any("/" in e for e in kinds.dictionary.to_pylist()):
        return None
    return Index(sample, kinds.indices.to_numpy().astype(np.int32), tuple(kinds.dictionary.to_pylist()),
                 offsets, sizes, keys.to_pylist(), _name_fields(names), keys)


def _usual_tokens(text: str) -> tuple[np.ndarray, pa.StringArray] | None:
    """(tokens per sample line, the lines' tokens) of a v1.2 index in its usual form; None
    when its head or its number of sample lines is wrong, or a line's tokens are not members."""
    lines = text.split("\n")
    head = lines[0].split()
    if len(head) != 2 or head[0] != "v1.2" or not head[1].isdigit():
        return None
    rows = pa.array([line for line in lines[1:] if line], pa.string())
    if len(rows) != int(head[1]) or not len(rows):
        return None
    parts = pc.split_pattern(rows, " ")
    counts = pc.list_value_length(parts).to_numpy()
    return None if (counts % 4).any() else (counts, parts.flatten())


def _arrow_names_are_safe(names: pa.StringArray) -> bool:
    """`names_are_safe` of an Arrow array of ASCII names (`_parse_usual`): joined by Arrow,
    their characters checked as bytes by numpy (a control character or a backslash: ASCII's
    `_BAD_CHAR`, in a fifth of the regular expression's time), the rest as one string."""
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(names)], pa.int32()), names), "\n")
    text, none_empty = joined[0].as_py(), pc.min(pc.binary_length(names)).as_py() > 0
    if not text.isascii():
        return _joined_names_are_safe(text, len(names), none_empty)
    data = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    if (((data < 0x20) & (data != 0x0A)) | (data == 0x7F) | (data == 0x5C)).any():
        return False
    return _joined_names_are_safe(text, len(names), none_empty, chars_checked=True)


def _sample_keys(names: pa.StringArray, exts: pa.StringArray, sample: np.ndarray,
                 counts: np.ndarray) -> pa.Array | None:
    """`_keys` at C speed: each sample's key cut from its first member's name (`_KEY`), None
    when a key repeats or a member's name is not `<its sample's key>.<its ext>`."""
    firsts = names.take(pa.array(np.r_[0, np.cumsum(counts // 4)[:-1]]))
    if pc.any(pc.match_substring(firsts, "/")).as_py():  # keys with directories
        keys = pc.struct_field(pc.extract_regex(firsts, _KEY), [0])
    else:  # the usual flat names: a split at the first dot, a fifth of the expression's time
        keys = pc.list_element(pc.split_pattern(firsts, ".", max_splits=1), 0)
    if pc.count_distinct(keys).as_py() != len(keys):
        return None
    odd = pc.or_(pc.or_(pc.equal(pc.binary_length(keys), 0), pc.ends_with(keys, "/")),
                 pc.starts_with(keys, "__"))  # `_in_samples`
    if pc.any(odd).as_py() and not _in_samples(keys.filter(odd).to_pylist(), firsts.filter(odd).to_pylist(), ()):
        return None
    expected = pc.binary_join_element_wise(keys.take(pa.array(sample)), exts, ".")
    return keys if pc.all(pc.equal(expected, names)).as_py() else None


def _name_fields(names: pa.StringArray) -> np.ndarray | None:
    """`_padded_names` of an Arrow array of ASCII names (`_parse_usual`): padded with zero bytes
    by Arrow's `ascii_rpad`, whose data buffer is then the rows."""
    if not len(names) or pc.max(pc.binary_length(names)).as_py() > _NAME:
        return None
    padded = pc.ascii_rpad(names, _NAME, "\0")
    start = int(np.frombuffer(padded.buffers()[1], dtype=np.int32)[padded.offset])
    data = np.frombuffer(padded.buffers()[2], dtype=np.uint8)[start:start + len(names) * _NAME]
    return data.reshape(len(names), _NAME)


def window_ranges(index_text: str, windows, size: int) -> dict[tuple[int, int], tuple[int, int] | None]:
    """{(start, stop): bytes [a, b) of the tar (of `size` bytes) that hold samples [start,
    stop)} by its index (one line per sample: the lines around a window, the text split once
    for all windows, and no wait for the whole index's parse): from the end of the sample
    before (where a pax header before the first one's first header starts; the tar's start for
    the first sample) to the last one's padded end, or to the tar's end when the window holds
    the last sample (its zero blocks are checked). None where the index cannot say;
    `Index.members` checks the bytes."""
    lines = index_text.split("\n")
    head = lines[0].split()
    n = int(head[1]) if len(head) == 2 and head[1].isdigit() else -1
    out = {}
    for start, stop in windows:
        out[(start, stop)] = None
        if not 0 <= start < stop <= n or len(lines) <= stop:
            continue
        try:
            a = 0 if start == 0 else _line_end(lines[start])
            b = size if stop == n else _line_end(lines[stop])
        except (IndexError, ValueError):
            continue
        out[(start, stop)] = (a, b) if 0 <= a < b <= size else None
    return out


def _line_end(line: str) -> int:
    """Where a sample's last member ends (its padded data), from the sample's index line."""
    last = line.split()
    return int(last[-3]) + (int(last[-2]) + _BLOCK - 1) // _BLOCK * _BLOCK


def members(buf, index_text: str, wanted: set[str], split_name, max_member: int) -> Members | None:
    """The wanted members of the tar held in `buf` (any buffer), found through its index; None
    when the index does not describe this tar exactly (see the module note)."""
    index = Index.parse(index_text, split_name, max_member)
    return None if index is None else index.members(buf, wanted)


def _column(buf, where: np.ndarray, sample: np.ndarray, offsets: np.ndarray, sizes: np.ndarray,
            n: int):
    """Each sample's member among those at `where` (one extension): one binary array when every
    sample has exactly one (the bytes joined in one copy), else a list, None where one has none."""
    if n and len(where) == n and (sample[where] == np.arange(n)).all():
        # the members and the gaps between them as one binary array over `buf` (no copy), of
        # which Arrow's take keeps the members: one copy at C speed, into Arrow's own memory
        bounds = np.empty(2 * n, dtype=np.int64)
        bounds[0::2], bounds[1::2] = offsets[where], offsets[where] + sizes[where]
        kind, width = (pa.binary(), np.int32) if bounds[-1] < 2**31 else (pa.large_binary(), np.int64)
        spans = pa.Array.from_buffers(kind, 2 * n - 1, [None, pa.py_buffer(bounds.astype(width)),
                                                         pa.py_buffer(buf)])
        return spans.take(pa.array(np.arange(0, 2 * n, 2)))
    starts, ends = offsets[where].tolist(), (offsets[where] + sizes[where]).tolist()
    with memoryview(buf) as view:
        out: list = [None] * n
        for s, a, b in zip(sample[where].tolist(), starts, ends):
            out[s] = view[a:b].tobytes()  # a repeated extension: the last wins, as when streamed
        return out
