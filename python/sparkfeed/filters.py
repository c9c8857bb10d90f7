"""One filter language inside: a `pyarrow.compute.Expression`, converted once at the door.

DNF tuples (the `pyarrow.parquet` `filters=` form) become an Expression with pyarrow's own
`filters_to_expression`. The same Expression then prunes shards and row groups (`pruning`: their
min/max/null statistics as pyarrow "guarantees", pyarrow's simplifier deciding) and filters rows.
Here: the conversion, binding checks against the schema, and the errors that name the filter.
Nothing here hand-evaluates a predicate.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import pickle
import re
import threading
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import isinsets
from .arrowtypes import INT96_UNIT, arrow_type, common_type, delivered_type, leaf_fields, torch_dtype
from .manifest import Column, Shard

__all__ = ["to_expression", "referenced_columns", "unfilterable", "check_filter", "unprunable",
           "unevaluable", "filter_type", "widened_for_filter", "identity_text",
           # public here before `arrowtypes` held them: kept for callers outside the package
           "INT96_UNIT", "delivered_type", "common_type", "torch_dtype", "leaf_fields", "arrow_type"]


def to_expression(filter, schema: Sequence[Column] | None = None) -> pc.Expression | None:
    """Normalise a user filter: None, an Expression, or DNF tuples -> Expression or None.

    DNF: `[("label", "<", 10)]` (AND of tuples) or `[[...], [...]]` (OR of ANDs), as in
    `pyarrow.parquet.read_table(filters=...)`. Its integer values take their column's type
    from `schema` where they fit it (`_typed_literals`).
    """
    if filter is None:
        return None
    if isinstance(filter, pc.Expression):
        return filter
    if isinstance(filter, Sequence) and not isinstance(filter, (str, bytes)) and filter:
        try:
            return pq.filters_to_expression(_typed_literals(list(filter), schema))
        except (TypeError, ValueError, OverflowError, pa.ArrowException) as exc:
            raise ValueError(f"`filter` should be DNF tuples like [('label', '<', 10)] or a "
                             f"pyarrow.compute.Expression, but got filter={filter!r} ({exc})") from exc
    raise ValueError("`filter` should be None, DNF tuples like [('label', '<', 10)] or a "
                     f"pyarrow.compute.Expression, but got filter={filter!r}")


_INT64_MAX = 2**63 - 1
_CUT = "\n  ...\n"  # where pyarrow's text of a value set of more than 20 values leaves the middle out


def identity_text(expr: pc.Expression | None) -> str:
    """The filter as a saved state records it: its text, and where that text leaves values out
    (an `is_in` of more than 20 values prints its first and last ten), a digest of the whole
    expression (Arrow's own serialization: should a pyarrow upgrade change it, such a state is
    refused, never taken for another), so two filters that print alike are not taken for one.
    Value sets are read sorted (`isinsets.canonical`): a Python set's order changes between
    processes. Kept for the last few expressions: a state is saved often, and reading a set of
    1,000,000 values sorted takes a second."""
    if expr is None:
        return str(expr)
    known = _IDENTITIES.get(id(expr))
    if known is not None and known[0] is expr:
        return known[1]
    canonical = isinsets.canonical(expr)
    text = str(canonical)
    if _CUT in text:
        text = f"{text}#{hashlib.blake2b(pickle.dumps(canonical, protocol=5), digest_size=8).hexdigest()}"
    with _IDENTITIES_LOCK:
        _IDENTITIES[id(expr)] = expr, text  # (the expression kept too: its id is not reused meanwhile)
        while len(_IDENTITIES) > 8:
            _IDENTITIES.pop(next(iter(_IDENTITIES)))
    return text


_IDENTITIES: dict[int, tuple[pc.Expression, str]] = {}  # id(expr) -> (expr, identity_text), oldest first
_IDENTITIES_LOCK = threading.Lock()


def _typed_literals(dnf: list, schema: Sequence[Column] | None) -> list:
    """DNF whose values are typed where Python's own types fail beside their column: integers
    compared with a uint64 column or past int64's range become uint64 (as int64 literals a value
    past 2**63 failed, "Python int too large to convert to C long", and a uint64 column compared
    with one was cast to int64, which failed on its values past 2**63), and datetimes with a
    time zone compared with a timestamp column of another zone take the column's (Arrow has no
    comparison across zones; the instant is the same). Everything else is left as given, so a
    filter's text, part of a saved state's settings, is unchanged."""
    types = {} if schema is None else {c.name: arrow_type(c.type) for c in schema}

    def typed(pred):
        if not (isinstance(pred, tuple) and len(pred) == 3 and isinstance(pred[0], str)):
            return pred  # (pyarrow says what is wrong)
        col, op, val = pred
        if op in ("in", "not in") and isinstance(val, (set, frozenset)):
            pred = col, op, val = col, op, _ordered(val)
        many = op in ("in", "not in") and isinstance(val, (list, tuple, set))
        values = list(val) if many else [val]
        type_ = _literal_type(col, values, types.get(col)) if values else None
        if type_ is None:
            return pred
        return (col, op, pa.array(values, type_) if many else pa.scalar(val, type_))
    return [[typed(p) for p in c] if isinstance(c, list) else typed(c) for c in dnf]


def _ordered(values: set | frozenset) -> list:
    """A DNF set's values in one order: a set of strings iterates in an order that changes from
    one process to the next (Python's hash seed), and so did the filter's text, which a saved
    state records: the same filter refused its own state after a restart."""
    try:
        return sorted(values)
    except TypeError:  # (mixed types, None)
        return sorted(values, key=lambda v: (type(v).__name__, repr(v)))


def _literal_type(col: str, values: list, column: pa.DataType | None) -> pa.DataType | None:
    """The type `values` must take beside column `col` (`_typed_literals`), or None."""
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        unsigned = column == pa.uint64() and all(v >= 0 for v in values)
        if not (unsigned or any(v > _INT64_MAX for v in values)) or not all(0 <= v < 2**64 for v in values):
            return None
        if column not in (None, pa.uint64()):
            raise ValueError(f"it compares column {col!r} ({column}) with {max(values)}, past what that type holds")
        return pa.uint64()
    if column is not None and pa.types.is_timestamp(column) and column.tz is not None \
            and all(isinstance(v, dt.datetime) and v.tzinfo is not None for v in values):
        zones = {pa.scalar(v).type.tz for v in values}
        return pa.timestamp("us", column.tz) if zones != {column.tz} else None
    return None

def filter_type(type_: pa.DataType | None) -> pa.DataType | None:
    """The type a column is filtered as: float16 (halffloat) as float32, which holds each of its
    values exactly (Arrow has no comparison or `is_in` kernel for halffloat); others as they are."""
    return pa.float32() if type_ is not None and pa.types.is_float16(type_) else type_


def widened_for_filter(table: pa.Table) -> pa.Table | None:
    """`table` with its float16 columns as float32 (`filter_type`), or None where it has none."""
    halves = [i for i, f in enumerate(table.schema) if pa.types.is_float16(f.type)]
    for i in halves:
        table = table.set_column(i, table.schema[i].name, table.column(i).cast(pa.float32()))
    return table if halves else None


def _empty_table(schema: Sequence[Column], skip: str | None = None, rows: int = 0) -> pa.Table:
    """The schema's columns (all but `skip`) with `rows` nulls each: binding needs none; some
    type errors (a time zone beside none) only show when a kernel runs on a row."""
    fields = [pa.field(c.name, filter_type(arrow_type(c.type)) or pa.null()) for c in schema if c.name != skip]
    return pa.table([pa.nulls(rows, f.type) for f in fields], schema=pa.schema(fields))


def _named_in(expr: pc.Expression, schema: Sequence[Column]) -> list[Column]:
    """The columns whose names appear in the expression's text: every column it reads does (a
    field prints as its name), so binding against these alone is binding against the schema,
    without building a table of every column of a wide dataset each time."""
    text = str(expr)
    return [c for c in schema if c.name in text]


_ZONE_HINT = ("; give the datetime a time zone where the column has one and none where it has none "
              "(the types above): sparkfeed.write's timestamps are UTC, datetime(..., "
              "tzinfo=datetime.timezone.utc); Spark's own INT96 files and timestamp_ntz read without one")
_TEXT_HINT = ("; Arrow compares text with text only: compare a date or timestamp column with "
              "datetime.date or datetime.datetime values, a number with numbers (is_in casts its "
              "values; a comparison does not)")
_TEXT_COLUMN_HINT = ("; the column is text (a Hive partition key holding dates or times stays text, as "
                     "pyarrow types it; Spark makes it a date): compare it with ISO text, "
                     "pc.field(...) == '2024-01-02' (ISO text sorts as the dates do), and it prunes")
_HINTS = {
    "(string, date": _TEXT_COLUMN_HINT,  # (a text column beside a date: before the hint for the other way round)
    "(string, timestamp": _TEXT_COLUMN_HINT,
    "string vs date": _TEXT_COLUMN_HINT,
    "string vs timestamp": _TEXT_COLUMN_HINT,
    "type of values set: ": ("; Arrow matches a value set only of the column's type or one it casts to "
                             "it (not a dictionary-encoded one: pass `values.dictionary_decode()` or a list)"),
    ", string)": _TEXT_HINT,  # (before the zone hint: a timestamp beside text is no zone matter)
    "types (string, ": _TEXT_HINT,
    "halffloat)": ("; Arrow compares no float16 values: a float16 column is filtered as its float32 "
                   "values, so compare it with Python floats, not float16 scalars"),
    "FieldRef.FieldPath": "; name columns (pc.field('label')), not positions: a read holds only some",
    "FieldRef.Nested": ("; a struct's fields are columns of their own, named by their path as one "
                        "name: pc.field('image.path'), not pc.field('image', 'path')"),
    "Precision is not great enough": "; compare a decimal column with decimal.Decimal values (an "
                                     "integer widens to decimal128(19, 0), too wide beside it)",
    "timestamp with timezone to timestamp without timezone": _ZONE_HINT,
    "no kernel matching input types (timestamp": _ZONE_HINT,
    "to 16777216": ("; an integer column compared with a float is cast to a float, which its values "
                    "past 2**24 do not fit exactly: compare it with an integer"),
    "to 9007199254740992": ("; an integer column compared with a float is cast to a float, which its "
                            "values past 2**53 do not fit exactly: compare it with an integer"),
    "to 9223372036854775807": ("; a uint64 column compared with a signed integer is cast to int64, "
                               "which its values past 2**63 do not fit: compare it with "
                               "pa.scalar(value, pa.uint64()) (DNF tuples are typed so)"),
}


def check_filter(expr: pc.Expression, schema: Sequence[Column], dataset: str, shards: Sequence[Shard] = ()) -> None:
    """Bind `expr` to the dataset's schema now, so a missing column or a wrong type fails
    when the loader is built, not in the middle of an epoch. `shards` (the manifest's) tell a
    Hive key that is null in every directory, which a refusal then names (`_null_key_hint`)."""
    try:
        _empty_table(_named_in(expr, schema), rows=1).filter(expr)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, TypeError) as exc:
        hint = _null_key_hint(expr, schema, shards) or _struct_hint(exc, schema) or \
            next((h for key, h in _HINTS.items() if key in str(exc)), "")
        raise ValueError(f"`filter` {expr} cannot apply to dataset {dataset!r} with columns "
                         f"{[c.name for c in schema]}: {_first_line(exc)}{hint}") from exc


def _struct_hint(exc: Exception, schema: Sequence[Column]) -> str:
    """Where the name Arrow found no column for is a struct's (its leaves `name.x` are columns):
    the sentence saying how to test it (`pc.field("st").is_null()` found no column `st`)."""
    found = re.search(r"No match for FieldRef\.Name\((.*?)\) in", str(exc))
    leaves = [c.name for c in schema if found and c.name.startswith(found.group(1) + ".")]
    if not leaves:
        return ""
    return (f"; struct {found.group(1)!r} is read as its fields {leaves[:4]}, each a column named by its "
            f"path: filter on them (pc.field({leaves[0]!r}); a null struct is null in every field)")


def _null_key_hint(expr: pc.Expression, schema: Sequence[Column], shards: Sequence[Shard]) -> str:
    """Where `expr` binds once a Hive partition key that is null in every directory
    (`__HIVE_DEFAULT_PARTITION__`) is taken as a column of nulls: the sentence saying so. Such a
    key is typed string, as Spark types it (its column stays deliverable), so `p < 3` is a number
    beside text; the answer would be no row, whatever its type, and a filter that counts on its
    values is better told than given nothing."""
    named = _named_in(expr, schema)
    keys = [c.name for c in named if c.type == "string" and shards and all(
        s.partition is not None and c.name in s.partition and s.partition[c.name] is None for s in shards)]
    for key in keys:
        if _bind_error(expr, [dataclasses.replace(c, type="null") if c.name == key else c for c in named]) is None:
            return (f"; partition key {key!r} is null in every directory (__HIVE_DEFAULT_PARTITION__), so it is "
                    f"typed string, as Spark types it, and no row has a value there: compare it with text or "
                    f"test pc.field({key!r}).is_null(); once a directory holds a value, index the data again "
                    f"(`sparkfeed index ... --overwrite`) to type the key by its values")
    return ""


def unprunable(exc: Exception, expr: pc.Expression, dataset: str) -> ValueError:
    """The error for a filter that binds to the schema but that Arrow cannot reason about over the
    dataset's statistics (pruning at the first iteration): named, with a hint where one helps."""
    hint = next((h for key, h in _HINTS.items() if key in str(exc)), "")
    return ValueError(f"`filter` {expr} cannot be checked against the statistics of dataset "
                      f"{dataset!r}: {_first_line(exc)}{hint}")


def unevaluable(exc: Exception, expr: pc.Expression, dataset: str, shard: str, row_group: int | None) -> ValueError:
    """The error for a filter that Arrow fails to evaluate over a unit's rows (`i64 > 2.0` where a
    value past 2**53 cannot become a double): named, with the unit. It was Arrow's bare error."""
    where = f"shard {shard!r}" + ("" if row_group is None else f", row group {row_group}")
    hint = next((h for key, h in _HINTS.items() if key in str(exc)), "")
    return ValueError(f"`filter` {expr} cannot be evaluated over the rows of dataset {dataset!r}, {where}: "
                      f"{_first_line(exc)}{hint}")


def _first_line(exc: Exception) -> str:
    """Arrow's message without the schema it appends (the columns are named already)."""
    line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if not line.startswith("No match for FieldRef"):
        return line
    return line.removesuffix(" in") if line.endswith(" in") else line.split(" in ", 1)[0]


def unfilterable(names: Sequence[str], schema: Sequence[Column]) -> list[str]:
    """The columns among `names` that a filter cannot read: those whose type Arrow cannot be
    given back from the manifest (a struct or map kept whole). A decimal or a list of strings
    cannot become a tensor but can be filtered on, and is dropped after the filter."""
    types = {c.name: c.type for c in schema}
    return [n for n in names if n in types and arrow_type(types[n]) is None]


def referenced_columns(expr: pc.Expression | None, schema: Sequence[Column]) -> list[str]:
    """The columns `expr` reads: a column is referenced when binding fails without it."""
    if expr is None:
        return []
    named = _named_in(expr, schema)
    binds = _bind_error(expr, named) is None
    return [col.name for col in named if _reads(expr, named, col.name, binds)]


def _reads(expr: pc.Expression, schema: Sequence[Column], name: str, binds: bool = True) -> bool:
    """Whether `expr` reads column `name`: binding fails without it. Where `expr` does not bind
    with every column either (a literal that does not fit), only Arrow's "no match" naming the
    column says so."""
    exc = _bind_error(expr, schema, skip=name)
    return exc is not None and (binds or f"No match for FieldRef.Name({name})" in str(exc))


def _bind_error(expr: pc.Expression, schema: Sequence[Column], skip: str | None = None):
    """The error binding `expr` to the schema's columns (but `skip`) raises, or None."""
    try:
        _empty_table(schema, skip=skip).filter(expr)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        return exc
    return None
