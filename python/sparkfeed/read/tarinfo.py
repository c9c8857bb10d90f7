"""Tar member headers read strictly (`StrictTarInfo`): a damaged, crafted or NUL-cut header is refused naming its tar offset, never taken for the archive's end."""

from __future__ import annotations

import posixpath
import re
import string
import tarfile

MAX_MEMBER_BYTES = 1 << 30


def split_name(name: str) -> tuple[str, str]:
    """(key, extension) of a member name: the key ends at the first dot of the base name."""
    head, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(head, stem) if head else stem, ext


class TarHeaderError(Exception):
    """A member header with a bad checksum, or cut short, past the tar's first block. Not a
    `tarfile.HeaderError`, so `TarFile.next` raises it instead of taking it for the archive's
    end (`StrictTarInfo`)."""

    def __init__(self, offset: int, reason: str):
        super().__init__(f"{reason} (tar offset {offset})")
        self.offset, self.reason = offset, reason


class StrictTarInfo(tarfile.TarInfo):
    """The `tarinfo` class of every tar sparkfeed reads (`tarfile.open(..., tarinfo=...)`).
    Python's `TarFile.next` ends the archive without a word at a header whose checksum is wrong
    or that is cut short anywhere after byte 0, so every member after it would be lost
    silently; this raises `TarHeaderError` naming the header's offset there instead. The
    end-of-archive zero block, and a file that ends where a header would start (no
    end-of-archive blocks, as webdataset accepts), still end the archive."""

    @classmethod
    def frombuf(cls, buf, encoding, errors):
        """A header parsed as `tarfile` parses it, but one whose name (or non-empty ustar prefix)
        bytes go on past the NUL that ends it is refused (`_name_problem`): `tarfile` cuts the
        name there, and the member would become another one ("s1\\0.txt" a member "s1" in no
        sample) without a word. (Bytes after an empty prefix change nothing; the index check,
        `tarindex`, takes such a header as well.)"""
        if 0 < len(buf) < tarfile.BLOCKSIZE and not buf.strip(tarfile.NUL):
            # an end-of-archive block cut short: the end, as `tarfile` and webdataset take it
            # (and the index check: `tarheaders`), not a header cut short with members lost
            raise tarfile.EOFHeaderError("end of file header")
        obj = super().frombuf(buf, encoding, errors)
        problem = _name_problem(buf[:100]) or \
            (_name_problem(buf[345:500]) if buf[345] and buf[257:263] == b"ustar\0" else None)
        if problem is not None:
            raise _NameFieldError(problem)
        return obj

    @classmethod
    def fromtarfile(cls, tar):
        """A member header as `tarfile` reads it (with its extended headers), refused naming its
        offset where damaged (see the class note) or where its size, in base 256 or a pax
        record, is negative: `tarfile` would step back to it or before it, reading the same
        headers again without end (a hang, its member list growing)."""
        start = tar.fileobj.tell()
        try:
            info = super().fromtarfile(tar)
        except _NameFieldError as exc:
            raise TarHeaderError(start, f"member header's {exc}") from None
        except (tarfile.InvalidHeaderError, tarfile.TruncatedHeaderError) as exc:
            if start == 0:
                raise  # byte 0: not a tar at all, which tarfile itself says
            what = "cut short" if isinstance(exc, tarfile.TruncatedHeaderError) else "damaged"
            raise TarHeaderError(start, f"member header {what} ({exc}); the members after it "
                                 "would be lost") from exc
        if info.size < 0:
            raise TarHeaderError(start, f"member {info.name!r} has a negative size ({info.size}); tarfile "
                                 "would read the same headers again without end")
        return info

    def _proc_pax(self, tarfile):
        """A pax extended header, its records checked first (`pax_problem`): `tarfile` before
        Python 3.11.10 parses them with regular expressions that backtrack, and a crafted header
        of 240 KB took 40 s and 7 GB (every record's keyword a copy of the rest of the header);
        a damaged one is refused naming its offset, as newer Pythons refuse it."""
        self._check_extended_size("pax extended header")
        data = tarfile.fileobj.read(self._block(self.size))
        problem = pax_problem(data[:self.size]) if len(data) >= self.size else "is cut short"
        if problem is not None:
            raise TarHeaderError(self.offset, f"pax extended header {problem}; the members after "
                                 "it would be misread")
        return _replaying(tarfile, data, super()._proc_pax)

    def _proc_gnulong(self, tarfile):
        """A GNU long name (or link name), refused as `frombuf` refuses a name field when its
        bytes go on past the NUL that ends it."""
        self._check_extended_size("GNU long name")
        data = tarfile.fileobj.read(self._block(self.size))
        if len(data) < self.size:  # (`tarfile` said "empty header", with no offset)
            raise TarHeaderError(self.offset, "GNU long name is cut short (the file ends inside it)")
        problem = _name_problem(data[:self.size])
        if problem is not None:
            raise TarHeaderError(self.offset, f"GNU long name's {problem}")
        return _replaying(tarfile, data, super()._proc_gnulong)

    def _check_extended_size(self, what: str) -> None:
        """An extended header's size is read whole into memory (`tarfile` asks for all of it at
        once): one declaring a petabyte was a bare MemoryError, one of a few hundred GiB the
        machine's memory; past `MAX_MEMBER_BYTES`, or negative, it is refused naming its offset."""
        if not 0 <= self.size <= MAX_MEMBER_BYTES:
            raise TarHeaderError(self.offset, f"{what} declares {self.size} bytes, not within 0 to the "
                                 f"{MAX_MEMBER_BYTES}-byte limit")


