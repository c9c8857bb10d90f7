"""Where a write goes: the path Spark is given, how messages show it, and the refusals about the
place itself (a `.json` root, an overwrite of what the DataFrame reads), before any Spark job."""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import re
from urllib.parse import unquote, urlsplit

from . import storage
from .errors import SparkfeedError


class OverwriteInputError(SparkfeedError, ValueError):
    """`mode="overwrite"` of a path the DataFrame reads: the old data would be deleted before
    Spark reads it."""




# A URL without an authority, as Hadoop prints one: `file:/data/ds`, `hdfs:/data/ds` (the default
# namenode). Two letters at least: `C:/x` is no scheme.
_NO_AUTHORITY = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):(?!//)(.*)", re.DOTALL)


def _spark_path(path: str) -> str:
    """What Spark is given: a URL as is, a local path as an absolute file:/// URL. Hadoop's
    spelling without an authority is that URL with an empty one: `file:/a` is `file:///a` (and
    `file:a` a relative local path), `hdfs:/a` is `hdfs:///a`. (Before, `file:/data/ds`, which
    Spark itself prints, was taken for a relative local path: the dataset went to
    `./file:/data/ds`; `hdfs:/data/ds` went there too, on the driver's disk.)"""
    bare = _NO_AUTHORITY.fullmatch(path)
    if bare and bare[1].lower() == "file":
        path = bare[2]
    elif bare and bare[2].startswith("/"):
        return f"{bare[1]}://{bare[2]}".rstrip("/")
    if "://" in path:
        return path.rstrip("/")
    return "file://" + os.path.abspath(os.path.expanduser(path))


def _location(url: str) -> tuple[str, str, str]:
    """(scheme, authority, path) of a Spark or fsspec path, so that two spellings of one place
    compare equal: `file:/a`, `file:///a` and `/a`; `s3a://b/k` and `s3://b/k`; `%20` and ` `.
    A local path is resolved (symlinks, `..`)."""
    url = storage.normalise_url(url)
    if "://" not in url and not url.startswith("file:"):
        return "file", "", os.path.realpath(os.path.expanduser(url))
    parts = urlsplit(url)
    path = posixpath.normpath(unquote(parts.path) or "/")
    if parts.scheme in ("", "file", "local"):
        return "file", "", os.path.realpath(path)
    return parts.scheme.lower(), parts.netloc.lower(), path


# A webdataset dataset read with spark.read.format("webdataset") is no input file to Spark; its
# table (jvm/.../WebDatasetTable.java) names its qualified root in the logical plan instead.
_WEBDATASET_RELATION = re.compile(r"RelationV2\[.*\] webdataset:(.+)$", re.MULTILINE)


def _inputs(df) -> list[str]:
    """The files `df` reads (`inputFiles()`) and the roots of the webdataset datasets it reads
    (from its plan as `explain` prints it). Both are DataFrame methods, so this runs the same on
    a classic session and over Spark Connect."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text):  # explain() prints, on both kinds of session
        df.explain(extended=True)
    return list(df.inputFiles()) + sorted(set(_WEBDATASET_RELATION.findall(text.getvalue())))


def _refuse_overwriting_input(df, spark_path: str, dataset: str) -> None:
    """An OverwriteInputError when `df` reads a file at or under `spark_path`, or the webdataset
    dataset there: overwrite deletes the old data before Spark reads it (Spark's own
    `df.write.mode("overwrite")` then fails with FILE_NOT_EXIST, the data gone, or, where a shuffle
    happened to read first, works by luck; a webdataset read found nothing and 0 samples were
    committed). A host given on one side only still counts as the same place (`hdfs:///a` and
    `hdfs://nn/a`)."""
    scheme, host, root = _location(spark_path)
    for f in _inputs(df):
        s, h, p = _location(f)
        if s == scheme and (h == host or not h or not host) and \
                (p == root or p.startswith(root.rstrip("/") + "/")):
            raise OverwriteInputError(
                f"cannot overwrite {dataset!r}: the DataFrame being written reads from it ({f}), "
                "and overwrite deletes the old data before Spark reads it; write to a new path "
                "instead")



def _refuse_json_root(spark_path: str, dataset: str) -> None:
    """A ValueError, before any Spark job, for a dataset root whose name ends in `.json`:
    `read_manifest`, `DataLoader` and `index` take such a path for the manifest file itself (one
    kept apart from its data), so the dataset could not be loaded by its path. (Before, the
    Parquet write put its manifest inside as a stray `<name>.json.tmp-…` and returned as if it had
    succeeded; the webdataset write committed and then failed reading its manifest back.)"""
    if spark_path.rstrip("/").endswith(".json"):
        raise ValueError(f"`path` should not end in '.json', but got {dataset!r}: sparkfeed reads "
                         "a path ending in '.json' as a manifest file, not as a dataset directory, "
                         "so the dataset could not be loaded by its path; choose another name "
                         "(for example without the '.json')")


def _is_nonempty(fs, root: str) -> bool | None:
    """None: nothing there; False: an empty directory; True: a file or a non-empty directory."""
    fs.invalidate_cache(root)
    if not fs.exists(root):
        return None
    return not fs.isdir(root) or bool(fs.ls(root, detail=False))



def _shown(url: str) -> str:
    """A dataset's path as messages show it: a local path without `file://`."""
    return url[len("file://"):] if url.startswith("file://") else url

