"""One filter language inside: a `pyarrow.compute.Expression`, converted once at the door.

DNF tuples (the `pyarrow.parquet` `filters=` form) become an Expression with pyarrow's own
`filters_to_expression`. The same Expression then prunes shards and row groups (by turning their
min/max/null statistics into pyarrow "guarantees" and letting pyarrow's simplifier decide) and
filters rows. Nothing here hand-evaluates a predicate.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
from collections.abc import Callable, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .manifest import Column, ColumnStats

__all__ = ["INT96_UNIT", "delivered_type", "common_type", "torch_dtype", "leaf_fields", "to_expression", "referenced_columns", "unfilterable", "check_filter", "guarantee", "select_may_match", "nan_columns",
           "arrow_type"]

_TIMESTAMP = re.compile(r"timestamp\[(\w+)(?:, tz=(.+))?\]")
_LIST = re.compile(r"(large_list|list)<(\w+): (.+)>")
_FIXED_LIST = re.compile(r"fixed_size_list<(\w+): (.+)>\[(\d+)\]")
_DECIMAL = re.compile(r"decimal(32|64|128|256)\((\d+), (-?\d+)\)")
_ALIASES = {"float": pa.float32(), "double": pa.float64(), "bool": pa.bool_(),
            "date32[day]": pa.date32(), "date64[ms]": pa.date64(), "large_string": pa.large_string(),
            "large_binary": pa.large_binary()}


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
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"`filter` should be DNF tuples like [('label', '<', 10)] or a "
                             f"pyarrow.compute.Expression, but got filter={filter!r} ({exc})") from exc
    raise ValueError("`filter` should be None, DNF tuples like [('label', '<', 10)] or a "
                     f"pyarrow.compute.Expression, but got filter={filter!r}")


_INT64_MAX = 2**63 - 1


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
        many = op in ("in", "not in") and isinstance(val, (list, tuple, set))
        values = list(val) if many else [val]
        type_ = _literal_type(col, values, types.get(col)) if values else None
        if type_ is None:
            return pred
        return (col, op, pa.array(values, type_) if many else pa.scalar(val, type_))
    return [[typed(p) for p in c] if isinstance(c, list) else typed(c) for c in dnf]


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


# Spark's default timestamp layout, INT96, read at microseconds (Spark's own precision): at
# pyarrow's default, nanoseconds, a date outside 1677-2262 (the 9999-12-31 "no end" of a
# warehouse table) wraps around without a word. Every ParquetFile sparkfeed opens passes it.
INT96_UNIT = {"coerce_int96_timestamp_unit": "us"}


def delivered_type(t: pa.DataType) -> pa.DataType:
    """The type a column is delivered (and recorded in the manifest) as: a dictionary column (a
    pandas categorical, a file keeping Arrow's dictionary type) as its values, fixed-size binary
    (UUIDs, digests) as binary, string and binary views (Arrow's newer layout, which pyarrow keeps
    in the files it writes from them) as string and binary; the reader casts them so (`read.parquet`). Parquet's statistics
    of such columns are of the values, so they hold for the delivered type."""
    if pa.types.is_dictionary(t):
        return delivered_type(t.value_type)
    if pa.types.is_fixed_size_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_string_view(t):
        return pa.string()
    return t


def common_type(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    """The type two files' columns of one name both read as without loss, or None: the same
    type; the other's where one is `null` (a column None in every row of a file); the 64-bit
    offset variant where one file holds string, binary or list and the other its `large_` form
    (Polars writes those); for lists, the common type of their elements, which may be null where
    either file's may (Spark's containsNull, merged as its `mergeSchema` does), and a list of
    `null` (every list in a file empty) takes the other's elements; a fixed-size list beside a
    list (or one of another size) is a list, as Spark reads both as an array. What
    `pyarrow.unify_schemas` would promote, and no more: numbers of two widths or kinds stay an
    error, as in Spark's `mergeSchema`."""
    if a.equals(b):
        return a
    if pa.types.is_null(a) or pa.types.is_null(b):
        return b if pa.types.is_null(a) else a
    fixed = pa.types.is_fixed_size_list
    if fixed(a) and fixed(b) and a.list_size == b.list_size:
        value = _common_value(a.value_field, b.value_field)
        return None if value is None else pa.list_(value, a.list_size)
    if (_is_list(a) or fixed(a)) and (_is_list(b) or fixed(b)):  # (a fixed size beside a list: a list, as Spark's array)
        value = _common_value(a.value_field, b.value_field)
        large = pa.types.is_large_list(a) or pa.types.is_large_list(b)
        return None if value is None else pa.large_list(value) if large else pa.list_(value)
    for small, large in ((a, b), (b, a)):
        if (pa.types.is_string(small) and pa.types.is_large_string(large)) or \
                (pa.types.is_binary(small) and pa.types.is_large_binary(large)):
            return large
    return None


