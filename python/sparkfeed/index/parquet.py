"""Parquet from any writer -> manifest entries, from the footers alone (never a data page).

Each file's footer gives its row count, row groups and per-row-group statistics (the writer's
own footer code, `sparkfeed.footer.entry`, so indexed and written datasets agree). Hive
partition directories (`split=train/`) add columns whose per-shard min = max, so a filter on
them prunes whole files without opening them.
"""

from __future__ import annotations

import logging

import pyarrow as pa

from ..errors import ManifestError, ShardReadError
from ..arrowtypes import arrow_type, common_type
from ..writefooters import _footer_entry, _gather_entries
from .discover import DataFile, Listing
from .hive import partition_types, typed_partition
from .gather import run_local
from .types import unsupported_kind

__all__ = ["parquet_common_type", "parquet_entries", "parquet_schema", "partition_stats"]

log = logging.getLogger(__name__)


def _local_entry(fs, f: DataFile, dataset: str) -> dict:
    try:
        return _footer_entry(fs, f.full, f.rel, f.size)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise ShardReadError(f"cannot read the Parquet footer ({type(exc).__name__}: {exc}); not a "
                             "Parquet file, or truncated", dataset=dataset, shard=f.rel) from exc


def parquet_entries(listing: Listing, files: list[DataFile], spark=None,
                    storage_options: dict | None = None, progress: bool = True) -> list[dict]:
    """One manifest entry (with its file schema) per file: on Spark executors with `spark`
    (the writer's footer job), else on a local thread pool with a progress bar."""
    if spark is not None:
        url = listing.root if "://" not in listing.url else listing.url
        by_rel = {e["path"]: e for e in _gather_entries(
            spark, [(f.full, f.rel, f.size) for f in files], url, storage_options)}
        return [by_rel[f.rel] for f in files]
    return run_local(lambda f: _local_entry(listing.fs, f, listing.url), files, "reading Parquet footers",
                     listing.url, progress)


def partition_stats(value, num_rows: int) -> dict:
    """The statistics of a partition column in one file: min = max = its value."""
    if value is None:
        return {"min": None, "max": None, "null_count": num_rows}
    return {"min": value, "max": value, "null_count": 0}


def _merged_schema(entries: list[dict], dataset: str) -> list[list[str]]:
    """The files' columns, in order of first appearance (Spark's `mergeSchema`): a file without
    a column others have (added later, as Delta's schema evolution also does) is read with
    nulls there, and logged; one column with two types is an error naming both files, unless
    both read as one type without loss (`filters.common_type`: a file's `null` column, None in
    every row, or string and large_string); a `null` column in place of a struct the other
    files hold is that struct's leaves, all nulls."""
    types: dict[str, tuple[str, str]] = {}  # column -> (type, first file holding it so)
    for e in entries:
        names = [name for name, _ in e["schema"]]
        if len(set(names)) < len(names):
            _refuse_twice(sorted({n for n in names if names.count(n) > 1}), e["path"], dataset)
        for name, t in e["schema"]:
            seen = types.setdefault(name, (t, e["path"]))
            common = seen[0] if seen[0] == t else parquet_common_type(seen[0], t)
            if common is not None:
                types[name] = (common, seen[1] if common == seen[0] else e["path"])
            else:
                raise ManifestError(
                    f"the Parquet files disagree on column {name!r}: {seen[1]!r} holds it as {seen[0]} but "
                    f"{e['path']!r} as {t}; index the files of one schema apart (pass a glob or a list)",
                    dataset=dataset)
    structs = {name.rsplit(".", 1)[0] for name in types if "." in name}
    nulls_for = {name for name, (t, _) in types.items()
                 if t == "null" and any(s == name or s.startswith(name + ".") for s in structs)}
    types = {name: seen for name, seen in types.items() if name not in nulls_for}
    held = [{name for name, _ in e["schema"]} for e in entries]
    for name in types:
        n = sum(name not in names for names in held)
        if n:
            log.warning("%s: %d of %d files have no column %r (%r has it): read as nulls there", dataset,
                        n, len(entries), name, types[name][1])
    return [[name, t] for name, (t, _) in types.items()]


def _refuse_twice(twice: list[str], path: str, dataset: str) -> None:
    """A file holding one column name twice: a column `a.b` beside a struct `a` with a field `b`
    (both would be the column `a.b`), or two top-level columns of one name (pyarrow writes
    those; which one a reader gets is arbitrary)."""
    leaves = [n for n in twice if "." in n]
    if leaves:
        raise ManifestError(f"{path!r} holds {leaves} both as a column and as a struct's leaf (a "
                            "struct is delivered as its leaves, named by their path); rename one "
                            "of them", dataset=dataset)
    raise ManifestError(f"{path!r} holds two columns named {twice}; rename one of them",
                        dataset=dataset)


def parquet_common_type(a: str, b: str) -> str | None:
    """The manifest type of a column held as type strings `a` and `b` by two files, or None."""
    ta, tb = arrow_type(a), arrow_type(b)
    if ta is None or tb is None:
        return None
    common = common_type(ta, tb)
    return None if common is None else a if common.equals(ta) else b if common.equals(tb) else str(common)


def parquet_schema(entries: list[dict], files: list[DataFile], dataset: str) -> list[dict]:
    """Manifest schema of the files plus their partition columns; adds each file's partition
    values and their statistics to its entry (in place) and drops the per-file schemas. A column
    a file lacks (read as nulls there) is recorded as null in every row of it, as a `null`
    column is, so a filter on the column prunes the file."""
    file_schema = _merged_schema(entries, dataset)
    names = {n for n, _ in file_schema}
    for e in entries:
        missing = names - {n for n, _ in e.pop("schema")}  # read as nulls in this file
        for stats, rows in [(e["stats"], e["num_samples"])] + [(g["stats"], g["num_samples"]) for g in e["row_groups"]]:
            for gone in set(stats) - names:  # a `null` column where the others hold a struct
                del stats[gone]
            stats.update({name: partition_stats(None, rows) for name in missing})  # so filters prune it
    schema = [_column(n, t) for n, t in file_schema]
    types = partition_types(files, dataset)
    clash = sorted(set(types) & {n for n, _ in file_schema})
    if clash:
        raise ManifestError(f"partition key(s) {clash} of directory names are also columns inside "
                            f"the files (e.g. {files[0].rel!r}); rename the directories or the columns",
                            dataset=dataset)
    schema += [{"name": k, "type": t} for k, t in types.items()]
    for e, f in zip(entries, files):
        if types:
            values = typed_partition(f, types)
            e["partition"] = values
            e["stats"].update({k: partition_stats(v, e["num_samples"]) for k, v in values.items()})
    return schema


def _column(name: str, type_string: str) -> dict:
    kind = unsupported_kind(type_string)
    return {"name": name, "type": type_string, **({"unsupported": kind} if kind else {})}
