"""Entries from the format modules -> one validated Manifest; then written with its DALI indexes.

A manifest that `index` builds is an ordinary manifest (version 1) with optional fields: each
shard's `mtime`/`etag` (the file's version when indexed) and `partition` values, `unsupported`
on columns that cannot become tensors, and `root` when the manifest is kept apart from the data.
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass
from urllib.parse import unquote

from .. import storage
from .._version import __version__
from ..errors import ManifestError
from ..manifest import Manifest, manifest_file, parse_manifest
from . import delta as delta_log
from .discover import DataFile, Listing, data_file, data_files, refuse_compressed_tars, regular_files
from .gather import run_local, run_spark
from .parquet import parquet_common_type, parquet_entries, parquet_schema, partition_stats
from .tar import column_of, key_column, scan_tar, scan_task, warn_of_split_samples

__all__ = ["Indexed", "build_manifest", "save", "INDEX_DIR"]
log = logging.getLogger(__name__)

INDEX_DIR = "_sparkfeed_index"  # DALI indexes, beside the manifest (`_`: listings ignore it)


@dataclass(frozen=True)
class Indexed:
    """A built manifest and the DALI index text of each tar (relative path -> text)."""

    manifest: Manifest
    dali: dict


def _versioned(entries: list[dict], files: list[DataFile]) -> None:
    """Record each file's version (mtime/ETag) in its entry, in place."""
    for e, f in zip(entries, files):
        if f.mtime is not None:
            e["mtime"] = f.mtime
        if f.etag is not None:
            e["etag"] = f.etag


def _absolute_url(listing: Listing) -> str:
    return listing.url if "://" in listing.url else listing.root


def _document(fmt: str, schema: list[dict], entries: list[dict], created: dict,
              listing: Listing, apart: bool) -> dict:
    doc = {"sparkfeed_manifest": 1, "format": fmt,
           "created_by": {"sparkfeed": __version__, **created},
           "schema": schema, "num_samples": sum(e["num_samples"] for e in entries),
           "num_bytes": sum(e["num_bytes"] for e in entries), "shards": entries}
    if apart:
        doc["root"] = _absolute_url(listing)
    return doc


def _parquet(listing, files, spark, storage_options, progress):
    entries = parquet_entries(listing, files, spark, storage_options, progress)
    schema = parquet_schema(entries, files, listing.url)
    _versioned(entries, files)
    return schema, entries


def _webdataset(listing, files, spark, storage_options, progress):
    if spark is not None:
        url, dataset = _absolute_url(listing), listing.url
        scans = run_spark(spark, lambda it: scan_task(it, url, dataset, storage_options),
                          [(f.full, f.rel, f.size) for f in files], "full string, rel string, size long",
                          "the tar scan")
    else:
        scans = run_local(lambda f: scan_tar(listing.fs, f.full, f.rel, f.size, listing.url), files,
                          "scanning tars", listing.url, progress)
    warn_of_split_samples([s.pop("ends") for s in scans], [s["path"] for s in scans], listing.url)
    exts = sorted({e for s in scans for e in s["members"]})
    schema = [key_column(exts)] + [column_of(e) for e in exts]
    dali = {}
    for s in scans:
        text = s.pop("dali_index")
        present = s.pop("present")
        s["stats"] = {e: {**s["stats"].get(e, {}), "null_count": s["num_samples"] - present.get(e, 0)}
                      for e in exts}
        if text is not None:  # (None: a tar no DALI index can describe; read streamed)
            dali[s["path"]] = text
            s["index"] = f"{INDEX_DIR}/{s['path']}.idx"
    _versioned(scans, files)
    return schema, scans, dali


def _delta(listing, version, storage_options, spark, progress):
    table = delta_log.open_table(_absolute_url(listing), version, storage_options, listing.url)
    delta_log.check_features(table, listing.url)
    schema, entries = delta_log.delta_entries(table, listing.url)
    files = _delta_files(listing, entries)
    footers = _row_groups(listing, entries, files, spark, storage_options, progress)
    _footer_stats(entries, footers, {c["name"] for c in schema})
    delta_log.partition_column_stats(entries)
    _versioned(entries, files)
    return _widened(schema, footers), entries, {"delta_version": table.version()}


def _row_groups(listing, entries, files, spark, storage_options, progress) -> list[dict]:
    """Row groups (and their statistics) of each Delta file, from its footer: the log knows
    files, not row groups, and a unit of a whole file would bound memory by file size. The
    footers, for their schemas."""
    footers = parquet_entries(listing, files, spark, storage_options, progress)
    for e, footer in zip(entries, footers):
        _from_footer(e, footer, listing.url)
    return footers


def _from_footer(entry: dict, footer: dict, dataset: str) -> None:
    """A Delta entry completed from its file's footer, in place: its row groups, and its count
    where the log records none (a table converted or written without statistics), else the
    log's count checked against the footer's."""
    if entry["num_samples"] is None:
        entry["num_samples"] = footer["num_samples"]
    elif footer["num_samples"] != entry["num_samples"]:
        raise ManifestError(f"the Delta log says {entry['path']!r} holds {entry['num_samples']} rows "
                            f"but its footer says {footer['num_samples']}", dataset=dataset)
    entry["row_groups"] = footer["row_groups"]


