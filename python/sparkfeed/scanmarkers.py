"""JPEGs whose scan data holds a marker libjpeg refuses (damaged bytes), or whose header is broken
(a segment running past the end of the file, stray bytes between segments), found before decoding.

A byte of a JPEG's scan data damaged into 0xFF followed by most values reads as a marker:
libjpeg stops the scan there and fails on the marker. PIL then refused the image, while DALI's
CPU decoder (nvImageCodec) fell back to another decoder that delivered the part before the
damage and grey for the rest, without an error: for 226 of the 246 possible marker bytes put in
the middle of a baseline JPEG's scan. The header check now refuses such a JPEG for both backends.
Tables after the first scan (`_TABLES`) are judged as libjpeg judges them: PIL refused a garbage
body there, while DALI, which stops at the end of the last scan, delivered the image.
"""

from __future__ import annotations

import numpy as np

from .headers import _Encoded, _segments

# Markers libjpeg accepts after a frame's first scan: restarts, the end, the segments that may
# come between scans (tables, restart interval, DNL, application data, comments), TEM. Any other
# is an error wherever it comes (an unknown marker, a second SOI or frame header).
_ACCEPTED = np.zeros(256, bool)
_ACCEPTED[[0x01, 0xC4, 0xCC, 0xD9, 0xDA, 0xDB, 0xDC, 0xDD, 0xFE, *range(0xD0, 0xD8), *range(0xE0, 0xF0)]] = True

_STRAY = ("could not decode: the JPEG's scan data holds a marker 0xFF{kind:02X} at byte {at}, which its decoders "
          "refuse (damaged data; DALI delivered grey for the rest, PIL refused it); refused before decoding")
_SECOND_SCAN = ("could not decode: the JPEG's frame has one scan, but a second scan header (0xFFDA) follows at byte "
                "{at} (damaged data); refused before decoding")


def _markers(data: np.ndarray) -> np.ndarray:
    """Positions of the markers of a buffer: 0xFF followed by neither a stuffed 0 nor a fill 0xFF."""
    ff = np.flatnonzero(data[:-1] == 0xFF)
    after = data[ff + 1]
    return ff[(after != 0) & (after != 0xFF)]


def _stray_markers(enc: _Encoded, scans: np.ndarray) -> list[tuple[int, str]]:
    """(row, reason) of the JPEG rows (their first scan's data at `scans`, from the row's start;
    -1: not a JPEG read) with a refused marker after that scan begins. One numpy pass finds every
    marker of the batch; a row whose first marker past its scan data (restarts aside) is its end
    marker is whole, the usual case; only the others (progressive and multi-scan JPEGs, damaged
    ones) are walked segment by segment."""
    bad = []
    for data, rows in enc.groups():
        rows = rows[scans[rows] >= 0]
        if not rows.size:
            continue
        marks = _markers(data)
        kinds = data[marks + 1]
        plain = np.flatnonzero((kinds & 0xF8) != 0xD0)  # markers that are not restarts
        first = np.searchsorted(marks[plain], enc.starts[rows] + scans[rows])
        found = np.minimum(first, plain.size - 1)
        whole = (first < plain.size) & (kinds[plain[found]] == 0xD9) if plain.size else np.zeros(rows.size, bool)
        for r in rows[~whole].tolist():
            start, end = int(enc.starts[r]), int(enc.ends[r])
            lo, hi = np.searchsorted(marks, [start, end])
            why = _walk(enc.row(r).tobytes(), marks[lo:hi] - start, kinds[lo:hi], int(scans[r]))
            if why is not None:
                bad.append((r, why))
    return bad


def _single_scan(b: bytes) -> bool:
    """Whether the JPEG's frame is sequential and its first scan holds every component (then no
    scan may follow it)."""
    frame = None
    for i, marker in _segments(b, 4):
        if marker in (0xC0, 0xC1):
            frame = b[i + 9] if i + 9 < len(b) else None
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return False
        if marker == 0xDA:
            return frame is not None and i + 4 < len(b) and b[i + 4] == frame
    return False