class _NameFieldError(Exception):
    """`StrictTarInfo.frombuf`'s refusal of a name field, given its tar offset by `fromtarfile`."""


def _name_problem(field: bytes) -> str | None:
    """What is wrong with a NUL-terminated name field (None: nothing): bytes other than NUL after
    the NUL that ends the name, which every tar writer pads with NULs."""
    end = field.find(b"\0")
    if end < 0 or not field[end:].strip(b"\0"):
        return None
    rest = field[end:].strip(b"\0")[:40]
    return (f"name {field[:end]!r} is followed by a NUL and then {rest!r}: "
            "a NUL inside a member name (tarfile and webdataset would cut the name there and read "
            "another member)")


_PAX_LENGTH = re.compile(rb"([0-9]{1,20}) ")
_PAX_DIGITS = re.compile(rb"[0-9]{65}")


def pax_problem(data: bytes) -> str | None:
    """What is wrong with pax header data (None: nothing), walked record by record in linear
    time: each record `<length> <keyword>=<value>\n` must fill its length exactly (to the end or
    a NUL), as Python 3.12.6+ demands; and no run of over 64 digits, on which `tarfile`'s search
    for a `hdrcharset` record backtracks quadratically."""
    pos = 0
    while pos < len(data) and data[pos] != 0:
        match = _PAX_LENGTH.match(data, pos)
        length = int(match.group(1)) if match else 0
        end = pos + length
        if length < 5 or end > len(data) or data[end - 1] != ord("\n") \
                or data.find(b"=", match.end() + 1, end - 1) < 0:
            return f"has a malformed record at byte {pos} of its data"
        pos = end
    if _PAX_DIGITS.search(data) is not None:
        return "has a run of over 64 digits"
    return None


def _replaying(tarfile, data: bytes, proc):
    """`proc(tarfile)` (tarfile's own parse of an extended header) reading `data`, the header's
    blocks already read and checked here, before the rest of the tar."""
    inner = tarfile.fileobj
    tarfile.fileobj = _Replayed(data, inner)
    try:
        return proc(tarfile)
    finally:
        tarfile.fileobj = inner


class _Replayed:
    """A tar's file object whose next read gives `data` (already read from it) back, for
    `tarfile`'s own parse of a pax header that `StrictTarInfo` checked first; all else goes to
    the file object itself."""

    def __init__(self, data: bytes, inner):
        self._data, self._inner = data, inner

    def read(self, size=-1):
        if self._data is not None:
            data, self._data = self._data, None
            return data
        return self._inner.read(size)

    def __getattr__(self, name):
        return getattr(self._inner, name)


# The first bytes of the compressed streams a `.tar` may hold (`tar -czf x.tar`, TarWriter's
# compress=True): gzip, bzip2, xz, zstd, lz4 frames.
COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz",
                    b"\x28\xb5\x2f\xfd": "zstd", b"\x04\x22\x4d\x18": "lz4"}


# ... and the first bytes of other archives: a zip or cpio archive named `.tar` was "cannot scan
# the tar (ReadError: bad checksum)" or "(... invalid header)"
ARCHIVE_MAGIC = {b"PK\x03\x04": "zip", b"PK\x05\x06": "zip", b"070707": "cpio", b"070701": "cpio",
                 b"070702": "cpio", b"\xc7\x71": "cpio", b"\x71\xc7": "cpio", b"7z\xbc\xaf\x27\x1c": "7z",
                 b"Rar!\x1a\x07": "rar"}


def compressed_kind(head: bytes) -> str | None:
    """The compression whose stream starts with `head` (a file's first 12 bytes), or the other
    archive it starts (`ARCHIVE_MAGIC`), else None."""
    kind = next((k for magic, k in {**COMPRESSED_MAGIC, **ARCHIVE_MAGIC}.items() if head.startswith(magic)), None)
    if kind == "cpio" and head[:1] == b"0" and not all(chr(c) in string.hexdigits for c in head[6:12].ljust(6, b"-")):
        return None  # (a tar whose first name is "070707.jpg": a cpio header's digits go on)
    return kind


def compressed_words(kind: str) -> str:
    """The error for a compressed stream or another archive named `.tar` (the index scan's and
    the reader's)."""
    if kind in ARCHIVE_MAGIC.values():
        return (f"is a {kind} archive, not a tar, though named .tar: sparkfeed reads WebDataset tars; "
                f"repack its files into a tar (e.g. `bsdtar -cf out.tar @in.{kind}`)")
    return (f"is {kind}-compressed, though named .tar: sparkfeed reads tar members in place by "
            "offset, which a compressed stream does not allow; decompress it (JPEG and PNG "
            "members gain nothing from it)")
