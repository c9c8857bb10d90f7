"""Encoded images cut short, found from their bytes before decoding: a JPEG or a JPEG 2000
codestream without its end marker (a partial download or write), an uncompressed BMP shorter
than its header's pixels, which a decoder may fill in without an error."""

from __future__ import annotations

import numpy as np

from .encoded import _Encoded
from .headers import _be16, _segments
from .scanmarkers import _markers

_JPEG_CUT = "could not decode: the JPEG is cut short (no end-of-image marker after its scan data); refused before decoding"
_J2K_CUT = ("could not decode: the JPEG 2000 codestream is cut short (no end-of-codestream marker at its end); "
            "refused before decoding")


def _cut_short(enc: _Encoded, restarts=None) -> list[tuple[int, str]]:
    """(row, reason) of the JPEG and JPEG 2000 rows cut short; of the JPEG rows marked in
    `restarts` (a restart interval), also those whose scan holds too few restart markers
    (`_restarts_short`). Refused for every backend: nvJPEG
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
    cut = {r for r, _ in bad}
    for r in np.flatnonzero(restarts).tolist() if restarts is not None else ():
        if r not in cut and (why := _restarts_short(enc.row(r).tobytes())) is not None:
            bad.append((r, why))
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


def _bmps_cut(enc: _Encoded, rows) -> list[tuple[int, str]]:
    """(row, reason) of the BMPs among `rows` (a mask) cut short (`_bmp_cut`); BMPs are found by
    their signature in one numpy test a buffer, only they are read one by one."""
    bad = []
    for data, some in enc.groups():
        if data.size:
            starts = enc.starts[some]
            some = some[rows[some] & (enc.ends[some] - starts >= 2) & (_be16(data, starts) == 0x424D)]
            bad += [(r, why) for r in some.tolist()
                    if (why := _bmp_cut(enc.row(r)[:34].tobytes(), len(enc.row(r)))) is not None]
    return bad


def _bmp_cut(head: bytes, size: int) -> str | None:
    """Why an uncompressed BMP of `size` bytes (`head`: its first 34) is shorter than the rows
    its header declares (each padded to 4 bytes, from the pixel data's offset), or None. DALI's
    CPU decoder returned such a 24- or 32-bit BMP scrambled (every pixel wrong, no error: its
    first decoder fails and another reads it wrong) where PIL refused it; an 8- or 1-bit one
    missing only its last row's padding, PIL decoded and DALI refused."""
    if len(head) < 30:
        return None  # too short for a header: PIL's header check refuses it
    dib, offset = int.from_bytes(head[14:18], "little"), int.from_bytes(head[10:14], "little")
    if dib == 12:  # OS/2 1.x: 16-bit sizes, no compression
        w, h, bits, how = int.from_bytes(head[18:20], "little"), int.from_bytes(head[20:22], "little"), \
            int.from_bytes(head[24:26], "little"), 0
    elif dib >= 40 and len(head) >= 34:
        w, h = int.from_bytes(head[18:22], "little", signed=True), int.from_bytes(head[22:26], "little", signed=True)
        bits, how = int.from_bytes(head[28:30], "little"), int.from_bytes(head[30:34], "little")
    else:
        return None
    if not (how == 0 or (how in (3, 6) and dib != 64)) or w <= 0 or h == 0 or bits == 0:
        return None  # compressed (RLE, JPEG, PNG), or no pixels: decided elsewhere
    need = offset + (w * bits + 31) // 32 * 4 * abs(h)
    if size >= need:
        return None
    return (f"could not decode: the BMP is cut short ({size} of the {need} bytes its header declares: {w}x{abs(h)} "
            f"pixels of {bits} bits, rows padded to 4 bytes, from byte {offset}); refused before decoding")


_RESTARTS_SHORT = ("could not decode: the JPEG's scan data stops short ({found} of the {wanted} restart markers its "
                   "{mcus} MCUs and restart interval {interval} call for, in scan {scan}: cut and closed with an "
                   "end-of-image marker, or damaged); refused before decoding")
_DCT_HUFFMAN = (0xC0, 0xC1, 0xC2)  # baseline, extended sequential, progressive


def _frame(b: bytes, at: int) -> tuple[int, int, dict[int, tuple[int, int]]]:
    """(width, height, {component id: (h, v) sampling factors}) of the frame header at `at`."""
    h, w, n = int.from_bytes(b[at + 5:at + 7], "big"), int.from_bytes(b[at + 7:at + 9], "big"), b[at + 9]
    comps = {b[at + 10 + 3 * k]: (b[at + 11 + 3 * k] >> 4, b[at + 11 + 3 * k] & 15) for k in range(n)}
    return w, h, comps


def _scan_mcus(frame, ids: list[int]) -> int:
    """MCUs of a scan of components `ids`: interleaved, the frame's MCU grid; one component, its
    own blocks (T.81 A.2)."""
    w, h, comps = frame
    hmax, vmax = max(s[0] for s in comps.values()), max(s[1] for s in comps.values())
    if len(ids) > 1:
        return -(-w // (8 * hmax)) * -(-h // (8 * vmax))
    hs, vs = comps[ids[0]]
    return -(-(-(-w * hs // hmax)) // 8) * -(-(-(-h * vs // vmax)) // 8)


def _restarts_short(b: bytes) -> str | None:
    """Why a Huffman-coded JPEG with restart markers is cut inside a scan, or None. A scan of M
    MCUs under restart interval R holds ceil(M / R) - 1 restart markers (T.81 F.1.2.3, what every
    encoder writes); one that holds fewer was cut (or damaged) where libjpeg only warns, then
    fills the rest grey: a cut closed again with an end-of-image marker decoded without an
    error. One pass of numpy over the row finds its markers; a cut in the last interval of a scan
    is not found (that needs the entropy decode itself)."""
    arr = np.frombuffer(b, np.uint8)
    marks = _markers(arr)
    kinds = arr[marks + 1]
    frame, interval, scan, i = None, 0, 0, 2
    while i + 4 <= len(b) and b[i] == 0xFF:
        marker, length = b[i + 1], int.from_bytes(b[i + 2:i + 4], "big")
        if marker == 0xFF:
            i += 1
            continue
        if marker == 0xD9 or i + 2 + length > len(b) or \
                (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) + _DCT_HUFFMAN):
            return None  # the end, a segment the decoders refuse, a frame not followed (lossless, arithmetic)
        if marker in _DCT_HUFFMAN:
            frame = _frame(b, i)
        elif marker == 0xDD and length >= 4:
            interval = int.from_bytes(b[i + 4:i + 6], "big")
        elif marker == 0xDA:
            scan += 1
            ids = [b[i + 5 + 2 * k] for k in range(b[i + 4])]
            k = int(np.searchsorted(marks, i + 2 + length))
            others = np.flatnonzero((kinds[k:] & 0xF8) != 0xD0)  # the first marker not a restart
            found = int(others[0]) if others.size else len(kinds) - k
            if frame is None or not frame[0] or not frame[1] or any(c not in frame[2] for c in ids):
                return None  # refused or decoded elsewhere
            mcus = _scan_mcus(frame, ids)
            wanted = -(-mcus // interval) - 1 if interval else 0
            if found < wanted:
                return _RESTARTS_SHORT.format(found=found, wanted=wanted, mcus=mcus, interval=interval, scan=scan)
            if not others.size:
                return None
            i = int(marks[k + others[0]])
            continue
        i += 2 + length
    return None
