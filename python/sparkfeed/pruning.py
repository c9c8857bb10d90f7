"""Pruning by statistics: a shard's or row group's min/max/null counts become a pyarrow
"guarantee", and pyarrow's simplifier decides which may match a filter (or which all rows pass)."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from . import decimalscale, isinsets
from .arrowtypes import arrow_type
from .filters import _empty_table, _named_in, _reads, filter_type
from .manifest import Column, ColumnStats
from .isinsets import ValueSet

__all__ = ["guarantee", "select_may_match", "select_all_match", "nan_columns", "exact_columns"]


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
    return _combined(_column_terms(stats, types, num_rows), nan)


def _column_terms(stats: Mapping[str, ColumnStats], types: Mapping[str, pa.DataType],
                  num_rows: int, exact: Collection[str] = frozenset()) -> dict[str, tuple[list, bool]]:
    """Per column: the terms its statistics promise of its rows that are not NaN, and whether it
    is null in every row (`guarantee`); built once per item, whatever the NaN variants. An
    `exact` column's min = max is its one value, a float's too (`exact_columns`)."""
    out = {}
    for name, s in stats.items():
        field = pc.field(name)
        all_null = s.null_count is not None and s.null_count == num_rows and num_rows > 0
        if all_null:
            out[name] = [field.is_null()], True
            continue
        lo, hi = _scalar(s.min, types.get(name)), _scalar(s.max, types.get(name))
        if (lo is None and hi is None) or (lo is not None and hi is not None and not _ordered(s.min, s.max, lo, hi)):
            out[name] = [], False
            continue
        out[name] = _range(field, lo, hi, s.null_count is None or s.null_count > 0, name in exact), False
    return out


def _combined(terms: Mapping[str, tuple[list, bool]], nan: frozenset) -> pc.Expression | None:
    """The guarantee of `_column_terms`, the columns in `nan` taken as NaN (None where one of
    them is null in every row)."""
    result = None
    for name, (column_terms, all_null) in terms.items():
        if name in nan:
            if all_null:
                return None
            column_terms = [pc.field(name) == _NAN]
        for term in column_terms:
            result = term if result is None else result & term
    return _TRUE if result is None else result


def _range(field: pc.Expression, lo: pa.Scalar | None, hi: pa.Scalar | None, nulls: bool,
           exact: bool = False) -> list[pc.Expression]:
    """Terms saying `lo <= field <= hi` (or null, with `nulls`), in the forms pyarrow's simplifier
    reads: each bound alone "or null" (it ignored `(lo <= x <= hi) | is_null(x)`, so one null in
    a row group kept it from every comparison's pruning), and `x == v` where min = max (a Hive
    partition's value: only so does `x != v` rule it out). Not for floats: their min = max = 0.0
    may hold -0.0, which Arrow's simplifier would replace (`1 / x`), unless `exact` (a partition
    key: its one value). A bound that is None (an infinite one, which the manifest leaves out)
    gives no term: the range is one-sided."""
    if lo is not None and hi is not None and lo.equals(hi) and (exact or not pa.types.is_floating(lo.type)):
        terms = [field == lo]
    else:
        terms = ([] if lo is None else [field >= lo]) + ([] if hi is None else [field <= hi])
    return [t | field.is_null() for t in terms] if nulls else terms


_FS = pa.fs.LocalFileSystem()
_FORMAT = ds.ParquetFileFormat()
_NAN = pa.scalar(float("nan"))
_TRUE = pc.scalar(True)
_MAX_NAN_COLUMNS = 3  # 2**3 guarantees per item at most
# pyarrow's simplifier takes time quadratic in a filter's calls (about 36 ns x calls**2 per item to
# prove `~expr | is_null(expr)` ruled out: a 1,000-term `or` of equalities, ~2,000 calls, 0.14 s
# a row group, 24 minutes for 10,000): past this many calls**2 x items, `select_all_match` proves
# nothing and the rows are filtered instead (its proof only saves evaluating the filter)
_PROOF_BUDGET = 3e8


def select_may_match(expr: pc.Expression, items: Sequence[tuple[Mapping[str, ColumnStats], int]],
                     schema: Sequence[Column], nan: Sequence[str] | None = None,
                     exact: Collection[str] = frozenset()) -> list[int]:
    """Indices of the items (stats, rows) whose statistics do not rule `expr` out.

    pyarrow's dataset layer does the reasoning: each item becomes a fragment whose partition
    expression is its guarantee, and `get_fragments(filter=expr)` keeps those that may match.
    No file is opened; the fragments only carry the index as their (never read) path. Min and
    max leave NaN out, so for each float column where a NaN can pass `expr` (`nan`, by default
    `nan_columns`: `~(x <= 5)`, `is_nan(x)`), an item gets one guarantee per way its rows can be
    NaN there. `exact` columns (`exact_columns`) are never NaN, and their min = max is their value.
    """
    schema = _named_in(expr, schema)  # the other columns' statistics cannot rule `expr` out
    types = {c.name: filter_type(arrow_type(c.type)) for c in schema}
    nan = nan_columns(expr, schema, exact) if nan is None else list(nan)
    kept, dropped = nan[:_MAX_NAN_COLUMNS], set(nan[_MAX_NAN_COLUMNS:])
    variants = [frozenset(c for bit, c in enumerate(kept) if mask >> bit & 1)
                for mask in range(1 << len(kept))]

    widened = _cast_is_in(expr, schema, types)
    expr, sets, schema, types = _stood_in(expr, schema, types)

    def reasoned(chosen: list[frozenset], only: Sequence[int]) -> set[int]:
        def fragments(ignored: frozenset) -> list:
            return _fragments(items, types, chosen, dropped | ignored, widened, only, exact, sets)
        return {int(f.path) for f in _reasoned(fragments, expr, schema, types, items)}
    return sorted(_staged(reasoned, len(items), variants))


def _stood_in(expr: pc.Expression, schema: Sequence[Column], types: Mapping[str, pa.DataType]) -> tuple:
    """(expr, sets, schema, types) with each `is_in` pyarrow's simplifier cannot reason about
    swapped for a boolean stand-in column (`isinsets`), added to `schema` and `types`, and
    decimal literals of another scale put on their column's (`decimalscale`)."""
    expr, sets = isinsets.stand_ins(decimalscale.on_scale(expr, types), types)
    return (expr, sets, [*schema, *(Column(v.name, "bool") for v in sets)],
            {**types, **{v.name: pa.bool_() for v in sets}})


