"""A tar shard's members (bytes per sample) as an Arrow table: values read as webdataset reads them, whole columns at C speed, bad samples named or skipped."""

from __future__ import annotations

import decimal
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import CorruptSampleError
from ..plan import WorkUnit
from . import jsondoc, tarindex


def parse_int(data: bytes) -> int:
    """An integer member's value as webdataset decodes `.cls` and the like (`int(data)`):
    ASCII digits with an optional sign, leading zeros, `_` between digits and surrounding
    whitespace; ValueError for anything else."""
    return int(data)


class TarTable:
    """`TarReader`'s conversion of a shard's members to a table (a mixin: it uses the reader's
    context and `_members`)."""

    def _table(self, unit: WorkUnit, names: list[str],
               found: tarindex.Members | None = None) -> tuple[pa.Table, np.ndarray]:
        """The shard's samples (or those of `found`, a window's) as a table of `names`, and
        which rows decoded cleanly.

        A sample whose member cannot be parsed (bad UTF-8, bad JSON, a value of the wrong type)
        raises CorruptSampleError naming the shard and key, or under on_error="skip" becomes a
        null row marked not-ok, so stream positions stay exact and the skip is counted.
        """
        cols = [c for c in self.ctx.schema if c.name in set(names)]
        found = self._members(unit, {c.member or c.name for c in cols}) if found is None else found
        keys, n = found.keys, len(found.keys)
        bad: dict[int, str] = {i: f"member .{ext} twice in the sample (its second copy's header at tar offset "
                               f"{at}); webdataset refuses such a sample (duplicate file name)"
                               for i, (ext, at) in found.repeated.items()}
        in_json = any((c.member or c.name) == "json" and c.type not in ("string", "large_string")
                      for c in cols)
        fields = self.ctx.arrow_schema([c.name for c in cols])
        arrays = _whole_columns(cols, fields, found.values, n)
        parsed = exact = None
        in_doc = {c.name for c in cols if c.member == "json"}
        if in_json and any(c.name not in arrays for c in cols if c.member == "json"):
            parsed = self._parse_json(_as_list(found.values.get("json"), n), bad, in_doc)
        if any(c.member == "json" and c.type.startswith("decimal") for c in cols):
            # decimals exactly as written ("12.34"), not through a double
            exact = self._parse_json(_as_list(found.values.get("json"), n), {}, in_doc, decimal.Decimal)
        for col, field in zip(cols, fields):
            if col.name not in arrays:
                docs = exact if col.type.startswith("decimal") else parsed
                values = self._column_values(col, keys, found.values, docs, bad)
                arrays[col.name] = self._to_array(col, values, field.type, bad)
        if bad:
            self._corrupt(unit, keys, bad, {i: at for i, (_, at) in found.repeated.items()}, found.starts)
        ok = np.ones(len(keys), dtype=bool)
        ok[list(bad)] = False
        table = pa.table(arrays) if arrays else pa.table({"n": np.zeros(len(keys))}).drop_columns(["n"])
        if bad:  # every value of a bad sample is null: no half-parsed sample leaks through
            mask = pa.array(~ok)
            table = pa.table({n: pc.if_else(mask, pa.nulls(len(keys), c.type), c) for n, c in
                              zip(table.column_names, table.columns)}) if arrays else table
        return table, ok

    def _corrupt(self, unit: WorkUnit, keys: list[str], bad: dict[int, str], offsets: dict[int, int],
                 starts: list[int] | None = None) -> None:
        """Raise for the first bad sample (`offsets`: the tar offsets known for bad samples, else
        its first member header's, `starts`), unless on_error="skip"."""
        if self.ctx.on_error != "skip":
            row, reason = min(bad.items())
            raise CorruptSampleError(f"{reason} ({len(bad)} bad sample(s) in this shard; "
                                     "on_error='skip' skips and counts them)",
                                     dataset=self.ctx.dataset, shard=unit.path, key=keys[row],
                                     offset=offsets.get(row, starts[row] if starts else None))

    @staticmethod
    def _parse_json(raw: list, bad: dict[int, str], wanted: set[str], parse_float=float) -> list[dict]:
        """Each sample's `.json` object (an empty one where it has none); a document nested too
        deeply for Python's parser gives its `wanted` fields alone (`jsondoc`), so depth in a
        field the read did not ask for fails nothing, streamed or indexed."""
        out = []
        for i, r in enumerate(raw):
            doc = {}
            if r is not None:
                try:
                    try:
                        doc = json.loads(r, parse_float=parse_float)
                    except RecursionError:
                        doc = jsondoc.loads_fields(r, wanted, parse_float)
                    if not isinstance(doc, dict):
                        raise ValueError(f"a JSON {type(doc).__name__}, not an object")
                except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                    bad.setdefault(i, f"member .json cannot be parsed ({_json_problem(exc)})")
                    doc = {}
            out.append(doc)
        return out

    @staticmethod
    def _column_values(col, keys, members: dict, parsed_json, bad: dict[int, str]) -> list:
        member = col.member or col.name
        if member == "__key__":
            return keys
        if member == "json" and col.type not in ("string", "large_string"):
            return [d.get(col.name) for d in parsed_json]  # scalars kept together (the JVM writer)
        raw = _as_list(members.get(member), len(keys))
        if col.type in ("binary", "large_binary"):
            return raw
        values = []
        integer = col.type.startswith(("int", "uint"))
        for i, r in enumerate(raw):
            try:
                values.append(_member_value(r, col.type, integer))
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                bad.setdefault(i, f"member .{member} of column {col.name!r} cannot be parsed "
                                  f"({_json_problem(exc)})")
                values.append(None)
        return values

    @staticmethod
    def _to_array(col, values: list, type_: pa.DataType, bad: dict[int, str]) -> pa.Array:
        """Values as an Arrow array of the column's type; values that do not fit are bad rows."""
        type_ = None if type_ == pa.null() else type_
        _refuse_fractions(col, values, type_, bad)
        try:
            return _array(values, type_)
        except (pa.ArrowException, ValueError, TypeError, OverflowError):
            pass
        for i, v in enumerate(values):
            try:
                _array([v], type_)
            except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:
                bad.setdefault(i, f"column {col.name!r}: value does not fit {type_} ({exc})")
                values[i] = None
        return _array(values, type_)


