"""Delta Lake tables -> manifest entries, from the table's log (the optional `deltalake` package).

The files of `version` (default: the latest; an int or a timestamp for time travel) and their
per-file statistics come from the log's add actions; partition values become columns with
min = max per file. Features sparkfeed cannot honour are refused before a data file is read: column mapping
(physical column names differ from the schema's; deltalake's own `to_pyarrow_table()` even
returns all-null columns for such a table), from the metadata; and deletion vectors (rows a file
still holds but the table deleted), when a live file at the version read carries one: the
feature alone, which Databricks enables on new tables, is no obstacle. A log without per-file
statistics leaves counts to the footers, which `build` reads anyway.
"""

from __future__ import annotations

import datetime as dt
import decimal
from urllib.parse import unquote

import pyarrow as pa

from .. import storage
from ..errors import ManifestError
from ..arrowtypes import leaf_fields
from ..footer import json_value, round_up, stat_type
from .parquet import partition_stats
from .types import unsupported_kind

__all__ = ["open_table", "delta_version", "delta_entries", "partition_column_stats",
           "check_features"]

# Delta truncates string statistics (32 characters by default) and timestamps to milliseconds;
# see `_bounds`.
_STRING_STATS_TRUSTED = 31
_NAMED = 3  # files an error names


def open_table(url: str, version, storage_options: dict | None, dataset: str):
    """The DeltaTable at `version` (an int, a datetime or an ISO-8601 string; None: latest).

    A version that cannot be loaded is a ManifestError saying why in the table's terms (past
    the latest version, its commits cleaned out of the log, not a Delta table at all), not
    delta-rs' own wording ("LogSegment end version 3 not the same as the specified end
    version 9")."""
    try:
        from deltalake import DeltaTable
    except ModuleNotFoundError as exc:
        raise ManifestError("is a Delta table (it has _delta_log/); reading it needs the deltalake "
                            "package: pip install 'sparkfeed[delta]'", dataset=dataset) from exc
    _check_scheme(url, dataset)
    version = delta_version(version)
    try:
        table = DeltaTable(url, storage_options=storage_options or None)
    except Exception as exc:  # deltalake raises its own errors (TableNotFoundError, DeltaError)
        raise ManifestError(_unopened(exc), dataset=dataset) from exc
    if version is None:
        return table
    latest = table.version()
    if isinstance(version, int) and version > latest:
        raise ManifestError(f"the Delta table has no version {version}: its latest is {latest}",
                             dataset=dataset)
    try:
        table.load_as_version(version)
    except Exception as exc:  # an old version whose commits the log no longer holds
        raise ManifestError(
            f"cannot load version={_shown(version)} of the Delta table (latest: {latest}): "
            f"{type(exc).__name__}: {exc}; the log no longer holds the commits of that version "
            "when they were cleaned up (delta.logRetentionDuration): pick a later version",
            dataset=dataset) from exc
    if isinstance(version, dt.datetime):
        _check_not_before_first_commit(table, url, version, storage_options, dataset)
    return table


def _check_not_before_first_commit(table, url: str, when: dt.datetime, storage_options, dataset: str) -> None:
    """A time before the table's first commit (in its log) names no version: deltalake loads
    that commit's version anyway, so the rows of a later time came out; Spark refuses. Only a
    load that landed on the log's first commit can be such a time: the check reads that commit
    alone (and looks for the one before it), not the whole history (`DeltaTable.history()`
    parses every commit of a long-lived table)."""
    loaded = table.version()
    fs, root = storage.resolve(url, storage_options)
    log_dir = f"{root.rstrip('/')}/_delta_log"
    if loaded > 0 and fs.exists(f"{log_dir}/{loaded - 1:020d}.json"):
        return  # not the first: deltalake took the last commit at or before `when`
    first_ms = _commit_ms(fs, f"{log_dir}/{loaded:020d}.json")
    if first_ms is None:
        return
    first_at = dt.datetime.fromtimestamp(first_ms / 1000, dt.timezone.utc)
    if when < first_at:
        raise ManifestError(f"the Delta table has no version at {when.isoformat()}: its first commit "
                            f"in the log (version {loaded}) is at {first_at.isoformat()}; pick a time "
                            "after it, or a version number", dataset=dataset)


def _commit_ms(fs, path: str) -> int | None:
    """The commit's time (its `commitInfo` action's `timestamp`, ms since the epoch, as
    `DeltaTable.history()` gives it); None when the commit file is gone or records none."""
    import json

    try:
        with fs.open(path, "rb") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        info = json.loads(line).get("commitInfo") if line.strip() else None
        if isinstance(info, dict) and isinstance(info.get("timestamp"), int):
            return info["timestamp"]
    return None


