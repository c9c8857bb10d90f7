"""Every image mode either backend meets: DALI (CPU) and PIL give the same shape and (within the
rounding of a colour conversion) the same pixels, or DALI refuses from the header, naming
backend='pil', what it would decode wrong or not at all. Found by decoding each with both: a
grayscale+alpha TIFF came out of DALI scrambled, a CIELAB TIFF in wrong colours, a 32-bit
integer TIFF, an uncompressed 1-bit TIFF and a WebP holding EXIF and lossless or alpha data
failed with bare nvImageCodec codes; a PNG's or WebP's EXIF payload starting with "Exif\\0\\0"
turned the image under PIL and not under DALI."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from sparkfeed.decode import ImageDecode, ImageDecoder


def _grad(w: int, h: int, c: int = 3, bits: int = 8) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    top = (1 << bits) - 1
    ch = [x * top // max(w - 1, 1), y * top // max(h - 1, 1), (x + y) * top // max(w + h - 2, 1),
          top - x * top // max(w - 1, 1)]
    return np.stack(ch[:c], -1).astype(np.uint16 if bits > 8 else np.uint8)


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def _png16(a: np.ndarray, color: int) -> bytes:
    """A 16-bit PNG (Pillow writes none in colour)."""
    h, w = a.shape[:2]
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))
    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([16, color, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _interlaced(a: np.ndarray, depth: int = 8, color: int = 2) -> bytes:
    """An Adam7-interlaced PNG (Pillow writes none): each pass's rows, filter 0."""
    h, w = a.shape[:2]
    raw = b""
    for x0, y0, dx, dy in _ADAM7:
        for row in a[y0::dy, x0::dx]:
            if row.size:
                raw += b"\x00" + (row.astype(">u2").tobytes() if depth == 16 else
                                  np.packbits(row.reshape(-1) > 0).tobytes() if depth == 1 else row.tobytes())
    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([depth, color, 0, 0, 1])
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def _exif(orientation: int) -> bytes:
    ex = Image.Exif()
    ex[0x0112] = orientation
    return ex.tobytes()  # JPEG's APP1 payload: "Exif\0\0" + the TIFF bytes


def _bmp16(w: int = 8, h: int = 4) -> bytes:
    """A 16-bit X1R5G5B5 BMP (BI_RGB: no bit masks; Pillow writes none)."""
    y, x = np.mgrid[0:h, 0:w]
    data = ((x * 4) << 10 | (y * 8) << 5 | (x + y)).astype("<u2").tobytes()
    info = (40).to_bytes(4, "little") + w.to_bytes(4, "little") + h.to_bytes(4, "little") + \
        (1).to_bytes(2, "little") + (16).to_bytes(2, "little") + bytes(4) + len(data).to_bytes(4, "little") + bytes(16)
    return b"BM" + (54 + len(data)).to_bytes(4, "little") + bytes(4) + (54).to_bytes(4, "little") + info + data


def _bmp565(w: int = 8, h: int = 4) -> bytes:
    """A 16-bit R5G6B5 BMP (BI_BITFIELDS: its three bit masks after the 40-byte header), white
    in its last column."""
    y, x = np.mgrid[0:h, 0:w]
    px = np.where(x == w - 1, 0xFFFF, (x * 4) << 11 | (y * 8) << 5 | (x + y)).astype("<u2")
    data = px[::-1].tobytes()  # bottom-up rows
    masks = b"".join(m.to_bytes(4, "little") for m in (0xF800, 0x07E0, 0x001F))
    info = (40).to_bytes(4, "little") + w.to_bytes(4, "little") + h.to_bytes(4, "little") + \
        (1).to_bytes(2, "little") + (16).to_bytes(2, "little") + (3).to_bytes(4, "little") + \
        len(data).to_bytes(4, "little") + bytes(16) + masks
    return b"BM" + (66 + len(data)).to_bytes(4, "little") + bytes(4) + (66).to_bytes(4, "little") + info + data


def _unflagged(webp: bytes) -> bytes:
    """The WebP with its VP8X header's EXIF flag cleared (the EXIF chunk left in place)."""
    b = bytearray(webp)
    b[webp.index(b"VP8X") + 8] &= ~0x08
    return bytes(b)


RGB, RGBA = Image.fromarray(_grad(64, 48)), Image.fromarray(_grad(64, 48, 4))
PAL = RGB.convert("P", palette=Image.ADAPTIVE, colors=16)
CMYK = Image.frombytes("CMYK", (64, 48), _grad(64, 48, 4).tobytes())
GRAY16 = Image.fromarray(_grad(64, 48, 1, 16)[..., 0])
ANIMATED = _save(RGB, "WEBP", save_all=True, append_images=[Image.fromarray(255 - _grad(64, 48))], lossless=True)
GIF = _save(RGB.convert("P"), "GIF", save_all=True, append_images=[Image.fromarray(255 - _grad(64, 48)).convert("P")])

