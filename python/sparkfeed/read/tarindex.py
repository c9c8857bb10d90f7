"""A tar shard's members through its DALI index, checked against the tar's own headers.

Python's `tarfile` costs ~40 µs of CPU per member (a TarInfo per header, a file object per
member): ~150 µs per 4-member sample, which capped a WebDataset epoch at a few thousand samples
per second per core. Every shard sparkfeed writes or indexes has a DALI index (`wds2idx` v1.2:
one line per sample, `ext offset size name` per member; the manifest's `index`), so the reader
takes the member ranges from it and cuts the bytes out of the shard in one pass.

The index is a hint, never trusted: `members` accepts it only when, checked with numpy over all
members at once, (1) the members tile the archive (each header right after the previous member's
padded data, from byte 0; a zero block or the file's end after the last, where `tarfile` stops),
so no member, link or extension header hides between them, but for headers `tarfile` reads past
without a change to the member (`tarheaders._gaps_harmless`): pax headers, extended or global,
whose records `tarfile` does not act on (`tarheaders._keyword_harmless`: all but path, linkpath, size, hdrcharset and GNU.sparse.*;
webdataset's `TarWriter` puts one with a fractional `mtime` before every member, `git archive` a
global one with its commit id, macOS's tar one with extended attributes and a creation time),
directory entries without data (`git archive` writes one per directory) and files in no sample that
the streamed reader's checks pass and it skips ("README"), and right before a member a long name (a
pax `path` record, a GNU long name); (2) each header's name (that long name, else the name field,
or "<prefix>/<name>" when the ustar prefix field is not empty, as `tarfile` reads it: `git archive`
and `tarfile` put a long name's directories there), size, type (regular file) and checksum say what
the index says; (3) every name passes `storage.path_problem`; (4) a sample's members share its key,
keys do not repeat, and every member the index lists is in a sample as webdataset groups them
(`is_sample_member`; the scan leaves other members out of the index). Anything else (a pax record
`tarfile` acts on, GNU long link names, links, devices, sparse members, a size in base 256, damaged
headers) returns None and the reader streams the shard
with `tarfile`, whose checks and errors (naming the shard and tar offset) apply as before; a
streamed shard must still hold as many of each member as its manifest counts
(`TarReader._check_present`), so a shard damaged after indexing is an error, not samples with
members missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .tarheaders import _BLOCK, _NAME, _headers_agree, _padded
from .tarnames import _arrow_names_are_safe, _in_samples, is_sample_member, names_are_safe

__all__ = ["Index", "Members", "is_sample_member", "members", "names_are_safe", "window_ranges"]

_OTHER_SPACE = "\t\r\x0b\x0c\x1c\x1d\x1e\x1f"  # ASCII whitespace to str.split besides " " and "\n"


@dataclass(frozen=True)
class Members:
    """A shard's samples: keys in shard order and, per wanted member extension, each sample's
    bytes: a list (None where a sample lacks it), or a binary Arrow array when every sample has
    one (cut out with one copy); `nbytes` is what the shard's members occupy; `starts` where
    each sample's first member header lies, for errors; `repeated` the samples
    holding a member twice (webdataset refuses them), each with that member's extension and
    the tar offset of its second copy's header."""

    keys: list[str]
    values: dict[str, "list | pa.Array"]
    nbytes: int
    starts: list[int] | None = None  # each sample's first member header's tar offset
    repeated: dict[int, tuple[str, int]] = field(default_factory=dict)  # sample -> (ext, offset)


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
    rows = [_fields(line) for line in lines[1:] if line]
    return [t for r in rows for t in r], [len(r) for r in rows]


_ASCII_SPACE = re.compile("[ \t\n\r\x0b\x0c]+")


def _fields(line: str) -> list[str]:
    """A line's fields split at ASCII whitespace, as DALI reads them (C's `isspace`), not at every
    Unicode space `str.split` splits at: a name holding an ideographic or no-break space
    ("photo\u30000.jpg") made its line malformed, and the shard was streamed at every read."""
    return [f for f in _ASCII_SPACE.split(line) if f]


def _single_spaced(text: str) -> bool:
    """True when the text's only whitespace is single spaces between tokens and newlines (what
    DALI's wds2idx and sparkfeed write): then each line's tokens are its spaces plus one."""
    return text.isascii() and not any(c in text for c in _OTHER_SPACE) and "  " not in text \
        and " \n" not in text and "\n " not in text and not text.startswith(" ") and not text.endswith(" ")


def _padded_names(names: list[str]) -> np.ndarray | None:
    """The members' names as the header's name field holds them (UTF-8, NUL-padded to 100
    bytes), one row each; all NULs for a longer one (its header must split it with the ustar
    prefix field: `tarheaders._names_agree`); None for no names."""
    encoded = [e if len(e) <= _NAME else b"" for e in (name.encode("utf-8") for name in names)]
    if not encoded:
        return None
    return np.frombuffer(b"".join(e.ljust(_NAME, b"\0") for e in encoded), dtype=np.uint8).reshape(len(names), _NAME)


