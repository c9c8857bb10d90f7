"""A table segment (DHT, DQT, DAC, DRI) after a JPEG's scan gets one verdict from both backends.

libjpeg reads every segment up to the end marker once the image is decoded, and refuses one
whose body is invalid (a table index out of range, more Huffman codes than bytes, a length that
does not add up). PIL therefore refused such a JPEG, while DALI's decoder, which stops at the end
of the last scan, delivered it. The header check now judges those bodies as libjpeg does
(`scanmarkers._TABLES`), so both backends refuse the same rows, and both deliver the rest.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sparkfeed import scanmarkers
from sparkfeed.decode import ImageDecoder
from sparkfeed.imagespec import ImageDecode

BACKENDS = ["dali", "pil"]


def _jpeg(**save) -> bytes:
    a = (np.add.outer(np.arange(48), np.arange(64))[..., None] * [3, 1, 2] % 256).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", **{"quality": 90, **save})
    return buf.getvalue()


def _segment(kind: int, body: bytes) -> bytes:
    return bytes([0xFF, kind]) + (len(body) + 2).to_bytes(2, "big") + body


def _after_scan(b: bytes, kind: int, body: bytes) -> bytes:
    """`b` with a segment put between its last scan and its end marker."""
    return b[:-2] + _segment(kind, body) + b"\xff\xd9"


def _decode(backend: str, items):
    return ImageDecoder(ImageDecode(device="cpu", backend=backend), max_batch_size=64).decode(items)


def _pil_accepts(b: bytes) -> bool:
    try:
        Image.open(io.BytesIO(b)).load()
    except OSError:
        return False
    return True


GARBAGE = {  # kind, body, what the refusal says
    "Huffman codes past the segment": (0xC4, b"\x00" + bytes([40] * 16) + bytes(30), "declares 640 codes"),
    "Huffman table index": (0xC4, b"\x05" + bytes([1] + [0] * 15) + b"\x07", "Huffman table index 0x05"),
    "Huffman bytes left over": (0xC4, b"\x00" + bytes([1] + [0] * 15) + b"\x07\x01\x02", "2 byte(s) after"),
    "quantisation table index": (0xDB, b"\x07" + bytes(range(1, 65)), "quantisation table index 7"),
    "quantisation bytes left over": (0xDB, b"\x00" + bytes(range(1, 65)) + b"\x09", "table index 9"),
    "conditioning index": (0xCC, b"\x77\x10", "conditioning pair (0x77, 0x10)"),
    "conditioning bounds": (0xCC, b"\x01\x12", "conditioning pair (0x01, 0x12)"),
    "odd conditioning length": (0xCC, b"\x01\x11\x02", "3 bytes of conditioning pairs"),
    "restart interval length": (0xDD, b"\x00", "3-byte restart interval"),
}
VALID = {"Huffman table": (0xC4, b"\x10" + bytes([0, 1] + [0] * 14) + b"\x05"),
         "quantisation table": (0xDB, b"\x01" + bytes(range(1, 65))),
         "16-bit quantisation table": (0xDB, b"\x12" + bytes(128)),
         "conditioning": (0xCC, b"\x01\x21\x11\x05"),
         "restart interval": (0xDD, b"\x00\x04"),
         "comment": (0xFE, b"made by hand")}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_table_with_a_garbage_body_after_the_scan_is_refused_by_both_backends(backend):
    whole = _jpeg()
    items = [whole] + [_after_scan(whole, kind, body) for kind, body, _ in GARBAGE.values()]
    assert not any(_pil_accepts(b) for b in items[1:])  # libjpeg's own verdict
    res = _decode(backend, items)
    assert res.ok_rows.tolist() == [0]
    reasons = dict(res.failures)
    for row, (name, (kind, _, said)) in enumerate(GARBAGE.items(), start=1):
        why = reasons[row]
        assert f"segment 0xFF{kind:02X} at byte {len(whole) - 2}, after its first scan" in why, name
        assert said in why and why.endswith("refused before decoding"), (name, why)


@pytest.mark.parametrize("backend", BACKENDS)
def test_valid_tables_after_the_scan_decode_as_the_plain_image(backend):
    whole = _jpeg()
    items = [whole] + [_after_scan(whole, kind, body) for kind, body in VALID.values()]
    assert all(_pil_accepts(b) for b in items)
    res = _decode(backend, items)
    assert res.failures == () and res.ok_rows.tolist() == list(range(len(items)))
    assert all(bool((img == res.images[0]).all()) for img in res.images[1:])


def test_the_check_agrees_with_libjpeg_on_random_table_bodies():
    """Seeded random bodies of every kind, about half valid: the header check refuses exactly
    those PIL's libjpeg refuses (a short quantisation table reads on into the end marker, and
    one that runs out of file is taken, as libjpeg does)."""
    rng = np.random.default_rng(20261128)
    whole, disagree, verdicts = _jpeg(), [], set()
    for kind in (0xC4, 0xDB, 0xCC, 0xDD):
        for _ in range(150):
            body = _random_body(rng, kind)
            b = _after_scan(whole, kind, body)
            start = len(whole) - 2 + 4
            ours = scanmarkers._TABLES[kind](b, start, start + len(body)) is None
            verdicts.add((kind, ours))
            if ours != _pil_accepts(b):
                disagree.append((hex(kind), body.hex()))
    assert disagree == []
    assert verdicts == {(k, v) for k in (0xC4, 0xDB, 0xCC, 0xDD) for v in (True, False)}  # both seen


def _random_body(rng, kind: int) -> bytes:
    """A table body near the valid ones: right or wrong indexes, counts and lengths."""
    if kind == 0xC4:
        out = b""
        for _ in range(int(rng.integers(1, 3))):
            counts = rng.integers(0, 3, 16) if rng.random() < 0.8 else rng.integers(0, 40, 16)
            values = rng.integers(0, 255, max(0, int(counts.sum()) + int(rng.integers(-2, 3))))
            index = int(rng.choice([0, 1, 3, 4, 0x10, 0x13, 0x14, 0x20]))
            out += bytes([index]) + bytes(counts.tolist()) + bytes(values.tolist())
        return out
    if kind == 0xDB:
        body = bytearray(rng.integers(1, 255, int(rng.integers(0, 140))).tolist())
        if body:
            body[0] = int(rng.choice([0, 1, 3, 4, 0x10, 0x13, 0x17, 0x20]))
        return bytes(body)
    if kind == 0xCC:
        return bytes(rng.integers(0, 40, int(rng.integers(0, 7))).tolist())
    return bytes(rng.integers(0, 255, int(rng.integers(0, 4))).tolist())


def test_a_table_marker_damaged_into_the_scan_data_gets_one_verdict_from_both_backends():
    """A byte of scan data damaged into 0xFF then C4, CC, DB or DD reads as a table segment whose
    length and body are scan bytes (mostly running past the file). libjpeg reads it as a table,
    so PIL refused nearly all of them, while DALI decoded them grey without an error."""
    whole = _jpeg(quality=95)
    start = whole.find(b"\xff\xda") + 2 + int.from_bytes(whole[whole.find(b"\xff\xda") + 2:][:2], "big")
    items = [whole[:at] + bytes([0xFF, kind]) + whole[at + 2:]
             for kind in (0xC4, 0xCC, 0xDB, 0xDD) for at in range(start + 8, len(whole) - 16, 97)]
    pil, dali = (_decode(backend, items) for backend in ("pil", "dali"))
    assert pil.ok_rows.tolist() == dali.ok_rows.tolist()
    assert len(dali.failures) > len(items) * 3 // 4  # (DALI alone refused none of them)
    assert all("after its first scan, is invalid" in why for _, why in dali.failures)
