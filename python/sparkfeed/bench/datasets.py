"""Synthetic benchmark data, written with Spark through `sparkfeed.write` and cached (where no
Spark session can start, with pyarrow and tarfile and indexed: `bench.nospark`).

Every dataset lives under `cache/<name>-<key>/`, where the key hashes the parameters that shape
it; a directory whose `_done` marker exists is reused as is. The image set is written once as
Parquet by Spark; the peers' layouts are derived from those same bytes: a JPEG folder tree
(`<label>/<id>.jpg`, torchvision ImageFolder's layout) and WebDataset tars written by Spark's
`webdataset` data source (`sparkfeed.write(..., format="webdataset")`) from the same rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass

import pyarrow.dataset as pads

from . import nospark

log = logging.getLogger(__name__)
NUM_LABELS = 100
NUM_FLOATS = 8
DONE = "_done"


@dataclass(frozen=True)
class Data:
    """Where the benchmark data lies (all paths local) and how it was made."""

    tabular: str            # sparkfeed Parquet dataset: id, label, f0..f7, caption
    images: str             # sparkfeed Parquet dataset: id, label, image (JPEG), caption
    image_folder: str       # <label>/<id>.jpg files with the same JPEG bytes
    webdataset: str | None  # sparkfeed WebDataset tars of the same rows (None: not available)
    webdataset_note: str
    build_s: float          # seconds spent building (0 when everything came from the cache)
    written_by: str = "Spark (sparkfeed.write)"  # or "pyarrow + tarfile, indexed" where Spark cannot start


def _key(**params) -> str:
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]


def _spark():
    # The Python workers must import sparkfeed (the writer gathers footers in a Spark job). The
    # session's `spark.pyspark.python` conf alone does not reach local-mode workers on Spark 4.3,
    # so the environment variable is set as well, before the JVM starts.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    import sparkfeed

    return sparkfeed.spark_session(app_name="sparkfeed-bench", master="local[2]",
                                   conf={"spark.sql.shuffle.partitions": "4"})


def spark_usable() -> bool:
    """Whether a local Spark session can start here: pyspark importable and a Java runtime."""
    import importlib.util

    home = os.environ.get("JAVA_HOME")
    java = shutil.which("java") or (home and os.path.exists(os.path.join(home, "bin", "java")))
    return importlib.util.find_spec("pyspark") is not None and bool(java)


def _active_spark():
    """The process's active Spark session, or None (without importing pyspark when unused)."""
    if "pyspark" not in sys.modules:
        return None
    from pyspark.sql import SparkSession

    return SparkSession.getActiveSession()


def _fresh(path: str) -> bool:
    if os.path.exists(os.path.join(path, DONE)):
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True


def _mark(path: str, params: dict) -> None:
    with open(os.path.join(path, DONE), "w") as f:
        json.dump(params, f)


def _failed_before_jar(wds: str, note_file: str) -> bool:
    """Whether the cached WebDataset set is a failure to write it (its `_note` says why) older
    than the sparkfeed jar: before, a failure (no jar yet) was cached for good, and the
    webdataset rows stayed skipped after `make jar` until the cache was deleted by hand."""
    if not (os.path.exists(os.path.join(wds, DONE)) and os.path.exists(note_file)):
        return False
    with open(note_file) as f:
        if not f.read():
            return False
    from ..session import jar_path

    try:
        return os.path.getmtime(jar_path()) > os.path.getmtime(note_file)
    except OSError:  # no jar (FileNotFoundError): the failure stands
        return False


def _write_tabular(spark, path: str, n: int, shard: int, group: int) -> None:
    import sparkfeed
    from pyspark.sql import functions as F

    df = spark.range(n).select(
        F.col("id"),
        (F.col("id") * NUM_LABELS / n).cast("int").alias("label"),
        *[F.rand(seed=i).cast("float").alias(f"f{i}") for i in range(NUM_FLOATS)],
        F.concat(F.lit("a synthetic caption for row "), F.col("id").cast("string")).alias("caption"))
    sparkfeed.write(df, path, samples_per_shard=shard, samples_per_row_group=group,
                    cluster_by="label", mode="overwrite")


def image_shape(side: int, square: bool) -> tuple[int, int]:
    """(width, height) of the generated JPEGs: square, or 4:3 landscape with `side` the shorter."""
    return (side, side) if square else (round(side * 4 / 3), side)


