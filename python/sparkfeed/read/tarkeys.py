"""A tar shard's keys checked against what its manifest entry implies (`key_rules`, `key_problem`): a file holding another shard's samples is an error."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..footer import STRING_STATS_MAX_CHARS, round_up
from ..manifest import Column, Shard

# ---------------------------------------------------------------- keys against the manifest
#
# Every read parses a shard's member headers, so its keys cost nothing more to check. What the
# manifest implies of them (`key_rules`):
# * a key column (`member: "__key__"`) with stats: the writer's min and max of the shard's keys
#   (the JVM writer's are of the keys as written, sanitised; both writers cut a string over 64
#   characters: min to a prefix, max to the prefix rounded up). The shard's own min and max must
#   give them again; older manifests hold them whole, or a max cut to a plain prefix, and both
#   are taken. Bounds holding a character that `invalidKeys=sanitize` replaces are of the raw
#   keys (the JVM writer before 2026-11-27's fix): no check there.
# * no key column: the JVM writer generated `p<partition:5>_<row:9>` keys for the shards it names
#   `part-<partition:5>-<n:4>.tar`: a shard's keys are of its partition, their rows increase and
#   start at or after the samples of the partition's earlier shards (rows whose every member was
#   null are not written, so rows can only start later). An earlier shard of the partition copied
#   over a later one is seen; a later one over an earlier one is not (no upper bound is known).
# Neither says anything for other shards (no key stats: data `sparkfeed.index` scanned, or a
# manifest made by hand): those are not checked.

_WRITER_SHARD = re.compile(r"part-([0-9]{5})-([0-9]{4})\.tar")
_GENERATED_KEY = r"^p(?P<partition>[0-9]{5,9})_(?P<row>[0-9]{9,18})$"
# what `invalidKeys=sanitize` replaces (the JVM's `KeyPolicy.invalidChar`), in a recorded bound
_SANITISED = re.compile(r"[./\\\s\x00-\x1f\x7f-\x9f\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")


@dataclass(frozen=True)
class KeyRule:
    """What a shard's manifest entry says of its keys: the key column's recorded `lo` and `hi`,
    or (generated keys) the Spark `partition` and the least row its first key may have."""

    lo: str | None = None
    hi: str | None = None
    partition: int | None = None
    first_row: int = 0


def key_rules(schema: tuple[Column, ...], shards: dict[str, Shard]) -> dict[str, KeyRule | None]:
    """Each shard's `KeyRule` (None: nothing to check), once per reader."""
    key = next((c for c in schema if (c.member or c.name) == "__key__"), None)
    if key is not None:
        return {path: _bounds_rule(s.stats.get(key.name)) for path, s in shards.items()}
    named = sorted((int(m[1]), int(m[2]), path) for path in shards
                   if (m := _WRITER_SHARD.fullmatch(path)) is not None)
    rules: dict[str, KeyRule | None] = {}
    rows, last = 0, None
    for partition, _, path in named:
        rows = rows if partition == last else 0
        rules[path] = KeyRule(partition=partition, first_row=rows)
        rows, last = rows + shards[path].num_samples, partition
    return rules


def _bounds_rule(stats) -> KeyRule | None:
    lo, hi = (None, None) if stats is None else (stats.min, stats.max)
    if not isinstance(lo, str) or not isinstance(hi, str) or _SANITISED.search(lo + hi):
        return None
    return KeyRule(lo=lo, hi=hi)


def key_problem(rule: KeyRule, keys) -> tuple[str, int] | None:
    """(what is wrong, the first sample concerned) when a shard's keys (a list or an Arrow array,
    all of them, in shard order) are not those `rule` says, else None. Arrow kernels over the
    keys: no Python step per sample."""
    keys = keys if isinstance(keys, pa.Array) else pa.array(keys, pa.string())
    return _generated_problem(rule, keys) if rule.partition is not None else _bounds_problem(rule, keys)


