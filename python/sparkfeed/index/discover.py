"""Find the files of a dataset that sparkfeed did not write, and what format they are.

`path` is a directory (walked recursively; hidden and `_`-prefixed names ignored, as Spark
does), a glob, or a list of files. A path that exists is that path even when its name holds
`*`, `?` or `[`; only a path that does not exist is taken as a glob, and in a glob a directory
part that exists as written (`runs/exp[1]/*.parquet`) is that directory. For a glob or a list, the
dataset root is the deepest directory holding them all. Hive partition directories (`label=3/`)
become partition values. Only regular files (or links to them) are data: a FIFO, socket or
device would block or fail on open, so a directory or glob leaves them out with a warning
naming them, and a list naming one is an error.

In a directory, Parquet is every file named `.parquet`/`.pq`/`.parq` and every file with no
extension at all (Hive writes `000000_0`, Hadoop jobs `part-m-00000`; pyarrow reads them too);
other names (`.txt`, `.json`, `.crc`, ...) are left out with one warning that counts them.
"""

from __future__ import annotations

import glob
import logging
import posixpath
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .. import retries, storage
from ..errors import ManifestError
from . import inside_delta
from .hive import hive_partition

__all__ = ["DataFile", "Listing", "discover", "guess_format", "data_file",
           "data_files", "refuse_compressed_tars", "FORMATS"]

FORMATS = ("parquet", "webdataset", "delta")
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
TAR_SUFFIXES = (".tar",)
COMPRESSED_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst", ".tar.lz4")
_GLOB_CHARS = "*?["
_NAMED = 3  # file names a left-out warning shows
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataFile:
    """One file: its full path in the filesystem, its path relative to the root, size, version."""

    full: str
    rel: str
    size: int
    mtime: float | None = None
    etag: str | None = None
    partition: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Listing:
    """What `discover` found: the filesystem, the root, and the files (sorted by relative path)."""

    fs: object
    root: str
    url: str           # the root as the user named it (fsspec URL or local path)
    explicit: bool     # a glob or a list: the root was derived, and `manifest=` is required
    files: tuple[DataFile, ...]
    has_delta_log: bool = False


def file_version(info: dict) -> tuple[float | None, str | None]:
    """(mtime, etag) from an fsspec `info` dict: local files have `mtime`, object stores an
    ETag (s3fs: `ETag`, gcsfs: `etag`/`md5Hash`) and/or `LastModified`/`updated`."""
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    mtime = info.get("mtime")
    if mtime is None:
        for key in ("LastModified", "last_modified", "updated", "modified"):
            if info.get(key) is not None:
                value = info[key]
                mtime = value.timestamp() if hasattr(value, "timestamp") else None
                break
    if isinstance(mtime, (int, float)) and not isinstance(mtime, bool):
        mtime = float(mtime)
    else:
        mtime = None
    return mtime, (str(etag).strip('"') if etag else None)


def _ignored(rel: str) -> bool:
    """Whether a listed file is no data, as Spark's listing decides (`shouldFilterOutPathName`):
    a hidden (`.x`) or `_`-prefixed part (`_SUCCESS`, `_delta_log/`) is ignored, but not a
    partition directory of a key that starts with `_` (`_source=web/`: Spark writes and reads
    those, and ignoring them left such a table's files out)."""
    *dirs, name = rel.split("/")
    return name.startswith((".", "_")) or any(
        d.startswith(".") or (d.startswith("_") and "=" not in d) for d in dirs)


def data_file(info: dict, root: str, dataset: str) -> DataFile:
    """A listed file; `rel`, the name the manifest records, is the file's own name: an HTTP
    listing gives URLs, %-escaped, which `storage.join` escapes again when the file is read."""
    name = info["name"].rstrip("/")
    rel = posixpath.relpath(name, root) if root != "/" else name.lstrip("/")
    if storage.is_http_url(name):
        rel = urllib.parse.unquote(rel)
    storage.check_relative(rel, dataset)
    mtime, etag = file_version(info)
    return DataFile(full=name, rel=rel, size=int(info["size"]), mtime=mtime, etag=etag,
                    partition=hive_partition(rel))


def _with_sizes(fs, infos: list[dict]) -> list[dict]:
    """The listing's entries, each with its size: an HTTP directory listing (links in a page)
    has none, so those files are asked for theirs (a HEAD request each, concurrently)."""
    missing = [k for k, i in enumerate(infos) if i.get("size") is None]
    if not missing:
        return infos
    with ThreadPoolExecutor(max_workers=min(32, len(missing))) as pool:
        found = list(pool.map(lambda k: fs.info(infos[k]["name"]), missing))
    out = list(infos)
    for k, info in zip(missing, found):
        out[k] = {**infos[k], **{key: v for key, v in info.items() if v is not None}}
    return out


