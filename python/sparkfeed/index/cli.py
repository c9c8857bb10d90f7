"""`sparkfeed index PATH`: build the manifest of Parquet, WebDataset or Delta data in place."""

from __future__ import annotations

import argparse

__all__ = ["add_parser"]


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the `index` subcommand to the `sparkfeed` command line."""
    p = sub.add_parser(
        "index", help="build the manifest of Parquet, WebDataset or Delta data sparkfeed did not write",
        description="Index data that sparkfeed did not write, so sparkfeed.DataLoader reads it in "
                    "place: Parquet from any writer (statistics from the footers; Hive partition "
                    "directories become columns), WebDataset tars (one scan per tar; DALI indexes "
                    "written beside the manifest) or a Delta table (files and statistics from its "
                    "log; needs the deltalake package). Writes PATH/_sparkfeed.json, or --manifest.",
        epilog="examples:\n  sparkfeed index lake/events/\n"
               "  sparkfeed index /ro/shards/ --manifest work/shards.json\n"
               "  sparkfeed index 'lake/part-*.parquet' --manifest work/m.json\n"
               "  sparkfeed index lake/table/ --version 3 --overwrite\n"
               "  sparkfeed index s3://bucket/tars/ --spark",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", nargs="+", help="a directory, a glob, or several files (local or fsspec URLs)")
    p.add_argument("--format", choices=["parquet", "webdataset", "delta"], default=None,
                   help="the data's format (default: guessed from the files)")
    p.add_argument("--manifest", metavar="URL", default=None,
                   help="where to write the manifest (a directory or a .json path) when the data is "
                        "read-only or shared; required for a glob or several files")
    p.add_argument("--spark", action="store_true",
                   help="read footers / scan tars on Spark executors (sparkfeed.spark_session())")
    p.add_argument("--version", metavar="N", default=None,
                   help="Delta table version (an integer) or timestamp (ISO-8601) to index")
    p.add_argument("--overwrite", action="store_true", help="replace an existing manifest")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


# `sparkfeed.index` arguments -> the flags that set them, for the API's argument errors
_FLAGS = {"manifest": "--manifest", "version": "--version", "format": "--format", "path": "PATH",
          "mode": "--overwrite", "spark": "--spark"}


def run(args) -> int:
    """Index `args.path`; a bad argument the API refuses (a glob without --manifest, --version
    on Parquet) is a `UsageError` naming the flag (one line, exit 2), not a traceback."""
    import time

    from ..cli import flags_named
    from . import index

    version = args.version
    if version is not None and version.lstrip("-").isdigit():
        version = int(version)
    path = args.path[0] if len(args.path) == 1 else args.path
    started = time.monotonic()
    with flags_named(_FLAGS):
        m = index(path, args.format, manifest=args.manifest, spark=True if args.spark else None,
                  version=version, mode="overwrite" if args.overwrite else "error",
                  progress=not args.no_progress)
    where = args.manifest or f"{args.path[0].rstrip('/')}/_sparkfeed.json"
    unsupported = [c.name for c in m.schema if c.unsupported]
    print(f"indexed {len(m.shards)} {m.created_by.get('indexed_from', m.format)} files: "
          f"{m.num_samples} samples, {m.num_bytes} bytes, {len(m.schema)} columns"
          + (f" ({len(unsupported)} unsupported: {', '.join(unsupported)})" if unsupported else "")
          + f" in {time.monotonic() - started:.1f}s -> {where}")
    return 0