def _walk(b: bytes, marks: np.ndarray, kinds: np.ndarray, at: int) -> str | None:
    """Why the row `b` (its markers at `marks`, of `kinds`; its first scan data at `at`) holds a
    marker its decoders refuse, or None: from each scan's data to its first marker that is not a
    restart, skipping the segments between scans by their lengths, up to the end marker."""
    single = None
    while True:
        k = int(np.searchsorted(marks, at))
        rest = np.flatnonzero((kinds[k:] & 0xF8) != 0xD0)
        if not rest.size:
            return None  # no end marker: the cut-short check's
        i, kind = int(marks[k + rest[0]]), int(kinds[k + rest[0]])
        if kind == 0xD9:
            return None
        if not _ACCEPTED[kind]:
            return _STRAY.format(kind=kind, at=i)
        if kind == 0xDA:
            single = _single_scan(b) if single is None else single
            if single:
                return _SECOND_SCAN.format(at=i)
        if kind == 0x01:  # TEM: no length
            at = i + 2
            continue
        length = int.from_bytes(b[i + 2:i + 4], "big")
        if kind in _TABLES:  # (judged even where it runs past the file: libjpeg reads it until then)
            why = f"a segment length of {length}" if length < 2 else _TABLES[kind](b, i + 4, i + 2 + length)
            if why is not None:
                return _BAD_TABLE.format(kind=kind, at=i, why=why)
        if length < 2 or i + 2 + length > len(b):
            return None  # a segment the decoders judge themselves
        at = i + 2 + length


_BAD_TABLE = ("could not decode: the JPEG's segment 0xFF{kind:02X} at byte {at}, after its first scan, is invalid: "
              "{why} (damaged data; PIL refused it, DALI ignored it); refused before decoding")


def _dht_problem(b: bytes, start: int, end: int) -> str | None:
    """What libjpeg refuses in a Huffman table segment (its body `b[start:end]`, `get_dht`): a
    table index other than 0-3 (DC) or 0x10-0x13 (AC), more codes than 256 or than the bytes
    left, or bytes left over."""
    i = start
    while end - i > 16:
        if i + 17 > len(b):
            return None  # (the read runs out of file: as `_dqt_problem` says)
        index, count = b[i], sum(b[i + 1:i + 17])
        if count > 256 or count > end - i - 17:
            return f"a Huffman table declares {count} codes"
        if index & 0xEF > 3:
            return f"Huffman table index 0x{index:02X}"
        i += 17 + count
    return None if i == end else f"{end - i} byte(s) after its Huffman tables"


def _dqt_problem(b: bytes, start: int, end: int) -> str | None:
    """What libjpeg refuses in a quantisation table segment (`get_dqt`): a table index over 3,
    or tables that end elsewhere than at the segment's end (libjpeg reads a table's 64 values
    whatever the length says: past the segment, into the end marker; a read that runs out of
    file waits for more, and the image, decoded by then, is delivered)."""
    i = start
    while i < end:
        if i >= len(b):
            return None
        if b[i] & 0x0F > 3:
            return f"quantisation table index {b[i] & 0x0F}"
        i += 1 + 64 * (2 if b[i] >> 4 else 1)
        if i > len(b):
            return None
    return None if i == end else f"its tables end {i - end} byte(s) past it"


def _dac_problem(b: bytes, start: int, end: int) -> str | None:
    """What libjpeg refuses in an arithmetic conditioning segment (`get_dac`): a table index
    over 31, a DC lower bound over its upper one, an odd length (the last pair's value is read
    from the byte after the segment)."""
    for i in range(start, end, 2):
        if i + 1 >= len(b):
            return None  # (the read runs out of file: as `_dqt_problem` says)
        index, value = b[i], b[i + 1]
        if index > 31 or (index < 16 and value & 0x0F > value >> 4):
            return f"conditioning pair (0x{index:02X}, 0x{value:02X})"
    return None if (end - start) % 2 == 0 else f"{end - start} bytes of conditioning pairs"