def delta_version(version):
    """`version` as deltalake takes it: an int (a string of digits too) or a timezone-aware
    datetime. A timestamp without a time zone is UTC (as deltalake takes a naive datetime);
    ISO-8601 strings may be a date alone, use a space or end in Z. Anything else is a
    ValueError naming `version`, before the log is read."""
    if version is None or isinstance(version, dt.datetime):
        return _aware(version)
    if isinstance(version, int) and not isinstance(version, bool):
        if version < 0:
            raise ValueError(f"`version` should be a Delta table version >= 0 or a timestamp, but got "
                             f"version={version}")
        return version
    if isinstance(version, dt.date):
        return dt.datetime.combine(version, dt.time(), dt.timezone.utc)
    text = str(version).strip()
    if text.isdigit():
        return int(text)
    try:
        return _aware(dt.datetime.fromisoformat(text))
    except ValueError:
        raise ValueError("`version` should be a Delta table version (an integer >= 0) or an "
                         "ISO-8601 timestamp (2024-05-01, 2024-05-01T12:00:00Z; UTC unless it "
                         f"names a zone), but got version={version!r}") from None


def _aware(when):
    return when if when is None or when.tzinfo is not None else when.replace(tzinfo=dt.timezone.utc)


def _shown(version) -> str:
    return version.isoformat() if isinstance(version, dt.datetime) else str(version)


def _check_scheme(url: str, dataset: str) -> None:
    """deltalake reads Delta tables from local paths and object stores (s3://, gs://, az://,
    hdfs://, ...) but not over HTTP: say so instead of its list of 50 schemes."""
    if storage.is_http_url(url):
        raise ManifestError("is a Delta table served over HTTP, which the deltalake package cannot "
                            "read (it reads local paths and object stores: s3://, gs://, az://, "
                            "hdfs://, ...); copy the table there, or index its files as they are "
                            "only if no version ever removed one", dataset=dataset)


def _unopened(exc: Exception) -> str:
    """Why deltalake could not open the table at all, in a user's terms."""
    text = f"{type(exc).__name__}: {exc}"
    if "No files in log segment" in text:
        return ("is not a Delta table: it has no _delta_log/ with a commit in it (a table's log has "
                "00000000000000000000.json or a checkpoint); drop --format delta / format='delta' "
                f"to index its files ({text})")
    return f"cannot open the Delta table: {text}"


def check_features(table, dataset: str) -> None:
    """A ManifestError naming the first table feature sparkfeed cannot honour at the loaded
    version. The deletion-vectors feature alone is no obstacle (Databricks enables it on new
    tables): only files that carry a vector are (`_refuse_deletion_vectors`)."""
    protocol = table.protocol()
    features = set(protocol.reader_features or ())
    mode = (table.metadata().configuration or {}).get("delta.columnMapping.mode", "none")
    if mode != "none" or "columnMapping" in features:
        raise ManifestError(
            f"the Delta table uses column mapping (delta.columnMapping.mode={mode!r}): its files "
            "name columns differently from its schema, so rows would be read wrongly; copy it "
            "with sparkfeed.write or rewrite it without column mapping", dataset=dataset)
    if protocol.min_reader_version > 3:
        raise ManifestError(f"the Delta table needs reader version {protocol.min_reader_version}, "
                            "newer than sparkfeed knows", dataset=dataset)
    if "deletionVectors" in features:
        _refuse_deletion_vectors(table, dataset)


def _refuse_deletion_vectors(table, dataset: str) -> None:
    """A ManifestError naming the version and (some of) the live files that carry a deletion
    vector: those files still hold rows the table deleted, which sparkfeed would deliver.
    deltalake lists only the files that carry one at the loaded version."""
    try:
        files = _files_with_deletion_vectors(table)
    except Exception as exc:  # deltalake's own errors: a vector file missing, storage failing
        raise ManifestError(
            f"the Delta table has the deletionVectors feature, and sparkfeed cannot tell which of "
            f"its files at version {table.version()} carry a deletion vector "
            f"({type(exc).__name__}: {exc}); read it with Spark, or purge the vectors (see "
            "docs/open-data.md)" + ("; this deltalake has no DeltaTable.deletion_vectors(): upgrade it"
                                    if isinstance(exc, AttributeError) else ""), dataset=dataset) from exc
    if files:
        shown = ", ".join(repr(f) for f in files[:_NAMED])
        more = f" and {len(files) - _NAMED} more" if len(files) > _NAMED else ""
        raise ManifestError(
            f"the Delta table at version {table.version()} has rows deleted by deletion vectors in "
            f"{len(files)} file(s) ({shown}{more}): those files still hold the deleted rows, which "
            "sparkfeed would deliver. Purge them, then index again: in Spark or Databricks, "
            "REORG TABLE <the table> APPLY (PURGE) rewrites those files without the deleted rows "
            "(ALTER TABLE <the table> SET TBLPROPERTIES ('delta.enableDeletionVectors' = 'false') "
            "first keeps later deletes from writing vectors); or read the table with Spark",
            dataset=dataset)


