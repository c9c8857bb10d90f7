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

    path = args.path[0] if len(args.path) == 1 else args.path
    started = time.monotonic()
    with flags_named(_FLAGS):
        version = _checked(args)
        m = index(path, args.format, manifest=args.manifest, spark=True if args.spark else None,
                  version=version, mode="overwrite" if args.overwrite else "error",
                  progress=not args.no_progress)
    unsupported = [c.name for c in m.schema if c.unsupported]
    columns = f"{len(m.schema)} column" + ("" if len(m.schema) == 1 else "s")
    print(f"indexed {len(m.shards)} {m.created_by.get('indexed_from', m.format)} files: "
          f"{m.num_samples} samples, {m.num_bytes} bytes, {columns}"
          + (f" ({len(unsupported)} unsupported: {', '.join(unsupported)})" if unsupported else "")
          + f" in {time.monotonic() - started:.1f}s -> {_written(args)}")
    return 0


def _checked(args):
    """The Delta version to pass on, after refusing what would fail only once every file was
    read, or write somewhere else than asked: an empty PATH or --manifest (both name the file
    system's root, '/'), a --manifest that is an existing file but no .json, a manifest that
    would go to read-only HTTP storage, a --version that is neither a number nor a time."""
    from .. import storage
    from ..cli import UsageError
    from .delta import delta_version

    if any(not p.strip() for p in args.path):
        raise UsageError("PATH should be a directory, a glob or files, but got an empty string")
    if args.manifest is not None:
        _check_manifest_flag(args.manifest)
    target = args.manifest if args.manifest is not None else args.path[0]
    if storage.is_http_url(target):
        raise UsageError(f"cannot write the manifest to {target!r}: HTTP storage is read-only; pass "
                         "--manifest with a local path or a writable store (s3://, gs://, ...)"
                         + (", and PATH stays where it is" if args.manifest is None else ""))
    return None if args.version is None else delta_version(args.version)


def _check_manifest_flag(manifest: str) -> None:
    """--manifest is a directory (new or existing) or a .json path: not empty, and not an
    existing file of another kind, which the write would take for a directory to create."""
    from .. import storage
    from ..cli import UsageError

    if not manifest.strip():
        raise UsageError("--manifest should be a directory or a .json path, but got an empty string")
    if manifest.endswith(".json"):
        return
    fs, root = storage.resolve(manifest)
    if fs.isfile(root):
        raise UsageError(f"--manifest {manifest!r} is an existing file but no .json: pass a directory "
                         "(the manifest goes in it as _sparkfeed.json) or a path ending in .json")


def _written(args) -> str:
    """The manifest file written, as the user named it: PATH/_sparkfeed.json, --manifest if
    it is a .json path, else --manifest/_sparkfeed.json."""
    from ..manifest import MANIFEST_NAME

    where = args.manifest if args.manifest is not None else args.path[0]
    return where if where.endswith(".json") else f"{where.rstrip('/')}/{MANIFEST_NAME}"