def _footer_stats(entries: list[dict], footers: list[dict], names: set[str]) -> None:
    """The footer's statistics of each table column that the log records none for (a log
    written without statistics, or columns past delta.dataSkippingNumIndexedCols), in place, so
    filters still prune such a table's files; where the log has some, the log's stand. A column
    a file does not hold (added to the table after it: read as nulls there) is null in every row
    of the file and its row groups, so a filter on the column prunes the file."""
    for e, footer in zip(entries, footers):
        e["stats"] = {**{k: v for k, v in footer["stats"].items() if k in names}, **e["stats"]}
        missing = names - {n for n, _ in footer["schema"]} - set(e.get("partition") or ())
        for stats, rows in [(e["stats"], e["num_samples"])] + [(g["stats"], g["num_samples"]) for g in e["row_groups"]]:
            stats.update({name: partition_stats(None, rows) for name in missing})


def _widened(schema: list[dict], footers: list[dict]) -> list[dict]:
    """The log's schema with each column in the widest type its files hold it in without loss:
    Delta has one string type, but delta-rs writes the Arrow type it was given, so a table that
    Polars wrote holds large_string (large_binary, large_list) where pandas' appends hold string.
    The reader then only ever widens a file's column (`parquet_common_type`)."""
    held = [dict(map(tuple, footer["schema"])) for footer in footers]
    out = []
    for column in schema:
        t = column["type"]
        for types in held:
            in_file = types.get(column["name"])
            if in_file is not None:  # a type that cannot hold both stays: the reader names the file
                t = parquet_common_type(t, in_file) or t
        out.append({**column, "type": t})
    return out


def _delta_files(listing: Listing, entries: list[dict]) -> list[DataFile]:
    """The listed file of each log entry (its version on storage: a link's is its target's); a
    file the log names but storage lacks (vacuumed), or holds as no regular file, is an error
    naming it."""
    fs, root = listing.fs, listing.root
    kept, _ = regular_files(fs, list(fs.find(root, detail=True, withdirs=False).values()))
    found = {posixpath.relpath(i["name"].rstrip("/"), root): i for i in kept}
    files = []
    for e in entries:
        rel = e["path"] if e["path"] in found else unquote(e["path"])
        storage.check_relative(rel, listing.url)
        if rel not in found:
            raise ManifestError(f"the Delta log names {e['path']!r}, which storage does not have "
                                "(vacuumed, or the table is incomplete)", dataset=listing.url)
        e["path"] = rel
        files.append(data_file(found[rel], root, listing.url))
    return files


def build_manifest(listing: Listing, fmt: str, *, spark=None, version=None,
                   storage_options: dict | None = None, apart: bool = False,
                   progress: bool = True) -> Indexed:
    """The manifest of the listed data (nothing is written)."""
    created, dali = {"indexed_from": fmt}, {}
    if fmt == "delta":
        schema, entries, more = _delta(listing, version, storage_options, spark, progress)
        created.update(more)
    else:
        if fmt == "webdataset":  # never index the plain tars and silently leave these out
            refuse_compressed_tars(listing)
        files = data_files(listing, fmt)
        if not files:
            raise ManifestError(f"holds no {fmt} files", dataset=listing.url)
        if fmt == "parquet":
            schema, entries = _parquet(listing, files, spark, storage_options, progress)
        else:
            schema, entries, dali = _webdataset(listing, files, spark, storage_options, progress)
    created = {k: str(v) for k, v in created.items()}
    doc = _document("webdataset" if fmt == "webdataset" else "parquet", schema, entries, created,
                    listing, apart)
    left_out = [f"{c['name']} ({c['unsupported']})" for c in schema if c.get("unsupported")]
    if left_out:
        log.warning("%s: %d column(s) cannot become tensors and are left out of batches: %s "
                    "(`sparkfeed inspect` lists every column; a filter may still read any of them "
                    "but maps)", listing.url, len(left_out), ", ".join(left_out))
    return Indexed(parse_manifest(doc, dataset=listing.url), dali)


def save(built: Indexed, target: str, storage_options: dict | None = None) -> None:
    """Write the DALI indexes (beside the manifest), then the manifest, last and atomically."""
    fs, name = manifest_file(target, storage_options)
    base = posixpath.dirname(name)
    fs.makedirs(base, exist_ok=True)
    for rel, text in built.dali.items():
        path = posixpath.join(base, INDEX_DIR, rel + ".idx")
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        with fs.open(path, "wb") as f:
            f.write(text.encode())
    # Written as is: `build_manifest` validated it (parse_manifest), so no second parse.
    # Indented JSON goes through json's pure-Python encoder: big manifests are written compact.
    indent = 1 if len(built.manifest.shards) <= 1000 else None
    storage.write_atomic(fs, name, built.manifest.to_json(indent=indent).encode())