def _files_with_deletion_vectors(table) -> list[str]:
    """The loaded version's files that carry a deletion vector, relative to the table root
    (deltalake names them by URI), sorted."""
    root = table.table_uri.rstrip("/") + "/"
    found = []
    for batch in table.deletion_vectors():
        found += [unquote(p[len(root):]) if p.startswith(root) else p
                  for p in batch.column("filepath").to_pylist()]
    return sorted(found)


def _bounds(lo, hi, type_: pa.DataType):
    """Statistics safe for pruning: timestamp maxima widened by the millisecond Delta drops;
    strings that Delta may have truncated as prefix bounds (`_string_bounds`)."""
    if lo is None or hi is None:
        return None, None
    if pa.types.is_timestamp(type_) and isinstance(hi, dt.datetime):
        hi = hi + dt.timedelta(milliseconds=1)
    if (pa.types.is_string(type_) or pa.types.is_large_string(type_)) and \
            max(len(lo), len(hi)) >= _STRING_STATS_TRUSTED:
        return _string_bounds(lo, hi)
    if isinstance(lo, float) and (lo != lo or hi != hi):
        return None, None
    if pa.types.is_decimal(type_) and not (isinstance(lo, decimal.Decimal) and isinstance(hi, decimal.Decimal)):
        return None, None  # exact values only: a float bound may round past a row
    return json_value(lo, False), json_value(hi, True)


def _string_bounds(lo: str, hi: str) -> tuple[str, str | None]:
    """(min, max) of a string column of which one bound is `_STRING_STATS_TRUSTED` characters or
    longer, which Delta writers may have cut (Spark: a 32-character prefix, a tie-breaker after
    the max's; delta-rs: the max's last character raised): the min's prefix of that length,
    which is at most any value, and the max's prefix rounded up (`round_up`), which is above
    every value, whether or not the writer cut them and however it marked a cut max. A max
    that cannot be rounded up leaves the range one-sided."""
    n = _STRING_STATS_TRUSTED
    return lo[:n], (round_up(hi[:n]) if len(hi) >= n else hi)


def _file_stats(row: dict, types: dict, stat_columns: list[str]) -> dict:
    out = {}
    for name in stat_columns:
        nulls = row.get(f"null_count.{name}")
        lo, hi = _bounds(row.get(f"min.{name}"), row.get(f"max.{name}"), types[name])
        if nulls is None and lo is None:
            continue
        out[name] = {"min": lo, "max": hi, "null_count": nulls}
    return out


def delta_entries(table, dataset: str) -> tuple[list[dict], list[dict]]:
    """(manifest schema, one entry per data file) of the table's loaded version. A file the log
    records no count for (`CONVERT TO DELTA ... NO STATISTICS`, stats turned off) has
    `num_samples` None: `build` takes it from the footer it reads anyway. Partition statistics
    need the count, so `partition_column_stats` adds them afterwards."""
    fields = leaf_fields(pa.schema(table.schema().to_arrow()))  # structs as their leaves, as the log names them
    types = {f.name: f.type for f in fields}
    parts = list(table.metadata().partition_columns or ())
    columns = [{"name": f.name, "type": str(f.type),
                **({"unsupported": k} if (k := unsupported_kind(str(f.type))) else {})} for f in fields]
    stat_columns = [f.name for f in fields if f.name not in parts and stat_type(f.type)]
    rows = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    entries = []
    for row in sorted(rows, key=lambda r: r["path"]):
        n = row.get("num_records")
        entry = {"path": row["path"], "num_samples": None if n is None else int(n),
                 "num_bytes": int(row["size_bytes"]), "stats": _file_stats(row, types, stat_columns)}
        if parts:
            values = {p: row.get(f"partition.{p}") for p in parts}
            entry["partition"] = {p: json_value(v, False) for p, v in values.items()}
        entries.append(entry)
    return columns, entries


def partition_column_stats(entries: list[dict]) -> None:
    """Each entry's partition values as statistics (min = max, all null for a null value), in
    place, once every entry has its count."""
    for e in entries:
        for p, value in e.get("partition", {}).items():
            e["stats"][p] = partition_stats(value, e["num_samples"])
