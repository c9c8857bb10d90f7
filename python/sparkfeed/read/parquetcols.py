"""Columns of a Parquet read as the manifest records them: struct leaves, delivered and manifest
types, partition values, and the names a file can be read by."""

from __future__ import annotations

import pyarrow as pa

from .. import arrowtypes, pruning


def _as_delivered(table: pa.Table) -> pa.Table:
    """Columns as the manifest records them: struct columns as their leaves (`image.bytes`:
    `arrowtypes.leaf_fields`; pyarrow reads only the leaves asked for), dictionaries decoded to
    their values (the values, not the codes, are what a sample holds), fixed-size binary as
    binary (`arrowtypes.delivered_type`)."""
    while any(pa.types.is_struct(f.type) for f in table.schema):
        table = table.flatten()
    for i, field in enumerate(table.schema):
        want = arrowtypes.delivered_type(field.type)
        if want != field.type:
            table = table.set_column(i, field.name, table.column(i).cast(want))
    return table

def _cast(table: pa.Table, casts: dict[str, pa.DataType]) -> pa.Table:
    """Columns a file holds narrower than the manifest (`_check_schema`) in the manifest's type:
    a `null` column (None in every row of this file) as nulls of it, string/binary/list as
    their large_ forms, list elements as nullable, INT96 microseconds as an older manifest's
    nanoseconds (a value out of range raises ArrowInvalid)."""
    if not casts:  # every file of one writer: the usual case
        return table
    for name in casts.keys() & set(table.schema.names):
        i, column = table.schema.get_field_index(name), table.column(name)
        column = pa.nulls(len(column), casts[name]) if column.type == pa.null() else column.cast(casts[name])
        table = table.set_column(i, name, column)
    return table


def _int96_indexed_at_ns(got: pa.DataType, want: pa.DataType) -> bool:
    """A Spark INT96 column (now read at microseconds, `arrowtypes.INT96_UNIT`) that a manifest
    from an earlier sparkfeed records at nanoseconds: cast, so dates 1677-2262 read as before
    and others fail by name instead of wrapping around."""
    return (pa.types.is_timestamp(got) and pa.types.is_timestamp(want) and got.tz == want.tz
            and got.unit == "us" and want.unit == "ns")


def _stored_names(schema: pa.Schema) -> set[str]:
    """The names a file can be read by: its columns and its structs' leaves."""
    return set(schema.names) | {f.name for f in arrowtypes.leaf_fields(schema)}


def _paths_above(path: str) -> list[str]:
    """A column chunk's path and the paths above it ("a.b.c" -> "a", "a.b", "a.b.c"): the
    names a column, or a struct's leaf, is selected by."""
    parts = path.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts) + 1)]


def _partition_scalar(value, type_: pa.DataType) -> pa.Scalar | None:
    """A shard's partition value as a scalar of its column's type: a null scalar only where the
    value is null (a False or a 0 is no missing value); None where it does not fit the type."""
    if value is None:
        return pa.scalar(None, type_)
    return pruning._scalar(value, type_)
