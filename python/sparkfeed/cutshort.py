"""Encoded images cut short, found from their bytes before decoding: a JPEG or a JPEG 2000
codestream without its end marker (a partial download or write), which a decoder may fill in
without an error."""

from __future__ import annotations

import numpy as np

from .headers import _be16, _Encoded, _segments

_JPEG_CUT = "could not decode: the JPEG is cut short (no end-of-image marker after its scan data); refused before decoding"
_J2K_CUT = ("could not decode: the JPEG 2000 codestream is cut short (no end-of-codestream marker at its end); "
            "refused before decoding")


def _cut_short(enc: _Encoded) -> list[tuple[int, str]]:
    """(row, reason) of the JPEG and JPEG 2000 rows cut short. Refused for every backend: nvJPEG
    decodes a cut JPEG without an error, filling what is missing, and libjpeg (DALI's CPU decoder,
    PIL's) does too where the missing tail reads as scan data (a cut file zero-filled to its
    length: a preallocated download, a sparse copy), the rest grey; DALI decoded such a JPEG 2000
    (up to 106 levels off) where PIL refused it. Most rows end in their marker (one numpy test
    for the batch); only the others are walked."""
    jpegs, j2ks = [], []
    for data, rows in enc.groups():
        if data.size == 0:  # nothing but empty rows (refused as such)
            continue
        unended = _be16(data, np.maximum(enc.ends[rows] - 2, enc.starts[rows])) != 0xFFD9
        rows = rows[unended]  # (both formats end in FFD9: usually none is left)
        if not rows.size:
            continue
        starts, ends = enc.starts[rows], enc.ends[rows]
        first = _be16(data, starts)
        jpegs += rows[(ends - starts >= 4) & (first == 0xFFD8)].tolist()
        j2k = (first == 0xFF4F) | ((first == 0) & (_be16(data, starts + 2) == 0x000C)
                                   & (_be16(data, starts + 4) == 0x6A50) & (_be16(data, starts + 6) == 0x2020))
        j2ks += rows[(ends - starts >= 12) & j2k].tolist()
    bad = [(r, _JPEG_CUT) for r in jpegs if _jpeg_cut(enc.row(r).tobytes())]
    bad += [(r, _J2K_CUT) for r in j2ks if _j2k_cut(enc.row(r).tobytes())]
    return sorted(bad)


def _jpeg_cut(b: bytes) -> bool:
    """No end-of-image marker after the first scan (bytes after the marker are allowed, as some
    cameras append; an EXIF thumbnail's own marker, before the scan, does not count)."""
    sos = next((i for i, marker in _segments(b, 4) if marker == 0xDA), -1)
    return sos < 0 or b.rfind(b"\xff\xd9") < sos


def _j2k_cut(b: bytes) -> bool:
    """A bare codestream with no end-of-codestream marker (FFD9 appears nowhere else in one), or a
    JP2 file whose codestream box does not end in it or runs past the file."""
    if b[:2] == b"\xff\x4f":
        return b.rfind(b"\xff\xd9") < 0
    i, n = 0, len(b)
    while i + 8 <= n:
        size, kind, head = int.from_bytes(b[i:i + 4], "big"), b[i + 4:i + 8], 8
        if size == 1:  # a 64-bit length follows
            size, head = int.from_bytes(b[i + 8:i + 16], "big"), 16
        elif size == 0:  # the box runs to the end of the file
            size = n - i
        if size < head:
            return True
        if kind == b"jp2c":
            return i + size > n or b[i + size - 2:i + size] != b"\xff\xd9"
        i += size
    return True  # no codestream box at all