def _bounds_problem(rule: KeyRule, keys: pa.Array) -> tuple[str, int] | None:
    ends = pc.min_max(keys)
    low, high = ends["min"].as_py(), ends["max"].as_py()
    if _is_min(low, rule.lo) and _is_max(high, rule.hi):
        return None
    above = pc.greater(keys, rule.hi)
    if len(rule.hi) == STRING_STATS_MAX_CHARS:  # a max cut to a plain prefix is above nothing that starts so
        above = pc.and_(above, pc.invert(pc.starts_with(keys, rule.hi)))
    i = pc.index(pc.or_(pc.less(keys, rule.lo), above), True).as_py()
    if i >= 0:
        return (f"sample key {keys[i].as_py()!r} is outside the keys its manifest entry records "
                f"({rule.lo!r} to {rule.hi!r})"), i
    if not _is_min(low, rule.lo):
        return f"its smallest key is {low!r} where the manifest records {rule.lo!r}", pc.index(keys, low).as_py()
    return f"its largest key is {high!r} where the manifest records {rule.hi!r}", pc.index(keys, high).as_py()


def _is_min(low: str, lo: str) -> bool:
    """Whether `lo` is the min a writer records for keys whose least is `low`."""
    return low == lo or (len(lo) == STRING_STATS_MAX_CHARS and low[:STRING_STATS_MAX_CHARS] == lo)


def _is_max(high: str, hi: str) -> bool:
    """Whether `hi` is the max a writer records for keys whose greatest is `high`: itself, or past
    64 characters the prefix rounded up (a plain prefix in some manifests)."""
    if high == hi:
        return True
    prefix = high[:STRING_STATS_MAX_CHARS]
    return len(high) > STRING_STATS_MAX_CHARS and hi in (prefix, round_up(prefix))


def _generated_problem(rule: KeyRule, keys: pa.Array) -> tuple[str, int] | None:
    fields = _generated_fields(keys)
    if fields is None:  # not all of the usual width: Arrow's regular expression
        parts = pc.extract_regex(keys, _GENERATED_KEY)  # null where a key is not `p<digits>_<digits>`
        fields = tuple(pc.fill_null(pc.cast(pc.struct_field(parts, [k]), pa.int64()), -1).to_numpy()
                       for k in (0, 1))
    partition, row = fields
    bad = (partition != rule.partition) | (row < rule.first_row)
    bad[1:] |= row[1:] <= row[:-1]
    if not bad.any():
        return None
    i = int(np.argmax(bad))
    return (f"sample key {keys[i].as_py()!r} is not one the webdataset writer generated for this "
            f"shard (p{rule.partition:05d}_<row>, rows increasing from {rule.first_row} on, by the "
            "shard's name and the samples of the partition's earlier shards)"), i


_WIDTH = 16  # `p00003_000000042`
_DIGITS = np.r_[1:6, 7:16]


def _generated_fields(keys: pa.Array) -> tuple[np.ndarray, np.ndarray] | None:
    """(partition, row) of generated keys of the usual width (`p` 5 digits `_` 9 digits), read
    from the array's bytes with numpy (a tenth of the regular expression's time); None when a key
    is not of that shape."""
    n = len(keys)
    if keys.null_count or not pa.types.is_string(keys.type) or n == 0:
        return None
    offsets = np.frombuffer(keys.buffers()[1], np.int32, n + 1, keys.offset * 4)
    if (np.diff(offsets) != _WIDTH).any():
        return None
    rows = np.frombuffer(keys.buffers()[2], np.uint8, _WIDTH * n, int(offsets[0])).reshape(n, _WIDTH)
    digits = rows[:, _DIGITS] - np.uint8(ord("0"))  # wraps below "0": over 9 too
    if not ((rows[:, 0] == ord("p")).all() and (rows[:, 6] == ord("_")).all() and (digits <= 9).all()):
        return None
    digits = digits.astype(np.int64)
    return digits[:, :5] @ 10 ** np.arange(4, -1, -1), digits[:, 5:] @ 10 ** np.arange(8, -1, -1)
