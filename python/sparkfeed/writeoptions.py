"""The `options=` of `sparkfeed.write`: the data source options each format takes, checked up
front, and the webdataset writer's task failures told as what to pass to `sparkfeed.write`.

`format="webdataset"` goes through the JVM data source (docs/webdataset.md, *Options*), whose
options `sparkfeed.write` passes on; two of them are `write`'s own arguments (`samplesPerShard`
is `samples_per_shard=`, `codecs` is `codecs=`), so `options=` takes the others. Parquet goes
through Spark's writer with options that `write` sets itself, so it takes none: an option that
would be ignored is refused instead.

    sparkfeed.write(df, "ds/", format="webdataset", options={"invalidKeys": "sanitize"})
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping

from .errors import SparkfeedError
from .writecolumns import resolve

__all__ = ["SampleKeyError", "check_options", "known_options", "webdataset_members", "writer_failure"]

# The webdataset source's option names (jvm/.../WebDatasetOptions.java) that `options=` takes.
_WEBDATASET = ("maxShardBytes", "keyColumn", "clsColumn", "invalidKeys")
_KNOWN = {"parquet": (), "webdataset": _WEBDATASET}
# Options that are arguments of `write` itself: set them there, once.
_ARGUMENTS = {"samplesPerShard": "samples_per_shard=", "codecs": "codecs=", "path": "path"}
_INTEGER = re.compile(r"[+-]?[0-9]+")  # what Java's Long.parseLong takes (after trim)
_JAVA_LONG_MAX = (1 << 63) - 1
_JAVA_TRIM = "".join(map(chr, range(33)))  # String.trim() strips these, and no other space


class SampleKeyError(SparkfeedError, ValueError):
    """A webdataset write failed on a sample key: invalid (`.`, `/`, whitespace, ...), null or
    empty, or twice in one shard. The message is the writer's, naming the key, its column and
    where, with what to pass to `sparkfeed.write`; the Spark error is its `__cause__`."""


def known_options(format: str) -> tuple[str, ...]:
    """The option names `write(format=format, options=...)` takes."""
    return _KNOWN[format]


def _spark_str(value) -> str:
    """An option value as Spark's `DataFrameWriter.option` makes it: booleans `true`/`false`,
    anything else `str()`."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _canonical(name, format: str) -> str:
    """The option's own spelling (Spark reads option names in any case), or a ValueError naming
    the unknown one and the ones `format` knows."""
    if not isinstance(name, str):
        raise ValueError(f"`options` names should be strings, but got {name!r}")
    known = {n.lower(): n for n in _KNOWN[format]}
    if name.lower() in known:
        return known[name.lower()]
    argument = {n.lower(): a for n, a in _ARGUMENTS.items()}.get(name.lower())
    if argument is not None:
        raise ValueError(f"`options` has {name!r}, which is sparkfeed.write's own argument "
                         f"{argument}; pass it there")
    takes = (f"it takes {', '.join(repr(n) for n in _KNOWN[format])}" if _KNOWN[format] else
             "it takes none (Spark's Parquet writer options are set by sparkfeed.write from its "
             "arguments; the options are those of format='webdataset')")
    raise ValueError(f"`options` has {name!r}, which format={format!r} does not know; {takes}")


def _check_value(name: str, text: str, types: Mapping, case_sensitive: bool = True) -> str:
    """The value to pass (a column option in the DataFrame's spelling, as Spark resolves it), or
    a ValueError for a value the webdataset source would refuse, before any Spark job runs."""
    trimmed = text.strip(_JAVA_TRIM)  # as the source reads it: Long.parseLong(text.trim())
    if name == "maxShardBytes" and not (_INTEGER.fullmatch(trimmed)
                                        and 0 < int(trimmed) <= _JAVA_LONG_MAX):
        raise ValueError(f"`options['maxShardBytes']` should be a positive integer, but got "
                         f"maxShardBytes={text!r} (the source reads a Java long: at most "
                         f"{_JAVA_LONG_MAX}, only ASCII spaces and controls trimmed)")
    if name == "invalidKeys" and text.lower() not in ("error", "sanitize"):
        raise ValueError(f"`options['invalidKeys']` should be 'error' or 'sanitize', "
                         f"but got invalidKeys={text!r}")
    if name in ("keyColumn", "clsColumn"):
        text = resolve(text, types, case_sensitive, f"`options['{name}']`")
    if name == "keyColumn" and types[text].simpleString() != "string":
        raise ValueError(f"`options['keyColumn']` names column {text!r} of type "
                         f"{types[text].simpleString()}; sample keys must be strings (cast it)")
    integers = ("tinyint", "smallint", "int", "bigint")
    if name == "clsColumn" and types[text].simpleString() not in integers:
        raise ValueError(f"`options['clsColumn']` names column {text!r} of type "
                         f"{types[text].simpleString()}; the .cls member holds an integer column")
    return text