def _common_root(names: list[str]) -> str:
    """The deepest directory holding every file. fsspec names HTTP files by their URLs, whose
    `//` a path join would fold: the scheme stays out of it."""
    scheme = ""
    if all("://" in n for n in names):
        scheme = names[0].split("://", 1)[0] + "://"
        names = [n.split("://", 1)[1] for n in names]
    return scheme + (posixpath.commonpath([posixpath.dirname(n) or "/" for n in names]) or "/")


def _url_of(fs, root: str, like: str) -> str:
    """`root` (a path inside `fs`) as a URL of the same kind as the user's `like`."""
    if "://" not in like:
        return root
    return fs.unstrip_protocol(root)


def is_glob(path: str) -> bool:
    """Whether `path` looks like a pattern (`*`, `?`, `[`); `discover` takes it as one only
    when no file or directory of that name exists."""
    return any(c in path for c in _GLOB_CHARS)


def _literal_dirs(fs, root: str) -> str:
    """`root` (a glob) with its leading directory parts that exist as written escaped, so
    `runs/exp[1]/*.parquet` looks in `exp[1]`, not `exp1`. Parts after the first that does not
    exist are a pattern; the last part is always one (the whole path did not exist)."""
    parts = root.split("/")
    escaped = list(parts)
    for k, part in enumerate(parts[:-1]):
        if not is_glob(part):
            continue
        if not storage.exists(fs, "/".join(parts[:k + 1])):
            break
        escaped[k] = glob.escape(part)
    return "/".join(escaped)


def _names(rels: list[str]) -> str:
    """A few of `rels` for a log line: "'a', 'b', 'c' and 4 more"."""
    shown = ", ".join(repr(r) for r in rels[:_NAMED])
    return shown + (f" and {len(rels) - _NAMED} more" if len(rels) > _NAMED else "")


def regular_files(fs, infos: list[dict]) -> tuple[list[dict], list[dict]]:
    """(regular files, the rest) of listed entries; directories are dropped. A link counts as
    its target, whose size and mtime it takes (the loader's version check sees the target);
    a FIFO, socket, device or dangling link is the rest. Entries without a type (some stores
    list none) are files."""
    kept, odd = [], []
    for info in infos:
        kind = info.get("type") or "file"
        if kind == "directory":
            continue
        if kind != "file" and info.get("islink"):
            try:
                info = {**fs.info(info["name"]), "name": info["name"]}  # follows the link
            except OSError:
                pass  # dangling
            kind = info.get("type") or "file"
        (kept if kind == "file" else odd).append(info)
    return kept, odd


def _warn_irregular(odd: list[dict], root: str, dataset: str) -> None:
    """One warning for the FIFOs, sockets, devices and dangling links a listing left out."""
    if odd:
        rels = sorted(posixpath.relpath(i["name"].rstrip("/"), root) for i in odd)
        log.warning("%s: left out as not regular files (FIFOs, sockets, devices or dangling "
                    "links), %d: %s", dataset, len(rels), _names(rels))


def discover(path, storage_options: dict | None = None) -> Listing:
    """The files under `path` (a directory, a glob, or a list of files), sorted. A path that
    exists is read as that path, so a directory named `run[1]` or `exp*` is no glob. Storage
    that refuses access or keeps failing (after `retries.with_retries`, an OSError of Python's
    own) is a ManifestError naming the dataset and saying which."""
    try:
        return _discover(path, storage_options)
    except OSError as exc:
        dataset = str(path[0] if isinstance(path, (list, tuple)) and path else path)
        raise ManifestError(f"cannot list the data: {_storage_failure(exc)}", dataset=dataset) from exc


def _storage_failure(exc: OSError) -> str:
    """What storage did (`retries.failure_words`, as the readers word it)."""
    if isinstance(exc, FileNotFoundError) and not retries.is_transient(exc):
        return f"a file went missing while it was listed ({exc})"
    return retries.failure_words(exc) or f"storage kept failing ({type(exc).__name__}: {exc})"