AGREE = {  # name: bytes both backends decode to the same shape, pixels within 1 (colour conversions)
    "jpeg": _save(RGB, "JPEG", quality=95), "jpeg 4:4:4": _save(RGB, "JPEG", quality=95, subsampling=0),
    "progressive jpeg": _save(RGB, "JPEG", quality=95, progressive=True),
    "grayscale jpeg": _save(RGB.convert("L"), "JPEG", quality=95), "cmyk jpeg": _save(CMYK, "JPEG", quality=95),
    "jpeg 1x1": _save(Image.new("RGB", (1, 1), (200, 10, 30)), "JPEG"),
    "jpeg 3000x3": _save(Image.fromarray(_grad(3000, 3)), "JPEG", quality=95),
    "png": _save(RGB, "PNG"), "rgba png": _save(RGBA, "PNG"), "gray+alpha png": _save(RGBA.convert("LA"), "PNG"),
    "1-bit png": _save(RGB.convert("1"), "PNG"), "4-bit palette png": _save(PAL, "PNG", bits=4),
    "palette png with transparency": _save(PAL, "PNG", transparency=3),
    "16-bit gray png": _save(GRAY16, "PNG"), "16-bit rgb png": _png16(_grad(64, 48, 3, 16), 2),
    "16-bit rgba png": _png16(_grad(64, 48, 4, 16), 6), "png 5000x2": _save(Image.fromarray(_grad(5000, 2)), "PNG"),
    "interlaced png": _interlaced(_grad(64, 48)), "interlaced png 7x9": _interlaced(_grad(7, 9)),
    "interlaced 16-bit gray png": _interlaced(_grad(33, 17, 1, 16)[..., 0], 16, 0),
    "interlaced 1-bit png 3x2": _interlaced(_grad(3, 2, 1)[..., 0] > 0, 1, 0),
    "bmp": _save(RGB, "BMP"), "8-bit bmp": _save(PAL, "BMP"), "1-bit bmp": _save(RGB.convert("1"), "BMP"),
    "tiff": _save(RGB, "TIFF"), "lzw tiff": _save(RGB, "TIFF", compression="tiff_lzw"), "cmyk tiff": _save(CMYK, "TIFF"),
    "16-bit tiff": _save(GRAY16, "TIFF"), "rgba tiff": _save(RGBA, "TIFF"), "palette tiff": _save(PAL, "TIFF"),
    "group4 1-bit tiff": _save(RGB.convert("1"), "TIFF", compression="group4"),
    "multi-page tiff": _save(RGB, "TIFF", save_all=True, append_images=[RGBA.convert("RGB")]),
    "ppm": _save(RGB, "PPM"), "pgm": _save(RGB.convert("L"), "PPM"), "pbm": _save(RGB.convert("1"), "PPM"),
    "16-bit pgm": b"P5\n3 1\n65535\n" + np.array([1000, 30000, 65535], ">u2").tobytes(),
    "16-bit ppm": b"P6\n2 1\n65535\n" + np.array([1000, 30000, 65535, 65000, 256, 1], ">u2").tobytes(),
    "ascii pgm": b"P2\n3 1\n255\n0 128 255\n", "ascii pbm": b"P1\n3 1\n1 0 1\n",
    "lossless webp": _save(RGB, "WEBP", lossless=True), "lossy webp": _save(RGB, "WEBP", quality=95),
    "rgba webp": _save(RGBA, "WEBP", lossless=True), "animated webp (first frame)": ANIMATED,
    "lossy webp, EXIF 6": _save(RGB, "WEBP", quality=95, exif=_exif(6)),
    "jpeg 2000": _save(RGB, "JPEG2000", irreversible=False),
    **{f"jpeg, EXIF {o}": _save(RGB, "JPEG", quality=95, exif=_exif(o)) for o in range(1, 9)},
    **{f"png, EXIF {o}": _save(RGB, "PNG", exif=_exif(o)) for o in range(1, 9)},
    "tiff, EXIF 6": _save(RGB, "TIFF", exif=_exif(6)),
    # a PNG's eXIf / a WebP's EXIF payload is the TIFF bytes alone: with JPEG's prefix DALI turns nothing
    "png, prefixed eXIf 6": _save(RGB, "PNG")[:33] + _chunk(b"eXIf", _exif(6)) + _save(RGB, "PNG")[33:],
    "lossy webp, prefixed EXIF 6": _save(RGB, "WEBP", quality=95, exif=b"Exif\x00\x00" + _exif(6)),
    # an EXIF chunk whose VP8X header does not flag it: DALI does not turn by it
    "lossy webp, EXIF 6 not flagged": _unflagged(_save(RGB, "WEBP", quality=95, exif=_exif(6))),
}
DALI_REFUSES = {  # name: (bytes, what DALI's header check says); PIL decodes each
    "gray+alpha tiff": (_save(RGBA.convert("LA"), "TIFF"), "mode 'LA' (grayscale+alpha)"),
    "cielab tiff": (_save(RGB.convert("LAB"), "TIFF"), "mode 'LAB' (CIELAB)"),
    "32-bit integer tiff": (_save(Image.fromarray(_grad(64, 48, 1, 16)[..., 0].astype(np.int32)), "TIFF"),
                            "mode 'I' (32-bit integer)"),
    "uncompressed 1-bit tiff": (_save(RGB.convert("1"), "TIFF"), "mode '1' (uncompressed 1-bit)"),
    "lossless webp with EXIF": (_save(RGB, "WEBP", lossless=True, exif=_exif(1)), "WebP holding EXIF"),
    "alpha webp with EXIF": (_save(RGBA, "WEBP", quality=90, exif=_exif(1)), "WebP holding EXIF"),
    "16-bit bmp": (_bmp16(), "16-bit BMP without bit masks"),
    "16-bit bmp with bit masks (R5G6B5)": (_bmp565(), "widens a 16-bit BMP's 5- and 6-bit samples"),
    "pgm, maxval 100": (b"P5\n4 1\n100\n" + bytes([0, 33, 50, 100]), "without its maxval (100"),
    "ascii ppm, maxval 15": (b"P3\n1 1\n15\n15 7 0\n", "without its maxval (15"),
    "16-bit pgm, maxval 1000": (b"P5\n2 1\n1000\n" + bytes([0, 0, 3, 232]), "without its maxval (1000"),
    "gif": (GIF, "GIF is not a format DALI decodes"),
}