def _json_problem(exc: Exception) -> str:
    """Why a JSON member did not parse; Python's parser recurses, so a document nested
    thousands deep (hostile or broken) raised RecursionError out of the reader, past on_error."""
    return "arrays or objects nested too deeply" if isinstance(exc, RecursionError) else str(exc)


def _refuse_fractions(col, values: list, type_: pa.DataType | None, bad: dict[int, str]) -> None:
    """Rows whose JSON number for an integer column (or list of integers) has a fraction are
    bad: Arrow's conversion from Python floats truncates (`{"id": 1.5}` was delivered as 1).
    A whole float (1.0) is the integer it equals."""
    inner = type_
    while inner is not None and (pa.types.is_list(inner) or pa.types.is_large_list(inner)
                                 or pa.types.is_fixed_size_list(inner)):
        inner = inner.value_type
    if inner is None or not pa.types.is_integer(inner):
        return
    for i, v in enumerate(values):
        if _fractional(v):
            bad.setdefault(i, f"column {col.name!r}: value {_brief(v)} is not a whole number, as "
                              f"{type_} needs")
            values[i] = None


def _fractional(v) -> bool:
    """Whether a parsed JSON value holds a float that is not a whole number (NaN included)."""
    if type(v) is float:  # noqa: E721 - the JSON parser's floats only
        return not v.is_integer()
    return type(v) is list and any(_fractional(x) for x in v)  # noqa: E721