def _discover(path, storage_options: dict | None) -> Listing:
    """`discover` without its storage-error wording."""
    if isinstance(path, (list, tuple)):
        return _from_list([str(p) for p in path], storage_options)
    path = str(path)
    fs, root = storage.resolve(path, storage_options)
    exists = storage.exists(fs, root)
    if not exists and is_glob(path):
        found = fs.glob(_literal_dirs(fs, root), detail=True)
        infos, odd = regular_files(fs, list(found.values()))
        if odd:
            _warn_irregular(odd, _common_root([i["name"].rstrip("/") for i in infos + odd]), path)
        return _explicit(fs, infos, path, storage_options, _fixed_prefix(fs, root))
    if not exists:
        raise ManifestError("no such file or directory", dataset=path)
    if not fs.isdir(root):
        return _from_list([path], storage_options)
    has_log = fs.exists(f"{root}/_delta_log")
    if not has_log and inside_delta.is_partition_dir(posixpath.basename(root)):
        _refuse_inside_delta(fs, [root], root, path)
    infos = fs.find(root, detail=True, withdirs=False) if not has_log else {}
    _refuse_tables_within(fs, root, list(infos), path)
    listed = [i for i in infos.values() if not _ignored(posixpath.relpath(i["name"].rstrip("/"), root))]
    kept, odd = regular_files(fs, listed)
    _warn_irregular(odd, root, path)
    files = [data_file(i, root, path) for i in _with_sizes(fs, kept)]
    return Listing(fs, root, path, False, tuple(sorted(files, key=lambda f: f.rel)), has_log)


def _from_list(paths: list[str], storage_options: dict | None) -> Listing:
    """The named files; one that is missing or not a regular file is an error naming it."""
    if not paths:
        raise ValueError("`path` should be a directory, a glob or a non-empty list of files, but "
                         "got an empty list")
    fs, _ = storage.resolve(paths[0], storage_options)
    infos = []
    for p in paths:
        _, inner = storage.resolve(p, storage_options)
        try:
            info = fs.info(inner)
        except FileNotFoundError:
            raise ManifestError(f"no such file {p!r}", dataset=str(paths[0])) from None
        kind = info.get("type") or "file"
        if kind != "file":
            what = "a directory" if kind == "directory" else "a FIFO, socket or device"
            raise ManifestError(f"{p!r} is not a regular file but {what}; a list names data files "
                                "only", dataset=str(paths[0]))
        infos.append(info)
    return _explicit(fs, infos, paths[0], storage_options)


def _explicit(fs, infos: list[dict], like: str, storage_options, prefix: str | None = None) -> Listing:
    """The listing of files a glob matched (`prefix`: the glob's directory without a pattern)
    or a list named (`prefix` None)."""
    if not infos:
        raise ManifestError("the glob matches no files", dataset=like)
    names = [i["name"].rstrip("/") for i in infos]
    _refuse_inside_delta(fs, [posixpath.dirname(n) or "/" for n in names], prefix, like)
    root = _common_root(names)
    url = _url_of(fs, root, like)
    files = sorted((data_file(i, root, url) for i in infos), key=lambda f: f.rel)
    return Listing(fs, root, url, True, tuple(files))


def _fixed_prefix(fs, root: str) -> str:
    """The directory of a glob `root` that holds no pattern: its leading parts up to the first
    one that is a pattern (a part with `*?[` that exists as written is no pattern, as in
    `_literal_dirs`)."""
    parts = root.split("/")
    for k, part in enumerate(parts[:-1]):
        if is_glob(part) and not storage.exists(fs, "/".join(parts[:k + 1])):
            return "/".join(parts[:k]) or "/"
    return "/".join(parts[:-1]) or "/"


def _refuse_inside_delta(fs, dirs: list[str], prefix: str | None, like: str) -> None:
    """`inside_delta.table_above`'s table, refused (the files would hold its removed rows)."""
    table = inside_delta.table_above(fs, dirs, prefix)
    if table is not None:
        raise inside_delta.refusal(_url_of(fs, table, like), like)


def _refuse_tables_within(fs, root: str, names: list[str], like: str) -> None:
    """`inside_delta.table_below`'s table, refused (its removed files would be read)."""
    below = inside_delta.table_below(root, names)
    if below is not None:
        raise inside_delta.refusal(_url_of(fs, f"{root}/{below}", like), like, within=True)


def _no_extension(rel: str) -> bool:
    """A file name without a `.` (Hive's `000000_0`): Parquet when the data are Parquet."""
    return "." not in posixpath.basename(rel)


def _is_data(rel: str, format: str) -> bool:
    """Whether a file found in a directory is data of `format`, by its name (see `data_files`)."""
    if format == "parquet":
        return rel.lower().endswith(PARQUET_SUFFIXES) or _no_extension(rel)
    return rel.lower().endswith(TAR_SUFFIXES)


