"""A JPEG whose scan data holds a marker its decoders refuse gets one verdict from both backends.

A damaged byte of scan data that reads as a marker (0xFF then most values) stops libjpeg's scan
and fails the decode. PIL refused such a JPEG; DALI's CPU decoder fell back to a decoder that
delivered the pixels before the damage and grey after it, without an error (226 of the 246
marker bytes in the middle of a baseline scan). The header check now refuses it for both.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sparkfeed.decode import ImageDecoder
from sparkfeed.imagespec import ImageDecode

BACKENDS = ["dali", "pil"]


def _jpeg(**save) -> bytes:
    a = (np.add.outer(np.arange(96), np.arange(128))[..., None] * [3, 1, 2] % 256).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", **{"quality": 90, **save})
    return buf.getvalue()


def _scan_starts(b: bytes) -> list[int]:
    """Where each scan's data begins (after each SOS header)."""
    out, i = [], b.find(b"\xff\xda")
    while i >= 0:
        out.append(i + 2 + int.from_bytes(b[i + 2:i + 4], "big"))
        i = b.find(b"\xff\xda", out[-1])
    return out


def _with_marker(b: bytes, at: int, kind: int) -> bytes:
    return b[:at] + bytes([0xFF, kind]) + b[at + 2:]


def _decode(backend: str, items):
    return ImageDecoder(ImageDecode(device="cpu", backend=backend), max_batch_size=256).decode(items)


