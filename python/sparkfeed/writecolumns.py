"""The columns `sparkfeed.write` takes, checked before any Spark job runs: their types, names,
`cluster_by` and `codecs` (split from write.py, which runs the jobs).

A struct is delivered by the loader as its leaves, named by their path (`image.bytes`), so with
format="parquet" the leaves are what is checked; format="webdataset" takes top-level columns.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

__all__ = ["check_columns", "check_cluster_by", "check_codecs", "columns", "resolve"]

log = logging.getLogger("sparkfeed.write")  # the warnings users have seen from write

_CODEC = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]*")


def _scalar_kind(dt) -> str | None:
    """'stats' for orderable scalar types with statistics, 'binary', or None (unsupported)."""
    from pyspark.sql import types as T

    if isinstance(dt, (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType,
                       T.DoubleType, T.BooleanType, T.StringType, T.DateType, T.TimestampType,
                       T.TimestampNTZType, T.CharType, T.VarcharType, T.DecimalType)):
        return "stats"
    if isinstance(dt, T.BinaryType):
        return "binary"
    return None


def _is_list_of_numbers(dt) -> bool:
    from pyspark.sql import types as T

    return isinstance(dt, T.ArrayType) and isinstance(
        dt.elementType, (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType,
                         T.DoubleType, T.BooleanType))


def _leaves(name: str, dt, structs: bool) -> list[tuple[str, object]]:
    """(name, Spark type) of the column, or of a struct's leaves named by their path
    (`image.bytes`) where `structs` (Parquet: the loader delivers a struct as its leaves)."""
    from pyspark.sql import types as T

    if structs and isinstance(dt, T.StructType):
        return [leaf for f in dt.fields for leaf in _leaves(f"{name}.{f.name}", f.dataType, structs)]
    return [(name, dt)]


def _refuse_empty_struct(name: str, dt) -> None:
    """A ValueError for a struct without fields, at any depth: Spark's writers refuse it
    (EMPTY_SCHEMA_NOT_SUPPORTED_FOR_DATASOURCE) only when the write is planned, after the count
    job, and it has no leaf to check or deliver."""
    from pyspark.sql import types as T

    if isinstance(dt, T.StructType):
        if not dt.fields:
            raise ValueError(f"column {name!r} is a struct with no fields, which Spark cannot "
                             "write; drop it, or give it a field")
        for f in dt.fields:
            _refuse_empty_struct(f"{name}.{f.name}", f.dataType)


# The prefix of the helper columns the write adds and drops (writeshards.py): a user's column of
# such a name would be replaced by one and dropped with it.
RESERVED_PREFIX = "_sparkfeed_"


def check_columns(schema, format: str = "parquet", case_sensitive: bool = True) -> dict:
    """name -> Spark type for every column (a struct's leaves for Parquet, by their path), or a
    ValueError naming the first unsupported one. Unless Spark is case-sensitive
    (`spark.sql.caseSensitive`, false by default), `id` and `ID` are duplicates: Spark's Parquet
    writer refuses them (after the count job) and reading them back is ambiguous."""
    from pyspark.sql import types as T

    names = [f.name for f in schema.fields]
    fold = (lambda n: n) if case_sensitive else str.lower
    folded = [fold(n) for n in names]
    dupes = sorted({n for n in names if folded.count(fold(n)) > 1})
    if dupes:
        how = "" if case_sensitive else " (names differing only in case are one to Spark, " \
            "spark.sql.caseSensitive being false)"
        raise ValueError(f"the DataFrame has duplicate column names {dupes}{how}; rename them "
                         "(for example with .withColumnRenamed) before writing")
    if not names:
        raise ValueError("the DataFrame has no columns; there is nothing to write")
    reserved = [n for n in names if n.lower().startswith(RESERVED_PREFIX)]
    if reserved:  # the write's own helper columns (writeshards.py) would replace and drop them
        raise ValueError(f"column(s) {reserved} start with {RESERVED_PREFIX!r}, which names the "
                         "write's own helper columns; rename them before writing")
    for f in schema.fields:
        _refuse_empty_struct(f.name, f.dataType)
    leaves = [leaf for f in schema.fields for leaf in _leaves(f.name, f.dataType, format == "parquet")]
    types = dict(leaves)
    if len(types) < len(leaves):
        twice = sorted({n for n, _ in leaves if sum(m == n for m, _ in leaves) > 1})
        if any(n in names for n in twice):
            raise ValueError(f"columns {twice} are each both a column and a struct's leaf (a "
                             "struct is delivered as its leaves, named by their path); rename one "
                             "of them")
        raise ValueError(f"struct leaves {twice} are each named twice (a struct is delivered as its "
                         "leaves, named by their path, and two fields of one struct have that "
                         "name, or a field's name with a dot spells another's path); rename one "
                         "of them")
    for name, dt in types.items():
        if _scalar_kind(dt) is None and not _is_list_of_numbers(dt):
            hint = ("select its fields as columns (df.select('col.*')), or write format='parquet', "
                    "which keeps a struct's fields as columns" if isinstance(dt, T.StructType) else
                    "flatten it into scalar columns, or serialise it to string/binary")
            raise ValueError(
                f"column {name!r} has type {dt.simpleString()}, which the loader cannot "
                "hand to torch; supported types are numeric, boolean, string, binary, date, "
                f"timestamp, arrays of numbers or booleans, and (Parquet) structs of these; {hint}")
    decimals = [name for name, dt in types.items() if isinstance(dt, T.DecimalType)]
    if decimals:  # torch has no decimal type; exact values still serve filters
        log.warning("decimal column(s) %s are written, but batches leave them out (torch has no "
                    "decimal type; cast to double to deliver them); filters may read them", decimals)
    return types


def resolve(name: str, types: Mapping, case_sensitive: bool, what: str) -> str:
    """The DataFrame's own spelling of the column (or struct leaf) `name` names, as Spark
    resolves it: exactly under `spark.sql.caseSensitive=true`, else in any case (`LABEL` is
    `label`); a ValueError saying `what` named it when none or several match."""
    if name in types and case_sensitive:
        return name
    found = [n for n in types if n.lower() == name.lower()] if not case_sensitive else []
    if len(found) == 1:
        return found[0]
    if found:
        raise ValueError(f"{what} names column {name!r}, which is ambiguous: the DataFrame has "
                         f"{found}, one to Spark (spark.sql.caseSensitive being false); rename "
                         "one of them")
    alike = [n for n in types if n.lower() == name.lower()]
    hint = (f" (spark.sql.caseSensitive is true, so {alike[0]!r} is another column)"
            if alike else "")
    raise ValueError(f"{what} names column {name!r}, which is not in the DataFrame{hint}; "
                     f"columns are {list(types)}")


def check_cluster_by(cluster_by, types: Mapping, case_sensitive: bool = True) -> list[str]:
    """The `cluster_by` columns in the DataFrame's spelling, or a ValueError naming a bad one."""
    if cluster_by is None:
        return []
    cols = [cluster_by] if isinstance(cluster_by, str) else cluster_by
    if not isinstance(cols, (list, tuple)) or not cols or not all(isinstance(c, str) for c in cols):
        raise ValueError("`cluster_by` should be a column name or a non-empty list of column "
                         f"names, but got cluster_by={cluster_by!r}")
    out = []
    for given in cols:
        c = resolve(given, types, case_sensitive, "`cluster_by`")
        if _scalar_kind(types[c]) != "stats":
            raise ValueError(f"`cluster_by` column {c!r} has type {types[c].simpleString()}, which "
                             "has no order sparkfeed can prune on; use a numeric, boolean, string, "
                             "date or timestamp column")
        out.append(c)
    return out


def _name_parts(schema) -> dict[str, list[str]]:
    """Each column's and struct leaf's name (`a.b` for a column called so, `st.c` for a leaf)
    -> its path of field names, as Spark must be given it."""
    from pyspark.sql import types as T

    out: dict[str, list[str]] = {}

    def walk(parts, dt):
        out.setdefault(".".join(parts), parts)
        if isinstance(dt, T.StructType):
            for f in dt.fields:
                walk(parts + [f.name], f.dataType)
    for f in schema.fields:
        out[f.name] = [f.name]  # a column's own name wins over a leaf's path
    for f in schema.fields:
        walk([f.name], f.dataType)
    return out


def columns(schema, names: list[str]) -> list:
    """pyspark Columns for validated names, quoted part by part: Spark would read a column named
    `a.b` as field b of a struct a, and refuse a name holding a backtick."""
    from pyspark.sql import functions as F

    parts = _name_parts(schema)
    return [F.col(".".join("`" + p.replace("`", "``") + "`" for p in parts[n])) for n in names]


def check_codecs(codecs, types: Mapping, case_sensitive: bool = True) -> dict[str, str]:
    """`codecs` keyed by the DataFrame's spelling of each column, or a ValueError naming a bad
    column or codec (also two names of one column, `image` and `IMAGE` when Spark ignores case)."""
    if codecs is None:
        return {}
    if not isinstance(codecs, Mapping):
        raise ValueError(f"`codecs` should map binary column names to codec names such as "
                         f"'jpeg', but got codecs={codecs!r}")
    out: dict[str, str] = {}
    for given, codec in codecs.items():
        if not isinstance(given, str):
            raise ValueError(f"`codecs` should be keyed by column names, but got {given!r}")
        col = resolve(given, types, case_sensitive, "`codecs`")
        if col in out:
            raise ValueError(f"`codecs` names column {col!r} twice (Spark reads column names in "
                             "any case, spark.sql.caseSensitive being false); keep one")
        if _scalar_kind(types[col]) != "binary":
            raise ValueError(f"`codecs` names column {col!r} of type {types[col].simpleString()}; "
                             "only binary columns carry a codec")
        if not isinstance(codec, str) or not _CODEC.fullmatch(codec):
            raise ValueError(f"the codec of column {col!r} should be a name such as 'jpeg', "
                             f"'png', 'webp' or 'npy', but got {codec!r}")
        out[col] = codec
    return out