def select_all_match(expr: pc.Expression, items: Sequence[tuple[Mapping[str, ColumnStats], int]],
                     schema: Sequence[Column], exact: Collection[str] = frozenset()) -> list[int]:
    """Indices of the items (stats, rows) whose statistics prove that every row passes `expr`,
    so the filter's count pass takes their row count without reading them.

    pyarrow's simplifier does the reasoning, as in `select_may_match`: an item qualifies where it
    rules out `~expr | is_null(expr)` (no row where `expr` is false or null) under the item's
    guarantee. Min and max leave NaN out, so for each float column `expr` reads, the item must
    qualify with that column NaN as well; over more than `_MAX_NAN_COLUMNS` of them, none does.
    Statistics wider than the data (strings cut short) only make fewer items qualify; `exact`
    columns (`exact_columns`) are never NaN."""
    if str(expr).count("(") ** 2 * len(items) > _PROOF_BUDGET:
        return []  # (proving would cost more than filtering the rows: `_PROOF_BUDGET`)
    named = _named_in(expr, schema)
    types = {c.name: filter_type(arrow_type(c.type)) for c in named}
    floats = [c.name for c in named if types[c.name] is not None and pa.types.is_floating(types[c.name])
              and c.name not in exact]
    if len(floats) > _MAX_NAN_COLUMNS or not items:
        return []
    variants = [frozenset(c for bit, c in enumerate(floats) if mask >> bit & 1)
                for mask in range(1 << len(floats))]
    cast = _cast_is_in(expr, named, types)
    expr, sets, named, types = _stood_in(expr, named, types)

    def reasoned(chosen: list[frozenset], only: Sequence[int]) -> set[int]:
        return {int(f.path) for f in _reasoned(lambda ignored: _fragments(items, types, chosen, ignored, cast, only, exact, sets),
                                               ~expr | expr.is_null(), named, types, items)}
    may_fail = _staged(reasoned, len(items), variants)
    return [i for i in range(len(items)) if i not in may_fail]


def _staged(reasoned: Callable[[list[frozenset], Sequence[int]], set[int]], n: int,
            variants: list[frozenset]) -> set[int]:
    """The items (of `n`) that `reasoned` keeps under any NaN variant: the first (no column
    NaN) over every item, the others only over the items it did not keep. Building every variant
    of every item took 14 s for 10,000 row groups filtered on three float columns, most of
    which the first variant keeps alone."""
    found = reasoned(variants[:1], range(n))
    rest = [i for i in range(n) if i not in found]
    if rest and len(variants) > 1:
        found |= reasoned(variants[1:], rest)
    return found


_IS_IN = re.compile(r"is_in\((.*?), \{value_set=(.*?):\[")


def _cast_is_in(expr: pc.Expression, schema: Sequence[Column], types: Mapping[str, pa.DataType]) -> frozenset:
    """The float columns an `is_in` of another type reads (`pc.field("f32").isin([0.1])`): Arrow
    casts the value set to the column's type (0.1 becomes float32's 0.100000001) and matches, but
    pyarrow's simplifier compared the uncast 0.1 with the float32 bounds and pruned the row group
    holding it, a silent loss. Their bounds are widened by one step of the column's type
    (`_widened`), which holds every value that casts into them."""
    found = _IS_IN.findall(str(expr))
    return frozenset(c.name for c in schema if types.get(c.name) is not None and pa.types.is_floating(types[c.name])
                     and any(c.name in arg and kind != str(types[c.name]) for arg, kind in found))


