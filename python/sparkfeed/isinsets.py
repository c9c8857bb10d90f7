"""Pruning by an `is_in` of more values than pyarrow's simplifier reasons about (50: past that it
keeps every shard and row group), or of values of another type than the column's, which Arrow's
kernel casts to the column's type but the simplifier does not (it kept every row group). Each
such `is_in` of a column is swapped for a boolean stand-in column; an item whose [min, max] holds
none of the set's values (a sorted array, `searchsorted`) is guaranteed false there, and
pyarrow's simplifier reasons with that guarantee as with any other (`and`, `or`, `~` of it), so
nothing here evaluates the filter.

The `is_in` calls are found in Arrow's own serialization of the expression (`exprcodec`); where
it cannot be read back exactly, no stand-in is made (the filter then prunes as pyarrow alone
prunes it: less, never wrongly)."""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import exprcodec

__all__ = ["ValueSet", "stand_ins", "canonical"]

SIMPLIFIED = 50  # the most values of an `is_in` pyarrow's simplifier reasons about (pyarrow 26)
_OR_TERMS = 10  # an `or` of more equalities of one column than this is stood in for too (`_or_set`)
_ORS = ("or_kleene", "or")
_MATCH, _SKIP = 0, 1  # SetLookupOptions' null_matching_behavior: a null row passes where the set holds null / never


@dataclass(frozen=True, eq=False)
class ValueSet:
    """One large `is_in` of `column`, swapped for the boolean column `name`: its values cast to
    the column's type, as Arrow's kernel casts them, sorted, without null and NaN."""

    name: str
    column: str
    values: np.ndarray
    nulls_pass: bool  # a null row passes (the set holds null and nulls match)
    nan: bool         # the set holds NaN (which matches a NaN row; statistics leave NaN out)
    widen: bool       # float values cast from another type: bounds one step wider (as `pruning._widened`)
    null_rows_null: bool = False  # an `or` of equalities: null over a null row, so no row group that may hold one is decided

    def term(self, lo: pa.Scalar | None, hi: pa.Scalar | None, nulls: bool, all_null: bool,
             as_nan: bool) -> pc.Expression | None:
        """What an item's statistics say of the stand-in: false where no row can pass, true where
        every row passes (one value, not a float: min = max in the set), else None. Its rows are
        null (`all_null`), NaN (`as_nan`: the NaN variant of its guarantee) or within [lo, hi]
        (a None bound: none on that side), `nulls` where some may be null."""
        if self.null_rows_null and (nulls or all_null):
            return None
        if all_null:
            return self._is(self.nulls_pass)
        if as_nan:
            return None if self.nan or (nulls and self.nulls_pass) else self._is(False)
        if not self._holds(lo, hi):
            return None if nulls and self.nulls_pass else self._is(False)
        return self._is(True) if self._one(lo, hi) and (not nulls or self.nulls_pass) else None

    def _is(self, value: bool) -> pc.Expression:
        return self._terms[value]

    @functools.cached_property
    def _terms(self) -> tuple[pc.Expression, pc.Expression]:
        """`name == false`, `name == true`: built once, not once per item."""
        return pc.field(self.name) == pa.scalar(False), pc.field(self.name) == pa.scalar(True)

    def _one(self, lo: pa.Scalar | None, hi: pa.Scalar | None) -> bool:
        """Whether [lo, hi] is one value that the set holds (never for floats: 0.0 may be -0.0,
        which `is_in` tells apart, and NaN hides beside any range)."""
        if lo is None or hi is None or not lo.equals(hi) or pa.types.is_floating(lo.type):
            return False
        value = self._bound(lo, 0.0)
        at = int(np.searchsorted(self.values, value, "left"))
        return at < len(self.values) and bool(self.values[at] == value)

    def _holds(self, lo: pa.Scalar | None, hi: pa.Scalar | None) -> bool:
        """Whether a value of the set lies in [lo, hi] (no bound known: yes)."""
        if lo is None and hi is None:
            return True
        low = 0 if lo is None else int(np.searchsorted(self.values, self._bound(lo, -math.inf), "left"))
        return low < len(self.values) and (hi is None or not self.values[low] > self._bound(hi, math.inf))

    def _bound(self, scalar: pa.Scalar, toward: float):
        """A statistics bound as the values' element (one float step wider with `widen`)."""
        kind = self.values.dtype.kind
        if kind in "iub":  # (the common case: Python's int compares exactly with any of numpy's)
            return scalar.as_py()
        value = self.values.dtype.type(scalar.as_py()) if kind == "f" else \
            pa.array([scalar]).to_numpy(zero_copy_only=False)[0]
        return np.nextafter(value, value.dtype.type(toward)) if self.widen else value


