"""A tar's member headers checked against its DALI index with numpy, all members at once: placement, name, size, type, numeric fields, checksums and harmless pax headers."""

from __future__ import annotations

import re
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import storage
from . import tarinfo
from .tarinfo import StrictTarInfo, _name_problem, _NameFieldError, pax_problem
from .tarnames import is_sample_member

_BLOCK = 512
_PAX = ord("x")  # a pax extended header's type: records for the member after it
# the pax keywords `tarfile` (and so webdataset) acts on besides times, ids and owner names: a
# member's name (`path`: taken as a long name, `_pax_path`), link, size, the charset of its names,
# and sparse maps (`GNU.sparse.*`). Any other keyword leaves a member's name, size, type and bytes
# as its ustar header says (`tarfile` keeps it in `pax_headers` alone): `comment`, and the extended
# attributes (`SCHILY.xattr.*`, `LIBARCHIVE.xattr.*`), `LIBARCHIVE.creationtime` and `SCHILY.*`
# file data that macOS's tar (libarchive) and star put before members.
_PAX_ACTED_ON = (b"path", b"linkpath", b"size", b"hdrcharset")
_PAX_RECORD = re.compile(rb"([1-9][0-9]*) ([^=]+)=")
# the usual harmless keywords; a pax header's data that is one such record (a fractional mtime,
# webdataset's TarWriter) is checked by Arrow for all members at once
_PAX_HARMLESS = ("mtime", "atime", "ctime", "uid", "gid", "uname", "gname", "comment")
_PAX_ONE_RECORD = r"^[1-9][0-9]* (?:%s)=[^\n]*\n$" % "|".join(_PAX_HARMLESS)
_NAME = 100  # ustar name field; longer names need the prefix field or an extension header (not taken here)
_PREFIX = 345  # the ustar prefix field's first byte: `tarfile` puts a non-empty prefix before the name
_REGULAR = (ord("0"), 0, ord("7"))  # regular files to `tarfile`: "0", the old NUL, contiguous "7"


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


