"""Files of a Delta table named as plain Parquet: a glob, a list, a file or a partition
directory inside a table, or a directory walked that holds one. A Delta table's directories
also hold the files it removed (overwritten or deleted, not yet vacuumed), which read as plain
Parquet would come back as live rows; its root, read as Delta, gives the live ones. `discover`
refuses such paths with `refusal`, naming the table's root."""

from __future__ import annotations

import posixpath
from concurrent.futures import ThreadPoolExecutor

from .. import storage
from ..errors import ManifestError


def is_partition_dir(name: str) -> bool:
    """A Hive/Delta partition directory's name (`split=val`), as `hive.hive_partition` reads it."""
    key, eq, _ = name.partition("=")
    return bool(eq and key) and not name.startswith((".", "_"))


def dirs_to_check(dirs: list[str], prefix: str | None) -> list[str]:
    """The directories that may be the root of a Delta table holding `dirs` (the directories of
    the files read): each of them and those above it up to `prefix` (a glob's fixed directory;
    None: no further), then above that while the directory is a partition (`split=val/`), up
    to the first that is not one, where a partitioned table's root is."""
    found: set[str] = set()
    for d in dirs:
        while d not in found:
            found.add(d)
            within = prefix is not None and d != prefix and d.startswith(prefix.rstrip("/") + "/")
            if d in ("/", "") or not (within or is_partition_dir(posixpath.basename(d))):
                break
            d = posixpath.dirname(d) or "/"
    return sorted(found)


def _holds_delta_log(fs, directory: str) -> bool:
    """Whether `directory` has `_delta_log/`; a look-up storage refuses is taken as no."""
    try:
        return storage.exists(fs, f"{directory.rstrip('/')}/_delta_log")
    except PermissionError:
        return False


def table_above(fs, dirs: list[str], prefix: str | None) -> str | None:
    """The root of the Delta table that the files in `dirs` lie inside (a directory on the way
    up, `dirs_to_check`, holds `_delta_log/`; the outermost), or None. One look-up per
    directory, run concurrently."""
    dirs = dirs_to_check(dirs, prefix)
    with ThreadPoolExecutor(max_workers=max(1, min(32, len(dirs)))) as pool:
        held = list(pool.map(lambda d: _holds_delta_log(fs, d), dirs))
    tables = [d for d, h in zip(dirs, held) if h]
    return min(tables, key=len) if tables else None


def table_below(root: str, names: list[str]) -> str | None:
    """The directory (relative to `root`) of a Delta table below `root`, where a listed file
    lies in its `_delta_log/`; None where none does. No I/O: the walk's own listing."""
    for name in names:
        parts = posixpath.relpath(name.rstrip("/"), root).split("/")
        if "_delta_log" in parts[:-1]:
            return "/".join(parts[:parts.index("_delta_log")])
    return None


def refusal(table: str, like: str, within: bool = False) -> ManifestError:
    """The error for files of the Delta table `table` (a URL) named by `like` as plain Parquet."""
    where = "holds the Delta table" if within else "lies inside the Delta table"
    return ManifestError(
        f"{where} {table!r} (it has _delta_log/): a Delta table's directories also hold the "
        "files it removed (overwritten or deleted, not yet vacuumed), which reading its files as "
        "plain Parquet would deliver as rows; index or read the table's root instead "
        f"(`sparkfeed index {table}`, sparkfeed.DataLoader({table!r})), with a filter on its "
        "partition columns to read only some of them", dataset=like)