def _common_value(a: pa.Field, b: pa.Field) -> pa.Field | None:
    """The element field two lists both read as: `a`'s name, nullable where either is."""
    if pa.types.is_null(a.type) or pa.types.is_null(b.type):
        return b if pa.types.is_null(a.type) else a
    value = common_type(a.type, b.type)
    return None if value is None else pa.field(a.name, value, nullable=a.nullable or b.nullable)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def torch_dtype(t: pa.DataType):
    """The tensor dtype of a numeric (or list of numeric) column; None for other columns."""
    import numpy as np
    import torch  # here: the footer reader (write.py) uses this module on Spark executors

    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        t = t.value_type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        return None
    return torch.from_numpy(np.empty(0, dtype=t.to_pandas_dtype())).dtype


def leaf_fields(schema: pa.Schema) -> list[pa.Field]:
    """The columns a dataset delivers: struct columns as their leaves, named by their path
    (`image.bytes`, `image.path`: a Hugging Face image), the others as they are. Parquet names
    the leaves' column chunks and statistics by the same paths."""
    out: list[pa.Field] = []
    for field in schema:
        if pa.types.is_struct(field.type):
            inner = leaf_fields(pa.schema(list(field.type)))
            out += [pa.field(f"{field.name}.{leaf.name}", leaf.type) for leaf in inner]
        else:
            out.append(field)
    return out


def arrow_type(type_string: str) -> pa.DataType | None:
    """The Arrow type for a manifest type string, or None for types we need not rebuild."""
    if type_string in _ALIASES:
        return _ALIASES[type_string]
    m = _TIMESTAMP.fullmatch(type_string)
    if m:
        return pa.timestamp(m.group(1), tz=m.group(2))
    m = _LIST.fullmatch(type_string)
    if m and (value := _value_field(m.group(2), m.group(3))) is not None:
        return (pa.large_list if m.group(1) == "large_list" else pa.list_)(value)
    m = _DECIMAL.fullmatch(type_string)
    if m:
        make = getattr(pa, f"decimal{m.group(1)}", None)  # decimal32/64: pyarrow 18 and later
        return make(int(m.group(2)), int(m.group(3))) if make else None
    m = _FIXED_LIST.fullmatch(type_string)
    if m and (value := _value_field(m.group(1), m.group(2))) is not None:
        return pa.list_(value, int(m.group(3)))
    try:
        return pa.type_for_alias(type_string)
    except (ValueError, KeyError):
        return None


def _value_field(name: str, type_string: str) -> pa.Field | None:
    """A list's value field from its type string; `float not null` is an element that cannot be
    null (Spark's arrays with containsNull=false, embeddings that other tools write)."""
    required = type_string.endswith(" not null")
    value = arrow_type(type_string.removesuffix(" not null"))
    return None if value is None else pa.field(name, value, nullable=not required)


def _empty_table(schema: Sequence[Column], skip: str | None = None, rows: int = 0) -> pa.Table:
    """The schema's columns (all but `skip`) with `rows` nulls each: binding needs none; some
    type errors (a time zone beside none) only show when a kernel runs on a row."""
    fields = [pa.field(c.name, arrow_type(c.type) or pa.null()) for c in schema if c.name != skip]
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
_HINTS = {
    ", string)": _TEXT_HINT,  # (before the zone hint: a timestamp beside text is no zone matter)
    "types (string, ": _TEXT_HINT,
    "FieldRef.FieldPath": "; name columns (pc.field('label')), not positions: a read holds only some",
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


def check_filter(expr: pc.Expression, schema: Sequence[Column], dataset: str) -> None:
    """Bind `expr` to the dataset's schema now, so a missing column or a wrong type fails
    when the loader is built, not in the middle of an epoch."""
    try:
        _empty_table(_named_in(expr, schema), rows=1).filter(expr)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, TypeError) as exc:
        hint = next((h for key, h in _HINTS.items() if key in str(exc)), "")
        raise ValueError(f"`filter` {expr} cannot apply to dataset {dataset!r} with columns "
                         f"{[c.name for c in schema]}: {_first_line(exc)}{hint}") from exc


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