def _headers_agree(buf: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, names: np.ndarray | None,
                   base: int = 0, trailer: bool = True, name_of=None) -> bool:
    """(1) and (2) of the `tarindex` module note, for all members at once. `buf` holds the tar's
    bytes from byte `base` (a window's, `window_ranges`); `trailer`: it runs to the tar's end,
    whose zero blocks are checked too. `names`: the members' name fields (`_padded_names`: all
    NULs for a name too long for one, whose header must hold it in the prefix field or take it
    from a long-name header before it; None: the index cannot describe them); `name_of(i)`:
    member i's name, for headers with a prefix or a long name."""
    n = len(offsets)
    if n == 0:
        return not buf.any()
    padded = _padded(sizes)
    starts = offsets - _BLOCK - base
    gaps = starts - np.concatenate(([0], offsets[:-1] - base + padded[:-1]))  # a pax header, or none
    if (gaps < 0).any() or (starts % _BLOCK).any() or (sizes < 0).any():
        return False
    end = int(offsets[-1] - base + padded[-1])
    if end > len(buf) or (trailer and buf[end:end + _BLOCK].any()):
        return False  # (`tarfile` ends at a zero block, or a file's end: it reads nothing after them)
    if names is None:
        return False
    blocks = buf[:len(buf) // _BLOCK * _BLOCK].reshape(-1, _BLOCK)
    heads = blocks[starts // _BLOCK]
    if not (np.isin(heads[:, 156], _REGULAR).all() and _numbers_parse(heads)
            and _octal_is(heads[:, 124:136], sizes, 11) and _checksums_agree(heads)):
        return False
    after = np.flatnonzero(gaps > 0)
    given = {} if not len(after) else _gaps_harmless(buf, blocks, starts[after] - gaps[after], gaps[after])
    return given is not None and _names_agree(heads, names, name_of,
                                              {int(after[k]): name for k, name in given.items()})


def _names_agree(heads: np.ndarray, names: np.ndarray, name_of, given: dict[int, bytes]) -> bool:
    """Whether each header (checksums checked) names its member as `tarfile` reads it: the name
    a long-name header before it gives (`given`: a pax `path` record, a GNU long name), else the
    name field alone when the prefix field is empty (compared at once), else "<prefix>/<name>",
    each cut at its first NUL (`git archive` and `tarfile` put a long name's directories there),
    with no other byte after that NUL where `StrictTarInfo` refuses one (`_names_clean`)."""
    prefixed = heads[:, _PREFIX] != 0
    if not prefixed.any() and not given:
        return bool((heads[:, :_NAME] == names).all())
    named = np.zeros(len(heads), dtype=bool)
    named[list(given)] = True
    if given and not (_names_clean(heads[named]) and all(v == name_of(i).encode("utf-8") for i, v in given.items())):
        return False
    prefixed &= ~named
    plain = ~prefixed & ~named
    if not ((heads[plain, :_NAME] == names[plain]).all() and names[plain, 0].all()):
        return False  # (a name row of NULs: a long name, which must come with a prefix)
    rows = np.flatnonzero(prefixed)
    both = heads[rows]
    if not _names_clean(both):
        return False
    prefixes, fields = both[:, _PREFIX:500].tobytes(), both[:, :_NAME].tobytes()
    width = 500 - _PREFIX
    for k, i in enumerate(rows.tolist()):
        joined = prefixes[k * width:(k + 1) * width].split(b"\0", 1)[0] + b"/" + \
            fields[k * _NAME:(k + 1) * _NAME].split(b"\0", 1)[0]
        if joined != name_of(i).encode("utf-8"):
            return False
    return True


def _header(head: np.ndarray) -> tarfile.TarInfo | None:
    """A header (a row of 512 bytes) as the streamed reader reads it, or None when
    `StrictTarInfo` refuses it."""
    try:
        return StrictTarInfo.frombuf(head.tobytes(), "utf-8", "surrogateescape")
    except (tarfile.TarError, ValueError, _NameFieldError):
        return None


def _gaps_harmless(buf: np.ndarray, blocks: np.ndarray, at: np.ndarray, gaps: np.ndarray) -> dict[int, bytes] | None:
    """{gap: the name it gives the member after it} when every gap before a member holds only
    headers `tarfile` reads past without another change to the member, else None: one harmless
    pax header each, the usual (`_pax_harmless`, at once), else block by block (`_gap_harmless`)."""
    if _pax_harmless(buf, blocks, at, gaps):
        return {}
    given = {}
    for k, (a, g) in enumerate(zip(at.tolist(), gaps.tolist())):
        ok, name = _gap_harmless(buf, a, a + g)
        if not ok:
            return None
        if name is not None:
            given[k] = name
    return given


def _skipped_file(info: tarfile.TarInfo) -> bool:
    """Whether the streamed reader skips a member as one in no sample, after the checks it
    makes of every member (`TarStreaming._check_member`: a regular file, a safe path, within
    the size limit)."""
    return info.type in _REGULAR_TYPES and not is_sample_member(info.name) and \
        storage.path_problem(info.name) is None and 0 <= info.size <= tarinfo.MAX_MEMBER_BYTES


_REGULAR_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)


def _gap_harmless(buf: np.ndarray, at: int, end: int) -> tuple[bool, bytes | None]:
    """(whether bytes [at, end) of `buf` are headers the streamed reader reads past, the name the
    last of them gives the member after them, if any): directory entries without data and files
    in no sample (`is_sample_member`: "README", ".gitattributes") that its checks pass, both of
    which it skips, pax headers, extended or global (`git archive` writes one first, its commit
    id as a `comment`), that `StrictTarInfo` takes and whose records are all harmless (`_keyword_harmless`), and
    a long name for the header after it: an extended header's `path` record besides those, or a
    GNU long name, as `tarfile` writes them for names past the name field."""
    given = None  # the long name the last header gave the next one
    while at < end:
        info = _header(buf[at:at + _BLOCK])
        if info is None or info.size < 0:  # (a negative size in base 256 walked back: no end)
            return False, None
        data = buf[at + _BLOCK:at + _BLOCK + info.size].tobytes()
        if len(data) < info.size:
            return False, None
        if given is not None:
            info.name = given.decode("utf-8", "surrogateescape")  # as `tarfile` names it
        if info.type == tarfile.DIRTYPE and info.size == 0 or _skipped_file(info):
            given = None
        elif given is None and info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE) and pax_problem(data) is None:
            given = _pax_path(data) if info.type == tarfile.XHDTYPE else None  # (b"": a name "")
            if given is None and not _pax_records_harmless(data):
                return False, None
        elif given is None and info.type == tarfile.GNUTYPE_LONGNAME and _name_problem(data) is None:
            given = data.split(b"\0", 1)[0]
        else:
            return False, None
        at += _BLOCK + (info.size + _BLOCK - 1) // _BLOCK * _BLOCK
    return at == end, given