KINDS = [k for k in range(1, 255) if not 0xD0 <= k <= 0xD7]
# what libjpeg takes after a scan (the end, tables, DNL, APPn, COM, TEM): not refused from the
# header (a table's body is judged as libjpeg judges it: tests/unit/test_jpeg_tables_after_scan.py)
TAKEN = {0x01, 0xC4, 0xCC, 0xD9, 0xDB, 0xDC, 0xDD, 0xFE, *range(0xE0, 0xF0)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_refused_marker_inside_a_baseline_scan_is_a_bad_row_for_both_backends(backend):
    whole = _jpeg()
    at = (_scan_starts(whole)[0] + len(whole)) // 2
    res = _decode(backend, [whole] + [_with_marker(whole, at, k) for k in KINDS])
    reasons = dict(res.failures)
    refused = {KINDS[r - 1] for r in reasons}
    assert refused >= set(KINDS) - TAKEN and 0 not in reasons
    for k in set(KINDS) - TAKEN:
        why = reasons[KINDS.index(k) + 1]
        assert "refused before decoding" in why and (f"0xFF{k:02X} at byte {at}" in why or "second scan" in why)


def test_dali_delivered_grey_for_the_rest_where_pil_refused():
    """The silent case: one of those bytes decoded by DALI alone (the header check bypassed)."""
    from sparkfeed.dalidecode import _DaliBackend
    from sparkfeed.decodejob import _Draws
    from sparkfeed.encoded import _encoded

    whole = _jpeg()
    bad = _with_marker(whole, (_scan_starts(whole)[0] + len(whole)) // 2, 0x41)
    with pytest.raises(OSError):
        Image.open(io.BytesIO(bad)).load()
    backend = _DaliBackend(ImageDecode(device="cpu"), "cpu", 2, 1, 0)
    enc, rows = _encoded([whole, bad]), np.arange(2)
    draws = _Draws(np.zeros(2, np.float32), np.zeros(2, np.float32), np.zeros(2, np.int32))
    (images,), ok, failures = backend.run(enc, rows, draws, "crop", np.array([[128, 96]] * 2))
    assert ok == [0, 1] and failures == []
    assert (images[1].int() - images[0].int()).abs().max() > 100  # grey for the lower part


@pytest.mark.parametrize("backend", BACKENDS)
def test_progressive_and_multi_scan_jpegs_decode_and_a_marker_in_a_later_scan_is_refused(backend):
    """Between scans come tables and scan headers (skipped by their lengths): never refused. A
    refused marker inside the third scan's data is found, as a second scan header is in a
    one-scan JPEG."""
    progressive, optimised = _jpeg(progressive=True), _jpeg(progressive=True, optimize=True, quality=1)
    baseline = _jpeg()
    third = _scan_starts(progressive)[2] + 5
    items = [progressive, optimised, _with_marker(progressive, third, 0x41),
             _with_marker(baseline, (_scan_starts(baseline)[0] + len(baseline)) // 2, 0xDA)]
    res = _decode(backend, items)
    assert res.ok_rows.tolist() == [0, 1]
    (r2, why2), (r3, why3) = res.failures
    assert (r2, r3) == (2, 3) and f"0xFF41 at byte {third}" in why2 and "second scan header" in why3


# ------------------------------------------------------------------ a header segment past the end

def _overrun(length: int) -> bytes:
    """The JPEG with its first DHT segment declaring `length` bytes (the file has far fewer)."""
    whole = _jpeg()
    at = whole.find(b"\xff\xc4") + 2
    return whole[:at] + length.to_bytes(2, "big") + whole[at + 2:]


def _stray_bytes(before: int) -> bytes:
    """The JPEG with 3 bytes that are no marker put before its `before`-th segment (every table
    intact: libjpeg skips them with a warning)."""
    from sparkfeed.headers import _segments

    whole = _jpeg()
    at = [i for i, _ in _segments(whole, 4)][before]
    return whole[:at] + b"\x00\x01\x02" + whole[at:]


BROKEN_HEADERS = {"segment past the end": (lambda: [_overrun(0x461F), _overrun(0xFFFF)], "past the end of the file"),
                  # before the frame header (the row then sized by PIL's lazy open) and after it
                  "stray bytes": (lambda: [_stray_bytes(3), _stray_bytes(5)], "3 stray byte(s) at byte")}


@pytest.mark.parametrize("damage", BROKEN_HEADERS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_broken_header_is_refused_by_both_backends(backend, damage):
    make, said = BROKEN_HEADERS[damage]
    whole = _jpeg()
    res = _decode(backend, [whole, *make(), whole])
    assert res.ok_rows.tolist() == [0, 3]
    assert [r for r, _ in res.failures] == [1, 2]
    assert all(said in why and "refused before decoding" in why for _, why in res.failures)


@pytest.mark.parametrize("damage", ["segment past the end", "stray bytes"])
def test_a_broken_header_no_longer_crashes_the_process(tmp_path, damage):
    """DALI's CPU decoder crashed the whole process (a segmentation fault) on a batch of 48 JPEGs
    holding one whose DHT segment declares 0x461F bytes, or with 3 stray bytes between two
    segments, decoded 10 times (found by mutating bytes of JPEGs). Run in a child, so that a regression fails this test, not the run."""
    import subprocess
    import sys

    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    good.write_bytes(_jpeg())
    bad.write_bytes(_overrun(0x461F) if damage == "segment past the end" else _stray_bytes(5))
    code = ("import sys; from sparkfeed.decode import ImageDecoder; from sparkfeed.imagespec import ImageDecode\n"
            "good, bad = (open(p, 'rb').read() for p in sys.argv[1:])\n"
            "dec = ImageDecoder(ImageDecode(device='cpu', backend='dali'), max_batch_size=48)\n"
            "for _ in range(10): res = dec.decode([good] * 24 + [bad] + [good] * 23)\n"
            "print(res.ok_rows.numel(), res.failures[0][1])")
    out = subprocess.run([sys.executable, "-c", code, str(good), str(bad)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.returncode, out.stderr[-500:])
    assert out.stdout.startswith("47 ") and ("past the end of the file" in out.stdout or "stray byte" in out.stdout)


# ------------------------------------------------------------------ an invalid frame header

def _frame_byte(offset: int, value: int) -> bytes:
    """The JPEG with byte `offset` of its frame header (SOF) set to `value` (4: the sample
    precision, 9: the number of components)."""
    whole = _jpeg()
    at = whole.find(b"\xff\xc0") + offset
    return whole[:at] + bytes([value]) + whole[at + 1:]


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_invalid_frame_header_is_refused_by_both_backends_and_does_not_crash(backend, tmp_path):
    """37-bit samples or 65 components (one damaged byte each): PIL refused such a JPEG
    ("cannot identify image file"); DALI's CPU decoder crashed the process on it in a batch of
    48 (in a child here, so that a regression fails this test, not the run)."""
    import subprocess
    import sys

    whole = _jpeg()
    res = _decode(backend, [whole, _frame_byte(4, 37), _frame_byte(9, 65), _frame_byte(9, 0), whole])
    assert res.ok_rows.tolist() == [0, 4]
    reasons = dict(res.failures)
    assert "37-bit samples" in reasons[1] and "65 components" in reasons[2] and "0 components" in reasons[3]
    assert all("frame header" in why and "refused before decoding" in why for why in reasons.values())
    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    good.write_bytes(whole)
    bad.write_bytes(_frame_byte(4, 37))
    code = ("import sys; from sparkfeed.decode import ImageDecoder; from sparkfeed.imagespec import ImageDecode\n"
            "good, bad = (open(p, 'rb').read() for p in sys.argv[1:])\n"
            f"dec = ImageDecoder(ImageDecode(size=32, device='cpu', backend='{backend}'), max_batch_size=48)\n"
            "for rep in range(8): res = dec.decode([good] * (rep * 5 % 48) + [bad] + [good] * (47 - rep * 5 % 48))\n"
            "print(res.ok_rows.numel())")
    out = subprocess.run([sys.executable, "-c", code, str(good), str(bad)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "47", (out.returncode, out.stderr[-500:])
