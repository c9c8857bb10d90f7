"""A JPEG with two EXIF blocks that disagree on the orientation gets one verdict from both backends.

DALI turned such a JPEG's shape by one block and its pixels by another (blocks 1 then 6: a
turned shape holding pixels of no orientation; 6 then 1: the stored shape), while PIL took the
first block: the same bytes gave two different images, one of them scrambled. The header check
now refuses a JPEG whose EXIF blocks (before the frame header) disagree, for both backends;
blocks that agree, and an EXIF block beside an XMP one, decode as before.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from sparkfeed.binarycols import BinaryChunks, BinaryColumn
from sparkfeed.decode import ImageDecoder
from sparkfeed.imagespec import ImageDecode

BACKENDS = ["dali", "pil"]


def _base() -> bytes:
    a = (np.add.outer(np.arange(48), np.arange(64))[..., None] * [3, 1, 2] % 256).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=95)
    return buf.getvalue()


BASE = _base()


def _app1(payload: bytes) -> bytes:
    return b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload


def _exif(orientation: int, padding: int = 0) -> bytes:
    e = Image.Exif()
    e[0x0112] = orientation
    return _app1(e.tobytes() + bytes(padding))  # (bytes after the directory: a large block)


def _with(*segments: bytes) -> bytes:
    return BASE[:2] + b"".join(segments) + BASE[2:]


XMP = _app1(b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta/>")


def _decode(backend: str, items, **kw):
    return ImageDecoder(ImageDecode(device="cpu", backend=backend, **kw), max_batch_size=16).decode(items)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pair", [(1, 6), (6, 1), (3, 6), (6, 8), (2, 1)])
def test_disagreeing_exif_blocks_are_refused_by_both_backends(backend, pair):
    (row, why), = _decode(backend, [_with(*map(_exif, pair))]).failures
    assert row == 0 and f"2 EXIF blocks whose orientations differ {pair}" in why


@pytest.mark.parametrize("backend", BACKENDS)
def test_agreeing_blocks_and_an_exif_beside_xmp_decode_turned_as_one_block(backend):
    one = {o: _decode(backend, [_with(_exif(o))]).images[0] for o in (1, 6)}
    items = [_with(_exif(6), _exif(6)), _with(_exif(1), _exif(1)), _with(XMP, _exif(6)), _with(_exif(6), XMP)]
    for item, want in zip(items, (6, 1, 6, 6)):
        res = _decode(backend, [item])
        assert res.failures == () and torch.equal(res.images[0], one[want])


@pytest.mark.parametrize("backend", BACKENDS)
def test_blocks_past_the_bytes_scanned_at_once_are_counted_in_a_batch_in_chunks(backend):
    """A first EXIF block of 6 KB puts the second past the 4 KB each row of a chunked batch has
    gathered for the first scan: the rows scanned again count their blocks from the start."""
    big = [_with(_exif(1, 6000), _exif(6)), _with(_exif(6, 6000), _exif(6)), BASE]

    def column(items):
        raw = torch.from_numpy(np.frombuffer(b"".join(items), np.uint8).copy())
        return BinaryColumn(raw, torch.tensor(np.cumsum([0] + [len(b) for b in items]), dtype=torch.int64))

    res = _decode(backend, BinaryChunks((column(big[:1]), column(big[1:]))), size=32)
    assert [r for r, _ in res.failures] == [0] and res.ok_rows.tolist() == [1, 2]


# ------------------------------------------------------------------ a PNG's eXIf chunk, twice

def _png_with_exif(*orientations: int) -> bytes:
    import zlib

    a = (np.add.outer(np.arange(48), np.arange(64))[..., None] * [3, 1, 2] % 256).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    png = buf.getvalue()
    chunks = b""
    for o in orientations:
        e = Image.Exif()
        e[0x0112] = o
        tiff = e.tobytes()[6:]  # a PNG's eXIf holds the TIFF bytes alone
        chunks += len(tiff).to_bytes(4, "big") + b"eXIf" + tiff + zlib.crc32(b"eXIf" + tiff).to_bytes(4, "big")
    return png[:33] + chunks + png[33:]  # after the signature and IHDR


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pair", [(1, 6), (6, 6)])
def test_a_png_with_two_exif_chunks_is_refused_by_both_backends(backend, pair):
    """The PNG spec allows one eXIf chunk. DALI turned the shape of (1, 6) by 6 and its pixels by
    neither; PIL took the first."""
    (row, why), = _decode(backend, [_png_with_exif(*pair)]).failures
    assert row == 0 and "second eXIf chunk" in why and "refused before decoding" in why
    assert _decode(backend, [_png_with_exif(pair[1])]).failures == ()


def test_a_png_with_two_exif_chunks_never_reaches_dali_which_aborted_the_process(tmp_path):
    """Orientations 6 then 1: DALI's CPU decoder aborted the whole process (glibc "corrupted size
    vs. prev_size", SIGABRT). Run in a child, so that a regression fails this test, not the run."""
    import subprocess
    import sys

    path = tmp_path / "twice.png"
    path.write_bytes(_png_with_exif(6, 1))
    code = ("import sys; from sparkfeed.decode import ImageDecoder; from sparkfeed.imagespec import ImageDecode; "
            "res = ImageDecoder(ImageDecode(device='cpu', backend='dali'), max_batch_size=2)"
            ".decode([open(sys.argv[1], 'rb').read()]); print(res.failures[0][1])")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    assert "second eXIf chunk" in out.stdout