def _scalar(value, type_: pa.DataType):
    """A statistics value (JSON) as an Arrow scalar of the column's type, or None."""
    if value is None or type_ is None:
        return None
    try:
        if pa.types.is_date(type_) and isinstance(value, str):
            value = dt.date.fromisoformat(value)
        elif pa.types.is_timestamp(type_) and isinstance(value, str):
            return _timestamp(value, type_)
        elif pa.types.is_decimal(type_) and isinstance(value, str):
            value = decimal.Decimal(value)
        return pa.scalar(value, type=type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, TypeError, OverflowError,
            decimal.InvalidOperation):
        return None


def _ordered(low, high, lo: pa.Scalar, hi: pa.Scalar) -> bool:
    """Whether a statistics range holds any value: min <= max, neither NaN. A manifest whose
    min exceeds its max (hand-edited, or a buggy writer) promises no row at all, and pruning on
    it dropped every row of the shard or row group without a word; such a range (like one of the
    wrong type) is ignored instead, so it costs a read, never rows. `low` and `high` are the
    JSON values, compared directly where they are plain numbers (the usual case, and cheap)."""
    if type(low) in (int, float) and type(high) in (int, float):
        return low <= high  # (False for NaN)
    try:
        return bool(pc.less_equal(lo, hi).as_py())
    except (pa.ArrowException, TypeError):
        return False


def _timestamp(text: str, type_: pa.TimestampType) -> pa.Scalar:
    """An ISO 8601 statistic as a timestamp scalar, to the nanosecond: Arrow parses it (Python's
    `datetime` stops at microseconds, and a maximum cut short would prune rows that match). Text
    with more digits than the unit holds (Python writes a millisecond value `.005000`, which Arrow
    refused as a timestamp[ms], so columns in milliseconds never pruned) is read at microseconds
    or nanoseconds and cast back without loss; a value finer than the unit is refused."""
    for unit in dict.fromkeys((type_.unit, "us", "ns")):
        try:
            return _parsed(text, pa.timestamp(unit, type_.tz)).cast(type_)
        except pa.ArrowInvalid as exc:
            error = exc
    raise error


def _parsed(text: str, type_: pa.TimestampType) -> pa.Scalar:
    """ISO text as a timestamp of `type_`, an offset on a zoned column taken as the instant."""
    try:
        return pa.array([text]).cast(type_)[0]
    except pa.ArrowInvalid:
        if type_.tz is None:  # an offset on a naive column (a manifest made elsewhere)
            raise
        return pa.array([text], pa.string()).cast(pa.timestamp(type_.unit))[0].cast(type_)


def guarantee(stats: Mapping[str, ColumnStats], types: Mapping[str, pa.DataType],
              num_rows: int, nan: frozenset[str] = frozenset()) -> pc.Expression | None:
    """What a shard's or row group's statistics promise about every row, as an Expression.

    Parquet writers leave NaN out of a floating column's min and max, so a range holds only for
    the rows that are not NaN: `nan` names the columns this guarantee takes to be NaN instead
    (None when that cannot be: the column is null in every row)."""
    terms = []
    for name, s in stats.items():
        field = pc.field(name)
        all_null = s.null_count is not None and s.null_count == num_rows and num_rows > 0
        if name in nan:
            if all_null:
                return None
            terms.append(field == _NAN)
            continue
        if all_null:
            terms.append(field.is_null())
            continue
        lo, hi = _scalar(s.min, types.get(name)), _scalar(s.max, types.get(name))
        if lo is None or hi is None or not _ordered(s.min, s.max, lo, hi):
            continue
        terms += _range(field, lo, hi, s.null_count is None or s.null_count > 0)
    result = pc.scalar(True)
    for term in terms:
        result = result & term
    return result


