"""PIL made to give the verdicts DALI gives, under sparkfeed's own pixel limit.

* `pixel_limit`: `ImageDecode(max_pixels=)` as the one pixel limit of every check PIL makes in
  the decoding thread. Pillow's own limit (`Image.MAX_IMAGE_PIXELS`, process-wide) refused
  every format but JPEG and PNG (whose sizes sparkfeed reads itself) above 2x its value,
  178,956,970 pixels by default, whatever max_pixels said, with Pillow's message, and warned
  above 1x; it also applies to sizes a file reveals only while decoding (a TIFF's tiles).
* `png_problem` / `png_for_pil`: a PNG's chunks judged as libpng (DALI's CPU decoder) judges
  them: a critical chunk (IHDR, PLTE, IDAT) that fails its CRC, an unknown critical chunk, or a
  file that ends before IEND, a palette image without PLTE, pixel data inflating to less than
  the header declares is damaged; an ancillary chunk that fails its CRC is dropped. PIL checks
  none of the pixel data's CRCs, refuses a bad ancillary chunk before the pixels, takes a file
  without IEND and fills missing rows with black, so the same bytes got another verdict from
  each backend.
"""

from __future__ import annotations

import contextlib
import threading
import zlib

from PIL import Image

from . import forks

__all__ = ["Damaged", "dali_misreads", "pixel_limit", "png_exif_problem", "png_problem", "png_for_pil"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CRITICAL = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND"})


class Damaged(ValueError):
    """Bytes that DALI's decoders refuse, and so PIL's path refuses too; the message says why."""


_local = threading.local()  # this thread's `max_pixels`, while it decodes (`pixel_limit`)
_pillows_check = None  # Pillow's own `Image._decompression_bomb_check`, once replaced
_installing = threading.Lock()
forks.free_at_fork(_installing)  # (a forked child decoding with PIL takes it)


def _bomb_check(size, *args, **kwargs) -> None:
    """Pillow's pixel check, made per thread: sparkfeed's `max_pixels` in a thread decoding for
    it (`pixel_limit`), Pillow's own check everywhere else."""
    limit = getattr(_local, "max_pixels", None)
    if limit is None:
        return _pillows_check(size, *args, **kwargs)
    w, h = size
    if max(1, w) * max(1, h) > limit:
        raise Image.DecompressionBombError(f"image is {w}x{h} = {w * h} pixels, over max_pixels={limit}")


@contextlib.contextmanager
def pixel_limit(max_pixels: int):
    """Within: PIL's pixel checks in this thread (at open, and those its plugins make while
    decoding: a TIFF's tiles, an ICO's entries) apply `max_pixels`, without Pillow's warning
    below it; other threads keep Pillow's own limit. (Where a Pillow has no such check to
    replace, its own limit stays beside max_pixels.)"""
    global _pillows_check
    with _installing:
        found = getattr(Image, "_decompression_bomb_check", None)
        if _pillows_check is None and callable(found) and found is not _bomb_check:
            _pillows_check, Image._decompression_bomb_check = found, _bomb_check
    before = getattr(_local, "max_pixels", None)
    _local.max_pixels = max_pixels
    try:
        yield
    finally:
        _local.max_pixels = before


def _chunks(b: bytes):
    """(type, start of data, length) of each chunk of a PNG after its signature, while whole;
    then one ("", position, -1) if the bytes end inside a chunk."""
    i, n = 8, len(b)
    while i + 12 <= n:
        length = int.from_bytes(b[i:i + 4], "big")
        if i + 12 + length > n:
            break
        yield b[i + 4:i + 8], i + 8, length
        i += 12 + length
    if i < n:
        yield b"", i, -1


def _crc_ok(b: bytes, at: int, length: int) -> bool:
    """Whether the chunk whose data starts at `at` matches its CRC (of its type and data)."""
    return zlib.crc32(memoryview(b)[at - 4:at + length]) == int.from_bytes(b[at + length:at + length + 4], "big")


def png_problem(b: bytes) -> tuple[str | None, list[tuple[int, int]]]:
    """(why libpng refuses this PNG, or None; the byte ranges of ancillary chunks it drops for a
    bad CRC). Bytes after IEND are ignored, as both decoders ignore them."""
    dropped, seen, idats, header = [], set(), [], b""
    for kind, at, length in _chunks(b):
        if length < 0:
            return f"the PNG is cut short inside a chunk at byte {at}", dropped
        critical = not kind[0] & 0x20
        if critical and kind not in _CRITICAL:
            return f"the PNG holds an unknown critical chunk {kind!r} at byte {at - 8}", dropped
        if kind == b"IEND":  # libpng reads no further, nor IEND's own CRC
            return _pixel_data_problem(b, header, idats, b"PLTE" in seen), dropped
        if not _crc_ok(b, at, length):
            if kind == b"eXIf":  # (`png_exif_problem`)
                return f"PNG chunk eXIf at byte {at - 8} fails its CRC check (damaged data)", dropped
            if critical:
                return f"PNG chunk {kind.decode('latin-1')} at byte {at - 8} fails its CRC check (damaged data)", dropped
            dropped.append((at - 8, at + length + 4))
            continue
        seen.add(bytes(kind))
        if kind == b"IHDR":
            header = bytes(b[at:at + length])
        elif kind == b"IDAT":
            idats.append((at, length))
    return "the PNG ends without its IEND chunk (cut short)", dropped


_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # samples per pixel of each colour type
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _raw_bytes(ihdr: bytes) -> int | None:
    """Bytes of filtered rows the header declares, what the pixel data must inflate to (None: a
    header PIL refuses itself)."""
    if len(ihdr) != 13 or ihdr[9] not in _CHANNELS:
        return None
    w, h, depth, bits = int.from_bytes(ihdr[0:4], "big"), int.from_bytes(ihdr[4:8], "big"), ihdr[8], _CHANNELS[ihdr[9]]
    total = 0
    for x0, y0, dx, dy in (_ADAM7 if ihdr[12] == 1 else ((0, 0, 1, 1),)):
        pw, ph = (w - x0 + dx - 1) // dx, (h - y0 + dy - 1) // dy
        if pw > 0 and ph > 0:
            total += ph * (1 + (pw * bits * depth + 7) // 8)
    return total


def _inflated(b, idats: list[tuple[int, int]], want: int) -> int | None:
    """Bytes the pixel data inflates to, counted up to `want` (1 MB at a time, none kept); None
    where it is no zlib stream (PIL says so itself)."""
    stream, got = zlib.decompressobj(), 0
    try:
        for at, length in idats:
            data = memoryview(b)[at:at + length]
            while data and got < want and not stream.eof:
                got += len(stream.decompress(data, 1 << 20))
                data = stream.unconsumed_tail
        if got < want and not stream.eof:
            got += len(stream.flush())
    except zlib.error:
        return None
    return got


def _pixel_data_problem(b, ihdr: bytes, idats: list[tuple[int, int]], palette: bool) -> str | None:
    """What libpng refuses in a PNG whose chunks are whole: a palette image without its palette,
    pixel data that inflates to fewer bytes than the header declares (PIL filled the missing
    rows with black). About 7% of PIL's decode of a 512x384 photo-like PNG."""
    if len(ihdr) == 13 and ihdr[9] == 3 and not palette:
        return "the palette PNG has no PLTE chunk"
    want = _raw_bytes(ihdr)
    got = None if want is None else _inflated(b, idats, want)
    if got is not None and got < want:
        return f"the PNG's pixel data holds {got} of the {want} bytes its header declares (cut short)"
    return None


def png_for_pil(data) -> bytes | memoryview:
    """`data` to hand to PIL: a PNG as libpng would decode it (its ancillary chunks that fail
    their CRC left out), or `Damaged` saying why libpng refuses it; anything else as it is."""
    if bytes(data[:8]) != _SIGNATURE:
        return data
    b = bytes(data)
    problem, dropped = png_problem(b)
    if problem is not None:
        raise Damaged(problem)
    if not dropped:
        return data
    keep, at = [], 0
    for start, end in dropped:
        keep.append(b[at:start])
        at = end
    return b"".join(keep + [b[at:]])


def png_exif_problem(b) -> str | None:
    """Why a PNG's EXIF cannot be trusted, or None. An eXIf chunk failing its CRC: DALI turns the
    image by the tag (its parser reads it) while its PNG decoder (libpng) drops the chunk, and
    delivers the stored pixels laid out in the turned shape: scrambled. A second eXIf chunk (the
    PNG spec allows one; libpng warns "duplicate"): DALI aborted the whole process on orientations
    6 then 1 (glibc: heap corruption), and turned the shape of 1 then 6 but not its pixels. Refused
    by both backends."""
    found = 0
    for kind, at, length in _chunks(b):
        if kind == b"IEND" or length < 0:
            return None
        if kind == b"eXIf":
            if not _crc_ok(b, at, length):
                return "the PNG's eXIf chunk fails its CRC check (damaged data; DALI would scramble its pixels)"
            found += 1
            if found > 1:
                return (f"the PNG holds a second eXIf chunk at byte {at - 8} (one is allowed; DALI turned the "
                        "shape by one and the pixels by the other, or aborted the process)")
    return None


def _webp_chunks(b) -> list[bytes]:
    """The chunk types of a WebP's RIFF container, in order."""
    out, i = [], 12
    while i + 8 <= len(b):
        size = int.from_bytes(b[i + 4:i + 8], "little")
        out.append(bytes(b[i:i + 4]))
        i += 8 + size + (size & 1)
    return out


def dali_misreads(im: Image.Image, data) -> str | None:
    """Why DALI (CPU, nvImageCodec) cannot decode this valid image right, from PIL's lazy open of
    it, or None. Found by decoding every mode with both backends: a grayscale+alpha TIFF came
    out scrambled (its gray and alpha samples read as RGB), a CIELAB TIFF in wrong colours
    (95 levels off), a 32-bit integer TIFF and an uncompressed 1-bit TIFF failed with
    nvImageCodec's codes; a WebP holding EXIF and lossless or alpha data failed ('#17'); a
    16-bit BMP without bit masks failed ('Invalid sample_type: 0'), one with bit masks (R5G6B5,
    X1R5G5B5) came out up to 7 levels dark (its samples widened by a shift) or, with a V4
    header, failed; a PGM/PPM whose maxval is
    not 255 or 65535 came out unscaled (maxval 100: white 100, not 255)."""
    if im.format == "TIFF":
        if im.mode in ("LA", "LAB", "I") or (im.mode == "1" and im.tag_v2.get(259, 1) == 1):
            kind = {"LA": "grayscale+alpha", "LAB": "CIELAB", "I": "32-bit integer", "1": "uncompressed 1-bit"}[im.mode]
            return f"DALI does not decode a TIFF of mode {im.mode!r} ({kind}) right"
    if im.format == "BMP" and int.from_bytes(data[14:18], "little") >= 40 and int.from_bytes(data[28:30], "little") == 16:
        if im.info.get("compression") == 0:
            return "DALI does not decode a 16-bit BMP without bit masks (X1R5G5B5)"
        return ("DALI widens a 16-bit BMP's 5- and 6-bit samples by a shift, not to scale (white came "
                "out as (248, 252, 248), up to 7 levels off)")
    if im.format == "PPM" and im.tile and isinstance(im.tile[0].args, tuple) \
            and im.tile[0].args[-1] not in (255, 65535):
        return (f"DALI reads a PGM/PPM's samples without its maxval ({im.tile[0].args[-1]}, not 255 or "
                "65535: its white came out as that value)")
    if im.format == "WEBP":
        chunks = _webp_chunks(data)
        if b"EXIF" in chunks and (b"VP8L" in chunks or b"ALPH" in chunks):
            return "a WebP holding EXIF metadata and lossless or alpha data is not one DALI decodes"
    return None
