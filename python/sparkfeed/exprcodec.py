"""A `pyarrow.compute.Expression` read as the entries Arrow serializes it to (what pickling it
writes: its calls, field references and literals in prefix order as schema metadata, the literals'
and options' values as columns of a table), and written back. Python has no other way into an
Expression's tree; what is read is checked to write back as the expression given, or not used."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["read", "written"]

_LINE = re.compile(r"(\w+): '(.*)'")


def read(expr: pc.Expression) -> tuple[list[tuple[str, str]], pa.Table] | None:
    """(entries, table) of `expr`, or None where they do not write back as `expr` (a field name
    holding a line break, a positional field reference, which Arrow does not serialize)."""
    try:
        table = pa.ipc.open_file(_bytes(expr)).read_all()
        text = table.schema.to_string(truncate_metadata=False, show_field_metadata=False,
                                      show_schema_metadata=True).split("-- schema metadata --\n", 1)[1]
        pairs = [_LINE.fullmatch(line).groups() for line in text.splitlines()]
        return (pairs, table) if _bytes(written(pairs, table)) == _bytes(expr) else None
    except (pa.ArrowException, AttributeError, TypeError, ValueError, IndexError):
        return None


def written(pairs: list[tuple[str, str]], table: pa.Table) -> pc.Expression:
    """The expression Arrow deserializes from these entries and `table`."""
    meta = pa.KeyValueMetadata([(k.encode(), v.encode()) for k, v in pairs])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema.with_metadata(meta)) as writer:
        writer.write_table(table)
    return pc.Expression._deserialize(sink.getvalue())


def _bytes(expr: pc.Expression) -> bytes:
    """Arrow's serialization of `expr` (compared, not `Expression.equals`: that holds no NaN equal
    to itself)."""
    return bytes(expr.__reduce__()[1][0])