def _range(field: pc.Expression, lo: pa.Scalar, hi: pa.Scalar, nulls: bool) -> list[pc.Expression]:
    """Terms saying `lo <= field <= hi` (or null, with `nulls`), in the forms pyarrow's simplifier
    reads: each bound alone "or null" (it ignored `(lo <= x <= hi) | is_null(x)`, so one null in
    a row group kept it from every comparison's pruning), and `x == v` where min = max (a Hive
    partition's value: only so does `x != v` rule it out). Not for floats: their min = max = 0.0
    may hold -0.0, which Arrow's simplifier would replace (`1 / x`)."""
    if lo.equals(hi) and not pa.types.is_floating(lo.type):
        terms = [field == lo]
    else:
        terms = [field >= lo, field <= hi]
    return [t | field.is_null() for t in terms] if nulls else terms


_FS = pa.fs.LocalFileSystem()
_FORMAT = ds.ParquetFileFormat()
_NAN = pa.scalar(float("nan"))
_MAX_NAN_COLUMNS = 3  # 2**3 guarantees per item at most


def select_may_match(expr: pc.Expression, items: Sequence[tuple[Mapping[str, ColumnStats], int]],
                     schema: Sequence[Column], nan: Sequence[str] | None = None) -> list[int]:
    """Indices of the items (stats, rows) whose statistics do not rule `expr` out.

    pyarrow's dataset layer does the reasoning: each item becomes a fragment whose partition
    expression is its guarantee, and `get_fragments(filter=expr)` keeps those that may match.
    No file is opened; the fragments only carry the index as their (never read) path. Min and
    max leave NaN out, so for each float column where a NaN can pass `expr` (`nan`, by default
    `nan_columns`: `~(x <= 5)`, `is_nan(x)`), an item gets one guarantee per way its rows can be
    NaN there.
    """
    schema = _named_in(expr, schema)  # the other columns' statistics cannot rule `expr` out
    types = {c.name: arrow_type(c.type) for c in schema}
    nan = nan_columns(expr, schema) if nan is None else list(nan)
    kept, dropped = nan[:_MAX_NAN_COLUMNS], set(nan[_MAX_NAN_COLUMNS:])
    variants = [frozenset(c for bit, c in enumerate(kept) if mask >> bit & 1)
                for mask in range(1 << len(kept))]

    dropped |= _cast_is_in(expr, schema, types)

    def fragments(ignored: frozenset) -> list:
        return _fragments(items, types, variants, dropped | ignored)
    return sorted({int(f.path) for f in _reasoned(fragments, expr, schema, types, items)})


def select_all_match(expr: pc.Expression, items: Sequence[tuple[Mapping[str, ColumnStats], int]],
                     schema: Sequence[Column]) -> list[int]:
    """Indices of the items (stats, rows) whose statistics prove that every row passes `expr`,
    so the filter's count pass takes their row count without reading them.

    pyarrow's simplifier does the reasoning, as in `select_may_match`: an item qualifies where it
    rules out `~expr | is_null(expr)` (no row where `expr` is false or null) under the item's
    guarantee. Min and max leave NaN out, so for each float column `expr` reads, the item must
    qualify with that column NaN as well; over more than `_MAX_NAN_COLUMNS` of them, none does.
    Statistics wider than the data (strings cut short) only make fewer items qualify."""
    named = _named_in(expr, schema)
    types = {c.name: arrow_type(c.type) for c in named}
    floats = [c.name for c in named if types[c.name] is not None and pa.types.is_floating(types[c.name])]
    if len(floats) > _MAX_NAN_COLUMNS or not items:
        return []
    variants = [frozenset(c for bit, c in enumerate(floats) if mask >> bit & 1)
                for mask in range(1 << len(floats))]
    cast = _cast_is_in(expr, named, types)
    may_fail = {int(f.path) for f in _reasoned(lambda ignored: _fragments(items, types, variants, ignored | cast),
                                                ~expr | expr.is_null(), named, types, items)}
    return [i for i in range(len(items)) if i not in may_fail]


_IS_IN = re.compile(r"is_in\((.*?), \{value_set=(.*?):\[")


def _cast_is_in(expr: pc.Expression, schema: Sequence[Column], types: Mapping[str, pa.DataType]) -> frozenset:
    """The float columns an `is_in` of another type reads (`pc.field("f32").isin([0.1])`): Arrow
    casts the value set to the column's type (0.1 becomes float32's 0.100000001) and matches, but
    pyarrow's simplifier compared the uncast 0.1 with the float32 bounds and pruned the row group
    holding it, a silent loss. Their statistics are left out of pruning."""
    found = _IS_IN.findall(str(expr))
    return frozenset(c.name for c in schema if types.get(c.name) is not None and pa.types.is_floating(types[c.name])
                     and any(c.name in arg and kind != str(types[c.name]) for arg, kind in found))