# ------------------------------------------------------------------ blocks after the frame header

def _after_frame(before: tuple, after: tuple, padding: int = 0) -> bytes:
    """BASE with EXIF blocks of `before` orientations ahead of its frame header (SOF) and of
    `after` ones between it and the first scan (`padding` bytes more in the first block after)."""
    from sparkfeed.headers import _SOF, _segments

    sof = next(i for i, marker in _segments(BASE, 4) if marker in _SOF)
    end = sof + 2 + int.from_bytes(BASE[sof + 2:sof + 4], "big")
    tail = b"".join(_exif(o, padding if k == 0 else 0) for k, o in enumerate(after))
    return BASE[:2] + b"".join(map(_exif, before)) + BASE[2:end] + tail + BASE[end:]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("before, after", [((1,), (6,)), ((6,), (1,)), ((), (6, 1)), ((), (1, 6))])
def test_disagreeing_blocks_after_the_frame_header_are_refused_too(backend, before, after):
    """DALI reads an EXIF block between the frame header and the scan: 1 before it and 6 after came
    out 64x48 (turned) from DALI with pixels of no orientation (mean 70 against 101), 48x64 from
    PIL; the walk counted blocks only up to the frame header."""
    pair = before + after
    (row, why), = _decode(backend, [_after_frame(before, after), BASE]).failures
    assert row == 0 and f"2 EXIF blocks whose orientations differ {pair}" in why


@pytest.mark.parametrize("backend", BACKENDS)
def test_blocks_after_the_frame_header_past_the_gathered_bytes_are_counted(backend):
    """In a batch in chunks each row's first 4 KB are walked at once; a second block after the
    frame header beyond them is counted where the row lies."""
    items = [_after_frame((), (1, 6), padding=6000), _after_frame((), (6, 6), padding=6000), BASE]

    def column(part):
        raw = torch.from_numpy(np.frombuffer(b"".join(part), np.uint8).copy())
        return BinaryColumn(raw, torch.tensor(np.cumsum([0] + [len(b) for b in part]), dtype=torch.int64))

    res = _decode(backend, BinaryChunks((column(items[:1]), column(items[1:]))), size=32)
    assert [r for r, _ in res.failures] == [0] and res.ok_rows.tolist() == [1, 2]
    one = _decode(backend, [_with(_exif(6))], size=32).images[0]
    assert torch.equal(res.images[0], one)  # agreeing blocks: turned as one block