def stand_ins(expr: pc.Expression, types: Mapping[str, pa.DataType]) -> tuple[pc.Expression, list[ValueSet]]:
    """`_stand_ins`, kept for the last few (expression, types): a plan asks three times (shards, row
    groups, proofs), and a set of 1,000,000 values takes a second to read and sort."""
    key = id(expr), tuple(sorted((name, str(t)) for name, t in types.items()))
    known = _MADE.get(key)
    if known is None or known[0] is not expr:
        known = expr, _stand_ins(expr, types)  # (expr kept: its id is not reused meanwhile)
        with _MADE_LOCK:
            _MADE[key] = known
            while len(_MADE) > 8:
                _MADE.pop(next(iter(_MADE)))
    return known[1]


_MADE: dict[tuple, tuple[pc.Expression, tuple]] = {}  # (id(expr), types) -> (expr, stand_ins), oldest first
_MADE_LOCK = threading.Lock()


def _stand_ins(expr: pc.Expression, types: Mapping[str, pa.DataType]) -> tuple[pc.Expression, list[ValueSet]]:
    """`expr` with each `is_in` of a column in `types` over more than `SIMPLIFIED` values, or of
    values of another type (which the simplifier compares with the column's bounds uncast, and
    fails or gives up on: Python ints beside uint64, text beside a date), swapped for a stand-in
    column (`ValueSet`), and those sets; `expr` and none where there is no such `is_in`, or
    where Arrow's serialization cannot be read back exactly."""
    text = str(expr)
    if "is_in(" not in text and text.count(" == ") <= _OR_TERMS:
        return expr, []
    found = exprcodec.read(expr)
    if found is None:
        return expr, []
    (pairs, table), out, sets, i = found, [], [], 0
    while i < len(pairs):
        taken = set(types) | {s.name for s in sets}
        try:
            found, end = _value_set(pairs[i:i + 4], table, types, taken), i + 4
            if found is None:
                found, end = _or_set(pairs, i, table, types, taken)
        except (pa.ArrowException, ValueError, TypeError):  # (values that do not become the column's type)
            found = None
        if found is None:
            out.append(pairs[i])
            i += 1
        else:
            sets.append(found)
            out.append(("field_ref", found.name))
            i = end
    return (exprcodec.written(out, table), sets) if sets else (expr, [])


def _or_set(pairs: list, i: int, table: pa.Table, types: Mapping[str, pa.DataType],
            taken: set) -> tuple[ValueSet | None, int]:
    """The `ValueSet` of an `or` of more than `_OR_TERMS` equalities of one column with literals
    of its own type starting at entry `i` (`x == 1 | x == 5 | ...`: pyarrow's simplifier takes time
    quadratic in its terms, 25 ms a row group for 1,000), and the entry after it; (None, i) for
    anything else. A NaN literal equals no row; a null one makes the `or` null: none is made."""
    leaves, end = _equalities(pairs, i) if pairs[i][0] == "call" and pairs[i][1] in _ORS else (None, i)
    columns = {column for column, _ in leaves or ()}
    if not leaves or len(leaves) <= _OR_TERMS or len(columns) != 1:
        return None, i
    column = columns.pop()
    type_ = types.get(column)
    values = pa.concat_arrays([table.column(k).chunk(0) for _, k in leaves]) if type_ is not None else None
    if values is None or values.type != type_ or values.null_count:
        return None, i
    floating = pa.types.is_floating(type_)
    kept = pc.unique(values.filter(pc.invert(pc.is_nan(values))) if floating else values)
    return ValueSet(_free(taken), column, kept.take(pc.sort_indices(kept)).to_numpy(zero_copy_only=False),
                    nulls_pass=False, nan=False, widen=False, null_rows_null=True), end