def jpeg(i: int, width: int, height: int) -> bytes:
    """Image `i` as a JPEG: a smooth gradient plus noise, which compresses like a photo, not
    like flat colour; the same bytes for the same (i, width, height) in every writer."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(int(i))
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * (i % 7 + 1)) % 256, (y * (i % 5 + 1)) % 256, ((x + y) * (i % 3 + 1)) % 256], -1)
    arr = (base + rng.integers(0, 48, (height, width, 3))).clip(0, 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _jpeg_partition(width: int, height: int):
    def make(batches):
        for pdf in batches:
            pdf = pdf.copy()
            pdf["image"] = [jpeg(int(i), width, height) for i in pdf["id"]]
            yield pdf
    return make


def _write_images(spark, path: str, n: int, shape: tuple[int, int], shard: int, group: int) -> None:
    import sparkfeed
    from pyspark.sql import functions as F

    base = spark.range(0, n, numPartitions=2).select(
        F.col("id"), (F.col("id") * NUM_LABELS / n).cast("int").alias("label"),
        F.concat(F.lit("image "), F.col("id").cast("string")).alias("caption"))
    schema = "id long, label int, caption string, image binary"
    df = base.mapInPandas(_jpeg_partition(*shape), schema)
    sparkfeed.write(df, path, samples_per_shard=shard, samples_per_row_group=group,
                    cluster_by="label", codecs={"image": "jpeg"}, mode="overwrite")


def _write_folder(images: str, folder: str) -> None:
    """The same JPEG bytes as files, `<label>/<id>.jpg`."""
    table = pads.dataset(images, format="parquet", exclude_invalid_files=True).to_table(
        columns=["id", "label", "image"])
    for label in range(NUM_LABELS):
        os.makedirs(os.path.join(folder, f"{label:03d}"), exist_ok=True)
    for rid, label, img in zip(*(table.column(c).to_pylist() for c in ("id", "label", "image"))):
        with open(os.path.join(folder, f"{label:03d}", f"{rid:08d}.jpg"), "wb") as f:
            f.write(img)


def _write_webdataset(spark, images: str, path: str, shard: int) -> str:
    """Spark re-reads the image Parquet and writes it as tars; '' or why it could not."""
    import sparkfeed

    try:
        df = spark.read.parquet(images)
        sparkfeed.write(df, path, format="webdataset", samples_per_shard=shard,
                        codecs={"image": "jpeg"}, mode="overwrite")
        return ""
    except Exception as exc:  # the JVM source may be missing; the bench still runs without it
        log.warning("webdataset writing failed, its runner will be skipped: %s", exc)
        return f"not available: sparkfeed.write(format='webdataset') failed: {str(exc)[:200]}"


def build(cache: str, samples: int, images: int, image_shape: tuple[int, int], workers: int,
          tabular: bool = True, image: bool = True, tabular_shard: int | None = None) -> Data:
    """Build (or reuse) the datasets asked for (`tabular`, `image`); returns their paths.
    `image_shape` is the (width, height) of the generated JPEGs.

    `tabular_shard` fixes the rows per shard (the scaling study: more shards, not bigger ones)."""
    started, spark = time.perf_counter(), None
    borrowed = _active_spark() is not None  # a caller's session (a test's) is left running
    # enough shards and row groups that workers share the work and pruning has something to prune
    t_shard = tabular_shard or max(1000, samples // 8)
    t_group = max(256, t_shard // 16)
    i_shard = max(100, images // (2 * workers))
    i_group = max(32, min(256, i_shard // 8))
    tp = dict(kind="tabular", n=samples, shard=t_shard, group=t_group, v=1)
    w, h = image_shape
    ip = dict(kind="images", n=images, side=h, shard=i_shard, group=i_group, v=1)
    if w != h:
        ip["width"] = w  # square sets keep the key they had
    tab = os.path.join(cache, f"tabular-{_key(**tp)}")
    img = os.path.join(cache, f"images-{_key(**ip)}")
    folder, wds = img + "-folder", img + "-wds"
    spark_here, wrote = spark_usable(), False
    if not spark_here:
        log.info("no Spark here (pyspark or Java missing): the bench data are written with pyarrow "
                 "and tarfile, then indexed with sparkfeed.index")
    if tabular and _fresh(tab):
        if spark_here:
            spark = spark or _spark()
            _write_tabular(spark, tab, samples, t_shard, t_group)
        else:
            nospark.write_tabular(tab, samples, t_shard, t_group, NUM_LABELS, NUM_FLOATS)
        _mark(tab, tp)
        wrote = True
    if image and _fresh(img):
        if spark_here:
            spark = spark or _spark()
            _write_images(spark, img, images, image_shape, i_shard, i_group)
        else:
            nospark.write_images(img, images, image_shape, i_shard, i_group, NUM_LABELS)
        _mark(img, ip)
        wrote = True
    if image and _fresh(folder):
        _write_folder(img, folder)
        _mark(folder, ip)
    note_file = os.path.join(wds, "_note")
    if image and spark_here and _failed_before_jar(wds, note_file):
        os.remove(os.path.join(wds, DONE))  # the jar was (re)built since the tars failed: try again
    if image and _fresh(wds):
        if spark_here:
            spark = spark or _spark()
            note = _write_webdataset(spark, img, wds, i_shard)
        else:
            nospark.write_webdataset(img, wds, i_shard)
            note = ""
        os.makedirs(wds, exist_ok=True)
        with open(note_file, "w") as f:
            f.write(note)
        _mark(wds, ip)
        wrote = True
    wds_note = "not built: no image scenario asked for"
    if os.path.exists(note_file):
        with open(note_file) as f:
            wds_note = f.read()
    built = time.perf_counter() - started if wrote else 0.0
    if spark is not None and not borrowed:
        spark.stop()  # the JVM stays up (py4j) but idle; its memory is not counted as the loaders'

    return Data(tabular=tab, images=img, image_folder=folder,
                webdataset=None if wds_note else wds, webdataset_note=wds_note, build_s=built,
                written_by="Spark (sparkfeed.write)" if spark_here else "pyarrow + tarfile, indexed by sparkfeed.index")


def leading_shards(cache: str, full: str, rows: int) -> str | None:
    """A dataset of the first shards of the Spark-written dataset `full` that hold exactly `rows`
    rows (the files hard-linked, or copied where links fail; the manifest is `full`'s, cut), so
    the scaling study writes only its largest size with Spark. None when no run of whole shards
    holds exactly `rows`."""
    import dataclasses

    from ..manifest import read_manifest, write_manifest

    m = read_manifest(full)
    counts = [0]
    for shard in m.shards:
        counts.append(counts[-1] + shard.num_samples)
    if rows not in counts[1:]:
        return None
    shards = m.shards[:counts.index(rows)]
    path = os.path.join(cache, f"tabular-{_key(leading=os.path.basename(full), rows=rows, v=1)}")
    if not _fresh(path):
        return path
    os.makedirs(path)
    for shard in shards:
        src, dst = os.path.join(full, shard.path), os.path.join(path, shard.path)
        try:
            os.link(src, dst)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(src, dst)
    write_manifest(dataclasses.replace(m, shards=shards, num_samples=rows, root="",
                                       num_bytes=sum(s.num_bytes for s in shards)), path)
    _mark(path, {"leading": full, "rows": rows})
    return path


def synthetic_manifest(cache: str, shards: int, groups: int = 4, rows: int = 256) -> str:
    """A manifest of `shards` Parquet shards that do not exist: planning reads only the manifest."""
    from ..manifest import parse_manifest, write_manifest

    path = os.path.join(cache, f"manifest-{_key(shards=shards, groups=groups, rows=rows, v=1)}")
    if not _fresh(path):
        return path
    os.makedirs(path)
    entries = []
    for k in range(shards):
        lo = k * groups * rows
        stat = lambda a, b: {"id": {"min": a, "max": b, "null_count": 0},  # noqa: E731
                             "label": {"min": a * NUM_LABELS // (shards * groups * rows),
                                       "max": b * NUM_LABELS // (shards * groups * rows),
                                       "null_count": 0}}
        entries.append({"path": f"part-{k:06d}.parquet", "num_samples": groups * rows,
                        "num_bytes": groups * rows * 48, "stats": stat(lo, lo + groups * rows - 1),
                        "row_groups": [{"num_samples": rows, "stats": stat(lo + g * rows, lo + (g + 1) * rows - 1)}
                                       for g in range(groups)]})
    doc = {"sparkfeed_manifest": 1, "format": "parquet", "created_by": {"sparkfeed": "bench"},
           "schema": [{"name": "id", "type": "int64"}, {"name": "label", "type": "int32"}],
           "num_samples": shards * groups * rows, "num_bytes": sum(e["num_bytes"] for e in entries),
           "shards": entries}
    write_manifest(parse_manifest(doc, dataset=path), path)
    _mark(path, {"shards": shards})
    return path


def files(path: str, suffix: str) -> list[str]:
    """Data files under `path` ending in `suffix`, sorted (Spark's `_`/`.` files left out)."""
    out = []
    for root, _dirs, names in os.walk(path):
        out += [os.path.join(root, n) for n in names if n.endswith(suffix) and n[0] not in "_."]
    return sorted(out)


def warm(paths: list[str]) -> int:
    """Read every file once so that timings see the page cache; returns the bytes read."""
    total = 0
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                total += len(chunk)
    return total


def describe(data: Data) -> dict:
    return asdict(data)