def check_options(options, format: str, types: Mapping,
                  case_sensitive: bool = True) -> dict[str, str]:
    """The options to pass to the data source, names in their own spelling and values as Spark
    strings (columns in the DataFrame's spelling), or a ValueError naming the first bad one.
    `types`: column name -> Spark type."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ValueError("`options` should map data source option names to values, such as "
                         f"{{'invalidKeys': 'sanitize'}}, but got options={options!r}")
    out: dict[str, str] = {}
    for name, value in options.items():
        canonical = _canonical(name, format)
        if canonical in out:
            raise ValueError(f"`options` sets {canonical!r} twice (option names are "
                             "case-insensitive); keep one")
        if value is None:
            raise ValueError(f"`options[{name!r}]` is None; leave the option out for its default")
        out[canonical] = _check_value(canonical, _spark_str(value), types, case_sensitive)
    if "keyColumn" in out and out.get("clsColumn") == out["keyColumn"]:
        raise ValueError(f"`options` names column {out['keyColumn']!r} as both keyColumn and "
                         "clsColumn; a column is either the key or the .cls member")
    return out


# The webdataset writer's task errors about sample keys (jvm/.../KeyPolicy.java and
# WebDatasetDataWriter.java), as one line of the Spark error's text.
_KEY_ERROR = re.compile(r"java\.lang\.IllegalArgumentException: ((?:invalid sample key|sample key "
                        r"in column|duplicate sample key) [^\n]*)")
_ADVICE = re.compile(r"Use option (\w+)=(\w+)")


def writer_failure(exc: BaseException, dataset: str) -> SampleKeyError | None:
    """The SampleKeyError that `exc` (a failed webdataset save, classic or Connect) stands for,
    its advice worded for `sparkfeed.write`; None when it failed for another reason."""
    found = _KEY_ERROR.search(str(exc))
    if found is None:
        return None
    message = _ADVICE.sub(lambda m: f"Pass options={{{m[1]!r}: {m[2]!r}}} to sparkfeed.write",
                          found[1])
    return SampleKeyError(f"dataset {dataset!r}: {message}")


# ---------------------------------------------------------------- webdataset member names

# A member extension, and a column name that becomes part of one (jvm/.../SampleLayout.java).
_SAFE_NAME = re.compile(r"[A-Za-z0-9_\-]+")
_INTEGERS = ("tinyint", "smallint", "int", "bigint")


def _key_and_cls(types: Mapping, options: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The key column and the .cls column the JVM writer picks (SampleLayout.plan): keyColumn
    (default `key`, data unless a string or named), clsColumn else the only integer column."""
    key = options.get("keyColumn", "key")
    if key not in types or (types[key].simpleString() != "string" and "keyColumn" not in options):
        key = None
    cls = options.get("clsColumn", "label")
    if cls in types and cls != key and types[cls].simpleString() in _INTEGERS:
        return key, cls
    integers = [n for n, t in types.items() if t.simpleString() in _INTEGERS]
    return key, (integers[0] if len(integers) == 1 else None)


def _member_ext(name: str, type_name: str, codec: str | None, cls: bool) -> str | None:
    """One column's member extension before collisions: codec (jpeg -> jpg) or bin, cls, txt;
    None for a column of the one json member."""
    if type_name == "binary":
        if codec is None:
            return "bin"
        if not _SAFE_NAME.fullmatch(codec):
            raise ValueError(f"the codec {codec!r} of column {name!r} is not a valid tar member "
                             "extension for format='webdataset': it may hold only letters, "
                             "digits, '_' and '-'")
        return "jpg" if codec.lower() == "jpeg" else codec.lower()
    if cls:
        return "cls"
    return "txt" if type_name == "string" else None


def _qualified(name: str, ext: str, why: str) -> str:
    """`<column>.<ext>`, or a ValueError when the column's name cannot be part of a member name."""
    if not _SAFE_NAME.fullmatch(name):
        raise ValueError(f"column {name!r} would be part of a tar member name ({name}.{ext}, "
                         f"{why}) with format='webdataset', and such a column name may hold only "
                         "letters, digits, '_' and '-'; rename it (for example with "
                         ".withColumnRenamed)")
    return f"{name}.{ext}"


def webdataset_members(types: Mapping, options: Mapping[str, str],
                       codecs: Mapping[str, str]) -> dict[str, str]:
    """column -> tar member extension as the JVM writer plans them, or the ValueError it would
    raise only once the write is planned (after the count job): a column name that must be part
    of a member name (`<column>.txt` among several string columns, `<column>.bin` among several
    binary ones) holding other than letters, digits, '_' and '-', or a codec that is no
    extension. The key column is left out."""
    key, cls = _key_and_cls(types, options)
    exts = {n: _member_ext(n, t.simpleString(), codecs.get(n), n == cls)
            for n, t in types.items() if n != key}
    strings = [n for n, t in types.items() if n != key and t.simpleString() == "string"]
    if len(strings) > 1:
        for name in strings:
            exts[name] = _qualified(name, "txt", "there being several string columns")
    owners = Counter(e for e in exts.values() if e is not None)
    owners["json"] += any(e is None for e in exts.values())  # the json member of the others
    for name, ext in exts.items():
        if ext is not None and owners[ext] > 1:
            exts[name] = _qualified(name, ext, f"there being several columns written as .{ext}")
    return {n: "json" if e is None else e for n, e in exts.items()}