def _fragments(items: Sequence[tuple[Mapping[str, ColumnStats], int]], types: Mapping[str, pa.DataType],
               variants: list[frozenset], ignored) -> list:
    """One fragment per item and NaN variant, its guarantee from the statistics of the columns
    in `types` but those `ignored`; the fragment's path is the item's index."""
    fragments = []
    for i, (stats, rows) in enumerate(items):
        stats = {k: v for k, v in stats.items() if k in types and k not in ignored}
        for variant in variants:
            term = guarantee(stats, types, rows, variant)
            if term is not None:  # (None: the column is null in every row, never NaN)
                fragments.append(_FORMAT.make_fragment(str(i), filesystem=_FS, partition_expression=term))
    return fragments


def nan_columns(expr: pc.Expression, schema: Sequence[Column]) -> list[str]:
    """The float columns `expr` reads where a NaN may pass it whatever the other columns hold
    (`x != 2`, `~(x <= 5)`; not `x > 4`): those whose statistics (which leave NaN out) cannot
    rule a row group out alone. Once per plan."""
    named = _named_in(expr, schema)
    types = {c.name: arrow_type(c.type) for c in named}
    floats = [c.name for c in named if types[c.name] is not None and pa.types.is_floating(types[c.name])
              and _reads(expr, named, c.name)]
    return [name for name in floats if _kept([_FORMAT.make_fragment(
        "0", filesystem=_FS, partition_expression=pc.field(name) == _NAN)], expr, named, types)]


def _reasoned(fragments: Callable[[frozenset], list], expr: pc.Expression, schema: Sequence[Column],
              types: Mapping[str, pa.DataType], items: Sequence[tuple[Mapping[str, ColumnStats], int]]) -> list:
    """`_kept` of `fragments(frozenset())`. Where pyarrow's simplifier fails on a column's
    statistics but the filter evaluates over the column's recorded values, the simplifier is at
    fault, not the filter: `is_in` with a value set of another type (Python ints beside uint64,
    datetimes of another zone, ints beside bool), which the kernel casts to the column's type but
    the simplifier compares with the bounds as they are. Such columns' statistics are left out
    (their rows are read and filtered); the other columns still prune. A filter that fails over the
    recorded values fails over the rows too, and is raised (`unprunable`)."""
    try:
        return _kept(fragments(frozenset()), expr, schema, types)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        failing = frozenset(c.name for c in schema if _fails(fragments(frozenset(types) - {c.name}), expr, schema, types))
        if not failing or any(_fails_over_values(expr, schema, types, items, name) for name in failing):
            raise exc
        return _kept(fragments(failing), expr, schema, types)


def _fails(fragments: list, expr: pc.Expression, schema: Sequence[Column], types: Mapping[str, pa.DataType]) -> bool:
    """Whether pyarrow's simplifier fails over these fragments' guarantees."""
    try:
        _kept(fragments, expr, schema, types)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return True
    return False


def _fails_over_values(expr: pc.Expression, schema: Sequence[Column], types: Mapping[str, pa.DataType],
                       items: Sequence[tuple[Mapping[str, ColumnStats], int]], name: str) -> bool:
    """Whether filtering rows holding column `name`'s recorded minima and maxima (the others
    null) fails: then the rows of the data would fail it too."""
    values = [v for stats, _ in items if name in stats
              for v in (_scalar(stats[name].min, types[name]), _scalar(stats[name].max, types[name]))
              if v is not None]
    if not values:
        return False
    table = _empty_table(schema, rows=len(values))
    table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, types[name]))
    try:
        table.filter(expr)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return True
    return False


def _kept(fragments: list, expr: pc.Expression, schema: Sequence[Column],
          types: Mapping[str, pa.DataType]) -> list:
    """The fragments whose guarantees pyarrow's simplifier cannot rule `expr` out for."""
    arrow_schema = pa.schema([pa.field(c.name, types[c.name] or pa.null()) for c in schema])
    return list(ds.FileSystemDataset(fragments, arrow_schema, _FORMAT, _FS).get_fragments(filter=expr))