# segments between (or after) scans whose bodies libjpeg reads: a garbage body made PIL refuse
# the image while DALI's decoder, which stops at the end of the last scan, delivered it
_TABLES = {0xC4: _dht_problem, 0xDB: _dqt_problem, 0xCC: _dac_problem,
           0xDD: lambda b, start, end: None if end - start == 2 else f"a {end - start + 2}-byte restart interval"}


_OVERRUN = ("could not decode: the JPEG's segment 0xFF{kind:02X} at byte {at} declares {length} bytes, past the end "
            "of the file ({left} left: damaged data; DALI's CPU decoder crashed the process on such a file); "
            "refused before decoding")
_STRAY_BYTES = ("could not decode: the JPEG's header holds {count} stray byte(s) at byte {at}, between its segments "
                "(damaged data; libjpeg skips them with a warning, DALI's CPU decoder crashed the process on such a "
                "file); refused before decoding")


def _broken_headers(enc: _Encoded, rows: np.ndarray) -> list[tuple[int, str]]:
    """(row, reason) of the JPEG `rows` (those whose header walk found a size but no scan) whose
    header before the first scan is broken (`_header_problem`)."""
    bad = []
    for r in np.flatnonzero(rows).tolist():
        if (why := _header_problem(enc.row(r).tobytes())) is not None:
            bad.append((r, why))
    return bad


def _header_problem(b: bytes) -> str | None:
    """Why a JPEG's segments before its first scan are broken, or None: a segment whose length
    runs past the end of the file (PIL: "Truncated File Read"), or bytes between segments that
    are no marker (libjpeg skips them with a warning, and PIL decoded the image). DALI's CPU
    decoder crashed the whole process on either (a segmentation fault, with one such JPEG in a
    batch of 48 decoded 8-10 times; found by mutating bytes of JPEGs)."""
    i, n = 2, len(b)
    while i + 4 <= n:
        kind = b[i + 1]
        if b[i] != 0xFF or kind == 0:
            j = b.find(b"\xff", i + 1)
            return _STRAY_BYTES.format(count=(j if j >= 0 else n) - i, at=i)
        if kind == 0xFF or kind == 0x01 or 0xD0 <= kind <= 0xD8:
            i += 1 if kind == 0xFF else 2
            continue
        if kind in (0xDA, 0xD9):
            return None
        length = int.from_bytes(b[i + 2:i + 4], "big")
        if i + 2 + length > n:
            return _OVERRUN.format(kind=kind, at=i, length=length, left=n - i - 2)
        i += 2 + length
    return None


_FRAME = ("could not decode: the JPEG's frame header (0xFF{kind:02X} at byte {at}) is invalid: {precision}-bit samples, "
          "{count} components, {length} bytes long (damaged data; DALI's CPU decoder crashed the process on such a "
          "file); refused before decoding")


def _broken_frames(enc: _Encoded, rows: np.ndarray) -> list[tuple[int, str]]:
    """(row, reason) of the JPEG `rows` whose frame header the walk found invalid: a sample
    precision other than 8 or 12 bits (2-16 for a lossless frame, which GPU decoding reads), no or more than 10 components (libjpeg's limit), a length
    that does not match its components. PIL refused such a file ("cannot identify image file");
    DALI's CPU decoder crashed the whole process on one (37-bit samples, or 65 components, one
    damaged byte; found by mutating bytes of JPEGs)."""
    from .headers import _SOF, _segments

    bad = []
    for r in np.flatnonzero(rows).tolist():
        b = enc.row(r).tobytes()
        at, kind = next(((i, m) for i, m in _segments(b, 10) if m in _SOF), (0, 0))
        bad.append((r, _FRAME.format(kind=kind, at=at, precision=b[at + 4], count=b[at + 9],
                                     length=int.from_bytes(b[at + 2:at + 4], "big"))))
    return bad
