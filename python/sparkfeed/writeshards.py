"""How `sparkfeed.write` lays rows out in shards: the count job (rows per input partition, and the
sample keys that two rows would write) and, without `cluster_by`, the repartition that fills each
shard with `samples_per_shard` rows, however small the input partitions are."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping

from .writecolumns import RESERVED_PREFIX
from .writeoptions import SampleKeyError

# Columns of the count job and the repartition (dropped before Spark writes).
_PARTITION = RESERVED_PREFIX + "partition"
_KEY = RESERVED_PREFIX + "key"
_ROW = RESERVED_PREFIX + "row"
_SHARD = RESERVED_PREFIX + "shard"  # (no user column has such a name: `writecolumns.check_columns`)
# monotonically_increasing_id(): the partition id in the upper 31 bits, the row in the lower 33.
_ROW_BITS = 33
# What KeyPolicy.invalidChar replaces with invalidKeys=sanitize (Java regex classes, as the JVM's).
_INVALID_KEY_CHARS = r"[./\\\p{javaWhitespace}\p{javaISOControl}\p{javaSpaceChar}]"
_SHOWN_DUPLICATES = 5
# The range partitioning of `cluster_by` samples this many points per output partition, which
# Spark caps at 1e6 in all (and takes 3 times as many, spread over the input partitions): up to
# a million rows every row is sampled and the range partitions are exact.
RANGE_SAMPLE_CONF = "spark.sql.execution.rangeExchange.sampleSizePerPartition"
RANGE_SAMPLE_POINTS = 1_000_000


def _quoted(name: str):
    from pyspark.sql import functions as F

    return F.col("`" + name.replace("`", "``") + "`")


def key_as_written(key: str | None, options: Mapping[str, str]):
    """The sample key each row writes, as a Column (sanitised as the JVM does with
    `invalidKeys=sanitize`; null for a null or empty key, which the writer refuses itself); None
    when keys are generated (no key column: unique by construction). Only the key column is
    read, so the count job computes no member (an image a UDF decodes): a row whose every member
    is null, which writes no sample, still takes its key."""
    from pyspark.sql import functions as F

    if key is None:
        return None
    written = _quoted(key)
    if options.get("invalidKeys", "error").lower() == "sanitize":
        written = F.regexp_replace(written, _INVALID_KEY_CHARS, "_")
    return F.when(written != "", written)


def count_rows(df, key=None, invalid: bool = False) -> tuple[list[int], list[tuple[str, int]], int,
                                                     tuple[str, int] | None]:
    """Rows in each input partition of `df` (by partition id) in one Spark job, and with `key`
    (a Column, `key_as_written`) up to five keys that more than one row writes with how many, the
    rows whose key is null or empty, and with `invalid` (invalidKeys=error) the least key the
    writer refuses with how many rows hold such keys (or None). One chain of aggregations, each
    on the last one's output, so `df` is computed once: a union of branches over the (key,
    partition) counts was planned branch by branch (one pruned the key), and ran a DataFrame's
    `mapInPandas` once per branch."""
    from pyspark.sql import functions as F

    part = F.spark_partition_id().alias(_PARTITION)
    if key is None:
        rows = df.select(part).groupBy(_PARTITION).count().collect()
        return _by_partition(rows), [], 0, None
    k, n = F.col(_KEY), F.col("n")
    keyed = df.select(part, key.alias(_KEY)).groupBy(_KEY, _PARTITION).count() \
        .groupBy(_KEY).agg(F.sum("count").alias("n"),
                           F.collect_list(F.struct(_PARTITION, "count")).alias("parts"))
    rows_of = F.col("pc.count")
    bad = k.rlike(_INVALID_KEY_CHARS) if invalid else F.lit(False)
    rows = keyed.select(k, n, F.explode("parts").alias("pc")).groupBy(
        F.col("pc")[_PARTITION].alias(_PARTITION)) \
        .agg(F.sum(rows_of).alias("count"),
             F.sum(F.when(k.isNull(), rows_of)).alias("missing"),
             F.sum(F.when(bad, rows_of)).alias("bad_rows"), F.min(F.when(bad, k)).alias("bad"),
             F.slice(F.sort_array(F.collect_list(F.when(k.isNotNull() & (n > 1), F.struct(
                 (-n).alias("minus"), k.alias("key"))))), 1, _SHOWN_DUPLICATES).alias("twice")) \
        .collect()
    twice = sorted({(t["minus"], t["key"]) for r in rows for t in r["twice"]})[:_SHOWN_DUPLICATES]
    bad_keys = [(r["bad"], r["bad_rows"]) for r in rows if r["bad"] is not None]
    first_bad = (min(bad_keys)[0], sum(c for _, c in bad_keys)) if bad_keys else None
    return (_by_partition(rows), [(key_, -minus) for minus, key_ in twice],
            sum(r["missing"] or 0 for r in rows), first_bad)


def _by_partition(rows) -> list[int]:
    """[rows of partition 0, 1, ...] from (partition, count) rows; absent partitions hold 0."""
    found = {r[_PARTITION]: r["count"] for r in rows}
    return [found.get(p, 0) for p in range(max(found, default=-1) + 1)]


def refuse_duplicate_keys(dataset: str, column: str, duplicates: list[tuple[str, int]],
                          options: Mapping[str, str]) -> None:
    """A SampleKeyError, before any shard is written, when rows share a sample key: in one shard
    the writer's task fails on it, in two shards both were written, so whether a write failed
    depended on where the shuffle put the rows; a key names one sample, so none may share one."""
    if not duplicates:
        return
    shown = ", ".join(f"{k!r} ({n} rows)" for k, n in duplicates)
    sanitized = options.get("invalidKeys", "error").lower() == "sanitize"
    raise SampleKeyError(
        f"dataset {dataset!r}: sample keys in column {column!r} are not unique: {shown}"
        f"{' and maybe more' if len(duplicates) == _SHOWN_DUPLICATES else ''}; a key names one "
        "sample of a webdataset dataset (its tar members are grouped by it), so each must appear "
        "once; nothing was written. Make the keys unique (e.g. drop duplicate rows with "
        "df.dropDuplicates([...])), or drop the key column to have keys generated"
        + (" (invalidKeys=sanitize replaced '.', '/', '\\', whitespace and control characters "
           "by '_', so distinct keys such as 'a.b' and 'a b' can become one)" if sanitized else ""))


def refuse_bad_keys(dataset: str, column: str, missing: int, invalid: tuple[str, int] | None) -> None:
    """A SampleKeyError, before any shard is written, for keys the writer refuses (null or empty,
    or holding '.', '/', whitespace ... under invalidKeys=error), in the writer's words: its task
    refused them only once the write ran, after a `mode="overwrite"` had deleted the old dataset."""
    if missing:
        raise SampleKeyError(
            f"dataset {dataset!r}: sample key in column \"{column}\" is null or empty in {missing} "
            "row(s); every sample needs a non-empty key; nothing was written. Fill the keys in, "
            "drop those rows, or drop the key column to have keys generated")
    if invalid is not None:
        key, rows = invalid
        at = next((i for i, c in enumerate(key) if _invalid_char(c)), None)  # None: Unicode
        found = "" if at is None else f"; found {_described(key[at])} at index {at}"  # versions differ
        raise SampleKeyError(
            f"dataset {dataset!r}: invalid sample key \"{_shown_key(key)}\" in column \"{column}\": "
            "keys may not contain '.', '/', '\\', whitespace or control characters (webdataset "
            f"splits member names at the first dot){found}. "
            "Pass options={'invalidKeys': 'sanitize'} to sparkfeed.write to replace them by '_' "
            f"({rows} row(s) hold such keys; nothing was written)")


# Java's Character.isWhitespace and isSpaceChar/isISOControl, as KeyPolicy.java uses them.
_JAVA_CONTROL_SPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f"


def _java_space(c: str) -> bool:
    return c in _JAVA_CONTROL_SPACE or (unicodedata.category(c) in ("Zs", "Zl", "Zp")
                                        and c not in "\u00a0\u2007\u202f")


def _invalid_char(c: str) -> bool:
    """KeyPolicy.invalidChar: '.', '/', '\\', whitespace, space and control characters."""
    return c in "./\\" or unicodedata.category(c) in ("Cc", "Zs", "Zl", "Zp")


def _shown_key(key: str) -> str:
    """KeyPolicy.shown: control, space and whitespace characters but ' ' as \\uXXXX."""
    return "".join(c if c == " " or unicodedata.category(c) not in ("Cc", "Zs", "Zl", "Zp")
                   else f"\\u{ord(c):04X}" for c in key)


def _described(c: str) -> str:
    """KeyPolicy.describe: the character quoted, or U+XXXX for a control or whitespace one."""
    return f"'{c}'" if c >= " " and c != "\x7f" and not _java_space(c) else f"U+{ord(c):04X}"


def partition_keys(n: int) -> list[int]:
    """For each partition p of `n`, an int that Spark's hash partitioning (Murmur3 with seed 42,
    pmod n) sends to p, so that `repartition(n, key)` puts shard p alone in partition p: with the
    shard number itself two shards often shared a partition and a third of the partitions were
    empty, the first of which Spark's Parquet writer fills with an empty file."""
    import numpy as np

    keys = np.full(n, -1, np.int64)
    start, chunk = 0, max(4 * n, 1024)
    while (keys < 0).any():
        candidates = np.arange(start, start + chunk, dtype=np.int64)
        parts, first = np.unique(_murmur3_int(candidates) % n, return_index=True)
        free = keys[parts] < 0
        keys[parts[free]] = candidates[first[free]]
        start += chunk
    return keys.tolist()


