"""Binary columns' min/max in a manifest: base64 under keys of their own (`min_base64`,
`max_base64`), beside `min` and `max` left null. A reader that does not know these keys sees no
range (it prunes nothing by that column, never wrongly); JSON has no bytes, and a base64 text in
`min` would be taken for a string bound. Values past `MAX_BYTES` are cut: the min to its prefix,
the max to the smallest value above every value starting with its prefix (none: no max)."""

from __future__ import annotations

import base64
import binascii

__all__ = ["MAX_BYTES", "KEYS", "round_up", "bounds_to_json", "bounds_from_json"]

MAX_BYTES = 64  # as `footer.STRING_STATS_MAX_CHARS` for text
KEYS = ("min_base64", "max_base64")


def round_up(prefix: bytes) -> bytes | None:
    """The shortest value above every bytes value starting with `prefix` (bytewise order, as
    Parquet and Arrow compare binary), or None where there is none (all 0xff, or empty)."""
    kept = prefix.rstrip(b"\xff")
    return kept[:-1] + bytes([kept[-1] + 1]) if kept else None


def bounds_to_json(lo: bytes | None, hi: bytes | None) -> dict:
    """The manifest keys of a binary range (cut to `MAX_BYTES`); {} where it has no bound."""
    if lo is not None and len(lo) > MAX_BYTES:
        lo = lo[:MAX_BYTES]
    if hi is not None and len(hi) > MAX_BYTES:
        hi = round_up(hi[:MAX_BYTES])
    return {key: base64.b64encode(v).decode("ascii") for key, v in zip(KEYS, (lo, hi)) if v is not None}


def bounds_from_json(s: dict) -> tuple[bytes | None, bytes | None]:
    """(min, max) of a manifest's stats object holding `KEYS`; a key that is not base64 text is
    no bound (a read costs less than a wrong one)."""
    def one(key: str) -> bytes | None:
        text = s.get(key)
        try:
            return base64.b64decode(text, validate=True) if isinstance(text, str) else None
        except (binascii.Error, ValueError):
            return None
    return one(KEYS[0]), one(KEYS[1])