def _decode(backend: str, data: bytes):
    return ImageDecoder(ImageDecode(device="cpu", backend=backend), max_batch_size=2).decode([data])


@pytest.mark.parametrize("name", list(AGREE))
def test_both_backends_give_the_same_image(name):
    dali, pil = _decode("dali", AGREE[name]), _decode("pil", AGREE[name])
    assert dali.failures == () and pil.failures == ()
    assert dali.images.shape == pil.images.shape
    assert int((dali.images.int() - pil.images.int()).abs().max()) <= 1


@pytest.mark.parametrize("name", list(DALI_REFUSES))
def test_dali_refuses_what_it_decodes_wrong_or_not_at_all_and_pil_decodes_it(name):
    data, reason = DALI_REFUSES[name]
    res = _decode("dali", data)
    assert len(res.failures) == 1 and reason in res.failures[0][1]
    assert "backend='pil'" in res.failures[0][1]
    assert _decode("pil", data).failures == ()


def test_pil_scales_a_pgm_by_its_maxval():
    """What DALI got wrong (the refusal above), PIL gets right: white is maxval."""
    res = _decode("pil", DALI_REFUSES["pgm, maxval 100"][0])
    assert res.images[0, 0, 0].tolist() == [0, 84, 128, 255]


def test_pil_scales_a_16_bit_bmp_to_full_levels():
    """What DALI got wrong (white as (248, 252, 248)), PIL gets right: white is 255."""
    res = _decode("pil", DALI_REFUSES["16-bit bmp with bit masks (R5G6B5)"][0])
    assert res.images[0, :, :, -1].unique().tolist() == [255]


def test_exif_turns_follow_the_pixels():
    """Orientation 6 turns a 64x48 image a quarter: 48 wide, 64 high, in both backends; the
    prefixed payloads above turn nothing in either."""
    assert tuple(_decode("pil", AGREE["png, EXIF 6"]).images.shape) == (1, 3, 64, 48)
    assert tuple(_decode("pil", AGREE["lossy webp, EXIF 6"]).images.shape) == (1, 3, 64, 48)
    assert tuple(_decode("pil", AGREE["png, prefixed eXIf 6"]).images.shape) == (1, 3, 48, 64)
    assert tuple(_decode("pil", AGREE["lossy webp, EXIF 6 not flagged"]).images.shape) == (1, 3, 48, 64)
