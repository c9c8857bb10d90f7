"""A JPEG (or JPEG 2000) cut short gets one verdict from every backend: refused from its header.

libjpeg (DALI's CPU decoder and PIL's) fails a JPEG whose scan data simply stops, but where the
missing tail reads as scan data (a cut file zero-filled to its length: a preallocated download,
a sparse copy, a write that never finished) it decoded without a word, the missing rows grey;
nvJPEG decodes a plain cut so. A JPEG with no end-of-image marker after its first scan is now
refused by the header check, for every backend: a bad row naming the dataset, shard, row group
and row, or a counted skip.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import sparkfeed
from sparkfeed.decode import ImageDecoder
from sparkfeed.errors import CorruptSampleError
from sparkfeed.imagespec import ImageDecode

BACKENDS = ["dali", "pil"]


def _photo(**save) -> bytes:
    """A 256x192 photo-like JPEG (gradients and noise), written by libjpeg through PIL."""
    rs = np.random.RandomState(7)
    y, x = np.mgrid[0:192, 0:256]
    a = np.stack([x * 255 // 256, y * 255 // 192, (x + y) * 3 % 256], -1)
    a = (a + rs.randint(-30, 30, a.shape)).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


KINDS = {"baseline": {}, "progressive": {"progressive": True}, "optimized": {"optimize": True},
         "restart markers": {"restart_marker_blocks": 4}}


def _cuts(whole: bytes) -> dict[str, bytes]:
    """The JPEG cut at several points of its scan data, as it is and zero-filled to its length."""
    out = {}
    for frac in (0.3, 0.6, 0.9, 0.99):
        at = int(len(whole) * frac)
        out[f"cut at {frac:.0%}"] = whole[:at]
        out[f"cut at {frac:.0%}, zero-filled"] = whole[:at] + bytes(len(whole) - at)
    out["end marker missing"] = whole[:-2]
    return out


def _decode(backend: str, items: list[bytes]):
    return ImageDecoder(ImageDecode(size=None, device="cpu", backend=backend), max_batch_size=32).decode(items)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_jpeg_cut_short_is_refused_by_both_backends_and_a_whole_one_decodes(backend, kind):
    whole = _photo(**KINDS[kind])
    cuts = _cuts(whole)
    kept = [whole, whole + bytes(300), whole + b"camera trailer"]  # bytes after the marker are allowed
    res = _decode(backend, kept + list(cuts.values()))
    assert res.ok_rows.tolist() == [0, 1, 2]
    assert all(np.array_equal(res.images[0], img) for img in res.images[1:])
    reasons = dict(res.failures)
    for row, name in enumerate(cuts, len(kept)):
        assert "the JPEG is cut short" in reasons.get(row, ""), f"{name}: {reasons.get(row)!r}"


def test_a_zero_filled_cut_decoded_grey_before_and_is_refused_from_the_header_now():
    """The silent case itself: libjpeg reads the zeros as scan data; the header check refuses it
    before DALI or PIL sees it (neither is asked to decode it)."""
    whole = _photo()
    at = len(whole) * 3 // 5
    filled = whole[:at] + bytes(len(whole) - at)
    pixels = np.asarray(Image.open(io.BytesIO(filled)).convert("RGB"))  # PIL alone: no error
    truth = np.asarray(Image.open(io.BytesIO(whole)).convert("RGB"))
    assert (np.abs(pixels.astype(int) - truth).max(axis=(1, 2)) > 20).sum() > 50  # rows lost, no word
    for backend in BACKENDS:
        (row, why), = _decode(backend, [filled]).failures
        assert row == 0 and "cut short" in why and "refused before decoding" in why


def _jpeg2000(**save) -> bytes:
    rs = np.random.RandomState(3)
    a = rs.randint(0, 255, (96, 128, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG2000", **save)
    return buf.getvalue()


def _boxes(jp2: bytes) -> list[tuple[bytes, int, int]]:
    """(type, offset, length) of each top-level box of a JP2 file."""
    out, i = [], 0
    while i < len(jp2):
        n = int.from_bytes(jp2[i:i + 4], "big") or len(jp2) - i
        out.append((jp2[i + 4:i + 8], i, n))
        i += n
    return out


@pytest.mark.parametrize("kind", ["jp2", "j2k"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_jpeg_2000_cut_short_is_refused_by_both_backends(backend, kind):
    """DALI decoded a JPEG 2000 zero-filled past a cut without an error, up to 106 levels off,
    where PIL refused it: the same bytes now get the same verdict, from the header check."""
    whole = _jpeg2000(**({"no_jp2": True} if kind == "j2k" else {}))
    kept = [whole]
    if kind == "jp2":  # a box after the codestream's: the file no longer ends in its marker
        assert _boxes(whole)[-1][0] == b"jp2c"
        kept.append(whole + (17).to_bytes(4, "big") + b"xml " + b"<x>hello</x>"[:9])
    cuts = [whole[:-2]] + [whole[:int(len(whole) * f)] + bytes(len(whole) - int(len(whole) * f))
                           for f in (0.5, 0.9, 0.99)]
    res = _decode(backend, kept + cuts)
    assert res.ok_rows.tolist() == list(range(len(kept)))
    reasons = dict(res.failures)
    assert sorted(reasons) == list(range(len(kept), len(kept) + len(cuts)))
    assert all("JPEG 2000 codestream is cut short" in why for why in reasons.values())


def _dataset(tmp_path, images: list[bytes]) -> str:
    root = tmp_path / "ds"
    root.mkdir()
    pq.write_table(pa.table({"id": list(range(len(images))), "image": pa.array(images, pa.binary())}),
                   str(root / "part-0.parquet"), row_group_size=4)
    sparkfeed.index(str(root), progress=False)
    return str(root)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_cut_jpeg_names_dataset_shard_row_group_and_row_or_is_a_counted_skip(tmp_path, backend):
    whole = _photo()
    images = [whole] * 8
    images[5] = whole[:len(whole) // 2] + bytes(len(whole) - len(whole) // 2)
    root = _dataset(tmp_path, images)
    decode = {"image": ImageDecode(size=32, device="cpu", backend=backend)}
    with pytest.raises(CorruptSampleError, match=r"(?s)sample 'row 1'.*the JPEG is cut short") as info:
        list(sparkfeed.DataLoader(root, batch_size=4, columns=["id", "image"], decode=decode))
    assert (info.value.shard, info.value.row_group) == ("part-0.parquet", 1)
    assert "ds" in str(info.value)
    loader = sparkfeed.DataLoader(root, batch_size=4, columns=["id", "image"], decode=decode, on_error="skip")
    assert [i for b in loader for i in b["id"].tolist()] == [0, 1, 2, 3, 4, 6, 7]
    assert loader.stats()["samples_skipped"] == 1


# ------------------------------------------------------------------ cut inside the scan, closed again

RESTARTS = {"baseline": {"restart_marker_blocks": 1}, "4:4:4, every row": {"subsampling": 0, "restart_marker_rows": 1},
            "progressive": {"progressive": True, "restart_marker_blocks": 2},
            "grayscale": {"restart_marker_blocks": 3, "gray": True}}


def _restart_photo(gray=False, **save) -> bytes:
    whole = _photo(**save)
    if gray:
        buf = io.BytesIO()
        Image.open(io.BytesIO(whole)).convert("L").save(buf, "JPEG", quality=90, **save)
        whole = buf.getvalue()
    return whole


def _closed_cuts(whole: bytes) -> list[bytes]:
    """The JPEG cut at 30% and 70% of its first scan's data, closed with an end-of-image marker."""
    sos = whole.find(b"\xff\xda")
    head = sos + 2 + int.from_bytes(whole[sos + 2:sos + 4], "big")
    nxt = next(i for i in range(head, len(whole) - 1) if whole[i] == 0xFF and not 0xD0 <= whole[i + 1] <= 0xD7
               and whole[i + 1] not in (0, 0xFF))  # the end of the first scan's data
    return [whole[:head + (nxt - head) * f // 10] + b"\xff\xd9" for f in (3, 7)]


@pytest.mark.parametrize("kind", RESTARTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_jpeg_with_restart_markers_cut_inside_its_scan_and_closed_is_refused(backend, kind):
    """libjpeg only warns on such a file and fills the rest grey: both backends decoded it without
    an error. A scan of M MCUs under restart interval R holds ceil(M / R) - 1 restart markers;
    with fewer, the header check refuses it for both."""
    whole = _restart_photo(**RESTARTS[kind])
    cuts = _closed_cuts(whole)
    for cut in cuts:  # the silent case: PIL alone decodes it without a word
        Image.open(io.BytesIO(cut)).convert("RGB")
    res = _decode(backend, [whole] + cuts + [whole])
    assert res.ok_rows.tolist() == [0, 3]
    assert [r for r, _ in res.failures] == [1, 2]
    for _, why in res.failures:
        assert "scan data stops short" in why and "restart markers" in why and "refused before decoding" in why


def test_whole_jpegs_with_restart_markers_of_every_layout_are_not_refused():
    """Never a valid JPEG: baseline, progressive, optimised, 4:4:4/4:2:2/4:2:0, grayscale, CMYK,
    sizes not a multiple of the MCU (1x1 included), intervals of 1, 3 and 64 blocks and of a row."""
    from sparkfeed.cutshort import _restarts_short

    rs = np.random.RandomState(5)
    found = []
    for w, h in [(1, 1), (17, 9), (33, 70), (130, 47)]:
        a = rs.randint(0, 255, (h, w, 3), np.uint8)
        for mode in ("RGB", "L", "CMYK"):
            for save in ({"restart_marker_blocks": 1}, {"restart_marker_blocks": 3}, {"restart_marker_blocks": 64},
                         {"restart_marker_rows": 1}):
                for extra in ({"subsampling": 0}, {"subsampling": 1}, {"subsampling": 2, "progressive": True},
                              {"optimize": True}):
                    buf = io.BytesIO()
                    Image.fromarray(a).convert(mode).save(buf, "JPEG", **save, **extra)
                    found.append(_restarts_short(buf.getvalue()))
    assert found == [None] * 192
    items = [_restart_photo(**save) for save in RESTARTS.values()]
    assert _decode("dali", items).failures == ()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_closed_cut_names_dataset_shard_and_row_or_is_a_counted_skip(tmp_path, backend):
    whole = _restart_photo(restart_marker_blocks=2)
    images = [whole] * 6
    images[2] = _closed_cuts(whole)[0]
    root = _dataset(tmp_path, images)
    decode = {"image": ImageDecode(size=32, device="cpu", backend=backend)}
    with pytest.raises(CorruptSampleError, match=r"(?s)sample 'row 2'.*scan data stops short") as info:
        list(sparkfeed.DataLoader(root, batch_size=4, columns=["id", "image"], decode=decode))
    assert (info.value.shard, info.value.row_group) == ("part-0.parquet", 0)
    loader = sparkfeed.DataLoader(root, batch_size=4, columns=["id", "image"], decode=decode, on_error="skip")
    assert [i for b in loader for i in b["id"].tolist()] == [0, 1, 3, 4, 5]
    assert loader.stats()["samples_skipped"] == 1