def _brief(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _member_value(raw: bytes | None, type_: str, integer: bool):
    """One member's value: text as is; an integer as webdataset and `sparkfeed.index` read it
    (`parse_int`: "007", "+5", " 7\n"; ValueError for "1.0" or "null", as there); any other
    type as JSON (the JVM writer's values)."""
    if raw is None:
        return None
    if integer:
        return parse_int(raw)
    text = raw.decode("utf-8")
    return text if type_ in ("string", "large_string") else json.loads(text)


def _array(values: list, type_: pa.DataType | None) -> pa.Array:
    """Parsed member values as an Arrow array of the column's type. Dates and timestamps come as
    ISO 8601 text (the JVM writer's `.json`: `"2024-01-31"`, `"2024-01-31T12:00:00.000000+00:00"`),
    which Arrow parses to the column's unit and zone."""
    if type_ is not None and (pa.types.is_timestamp(type_) or pa.types.is_date(type_)) and \
            any(isinstance(v, str) for v in values):
        return pa.array(values, pa.string()).cast(type_)
    if type_ is not None and pa.types.is_floating(type_) and any(type(v) is int for v in values):  # noqa: E721
        # a JSON integer past int64 for a float column is the float it rounds to, as Arrow's JSON
        # reader (the whole-column path) gives it; pa.array refused it (OverflowError past 1e308)
        values = [float(v) if type(v) is int else v for v in values]  # noqa: E721
    return pa.array(values, type=type_)

# ---------------------------------------------------------------- whole columns at C speed
#
# When every sample has the member (`tarindex` gives a binary array), a column is converted in
# one Arrow call where that gives exactly what the per-value path gives; anything it is not sure
# of (a value that is not a plain JSON number, bad UTF-8, a JSON document spread over lines)
# leaves the column to the per-value path, which names bad samples. An integer column's values
# that are not plain digits ("+5", "1_000") are parsed one by one (`parse_int`), the rest still
# at once.

_PLAIN_INT = r"^[ \t\n\r\x0b\x0c]*-?[0-9]+[ \t\n\r\x0b\x0c]*$"  # `parse_int`'s answer, cast by Arrow
_JSON_NUMBER = r"^[ \t\n\r]*-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?[ \t\n\r]*$"


def _as_list(raw, n: int) -> list:
    """A member column as a list of bytes (None where missing)."""
    if raw is None:
        return [None] * n
    return raw.to_pylist() if isinstance(raw, pa.Array) else raw


def _whole_columns(cols, fields, members: dict, n: int) -> dict[str, pa.Array]:
    """The columns that convert whole: their own member's bytes, text, integers or plain JSON numbers,
    and the JSON-kept scalars when every sample's `.json` parses as one line of numbers/bools."""
    out = {}
    for col, field in zip(cols, fields):
        raw = members.get(col.member or col.name)
        if isinstance(raw, pa.Array) and col.member not in ("json", "__key__"):  # (a ".__key__" member is no key)
            arr = _whole_column(raw, field.type)
            if arr is not None:
                out[col.name] = arr
    kept = [(c, f) for c, f in zip(cols, fields) if c.member == "json" and c.type not in ("string", "large_string")]
    if kept and isinstance(members.get("json"), pa.Array):
        out.update(_json_scalars(members["json"], kept, n))
    return out


def _whole_column(raw: pa.Array, type_: pa.DataType) -> pa.Array | None:
    try:
        if pa.types.is_binary(type_) or pa.types.is_large_binary(type_):
            return raw.cast(type_)
        text = raw.cast(pa.string())  # validates UTF-8
        if pa.types.is_string(type_) or pa.types.is_large_string(type_):
            return text.cast(type_)
        if pa.types.is_integer(type_):
            return _whole_ints(raw, text, type_)
        if pa.types.is_floating(type_) and pc.all(pc.match_substring_regex(text, _JSON_NUMBER)).as_py():
            return pc.cast(pc.utf8_trim_whitespace(text), type_)
    except (pa.ArrowException, ValueError, OverflowError):
        pass
    return None


def _whole_ints(raw: pa.Array, text: pa.Array, type_: pa.DataType) -> pa.Array:
    """An integer column at once: plain digits cast by Arrow, the few others (a "+" sign, "_"
    between digits) by `parse_int`; ValueError or an Arrow error when one does not parse or fit
    (the per-value path then names it)."""
    plain = pc.match_substring_regex(text, _PLAIN_INT)
    if pc.all(plain).as_py():
        return pc.cast(pc.utf8_trim_whitespace(text), type_)
    other = pc.invert(plain)
    parsed = pa.array([parse_int(r) for r in raw.filter(other).to_pylist()], type_)
    cast = pc.cast(pc.utf8_trim_whitespace(pc.if_else(plain, text, pa.scalar(None, pa.string()))), type_)
    return pc.replace_with_mask(cast, other, parsed)


def _json_scalars(raw: pa.Array, kept, n: int) -> dict[str, pa.Array]:
    """Numeric and boolean columns kept together in `.json` members, read by Arrow's JSON
    reader at once: only when each member is one line holding one object."""
    import pyarrow.json as pajson

    kept = [(c, f) for c, f in kept if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)
            or pa.types.is_boolean(f.type)]
    if not kept:
        return {}
    try:  # UTF-8, as JSON must be (Arrow's reader lets bytes that are not pass), each an object
        # (Arrow's reader takes a document `null` for a row of nulls)
        if not pc.all(pc.match_substring_regex(raw.cast(pa.string()), "^\ufeff?[ \t\r\n]*[{]")).as_py():
            return {}
    except pa.ArrowInvalid:
        return {}
    docs = raw.to_pylist()
    lines = b"\n".join(docs)
    if lines.count(b"\n") != n - 1 or not all(docs):
        return {}
    schema = pa.schema([f for _, f in kept])
    try:
        table = pajson.read_json(io.BytesIO(lines), parse_options=pajson.ParseOptions(
            explicit_schema=schema, unexpected_field_behavior="ignore"))
    except (pa.ArrowException, ValueError):
        return {}
    if table.num_rows != n:
        return {}
    return {c.name: table.column(c.name).combine_chunks() for c, _ in kept}