def _widened(s: ColumnStats, type_: pa.DataType) -> ColumnStats:
    """Float statistics one step of `type_` wider on each side: a value of another type that
    Arrow's cast rounds to within [min, max] (round to nearest moves it by half a step at most)
    lies strictly within the widened range."""
    width = np.float32 if type_ == pa.float32() else np.float64

    def step(value, to: float):
        return value if type(value) not in (int, float) else float(np.nextafter(width(value), width(to)))
    return ColumnStats(step(s.min, -math.inf), step(s.max, math.inf), s.null_count)


def _fragments(items: Sequence[tuple[Mapping[str, ColumnStats], int]], types: Mapping[str, pa.DataType],
               variants: list[frozenset], ignored, widened: frozenset = frozenset(),
               only: Sequence[int] | None = None, exact: Collection[str] = frozenset(),
               sets: Sequence[ValueSet] = ()) -> list:
    """One fragment per item (those `only` names, or all) and NaN variant, its guarantee from the
    statistics of the columns in `types` but those `ignored`, those `widened` one step wider
    (`_cast_is_in`, and nothing where the variant takes them as NaN), and what large `is_in`
    sets' stand-ins are there (`_set_terms`); the fragment's path is the item's index."""
    fragments = []
    for i in range(len(items)) if only is None else only:
        stats, rows = items[i]
        terms = _column_terms({k: _widened(v, types[k]) if k in widened else v
                               for k, v in stats.items() if k in types and k not in ignored}, types, rows, exact)
        for variant in variants:
            # a widened column taken as NaN says nothing: the simplifier would cast the NaN to
            # the `is_in` value set's type (an int64 one fails)
            term = _combined({k: v for k, v in terms.items() if k not in variant & widened}, variant - widened)
            for extra in _set_terms(sets, stats, rows, types, variant, ignored) if term is not None else ():
                term = term & extra
            if term is not None:  # (None: the column is null in every row, never NaN)
                fragments.append(_FORMAT.make_fragment(str(i), filesystem=_FS, partition_expression=term))
    return fragments


def _set_terms(sets: Sequence[ValueSet], stats: Mapping[str, ColumnStats], rows: int,
               types: Mapping[str, pa.DataType], variant: frozenset, ignored) -> list[pc.Expression]:
    """What an item's statistics say of each large `is_in` set's stand-in (`ValueSet.term`) in
    one NaN variant. A column whose statistics are `ignored` may hold NaN in any variant: its set
    says something only where it holds no NaN."""
    out = []
    for vs in sets:
        s = stats.get(vs.column)
        if s is None or vs.name in ignored or (vs.column in ignored and vs.nan):
            continue
        lo, hi = _scalar(s.min, types[vs.column]), _scalar(s.max, types[vs.column])
        if lo is not None and hi is not None and not _ordered(s.min, s.max, lo, hi):
            lo = hi = None
        all_null = s.null_count is not None and s.null_count == rows and rows > 0
        term = vs.term(lo, hi, s.null_count is None or s.null_count > 0, all_null, vs.column in variant)
        if term is not None:
            out.append(term)
    return out


def nan_columns(expr: pc.Expression, schema: Sequence[Column], exact: Collection[str] = frozenset()) -> list[str]:
    """The float columns `expr` reads where a NaN may pass it whatever the other columns hold
    (`x != 2`, `~(x <= 5)`; not `x > 4`): those whose statistics (which leave NaN out) cannot
    rule a row group out alone; never the `exact` ones (`exact_columns`). Once per plan."""
    named = _named_in(expr, schema)
    types = {c.name: filter_type(arrow_type(c.type)) for c in named}
    floats = [c.name for c in named if types[c.name] is not None and pa.types.is_floating(types[c.name])
              and c.name not in exact and _reads(expr, named, c.name)]
    return [name for name in floats if _nan_may_pass(name, expr, named, types)]


def exact_columns(shards: Sequence) -> frozenset[str]:
    """The partition keys (Hive directories, Delta partition values) of every shard: each shard's
    statistics of such a key are its one value, so no NaN hides beside them (a NaN value has
    none, and prunes nothing). A double key `p=0.5/` was taken for a float column that may hold
    NaN, and `p != 0.5` pruned no directory."""
    if not shards or any(s.partition is None for s in shards):
        return frozenset()
    keys = set.intersection(*(set(s.partition) for s in shards))
    return frozenset(k for k in keys if not any(isinstance(s.partition[k], float) and math.isnan(s.partition[k])
                                                for s in shards))


def _nan_may_pass(name: str, expr: pc.Expression, schema: Sequence[Column], types: Mapping[str, pa.DataType]) -> bool:
    """Whether pyarrow's simplifier cannot rule `expr` out where column `name` is NaN. Where it
    fails to reason (an `is_in` of ints beside a float column: it casts the NaN to int64), the
    answer is yes: that column's NaN guarantees are then left out (`_fragments`), and the filter
    is not refused for it."""
    fragment = _FORMAT.make_fragment("0", filesystem=_FS, partition_expression=pc.field(name) == _NAN)
    try:
        return bool(_kept([fragment], expr, schema, types))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return True


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