def _murmur3_int(values):
    """Spark's Murmur3Hash of int values with its seed 42 (Murmur3_x86_32.hashInt), as int64."""
    import numpy as np

    def rotl(x, r):
        return (x << np.uint32(r)) | (x >> np.uint32(32 - r))

    k = rotl(values.astype(np.uint32) * np.uint32(0xcc9e2d51), 15) * np.uint32(0x1b873593)
    h = rotl(np.uint32(42) ^ k, 13) * np.uint32(5) + np.uint32(0xe6546b64)
    h ^= np.uint32(4)
    for shift, factor in ((16, 0x85ebca6b), (13, 0xc2b2ae35)):
        h = (h ^ (h >> np.uint32(shift))) * np.uint32(factor)
    h ^= h >> np.uint32(16)
    return h.view(np.int32).astype(np.int64)


def even_shards(df, counts: list[int], samples_per_shard: int, shards: int):
    """`df` repartitioned into `shards` partitions, partition p holding shard p: the rows
    numbered across the DataFrame (their partition's offset, from `counts`, plus their place in
    it) from p * samples_per_shard on. Round robin (`repartition(n)`) gave partitions of uneven
    sizes, each cut into shards of at most samples_per_shard: 300 one-row partitions at 7 a
    shard made 60 shards instead of 43. Each input partition is first sorted by a hash of its
    rows, so that a retried task numbers its rows as the first attempt did (Spark's round robin
    sorts so too: `spark.sql.execution.sortBeforeRepartition`); so rows are in no particular
    order. Rows past the counted ones (a DataFrame that changed between the jobs) go to the last
    partition, which then writes more shards: never a row lost or written twice."""
    from pyspark.sql import functions as F

    offsets, total = [], 0
    for c in counts:
        offsets.append(total)
        total += c
    part = F.spark_partition_id()
    offset = F.when(part < len(offsets), F.element_at(_array(offsets or [0], "bigint"), part + 1)) \
        .otherwise(F.lit(total))
    row = F.monotonically_increasing_id().bitwiseAND((1 << _ROW_BITS) - 1)
    shard = F.least(F.floor((offset + row) / samples_per_shard), F.lit(shards - 1))
    key = F.element_at(_array(partition_keys(shards), "int"), shard.cast("int") + 1)
    numbered = df.sortWithinPartitions(F.xxhash64(*[_quoted(c) for c in df.columns])) \
        .withColumn(_SHARD, key)
    return numbered.repartition(shards, _SHARD).drop(_SHARD)


