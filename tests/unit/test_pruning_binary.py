"""Binary columns' statistics (digests, UUIDs as fixed-size binary, raw keys): the manifest keeps
them as base64 under keys of their own (`min_base64`, `max_base64`; `min`/`max` stay null, so a
reader that does not know the keys sees no range and prunes nothing by them), values past
`STRING_STATS_MAX_CHARS` bytes cut to a prefix (the max rounded up), and filters on such a
column prune row groups while keeping exactly the rows pyarrow keeps."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import sparkfeed
from sparkfeed.footer import binary_round_up
from sparkfeed.manifest import parse_manifest

N = 16


def _values() -> dict[str, list]:
    digests = sorted(hashlib.sha256(bytes([i])).digest() for i in range(N))
    long = [b"\xff" * 70 + bytes([i]) for i in range(N // 2)] + [b"p" * 80 + bytes([i]) for i in range(N // 2)]
    return {"h": digests, "long": sorted(long), "raw": [bytes([i, 0xff]) if i % 5 else None for i in range(N)]}


@pytest.fixture(scope="module")
def binaries(tmp_path_factory):
    """One file of four row groups of 4: `h` sorted 32-byte digests (fixed-size binary), `long`
    values of 71-81 bytes, `raw` small values with nulls."""
    root = tmp_path_factory.mktemp("binaries")
    v = _values()
    table = pa.table({"id": pa.array(range(N), pa.int64()), "h": pa.array(v["h"], pa.binary(32)),
                      "long": pa.array(v["long"], pa.binary()), "raw": pa.array(v["raw"], pa.large_binary())})
    pq.write_table(table, root / "part-0.parquet", row_group_size=4)
    sparkfeed.index(str(root), progress=False)
    return table, str(root)


def _cases():
    v = _values()
    h, long, raw = pc.field("h"), pc.field("long"), pc.field("raw")
    return [(h == v["h"][5], 3), (h < v["h"][3], 3), (h >= v["h"][12], 3), (h.isin([v["h"][1], v["h"][2]]), 3),
            (h != v["h"][0], 0), (long == v["long"][9], 2), (long > v["long"][13], 2), (long < b"\xff" * 71, 0), (long < b"q", 2),
            (long >= b"\xff" * 80, 2), (raw == bytes([2, 0xff]), 3), (raw.is_null(), 0), (raw > b"\x0e", 3)]


@pytest.mark.parametrize("expr,pruned", _cases(), ids=lambda x: str(x)[:60])
def test_a_binary_filter_prunes_and_keeps_what_arrow_keeps(binaries, expr, pruned):
    """Each filter keeps pyarrow's rows and prunes the row groups outside it."""
    table, root = binaries
    loader = sparkfeed.DataLoader(root, batch_size=4, columns=["id"], filter=expr)
    got = Counter(i for b in loader for i in b["id"].tolist())
    assert got == Counter(table.filter(expr)["id"].to_pylist())
    assert loader.stats()["row_groups_pruned"] == pruned


def test_binary_bounds_are_base64_beside_null_min_and_max(binaries):
    """The JSON: min and max null, the null count as before, the new keys decoding to at most 64
    bytes. A reader that drops the keys it does not know sees no range; the manifest's own JSON
    round-trips."""
    _, root = binaries
    doc = json.loads(open(f"{root}/_sparkfeed.json").read())
    stats = doc["shards"][0]["row_groups"][0]["stats"]["long"]
    assert stats["min"] is None and stats["max"] is None and stats["null_count"] == 0
    assert set(stats) == {"min", "max", "null_count", "min_base64", "max_base64"}
    parsed = parse_manifest(doc, "x").shards[0].row_groups[0].stats["long"]
    assert parsed.min == b"p" * 64 and parsed.max == b"p" * 63 + b"q"
    assert parse_manifest(parse_manifest(doc, "x").to_json(), "x") == parse_manifest(doc, "x")
    for s in doc["shards"][0]["row_groups"][0]["stats"].values():
        s.pop("min_base64", None), s.pop("max_base64", None)
    old = parse_manifest(doc, "x").shards[0].row_groups[0].stats["long"]
    assert (old.min, old.max, old.null_count) == (None, None, 0)


@pytest.mark.parametrize("prefix,want", [(b"ab", b"ac"), (b"a\xff", b"b"), (b"\xff\xff", None), (b"", None)])
def test_a_cut_binary_max_is_rounded_up_bytewise(prefix, want):
    """The smallest prefix-based value above every value starting with `prefix`."""
    assert binary_round_up(prefix) == want


def test_media_columns_keep_no_binary_bounds(tmp_path):
    """A binary column of images (values of kilobytes: Parquet writers record their min/max up to
    4 KB) gets no bounds, which say nothing a filter asks and would fill the manifest; a digest
    column beside it does."""
    import os
    table = pa.table({"img": pa.array([os.urandom(2500) for _ in range(8)]),
                      "key": pa.array([hashlib.md5(bytes([i])).digest() for i in range(8)])})
    pq.write_table(table, tmp_path / "part-0.parquet", row_group_size=4)
    sparkfeed.index(str(tmp_path), progress=False)
    doc = json.loads((tmp_path / "_sparkfeed.json").read_text())
    for stats in [doc["shards"][0]["stats"]] + [rg["stats"] for rg in doc["shards"][0]["row_groups"]]:
        assert "min_base64" not in stats["img"] and stats["img"]["null_count"] == 0
        assert {"min_base64", "max_base64"} <= set(stats["key"])


@pytest.mark.parametrize("bounds", [{"min_base64": "!!", "max_base64": "/w=="}, {"min_base64": 5},
                                    {"min_base64": "enp6", "max_base64": "YQ=="}])
def test_hostile_binary_bounds_cost_a_read_never_rows(bounds):
    """Bounds that are not base64 text, or a min above the max, give no range: the item is kept."""
    from sparkfeed.manifest import Column
    from sparkfeed.pruning import select_may_match
    doc = {"sparkfeed_manifest": 1, "format": "parquet", "schema": [{"name": "b", "type": "binary"}],
           "num_samples": 3, "num_bytes": 1,
           "shards": [{"path": "a.parquet", "num_samples": 3, "num_bytes": 1,
                       "stats": {"b": {"min": None, "max": None, "null_count": 0, **bounds}}}]}
    stats = parse_manifest(doc, "x").shards[0].stats
    assert select_may_match(pc.field("b") == b"c", [(stats, 3)], [Column("b", "binary")]) == [0]