def _keys(sample: np.ndarray, exts: list[str], names: list[str], split_name) -> list[str] | None:
    """Each sample's key, or None when a member is not `<its sample's key>.<its index ext>` or a
    key repeats ((4)); a key has no dot in its base name, so that is what `split_name` gives."""
    first = np.flatnonzero(np.r_[True, sample[1:] != sample[:-1]]).tolist()
    keys = [split_name(names[i])[0] for i in first]
    if len(set(keys)) != len(keys) or not _in_samples(keys, [names[i] for i in first], set(exts)):
        return None
    expected = [f"{keys[s]}.{e}" for s, e in zip(sample.tolist(), exts)]
    return keys if expected == names else None


def _repeated(sample: np.ndarray, kind: np.ndarray, nkinds: int) -> dict[int, int]:
    """{sample: the first member whose extension an earlier member of the sample has} (an index
    `wds2idx` wrote for such a tar lists both copies; webdataset refuses the sample): at once,
    per sample the sum of its members' extension bits against their OR, then the few samples
    found (or every one, past 62 extensions) member by member."""
    if not len(sample):
        return {}
    if nkinds <= 62:
        bits = np.left_shift(np.int64(1), kind.astype(np.int64))
        starts = np.flatnonzero(np.r_[True, sample[1:] != sample[:-1]])
        if (np.add.reduceat(bits, starts) == np.bitwise_or.reduceat(bits, starts)).all():
            return {}
    out: dict[int, int] = {}
    seen: set[int] = set()
    last = -1
    for i, (s, k) in enumerate(zip(sample.tolist(), kind.tolist())):
        if s != last:
            seen, last = set(), s
        if k in seen:
            out.setdefault(s, i)
        seen.add(k)
    return out


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
    name_fields: np.ndarray | None  # `_padded_names` (NULs: a name longer than the name field)
    key_array: pa.Array | None = None  # `keys` as Arrow parsed them (`_parse_usual`), for checks
    repeated: dict[int, int] = field(default_factory=dict)  # sample -> a member repeating one (`_repeated`)

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

    def _name(self, i: int) -> str:
        """Member i's name (`<its sample's key>.<its extension>`)."""
        return f"{self.keys[int(self.sample[i])]}.{self.kinds[int(self.kind[i])]}"

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
        if not _headers_agree(data, offsets, sizes, names, base, stop == len(self.keys),
                              lambda i: self._name(m.start + i)):
            return None
        sample, kind = self.sample[m] - start, self.kind[m]
        values = {ext: _column(buf, np.flatnonzero(kind == self.kinds.index(ext)) if ext in self.kinds
                               else np.zeros(0, dtype=np.int64), sample, offsets - base, sizes, stop - start)
                  for ext in wanted}
        repeated = {s - start: (self.kinds[self.kind[i]], int(self.offsets[i]) - _BLOCK)
                    for s, i in self.repeated.items() if start <= s < stop}
        firsts = np.searchsorted(sample, np.arange(stop - start))  # each sample's first member
        return Members(self.keys[start:stop], values, int((sizes + _BLOCK).sum()),
                       (offsets[firsts] - _BLOCK).tolist(), repeated)


def _parse_any(text: str, split_name, max_member: int) -> Index | None:
    """`Index.parse` of any text: its tokens as Python strings, names split by `split_name`."""
    parsed = _parse(text)
    if parsed is None:
        return None
    sample, exts, offsets, sizes, names = parsed
    if (sizes > max_member).any() or not names_are_safe(names):
        return None
    keys = _keys(sample, exts, names, split_name)
    if keys is None:
        return None
    kind, kinds = _kinds(exts)
    return Index(sample, kind, kinds, offsets, sizes, keys, _padded_names(names),
                 repeated=_repeated(sample, kind, len(kinds)))


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
    kind = kinds.indices.to_numpy().astype(np.int32)
    return Index(sample, kind, tuple(kinds.dictionary.to_pylist()), offsets, sizes, keys.to_pylist(),
                 _name_fields(names), keys, _repeated(sample, kind, len(kinds.dictionary)))


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
    by Arrow's `ascii_rpad`, whose data buffer is then the rows (a longer name's row all NULs)."""
    if not len(names):
        return None
    long = pc.greater(pc.binary_length(names), _NAME)
    if pc.any(long).as_py():
        names = pc.if_else(long, "", names)
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
    last = _fields(line)
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
            out[s] = view[a:b].tobytes()  # a repeated extension: the last (the sample is refused: `_repeated`)
        return out
