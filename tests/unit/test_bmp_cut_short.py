"""An uncompressed BMP shorter than the rows its header declares: refused from the header by both
backends, while every whole BMP still decodes."""

import io

import numpy as np
import pytest
from PIL import Image

from sparkfeed import ImageDecode
from sparkfeed.decode import ImageDecoder

BACKENDS = ["dali", "pil"]


def _bmp(w: int, h: int, mode: str, seed: int = 0) -> bytes:
    rgb = np.random.RandomState(seed).randint(0, 256, (h, w, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(buf, "BMP")
    return buf.getvalue()


def _top_down(data: bytes, w: int, h: int) -> bytes:
    """The same 24-bit BMP stored top row first (a negative height)."""
    offset, stride = int.from_bytes(data[10:14], "little"), (w * 24 + 31) // 32 * 4
    rows = [data[offset + i * stride:offset + (i + 1) * stride] for i in range(h)]
    return data[:22] + (-h).to_bytes(4, "little", signed=True) + data[26:offset] + b"".join(rows[::-1])


def _decode(backend, items):
    spec = ImageDecode(device="cpu", backend=backend, layout="NHWC")
    return ImageDecoder(spec, max_batch_size=len(items)).decode(items)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode, missing", [("RGB", 1), ("RGB", 3), ("RGB", 50), ("RGBA", 1), ("RGBA", 400),
                                           ("L", 1), ("P", 2), ("1", 3)])
def test_a_bmp_cut_short_is_refused_by_both_backends(backend, mode, missing):
    """DALI's CPU decoder returned a 24- or 32-bit BMP missing its last bytes with every pixel
    wrong and no error (its first decoder fails, another reads it scrambled), where PIL refused
    it; an 8- or 1-bit one missing only its last row's padding PIL decoded and DALI refused. Now
    both refuse it from its header, saying how many bytes the header calls for."""
    whole = _bmp(70, 45, mode)
    res = _decode(backend, [whole, whole[:-missing]])
    assert res.ok_rows.tolist() == [0]
    (row, reason), = res.failures
    assert row == 1 and reason.startswith(f"could not decode: the BMP is cut short ({len(whole) - missing} of the "
                                          f"{len(whole)} bytes its header declares: 70x45 pixels of "), reason
    assert reason.endswith("refused before decoding")


@pytest.mark.parametrize("backend", BACKENDS)
def test_whole_bmps_of_every_width_and_depth_still_decode(backend):
    """Rows are padded to 4 bytes: widths 1-9 at 1, 8, 24 and 32 bits, bottom-up and top-down,
    and a BMP with bytes after its pixels, all decode (one batch each: native sizes differ)."""
    for w in range(1, 10):
        items = [_bmp(w, 5, mode, seed=w) for mode in ("1", "L", "P", "RGB", "RGBA")]
        items += [_top_down(items[3], w, 5), items[3] + b"\0" * 7]
        res = _decode(backend, items)
        assert res.failures == () and res.images.shape == (len(items), 5, w, 3), (w, res.failures)
        assert (res.images[5] == res.images[3]).all()  # the top-down copy: the same picture


def test_a_bmp_header_over_max_pixels_is_refused_as_a_bomb_not_as_cut():
    """A bare header declaring 14000x14000 pixels is over max_pixels before it is cut short."""
    import struct

    info = struct.pack("<IiiHHIIiiII", 40, 14000, 14000, 1, 24, 0, 0, 2835, 2835, 0, 0)
    header = b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info
    for backend in BACKENDS:
        (_, reason), = _decode(backend, [header]).failures
        assert reason.startswith("image is 14000x14000 = 196000000 pixels, over max_pixels="), reason