def clustered_shards(count: int, samples_per_shard: int) -> int:
    """How many range partitions (shards) `cluster_by` makes of `count` rows: ceil(count /
    samples_per_shard); above the million rows Spark samples, a few more, so that a partition
    that sampling made larger than the mean by up to three standard deviations (each partition's
    size has a relative one of about sqrt(n / 1e6)) still fits one shard instead of making a full
    one and a remainder of a few rows."""
    n = max(1, math.ceil(count / samples_per_shard))
    if count <= RANGE_SAMPLE_POINTS:
        return n
    margin = min(0.3, 3 * math.sqrt(n / RANGE_SAMPLE_POINTS))
    return max(1, math.ceil(count / (samples_per_shard * (1 - margin))))


def clustered(df, cols: list, shards: int):
    """`df` range-partitioned into `shards` partitions by `cols` and sorted by them within each.
    A hash of the whole row, then the row's number in its input partition, break ties in the
    partitioning, so that a value many rows share (even in identical rows) is split between
    partitions as its rows fall: by `cols` alone one value stayed in one partition, which then
    wrote full shards and a short one, and left others empty (5,000 rows, 70% of them one label,
    at 500 a shard: 16 shards, seven of 100 rows). Each input partition is sorted by that hash
    before its rows are numbered, as in `even_shards`, so that a retried task numbers them alike."""
    from pyspark.sql import functions as F

    row_hash = F.xxhash64(*[_quoted(c) for c in df.columns])
    numbered = df.sortWithinPartitions(row_hash).withColumn(_ROW, F.monotonically_increasing_id())
    return numbered.repartitionByRange(shards, *cols, row_hash, F.col(_ROW)) \
        .sortWithinPartitions(*cols).drop(_ROW)


def _array(values: list[int], element: str):
    """An array literal of ints as one string literal split (folded to one array literal when
    Spark plans): an `array(lit, lit, ...)` of 100,000 shards took 38 s to plan, one py4j call
    and one expression node per element."""
    from pyspark.sql import functions as F

    return F.split(F.lit(",".join(map(str, values))), ",").cast(f"array<{element}>")
