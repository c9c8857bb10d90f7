"""Footers that would crash pyarrow: a parsed Parquet footer checked, before any metadata accessor
is called on it, for what makes pyarrow abort the process instead of raising."""

from __future__ import annotations

import hashlib
import io
from collections import OrderedDict

from .thrift import _struct, _Undecodable

__all__ = ["damage", "check"]

# pyarrow's metadata accessors (`RowGroupMetaData.column`, `ColumnChunkMetaData.statistics`) are
# not declared to raise: a C++ exception there aborts the whole process ("terminate called
# after throwing an instance of 'parquet::ParquetException'"), with no error naming the file.
# A footer whose bits were flipped can make them throw: one bit flip in about a hundred in the
# footer of a small file did. Before any of them is called, the footer, serialized again by
# pyarrow (its parse keeps what the file said), is decoded here (Thrift compact protocol) and
# refused where pyarrow 26 would throw: a column chunk whose physical type is not its schema
# column's, statistics shorter than their type's width, size statistics whose level
# histograms or byte count do not fit the column, a row group whose chunks are not one per
# schema column, encrypted column metadata (never readable here: no keys are given).

_PHYSICAL = {"BOOLEAN": 0, "INT32": 1, "INT64": 2, "INT96": 3, "FLOAT": 4, "DOUBLE": 5,
             "BYTE_ARRAY": 6, "FIXED_LEN_BYTE_ARRAY": 7}
_WIDTH = {0: 1, 1: 4, 2: 8, 3: 12, 4: 4, 5: 8}  # bytes of a plain-encoded statistic
_CHECKED: OrderedDict[bytes, tuple | None] = OrderedDict()  # footer digest -> `damage`'s verdict
_CHECKED_KEPT = 4096

def check(md) -> None:
    """ValueError saying what is wrong with footer `md` (a `FileMetaData`) where `damage` finds
    something, naming the row group."""
    found = damage(md)
    if found is not None:
        group, what = found
        where = "" if group is None else f"row group {group}: "
        raise ValueError(f"damaged Parquet footer: {where}{what}")


def damage(md) -> tuple[int | None, str] | None:
    """(row group or None, what) for a footer that pyarrow's metadata accessors would abort the
    process on, None for a sound one. Decoded once per footer (the verdict is kept by digest:
    each epoch opens its files anew)."""
    buf = io.BytesIO()
    md.write_metadata_file(buf)
    thrift = buf.getvalue()[4:-8]  # "PAR1" footer length "PAR1"
    key = hashlib.blake2b(thrift, digest_size=16).digest()
    if key in _CHECKED:
        _CHECKED.move_to_end(key)
        return _CHECKED[key]
    columns = [md.schema.column(j) for j in range(md.num_columns)]
    try:
        verdict = _damage(_struct(thrift, 0, 0)[0], columns)
    except (_Undecodable, RecursionError) as exc:
        verdict = None, f"its Thrift encoding cannot be decoded ({exc})"
    _CHECKED[key] = verdict
    while len(_CHECKED) > _CHECKED_KEPT:
        _CHECKED.popitem(last=False)
    return verdict


def _damage(meta: dict, columns: list) -> tuple[int | None, str] | None:
    """`damage` of a decoded FileMetaData (field 4: row groups) given its schema columns."""
    for i, group in enumerate(meta.get(4) or ()):
        chunks = group.get(1) or () if isinstance(group, dict) else ()
        if len(chunks) != len(columns):
            return i, f"it has {len(chunks)} column chunk(s) where the schema has {len(columns)} column(s)"
        for chunk, column in zip(chunks, columns):
            what = _chunk_damage(chunk, column) if isinstance(chunk, dict) else "is not a struct"
            if what is not None:
                return i, f"the chunk of column {column.path!r} {what}"
    return None


def _chunk_damage(chunk: dict, column) -> str | None:
    """What is wrong with one ColumnChunk (decoded) of schema column `column`, or None."""
    if 8 in chunk or 9 in chunk:
        return "has encrypted metadata (encrypted Parquet is not supported)"
    meta = chunk.get(3)
    if not isinstance(meta, dict):
        return "has no metadata"
    physical = _PHYSICAL.get(column.physical_type)
    if meta.get(1) != physical:
        got = next((k for k, v in _PHYSICAL.items() if v == meta.get(1)), meta.get(1))
        return f"has physical type {got} where the schema says {column.physical_type}"
    width = column.length if physical == 7 else _WIDTH.get(physical, 0)
    stats = meta.get(12)
    if isinstance(stats, dict) and any(isinstance(stats.get(f), bytes) and len(stats[f]) < width
                                       for f in (1, 2, 5, 6)):
        return f"has a min or max statistic shorter than {width} byte(s)"
    sizes = meta.get(16)
    if isinstance(sizes, dict):
        for field, level, name in ((2, column.max_repetition_level, "repetition"),
                                   (3, column.max_definition_level, "definition")):
            if sizes.get(field) and len(sizes[field]) != level + 1:
                return (f"has {len(sizes[field])} {name} level histogram entries where its max "
                        f"level {level} needs {level + 1}")
        if 1 in sizes and physical != 6:
            return f"counts byte-array bytes in a {column.physical_type} column"
    return None