def _equalities(pairs: list, i: int) -> tuple[list | None, int]:
    """([(column, literal column), ...], end) where the node at entry `i` is an `or` tree of
    `field == literal` (either way round); (None, i) at the first entry of anything else. A loop,
    not recursion: such a tree of 1,000 terms is 1,000 deep."""
    leaves, depth, j = [], 0, i
    while True:
        key, value = pairs[j]
        if (key, value) == ("call", "equal"):
            a, b, end = (pairs[j + 1:j + 4] + [("", "")] * 3)[:3]
            if end != ("end", "equal") or {a[0], b[0]} != {"field_ref", "literal"}:
                return None, i
            field, literal = (a, b) if a[0] == "field_ref" else (b, a)
            leaves.append((field[1], int(literal[1])))
            j += 4
        elif key in ("call", "end") and value in _ORS and (key == "call" or depth > 0):
            depth, j = depth + (1 if key == "call" else -1), j + 1
        else:
            return None, i
        if depth == 0:
            return leaves, j


def _free(taken: set) -> str:
    """A stand-in column's name that no column in `taken` has."""
    name = "__sparkfeed_is_in__"
    while name in taken:
        name = "_" + name
    return name


def canonical(expr: pc.Expression) -> pc.Expression:
    """`expr` with each `is_in`'s values sorted (nulls last): the same filter, whatever the order
    they came in. A value set made from a Python set (`isin({"a", "b"})`) takes the set's order,
    which Python's hash seed changes from one process to the next, and with it the filter's text
    and digest that a saved state records. `expr` itself where it has no `is_in` or where Arrow's
    serialization cannot be read back exactly."""
    found = exprcodec.read(expr) if "is_in(" in str(expr) else None
    if found is None:
        return expr
    pairs, table = found
    try:
        for k, (key, value) in enumerate(pairs):
            if key == "call" and value == "is_in" and pairs[k + 2][0] == "options":
                table = _sorted_set(table, int(pairs[k + 2][1]))
        return exprcodec.written(pairs, table)
    except (pa.ArrowException, TypeError, ValueError, IndexError):
        return expr


def _sorted_set(table: pa.Table, at: int) -> pa.Table:
    """`table` with the value set of the `is_in` options in column `at` sorted, nulls last."""
    options = table.column(at).combine_chunks()
    given = options.field("value_set")
    values = given[0].values
    ordered = values.take(pc.sort_indices(values))  # (nulls last: its default)
    lists = pa.ListArray.from_arrays(pa.array([0, len(ordered)], pa.int32()), ordered, type=given.type)
    fields = [lists if f.name == "value_set" else options.field(f.name) for f in options.type]
    return table.set_column(at, table.schema.field(at), pa.StructArray.from_arrays(fields, fields=list(options.type)))


def _value_set(window: list, table: pa.Table, types: Mapping[str, pa.DataType], taken: set) -> ValueSet | None:
    """The `ValueSet` of `is_in(field, options)` starting `window`, or None: another call, a
    value set pyarrow reasons about itself, another null behaviour, or values that do not all
    become the column's type exactly (Arrow's kernel would match some otherwise)."""
    keys = [k for k, _ in window]
    if keys != ["call", "field_ref", "options", "end"] or window[0][1] != "is_in" or window[3][1] != "is_in":
        return None
    column, type_ = window[1][1], types.get(window[1][1])
    options = table.column(int(window[2][1]))[0]
    values, behaviour = options["value_set"].values, options["null_matching_behavior"].as_py()
    if type_ is None or values is None or behaviour not in (_MATCH, _SKIP):
        return None
    base = type_.value_type if pa.types.is_dictionary(type_) else type_
    if len(values) <= SIMPLIFIED and values.type == base:
        return None  # (pyarrow's simplifier reasons about it)
    given = values.drop_null()
    cast = given.cast(base, safe=True) if given.type != base else given
    floating = pa.types.is_floating(base)
    nan = floating and bool(pc.any(pc.is_nan(cast)).as_py())
    kept = pc.unique(cast.filter(pc.invert(pc.is_nan(cast))) if floating else cast)
    return ValueSet(_free(taken), column, kept.take(pc.sort_indices(kept)).to_numpy(zero_copy_only=False),
                    nulls_pass=values.null_count > 0 and behaviour == _MATCH, nan=nan,
                    widen=floating and given.type != base)
