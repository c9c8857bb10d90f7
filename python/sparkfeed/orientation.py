"""EXIF orientation read from an encoded image's header, as DALI's decoders read it.

Both backends turn an image upright by its EXIF orientation (docs/decode.md); the header check
needs the turn before drawing a `random_resized` window, and the PIL backend reads it as DALI
does, so that a malformed or oddly placed tag gives the same image from either.
"""

from __future__ import annotations

import io

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _exif_orientation(tiff) -> int:
    """The orientation tag (0x0112, 1-8) of IFD0 of an EXIF block (TIFF bytes, after any
    "Exif\\0\\0"); 1 where there is none or it cannot be read. Read from the block's first
    directory directly: PIL's `Image.Exif` parses every tag, 12 µs a photo, 4x this. Read as
    DALI's decoders read it (so that both backends and the windows drawn agree): the first two
    bytes of the value, in the block's byte order, whatever the tag's type (a little-endian LONG
    6 turns, a big-endian one reads 0: none); a directory whose entries run past the block is
    no orientation."""
    b = bytes(tiff[6:] if tiff[:6] == b"Exif\x00\x00" else tiff)
    order = {b"II": "little", b"MM": "big"}.get(b[:2])
    if order is None or len(b) < 8:
        return 1
    at = int.from_bytes(b[4:8], order)
    count = int.from_bytes(b[at:at + 2], order) if at + 2 <= len(b) else 0
    if at + 2 + 12 * count > len(b):
        return 1
    for e in range(at + 2, at + 2 + 12 * count, 12):
        if int.from_bytes(b[e:e + 2], order) == 0x0112:
            value = int.from_bytes(b[e + 8:e + 10], order)  # whatever its type, as DALI reads it
            return value if 1 <= value <= 8 else 1
    return 1


def _marker_orientation(mv: memoryview) -> int | None:
    """A JPEG's, PNG's or WebP's EXIF orientation from its markers: a JPEG's APP1 "Exif" segment
    before its first scan (after the frame header too: both decoders read it there), a PNG's eXIf
    chunk before or after its pixel data (some writers put it after IDAT; both decoders apply
    it), a WebP's EXIF chunk. 1 where there is none; None for other formats."""
    if mv[:2] == b"\xff\xd8":
        i, n = 2, len(mv) - 10
        while i <= n and mv[i] == 0xFF:  # the segment walk of `_segments`, inlined: 3x cheaper
            marker = mv[i + 1]
            if marker == 0xE1 and mv[i + 4:i + 10] == b"Exif\x00\x00":
                return _exif_orientation(mv[i + 4:i + 2 + (mv[i + 2] << 8 | mv[i + 3])])
            if marker == 0xDA:
                break
            i += 1 if marker == 0xFF else 2 + (mv[i + 2] << 8 | mv[i + 3])
        return 1
    if mv[:8] == _PNG_SIGNATURE:
        i, n = 8, len(mv) - 8
        while i <= n:
            kind, size = mv[i + 4:i + 8], int.from_bytes(mv[i:i + 4], "big")
            end = i + 8 + size
            if kind == b"eXIf":  # (also one failing its CRC: DALI reads the tag all the same)
                return _bare_exif_orientation(mv[i + 8:end])
            if kind == b"IEND":
                break
            i = end + 4
        return 1
    if mv[:4] == b"RIFF" and mv[8:12] == b"WEBP":
        if mv[12:16] != b"VP8X" or len(mv) < 21 or not mv[20] & 0x08:  # DALI reads EXIF only so flagged
            return 1
        i, n = 12, len(mv) - 8
        while i <= n:
            size = int.from_bytes(mv[i + 4:i + 8], "little")
            if mv[i:i + 4] == b"EXIF":
                return _bare_exif_orientation(mv[i + 8:i + 8 + size])
            i += 8 + size + (size & 1)
        return 1
    return None


def _jpeg_orientations(mv: memoryview) -> list[int]:
    """The orientation of each APP1 "Exif" segment of a JPEG before its first scan, in order
    (the header check refuses a JPEG whose blocks disagree: DALI's output then matched none)."""
    found, i, n = [], 2, len(mv) - 10
    while i <= n and mv[i] == 0xFF:
        marker = mv[i + 1]
        if marker == 0xE1 and mv[i + 4:i + 10] == b"Exif\x00\x00":
            found.append(_exif_orientation(mv[i + 4:i + 2 + (mv[i + 2] << 8 | mv[i + 3])]))
        if marker == 0xDA:
            break
        i += 1 if marker == 0xFF else 2 + (mv[i + 2] << 8 | mv[i + 3])
    return found


def _bare_exif_orientation(block) -> int:
    """A PNG's eXIf or a WebP's EXIF chunk's orientation: their payload is the TIFF bytes alone;
    DALI turns nothing by one that starts with JPEG's "Exif\\0\\0" (PIL would), nor does sparkfeed."""
    return 1 if block[:6] == b"Exif\x00\x00" else _exif_orientation(block)


def _orientation(mv: memoryview, max_pixels: int) -> int:
    """This row's EXIF orientation from its header only: `_marker_orientation`, else what PIL's
    lazy open reads (TIFF), under `max_pixels`. 1 where there is none."""
    found = _marker_orientation(mv)
    if found is not None:
        return found
    from PIL import Image

    from .pilopen import pixel_limit

    try:
        with pixel_limit(max_pixels), Image.open(io.BytesIO(mv)) as im:
            return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - refused or decoded elsewhere; nothing to turn
        return 1