def _is_companion(rel: str, format: str) -> bool:
    """A file that belongs beside the data without being data: a tar's DALI index (`x.tar.idx`,
    `x.idx`, which `sparkfeed.index` and DALI's `wds2idx` write), left out without a warning."""
    return format == "webdataset" and rel.lower().endswith(".idx")


def _sniffs_parquet(listing: Listing) -> bool:
    """Whether the first file without an extension starts with Parquet's magic `PAR1` (one
    4-byte read), so a Hive table of `000000_0` files needs no format=."""
    bare = [f for f in listing.files if _no_extension(f.rel)]
    if not bare:
        return False
    try:
        return listing.fs.cat_file(bare[0].full, start=0, end=4) == b"PAR1"
    except OSError:
        return False  # unreadable: the error below names what was found


def guess_format(listing: Listing, format: str | None) -> str:
    """`format`, or the format the files show: `_delta_log/` -> delta, `.parquet` -> parquet,
    `.tar` -> webdataset, files without an extension that start with `PAR1` -> parquet. A mix,
    or nothing recognisable, is an error naming examples."""
    if format is not None:
        if format not in FORMATS:
            raise ValueError(f"`format` should be one of {FORMATS} or None, but got format={format!r}")
        if listing.has_delta_log and format != "delta":
            raise ManifestError(
                f"is a Delta table (it has _delta_log/), not plain {format} data: its directory "
                "also holds the files the table removed (overwritten or deleted, not yet "
                f"vacuumed), so reading its files as plain {format} would deliver removed rows; "
                "index it as a Delta table (format='delta', or no format; CLI: drop --format)",
                dataset=listing.url)
        return format
    if listing.has_delta_log:
        return "delta"
    parquet = [f.rel for f in listing.files if f.rel.lower().endswith(PARQUET_SUFFIXES)]
    tars = [f.rel for f in listing.files if f.rel.lower().endswith(TAR_SUFFIXES)]
    if parquet and tars:
        raise ManifestError(f"holds both Parquet files (e.g. {parquet[0]!r}) and tar files (e.g. "
                            f"{tars[0]!r}); index them apart, or pass format=", dataset=listing.url)
    if parquet or (not tars and _sniffs_parquet(listing)):
        return "parquet"
    if tars:
        return "webdataset"
    refuse_compressed_tars(listing)
    example = f" (e.g. {listing.files[0].rel!r})" if listing.files else ""
    raise ManifestError(
        f"holds no _sparkfeed.json and no data that sparkfeed.index recognises{example}: expected "
        "Parquet files (.parquet, or no extension), WebDataset tars (.tar) or a Delta table "
        "(_delta_log/). Datasets are made with sparkfeed.write(df, path, ...), or indexed with "
        "`sparkfeed index PATH`", dataset=listing.url)


def refuse_compressed_tars(listing: Listing) -> None:
    """Compressed tars (`.tar.gz`, `.tgz`, ...) are an error that says why and what to do: the
    loader reads tar members where they lie, by offset (as DALI's reader does, through the same
    index), which a compressed stream does not allow."""
    packed = [f.rel for f in listing.files if f.rel.lower().endswith(COMPRESSED_TAR_SUFFIXES)]
    if packed:
        raise ManifestError(f"holds compressed tars (e.g. {packed[0]!r}, {len(packed)} in all): sparkfeed "
                            "reads tar members in place by offset, which a compressed stream does not "
                            "allow; decompress them first (e.g. `gunzip`; JPEG and PNG members gain "
                            "nothing from it) and index the .tar files", dataset=listing.url)


def data_files(listing: Listing, format: str) -> list[DataFile]:
    """The files of `format` in the listing. Explicitly listed files (a glob, a list) are all
    taken. In a directory: for webdataset the `.tar` files; for parquet the `.parquet`/`.pq`/
    `.parq` files and the files with no extension (Hive's `000000_0`; pyarrow.dataset reads
    every visible file). Other files but a tar's DALI index (`_is_companion`) are left out with
    one warning that counts them and names a few, so rows are never dropped silently."""
    if listing.explicit:
        return list(listing.files)
    taken = [f for f in listing.files if _is_data(f.rel, format)]
    left = [f.rel for f in listing.files if not _is_data(f.rel, format) and not _is_companion(f.rel, format)]
    if left:
        rule = ("named .parquet/.pq/.parq or without an extension" if format == "parquet"
                else "named .tar")
        log.warning("%s: left out as not %s data (only files %s are read; pass a glob or a list "
                    "of files to read others), %d: %s", listing.url, format, rule, len(left),
                    _names(left))
    return taken
