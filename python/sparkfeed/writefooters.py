"""The manifest of a Parquet write: the committed part files, their footers' statistics read on
executors (so 10,000 shards are not 10,000 footer reads on the driver), and the document."""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable, Iterator, Mapping

from . import retries, storage
from ._version import __version__
from .errors import SparkfeedError
from .manifest import Manifest, parse_manifest
from .writepaths import _shown


def _footer_entry(fs, full: str, rel: str, size: int) -> dict:
    """The manifest entry of one committed Parquet file, from its footer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from . import footer
    from .arrowtypes import INT96_UNIT

    def footer_of(source):
        pf = pq.ParquetFile(source, **INT96_UNIT)
        return pf.metadata, pf.schema_arrow

    def read_footer():
        """The footer; the storage's I/O errors stay as they are (transient ones are retried),
        pyarrow's own parse errors are `retries.CorruptData` (a corrupt footer fails at once)."""
        try:
            with fs.open(full, "rb") as f, retries.parsing(f) as watched:
                return footer_of(watched)
        except ValueError as exc:
            if not retries.ignores_ranges(exc, full, "reading each file whole for its footer"):
                raise
        data = fs.cat_file(full)  # one GET, no Range header
        with retries.parsing():
            return footer_of(pa.BufferReader(data))

    md, schema = retries.with_retries(read_footer, f"reading the footer of {full}")
    return footer.entry(md, schema, rel, size)


def _footer_entries(items: Iterable[tuple[str, str, int]], url: str,
                    storage_options: dict | None) -> Iterator[dict]:
    """Manifest entries of (full path, relative path, size) files, one fs per call. A footer
    that cannot be read is a ShardReadError naming the dataset and the file, as the local
    index's is: on an executor, a raw pyarrow error named neither (`gather.executor_failure`
    raises it again on the driver as the ShardReadError)."""
    import pyarrow as pa

    from .errors import ShardReadError

    fs, _ = storage.resolve(url, storage_options)
    dataset = _shown(url)
    for full, rel, size in items:
        try:
            entry = _footer_entry(fs, full, rel, size)
        except (OSError, ValueError, pa.ArrowException) as exc:
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line: it travels as text
            raise ShardReadError(f"cannot read the Parquet footer ({reason}); not a Parquet file, "
                                 "or truncated", dataset=dataset, shard=rel) from exc
        yield entry



def _committed_parquet(fs, root: str) -> list[tuple[str, str, int]]:
    """(full path, relative path, size) of the committed part files, from one listing."""
    fs.invalidate_cache(root)
    found = []
    for info in fs.ls(root, detail=True):
        name = info["name"].rstrip("/")
        base = posixpath.basename(name)
        if info.get("type") == "file" and base.startswith("part-") and base.endswith(".parquet"):
            found.append((name, base, int(info["size"])))
    return sorted(found, key=lambda t: t[1])



def _gather_entries(spark, files: list, url: str, storage_options) -> list[dict]:
    """Manifest entries of the committed (full, rel, size) files, each footer read on an
    executor (`gather.run_spark`: DataFrame operations only, so also over Spark Connect)."""
    from .index import gather

    entries = gather.run_spark(spark, lambda rows: _footer_entries(rows, url, storage_options), files,
                               "full string, rel string, size long",
                               "the statistics of the written shards (no manifest was written)",
                               _shown(url))
    return sorted(entries, key=lambda e: e["path"])


def _build_manifest(spark, entries: list[dict], codecs: Mapping[str, str], path: str) -> Manifest:
    schemas = {json.dumps(e.pop("schema")) for e in entries}
    if len(schemas) != 1:
        raise SparkfeedError(f"dataset {path!r}: the written Parquet files disagree on their "
                             f"schema ({sorted(schemas)}); no manifest was written")
    schema = [{"name": n, "type": t, **({"codec": codecs[n]} if n in codecs else {})}
              for n, t in json.loads(schemas.pop())]
    doc = {"sparkfeed_manifest": 1, "format": "parquet",
           "created_by": {"sparkfeed": __version__, "spark": spark.version},
           "schema": schema,
           "num_samples": sum(e["num_samples"] for e in entries),
           "num_bytes": sum(e["num_bytes"] for e in entries),
           "shards": entries}
    return parse_manifest(doc, dataset=path)

