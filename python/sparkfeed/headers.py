"""Every row's size from its header, and the rows refused before decoding (the batch: `encoded.py`).

`_check_headers` refuses what cannot or must not be decoded before any pixel is decoded (empty
rows, unknown formats, more than `max_pixels` pixels, images smaller than a crop cut from stored
pixels). JPEG and PNG sizes are read for the whole batch at once in numpy (`_scan_sizes`: the
JPEG marker walk advances every row in lockstep, a handful of vectorised steps per batch); only
rows it cannot read go one by one through PIL's lazy `Image.open`, which reads only the header.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

from .encoded import _as_arrays, _Encoded, _encoded
from .orientation import _jpeg_orientations, _orientation

if TYPE_CHECKING:
    from .imagespec import ImageDecode

# moved to encoded.py; still imported from here (arrays.py, decodejob.py, scanmarkers.py, the bench)
_MOVED = (_as_arrays, _Encoded, _encoded)


_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # JPEG start-of-frame markers
_PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


def _segments(b, need: int):
    """(position, marker) of each segment of a JPEG after its SOI, walking the segment lengths
    (so markers inside a segment, an EXIF thumbnail's, are skipped), while `need` bytes remain."""
    i, n = 2, len(b)
    while i + need <= n and b[i] == 0xFF:
        marker = b[i + 1]
        if marker != 0xFF:  # else a fill byte
            yield i, marker
            i += 2 + int.from_bytes(b[i + 2:i + 4], "big")
        else:
            i += 1


def _fast_size(mv: memoryview) -> tuple[int, int] | None:
    """(width, height) of a JPEG or PNG read from its markers (~10x cheaper than PIL), else None."""
    if mv[:16] == _PNG and len(mv) >= 24:
        return int.from_bytes(mv[16:20], "big"), int.from_bytes(mv[20:24], "big")
    if mv[:2] != b"\xff\xd8":
        return None
    for i, marker in _segments(mv, 9):
        if marker in _SOF:
            return int.from_bytes(mv[i + 7:i + 9], "big"), int.from_bytes(mv[i + 5:i + 7], "big")
    return None


_SOF_TABLE = np.zeros(256, bool)
_SOF_TABLE[list(_SOF)] = True
_PNG_SIG = np.frombuffer(_PNG, np.uint8)
_MAX_SEGMENTS = 64  # JPEG segments walked before the frame header; beyond it PIL looks


def _be16(data: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Big-endian 16-bit words at `at` (indices past the end read the last byte: callers check
    the row's bounds before trusting a value)."""
    last = data.size - 1
    return (data[np.minimum(at, last)].astype(np.int64) << 8) | data[np.minimum(at + 1, last)]


_QUAD = np.arange(4)
_STOPS = np.zeros(256, bool)  # markers that end a row's walk: the first scan (SOS), an end of image
_STOPS[[0xDA, 0xD9]] = True


def _walk_jpegs(data, rows, pos, end, w, h, exif, short, restarts, scans) -> None:
    """The lockstep marker walk of `_scan_sizes` over the JPEG `rows` (their first segment at
    `pos`, their bytes ending at `end`): each step reads every live row's marker and length at
    once (one gather) and moves it to its next segment; a step's rare parts (a frame header, an
    APP1 or DRI segment, a row leaving the walk) cost a numpy call only when some row meets them."""
    last = data.size - 1
    stops = _STOPS | _SOF_TABLE if exif is None else _STOPS
    for _ in range(_MAX_SEGMENTS):
        quad = data[np.minimum(pos[:, None] + _QUAD, last)]  # FF, marker, length (2 bytes)
        fits = pos + 9 <= end
        if short is not None and not fits.all():
            short[rows[~fits]] = True
        live = fits & (quad[:, 0] == 0xFF)
        if not live.all():
            rows, pos, end, quad = rows[live], pos[live], end[live], quad[live]
        if rows.size == 0:
            return
        marker = quad[:, 1]
        sof = _SOF_TABLE[marker]
        if sof.any():
            frame = sof & (w[rows] == -1)  # the first frame header (there is one)
            w[rows[frame]], h[rows[frame]] = _be16(data, pos[frame] + 7), _be16(data, pos[frame] + 5)
            at, comps = pos[frame], data[np.minimum(pos[frame] + 9, last)].astype(np.int64)
            bits = data[np.minimum(at + 4, last)]  # 8 or 12 (DCT); 2-16 lossless (SOF3/7/11/15: GPU)
            lossless = (marker[frame] & 3) == 3
            broken = np.where(lossless, (bits < 2) | (bits > 16), (bits & 0xFB) != 8) | (comps < 1) | \
                (comps > 10) | ((quad[frame, 2].astype(np.int64) << 8 | quad[frame, 3]) != 8 + 3 * comps)
            w[rows[frame][broken]] = h[rows[frame][broken]] = -3  # (`scanmarkers._frame_problem`)
        if restarts is not None and (dri := marker == 0xDD).any():
            restarts[rows[dri]] = True
        if scans is not None and (sos := marker == 0xDA).any():  # where its scan data begins
            scans[rows[sos]] = pos[sos] + 2 + (quad[sos, 2].astype(np.int64) << 8 | quad[sos, 3])
        app1 = np.flatnonzero(marker == 0xE1) if exif is not None else ()
        if len(app1):  # "Exif" after the segment's length (a row is walked once a step: no repeats)
            at = pos[app1]
            exif[rows[app1[(_be16(data, at + 4) == 0x4578) & (_be16(data, at + 6) == 0x6966)]]] += 1
        pos = pos + np.where(marker == 0xFF, 1, 2 + (quad[:, 2].astype(np.int64) << 8 | quad[:, 3]))
        going = ~stops[marker]
        if not going.all():
            rows, pos, end = rows[going], pos[going], end[going]


def _scan_sizes(data: np.ndarray, starts: np.ndarray, ends: np.ndarray, exif: np.ndarray | None = None,
                short: np.ndarray | None = None, restarts: np.ndarray | None = None,
                scans: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(width, height) of every row of one buffer from its JPEG or PNG header, for the whole batch
    at once: the JPEG marker walk advances all rows in lockstep (a few numpy steps per segment,
    not a Python loop per image). Rows it cannot read get -1 (the caller asks PIL about those).
    `exif`: counts, per row, the APP1 "Exif" segments before the first scan (the walk then goes
    on past the frame header: DALI reads a block placed after it); `short`: marks the rows whose
    walk ran out of bytes before it ended (a gathered head too short for their segments);
    `restarts`: marks the rows with a restart interval (DRI) before their first scan; `scans`:
    where each row's first scan data begins, from the row's start (-1: not found; -2: not a JPEG)."""
    n = len(starts)
    w, h = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    if n == 0 or data.size == 0:
        return w, h
    last = data.size - 1
    lens = ends - starts
    png = (lens >= 24) & (data[np.minimum(starts[:, None] + np.arange(16), last)] == _PNG_SIG).all(1)
    w[png] = (_be16(data, starts[png] + 16) << 16) | _be16(data, starts[png] + 18)
    h[png] = (_be16(data, starts[png] + 20) << 16) | _be16(data, starts[png] + 22)
    first = _be16(data, starts)
    jpeg = ~png & (lens >= 4) & (first == 0xFFD8)
    rows = np.flatnonzero(jpeg)
    _walk_jpegs(data, rows, starts[rows] + 2, ends[rows], w, h, exif, short, restarts, scans)
    if scans is not None:
        scans[rows] = np.where(scans[rows] >= 0, scans[rows] - starts[rows], -1)
        scans[~jpeg] = -2
    return w, h


_HEAD = 4096  # bytes of each row gathered for one scan when a batch lies in several buffers


def _sizes(enc: _Encoded) -> tuple[np.ndarray, ...]:
    """`_scan_sizes` of every row, its count of EXIF blocks, whether it has restart markers (a
    DRI segment) and where its first scan data begins (from its start; -1: none found). Rows in several buffers (`BinaryChunks`) have `_HEAD` bytes
    from their start gathered into one buffer (one numpy gather per buffer) and scanned at once:
    one scan per buffer cost 5x the time of one over the whole batch (2.0 vs 0.4 ms for 256
    images in 7 parts). Rows whose header runs past those bytes (a large EXIF block) are
    scanned again where they lie."""
    n = len(enc)
    exif, short, restarts, scans = np.zeros(n, np.int64), np.zeros(n, bool), np.zeros(n, bool), np.full(n, -1)
    if len(enc.buffers) == 1:
        return (*_scan_sizes(enc.buffers[0], enc.starts, enc.ends, exif, None, restarts, scans), exif, restarts, scans)
    width = int(min(_HEAD, (enc.ends - enc.starts).max(initial=0)))
    heads = np.zeros((n, width), np.uint8)
    first = np.zeros(n, np.int64)  # where each row's gathered bytes begin in its buffer
    for data, rows in enc.groups():
        if rows.size and width:
            if data.size < width:
                data = np.concatenate([data, np.zeros(width - data.size, np.uint8)])
            first[rows] = np.minimum(enc.starts[rows], data.size - width)
            heads[rows] = np.lib.stride_tricks.sliding_window_view(data, width)[first[rows]]
    base = np.arange(n, dtype=np.int64) * width - first
    w, h = _scan_sizes(heads.reshape(-1), enc.starts + base, np.minimum(enc.ends, first + width) + base, exif, short,
                       restarts, scans)
    longer = short & (enc.ends > first + width)
    exif[longer] = 0  # counted again, from the start, where they lie
    for data, rows in enc.groups():
        rows = rows[longer[rows]]
        if rows.size:
            counts, dri, at = np.zeros(rows.size, np.int64), np.zeros(rows.size, bool), np.full(rows.size, -1)
            w[rows], h[rows] = _scan_sizes(data, enc.starts[rows], enc.ends[rows], counts, None, dri, at)
            exif[rows], restarts[rows], scans[rows] = counts, dri, at
    return w, h, exif, restarts, scans


# What DALI's decoders read (nvImageCodec); PIL's names for them. Others (GIF, ICO, TGA, ...) fail
# in DALI with "nvImageCodec failure: '#4'" after the batch is bisected: refused from the header.
_DALI_FORMATS = frozenset({"JPEG", "MPO", "PNG", "TIFF", "BMP", "PPM", "JPEG2000", "WEBP"})


def _check_header(arr: np.ndarray, max_pixels: int, formats=None) -> tuple[tuple[int, int] | None, str | None]:
    """(width, height) of this row from its header only (no pixel is decoded), or why it cannot
    be decoded: `(size, None)` or `(None, reason)`.

    JPEG and PNG dimensions come from their markers; anything else goes through PIL's lazy
    `Image.open`, which also reads only the header, under `max_pixels` (`pilopen.pixel_limit`:
    not Pillow's own limit).
    """
    from PIL import Image  # here: only rows the numpy scan cannot read need it (arrays never)

    from .pilopen import dali_misreads, pixel_limit

    if arr.size == 0:
        return None, "empty image (0 bytes, or no value: a null, or a sample without this member)"
    size = _fast_size(memoryview(arr))
    try:
        if size is None:
            with pixel_limit(max_pixels), Image.open(io.BytesIO(arr)) as im:
                size, kind = im.size, im.format
                misread = dali_misreads(im, arr) if formats is not None else None
            if formats is not None and kind not in formats:
                return None, (f"{kind} is not a format DALI decodes (JPEG, PNG, TIFF, BMP, PNM, JPEG 2000, "
                              "WebP); ImageDecode(backend='pil') decodes it")
            if misread is not None:
                return None, f"{misread}; ImageDecode(backend='pil') decodes it"
        w, h = size
    except Image.DecompressionBombError as e:  # max_pixels, checked by Pillow while opening
        return None, f"{e}; refused before decoding"
    except Image.UnidentifiedImageError:
        return None, "not a recognised image format"
    except Exception as e:  # noqa: BLE001 - any parse error means "not an image"
        return None, f"not a recognised image ({type(e).__name__}: {e})"
    if w * h > max_pixels:
        return None, f"image is {w}x{h} = {w * h} pixels, over max_pixels={max_pixels}; refused before decoding"
    return (w, h), None


_TURNED = (5, 6, 7, 8)  # EXIF orientations that swap width and height (a quarter turn)


def _upright_sizes(enc: _Encoded, w: np.ndarray, h: np.ndarray, rows, max_pixels: int) -> None:
    """Swap width and height in place for the `rows` whose EXIF orientation is a quarter turn
    (5-8): both backends decode such an image turned upright (docs/decode.md), so a window
    drawn in it must be drawn on the turned size."""
    for r in rows:
        if _orientation(memoryview(enc.row(r)), max_pixels) in _TURNED:
            w[r], h[r] = h[r], w[r]


def resized_sizes(w, h, t: int) -> tuple[np.ndarray, np.ndarray]:
    """(width, height) of images of `w` x `h` pixels once their shorter side is resized to `t`,
    rounded as DALI's `resize_shorter` rounds (half up, at least `t`: 20x50 to 37 is 37x93): the
    one rule for the PIL path's resize, the resize-bomb guard and the room a crop has. (Half to
    even, as before, made the PIL path's image a pixel shorter than DALI's for 31 of 3,843 sizes
    and targets tried, and its crops a pixel apart.)"""
    w, h = np.asarray(w, dtype=np.int64), np.asarray(h, dtype=np.int64)
    short = np.maximum(np.minimum(w, h), 1)
    # exact integers: w * t / short is a half exactly when 2 * w * t is an odd multiple of short
    return (np.maximum(t, (2 * w * t + short) // (2 * short)).astype(np.int64),
            np.maximum(t, (2 * h * t + short) // (2 * short)).astype(np.int64))


def _resize_bombs(w: np.ndarray, h: np.ndarray, known: np.ndarray, spec: ImageDecode) -> list[tuple[int, str]]:
    """Rows whose resize to the shorter side `resize_to` would exceed `max_pixels`: a thin strip
    (a 1x3000 PNG of a few KB) becomes 224 x 672,000 before its centre is cut, 0.8 GB in DALI and
    1.7 GB in PIL; a 1x30,000 one would take the process down. The same guard as the stored size."""
    t = spec.resize_to
    if t is None:
        return []
    rw, rh = resized_sizes(w, h, t)
    out = np.where(known & (np.minimum(w, h) > 0), rw * rh, 0)
    return [(r, f"image is {w[r]}x{h[r]}: resized to shorter side {t} it would be {int(rw[r])}x{int(rh[r])} = "
                f"{int(out[r])} pixels, over max_pixels={spec.max_pixels}; refused before decoding")
            for r in np.flatnonzero(out > spec.max_pixels).tolist()]


def _damaged_exif(enc: _Encoded, w: np.ndarray) -> list[tuple[int, str]]:
    """(row, reason) of the PNG rows (a size read from their IHDR) whose eXIf chunk fails its CRC
    or comes twice (`pilopen.png_exif_problem`): a walk of each PNG's chunk headers, about 0.5 µs
    a chunk."""
    from .pilopen import png_exif_problem

    bad = []
    for data, rows in enc.groups():
        if data.size:
            starts = enc.starts[rows]
            png = (enc.ends[rows] - starts >= 24) & (_be16(data, starts) == 0x8950) & (w[rows] >= 0)
            bad += [(r, why) for r in rows[png].tolist()
                    if (why := png_exif_problem(memoryview(enc.row(r)))) is not None]
    return bad


def _check_headers(enc: _Encoded, spec: ImageDecode) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Sizes (n, 2) of every row from its header (for crop="random_resized" as shown: turned by
    EXIF orientations 5-8), and the rows refused before any decoding
    (empty, not an image, over `max_pixels`, smaller than a crop cut from stored pixels, JPEGs
    and JPEG 2000 codestreams cut short: `cutshort.py`).

    JPEG and PNG rows are read for the whole batch at once (`_scan_sizes`); only rows it cannot
    read (other formats, odd JPEGs) go one by one through PIL's lazy `Image.open`."""
    w, h, exif, restarts, scans = _sizes(enc)
    failures = []
    for r in np.flatnonzero(exif > 1).tolist():  # rare: a Python walk of those rows only
        turns = _jpeg_orientations(memoryview(enc.row(r)))
        if len(set(turns)) > 1:
            failures.append((r, f"could not decode: the JPEG holds {len(turns)} EXIF blocks whose orientations "
                                f"differ {tuple(turns)} (DALI turns its shape by one and its pixels by "
                                "another); refused before decoding"))
            w[r] = h[r] = -2
    from .cutshort import _bmps_cut, _cut_short

    from .scanmarkers import _broken_frames, _broken_headers, _stray_markers

    for r, reason in _cut_short(enc, restarts & (w >= 0)):
        failures.append((r, reason))
        w[r] = h[r] = -2  # neither read again below nor counted as known
    for r, reason in _stray_markers(enc, np.where(w >= 0, scans, -1)):
        failures.append((r, reason))
        w[r] = h[r] = -2
    for r in np.flatnonzero(w == -1).tolist():
        size, reason = _check_header(enc.row(r), spec.max_pixels, _DALI_FORMATS if spec.backend == "dali" else None)
        if reason is None:
            w[r], h[r] = size
        else:
            failures.append((r, reason))
    for r, reason in _broken_headers(enc, (w >= 0) & (scans == -1)) + _broken_frames(enc, w == -3):
        failures.append((r, reason))  # (JPEGs sized by PIL too)
        w[r] = h[r] = -2
    for r, why in _damaged_exif(enc, w):
        failures.append((r, f"could not decode: {why}; refused before decoding"))
        w[r] = h[r] = -2
    known = w >= 0
    for r in np.flatnonzero(known & (np.minimum(w, h) == 0)).tolist():
        failures.append((r, f"image is {w[r]}x{h[r]}: its header declares no pixels; refused before decoding"))
    # w > max_pixels // h, not w * h > max_pixels: a PNG declares up to 2**32-1 a side, and the
    # int64 product of two such sides wrapped negative (passed on, to a bad_alloc in DALI)
    for r in np.flatnonzero(known & (w > spec.max_pixels // np.maximum(h, 1))).tolist():
        failures.append((r, f"image is {w[r]}x{h[r]} = {int(w[r]) * int(h[r])} pixels, over "
                            f"max_pixels={spec.max_pixels}; refused before decoding"))
    failures += _resize_bombs(w, h, known, spec)
    failures += _bmps_cut(enc, known)  # (after max_pixels: a bomb's bare header is refused as one)
    if spec.crop == "random_resized":  # the only geometry that is not the same on a turned image
        _upright_sizes(enc, w, h, np.flatnonzero(known).tolist(), spec.max_pixels)
    if spec.size is not None and spec.crop != "random_resized" and spec.resize_to is None:
        for r in np.flatnonzero(known & (np.minimum(w, h) < spec.size)).tolist():
            failures.append((r, f"image is {w[r]}x{h[r]}, smaller than the {spec.size}x{spec.size} "
                                "crop cut from stored pixels (resize=None)"))
    return np.stack([w, h], 1), _first_reasons(failures)


def _first_reasons(failures: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """One failure per row, its first reason: a row refused twice (a strip over `max_pixels`
    both as stored and once resized) is one bad sample, counted and reported once."""
    first: dict[int, str] = {}
    for r, reason in failures:
        first.setdefault(r, reason)
    return list(first.items())
