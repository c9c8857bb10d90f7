"""`sparkfeed.index`: build the manifest of Parquet, WebDataset or Delta data that sparkfeed
did not write, so the loader reads it in place (no rewrite).

    m = sparkfeed.index("lake/events/")                          # writes lake/events/_sparkfeed.json
    m = sparkfeed.index("ro/shards/", manifest="work/shards.json")  # data read-only: manifest apart
    loader = sparkfeed.DataLoader("ro/shards/", manifest="work/shards.json", batch_size=256)

The stages, one module each: `discover` (list files, guess the format; `hive` types the
partition directories' values),
`parquet` (footers), `tar` (one scan per tar, DALI index), `delta` (the table's log), `gather`
(a local thread pool or Spark executors), `build` (entries -> a validated Manifest, written).
`open_manifest` is what the loader calls to find a dataset's manifest and its data.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shlex
import time

from .. import retries, storage
from ..errors import ManifestError, redact
from ..manifest import MANIFEST_NAME, Manifest, read_manifest
from .build import build_manifest, save
from .discover import FORMATS, discover, guess_format

__all__ = ["index", "open_manifest", "MODES"]
log = logging.getLogger(__name__)
_IN_MEMORY_BAR_FILES = 256  # a loader indexing this many files itself shows a progress bar

MODES = ("error", "overwrite")


def _check_args(format, mode, version, spark, manifest, storage_options) -> None:
    """Refuse bad arguments before anything is listed or read, each naming what was expected."""
    if manifest is not None and not isinstance(manifest, (str, os.PathLike)):
        raise ValueError("`manifest` should be where to write the manifest (a directory or a .json "
                         f"path/URL, str or os.PathLike) or None, but got manifest={manifest!r}")
    if manifest is not None:
        storage.normalise_url(os.fspath(manifest))  # (an empty one is refused before any listing)
    storage.check_options(storage_options)
    if format is not None and format not in FORMATS:
        raise ValueError(f"`format` should be one of {FORMATS} or None, but got format={format!r}")
    if mode not in MODES:
        raise ValueError(f"`mode` should be one of {MODES}, but got mode={mode!r}")
    if version is not None and (isinstance(version, bool) or not isinstance(version, (int, str))
                                and not hasattr(version, "isoformat")):
        raise ValueError("`version` should be a Delta table version (int) or a timestamp "
                         f"(datetime or ISO-8601 string), but got version={version!r}")
    if spark is not None and spark is not True and not hasattr(spark, "createDataFrame"):
        raise ValueError(f"`spark` should be a SparkSession (classic or Spark Connect), True "
                         f"(sparkfeed.spark_session()) or None, but got spark={spark!r}")


def _session(spark):
    if spark is True:
        from ..session import spark_session

        return spark_session()
    return spark


def index(path, format: str | None = None, *, manifest: str | None = None, spark=None,
          version=None, storage_options: dict | None = None, mode: str = "error",
          progress: bool = True) -> Manifest:
    """Index the data at `path` and write its manifest; returns the Manifest.

    `path` is a directory (walked recursively; hidden and `_`-prefixed names ignored; Parquet
    is its `.parquet`/`.pq`/`.parq` files and files with no extension, and other files are left
    out with a warning), a glob (only when no such path exists), or a list of files; only
    regular files are read (`discover`). `format=None` guesses (`_delta_log/` -> "delta",
    `.parquet` -> "parquet", `.tar` -> "webdataset"). The manifest goes to
    `path/_sparkfeed.json`, or to `manifest=` (a str or os.PathLike: a directory or a `.json`
    path; required for a glob or a list, and for read-only data), which then records where the
    data is. `storage_options` is a dict of the filesystem's (fsspec's) options. `spark=` (a
    SparkSession, classic or Spark Connect, or True) reads footers and scans tars on executors;
    otherwise a local thread pool with a progress bar. `version=` picks a Delta version (int) or time (datetime/ISO string). `mode="error"`
    refuses to replace an existing manifest; "overwrite" replaces it.

    Example: `sparkfeed.index("plain/")`, then `sparkfeed.DataLoader("plain/", batch_size=256)`.
    """
    _check_args(format, mode, version, spark, manifest, storage_options)
    manifest = None if manifest is None else os.fspath(manifest)
    started = time.monotonic()
    listing = discover(path, storage_options)
    if listing.explicit and manifest is None:
        raise ValueError(f"`manifest` should say where to write the manifest when `path` is a glob, "
                         f"a file or a list of files (a directory or a .json path), but got "
                         f"manifest=None (path={path!r})")
    fmt = guess_format(listing, format)
    if version is not None and fmt != "delta":
        raise ValueError(f"`version` is for Delta tables, but {listing.url!r} holds {fmt} data")
    target = manifest if manifest is not None else listing.url
    _check_target(target, mode, storage_options)
    built = build_manifest(listing, fmt, spark=_session(spark), version=version,
                           storage_options=storage_options, apart=manifest is not None,
                           progress=progress)
    save(built, target, storage_options)
    m = built.manifest
    log.info("indexed %s: %d %s files, %d samples in %.1fs; manifest at %s", redact(listing.url),
             len(m.shards), fmt, m.num_samples, time.monotonic() - started, redact(target))
    return m


def _check_target(target: str, mode: str, storage_options) -> None:
    from ..manifest import manifest_file

    fs, name = manifest_file(target, storage_options)
    if mode == "error" and fs.exists(name):
        from ..write import DatasetExistsError

        raise DatasetExistsError(f"{name!r} already exists; pass mode='overwrite' (CLI: "
                                 "--overwrite) to replace it")


def in_memory(path, version=None, storage_options: dict | None = None) -> Manifest:
    """The manifest of Parquet or Delta data at `path` (a Delta table at `version`), indexed in
    memory and not saved: what `sparkfeed inspect PATH --version N` shows."""
    _check_args(None, "error", version, None, None, storage_options)
    return _index_in_memory(os.fspath(path), storage_options, version)


def open_manifest(path, manifest=None, storage_options: dict | None = None) -> tuple[Manifest, str]:
    """(manifest, data root) for a loader: what `DataLoader(path, manifest=...)` reads.

    `manifest` is None (the manifest at `path`; Parquet or Delta data without one, a directory,
    a glob or one file, is indexed in memory; tar data is refused), a Manifest, or a path/URL of
    a manifest kept apart. The data root is `path` when given (the root the manifest recorded
    when `path` is what was indexed: a glob or a file in it), else the root the manifest
    recorded, else the manifest's own directory.
    """
    if path is None and manifest is None:
        raise ValueError("`path` should be a dataset path/URL (or pass manifest=), but got "
                         "path=None and manifest=None")
    if isinstance(manifest, Manifest):
        return manifest, _data_root(path, manifest, manifest.root, storage_options)
    if manifest is not None:
        if not isinstance(manifest, (str, os.PathLike)):
            raise ValueError(f"`manifest` should be a Manifest or a path/URL, but got "
                             f"manifest={manifest!r}")
        m = read_manifest(os.fspath(manifest), storage_options)
        return m, _data_root(path, m, os.fspath(manifest), storage_options)
    path = os.fspath(path)
    try:
        return read_manifest(path, storage_options), path
    except ManifestError as exc:
        # a manifest storage refused or kept failing to give is no missing manifest: say so
        cause = exc.__cause__
        refused = isinstance(cause, PermissionError) or (cause is not None and retries.is_transient(cause))
        if refused or not _indexable_in_memory(path, storage_options):
            raise
    m = _index_in_memory(path, storage_options)
    return m, m.data_root or path


def _indexable_in_memory(path: str, storage_options) -> bool:
    """Whether `path` is data without a manifest that a loader may index itself: a directory
    with no manifest, a glob, or one file (Parquet or Delta; tars are refused by name later).
    A path that does not exist (a glob, or a missing path) is handed on too, so that indexing
    globs it or says so by name; one that exists is that path even with `*?[` in its name."""
    fs, root = storage.resolve(path, storage_options)
    if not fs.exists(root):
        return True
    if fs.isdir(root):
        return not fs.exists(f"{root}/{MANIFEST_NAME}")
    return fs.isfile(root) and not root.endswith(".json")


def _data_root(path, m: Manifest, manifest_url: str, storage_options=None) -> str:
    if path is not None:
        return _given_root(os.fspath(path), m, storage_options)
    if m.data_root is not None:
        return m.data_root
    url = storage.normalise_url(manifest_url)
    return url.rsplit("/", 1)[0] if url.endswith(".json") else url


def _given_root(path: str, m: Manifest, storage_options) -> str:
    """The data root for a loader given `path` and a manifest kept apart: `path`, unless `path`
    is the glob or the file that was indexed (`index('lake/part-*.parquet', manifest=...)`),
    inside the root the manifest recorded: then that root, which the shard paths are relative to
    (before, every shard read as missing: `lake/part-*.parquet/part-0.parquet`). A glob or file
    that does not name the manifest's shards is refused rather than read as the whole dataset."""
    root = m.data_root
    url = storage.normalise_url(path)
    if root is None or not url.startswith(root.rstrip("/") + "/"):
        return path
    fs, where = storage.resolve(path, storage_options)
    if fs.isdir(where):
        return path
    shards = [f"{root.rstrip('/')}/{s.path}" for s in m.shards]
    named = all(fnmatch.fnmatchcase(s, url) for s in shards) if not fs.exists(where) else shards == [url]
    if not named:
        raise ValueError(f"`path` {path!r} is a file or glob inside the data root the manifest records "
                         f"({root!r}) but does not name its {len(shards)} shard(s); pass that root, or "
                         "path=None to read the data where the manifest says")
    return root


def _index_in_memory(path: str, storage_options, version=None) -> Manifest:
    started = time.monotonic()
    listing = discover(path, storage_options)
    fmt = guess_format(listing, None)
    if version is not None and fmt != "delta":
        raise ValueError(f"`version` is for Delta tables, but {listing.url!r} holds {fmt} data")
    if fmt == "webdataset":
        raise ManifestError(f"holds WebDataset tars but no {MANIFEST_NAME}; indexing tars reads "
                            f"every byte, so run it once: `sparkfeed index {path}` (add --manifest "
                            "URL for read-only data)", dataset=path)
    m = build_manifest(listing, fmt, version=version, storage_options=storage_options,
                       apart=listing.explicit, progress=len(listing.files) >= _IN_MEMORY_BAR_FILES).manifest
    save_as = f"{shlex.quote(str(path))} --manifest DIR" if listing.explicit else shlex.quote(str(path))
    log.info("%s has no %s: indexed %d %s files in memory in %.2fs; save it with `sparkfeed index "
             "%s`", redact(path), MANIFEST_NAME, len(m.shards), fmt, time.monotonic() - started,
             redact(save_as))
    return m