def _pax_records(data: bytes) -> list[tuple[bytes, bytes]] | None:
    """The (keyword, value) records of pax data, walked by their length fields as `tarfile`
    walks them (to the end or a NUL), the keyword up to the record's first "="; None when one
    is not framed so (no "=" inside it, no newline ending it, a length past the data)."""
    pos, out = 0, []
    while pos < len(data) and data[pos] != 0:
        match = _PAX_RECORD.match(data, pos)
        end = pos + int(match.group(1)) if match else 0
        if match is None or not match.end() < end <= len(data) or data[end - 1] != ord("\n"):
            return None
        out.append((match.group(2), data[match.end():end - 1]))
        pos = end
    return out


def _keyword_harmless(keyword: bytes) -> bool:
    """Whether `tarfile` leaves a member as its header says whatever a pax record so named holds."""
    return keyword not in _PAX_ACTED_ON and not keyword.startswith(b"GNU.sparse.")


def _pax_path(data: bytes) -> bytes | None:
    """The value of the `path` record of pax data whose other records are all harmless
    (`_keyword_harmless`; the last `path`, as `tarfile` takes it); None when there is none or
    another record."""
    records = _pax_records(data)
    if records is None or not all(k == b"path" or _keyword_harmless(k) for k, _ in records):
        return None
    return next((v for k, v in reversed(records) if k == b"path"), None)


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
    (type "x", its checksum right) whose data fills the gap and holds only harmless
    records: such a member is read as its own header says, as `tarfile` reads it. The header
    must be one `StrictTarInfo` takes (its fields parse, no NUL inside its name), and its data
    one that `pax_problem` passes (a record over 64 bytes is walked by it)."""
    heads = blocks[at // _BLOCK]
    lengths = _octal(heads[:, 124:136])
    if not ((heads[:, 156] == _PAX).all() and (lengths >= 0).all() and (_BLOCK + _padded(lengths) == gaps).all()
            and _checksums_agree(heads) and _numbers_parse(heads) and _names_clean(heads)):
        return False
    data = at + _BLOCK
    one = _pax_one_record(buf, data, lengths) & (lengths <= 64)  # no run of 65 digits fits
    return all(_pax_records_harmless(d) and pax_problem(d) is None
               for d in (buf[a:a + n].tobytes() for a, n in zip(data[~one].tolist(), lengths[~one].tolist())))


_USTAR = np.frombuffer(b"ustar\0", dtype=np.uint8)


def _names_clean(heads: np.ndarray) -> bool:
    """Whether no header's name field, nor its prefix field where `StrictTarInfo` reads it (not
    empty, in a POSIX ustar header), holds a byte other than NUL after the NUL that ends it."""
    fields = [heads[:, :_NAME]]
    ustar = (heads[:, _PREFIX] != 0) & (heads[:, 257:263] == _USTAR).all(axis=1)
    if ustar.any():
        fields.append(heads[ustar, _PREFIX:500])
    for field in fields:  # the bytes before the first NUL are all the field's non-NUL bytes
        if not len(field):
            continue
        field = np.concatenate((field[:1], field[(field != field[0]).any(axis=1)]))  # (writers repeat one)
        nul = field == 0
        first = np.where(nul.any(axis=1), nul.argmax(axis=1), field.shape[1])
        if (np.count_nonzero(field, axis=1) != first).any():
            return False
    return True


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
    """Whether pax data's records (`_pax_records`) are all harmless (`_keyword_harmless`)."""
    records = _pax_records(data)
    return records is not None and all(_keyword_harmless(k) for k, _ in records)
