"""Spark preprocessing job: a raw image-text corpus -> train/val sparkfeed datasets.

    spark-submit --jars "$(sparkfeed jar)" examples/preprocess_images.py \
        --input raw/ --output ds/ --format parquet
    python examples/preprocess_images.py --input raw/ --output ds/      # the same, local mode

Input layout (as `examples/make_raw_corpus.py` writes it, and as CLIP-style crawls ship):
`RAW/captions.csv` (columns path,caption,label; or `RAW/captions.jsonl`) and the files it
names under `RAW/images/<class>/<id>.jpg`.

What it does, in one pass over the data:

1. reads the captions, and the image bytes with Spark's `binaryFile` source (recursively),
   joined on the path relative to RAW (`images/<class>/<file>`);
2. validates every image with PIL in `mapInPandas` (an undecodable file is counted, never
   fatal), hashes the original bytes (sha256) and re-encodes it as JPEG with its longer side at
   most `--max-side`;
3. drops, and counts, captions naming a missing image, undecodable images, exact duplicates
   (same sha256; the first path wins), images whose shorter side is under `--min-side`, and
   images whose aspect ratio exceeds `--max-aspect` -- in that order, each record counted once;
4. splits train/val deterministically: a record is in val when a hash of its content hash
   falls under `--val-fraction` (the same image always lands in the same split);
5. writes `DS/train` and `DS/val` with `sparkfeed.write(..., cluster_by="label",
   codecs={"image": "jpeg"})`, then `DS/_summary.json` with every count.

Columns written: image (JPEG bytes), label (int), caption, key (sha256 hex), width, height.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

REASONS = ("missing_image", "undecodable", "duplicate", "too_small", "bad_aspect", "train", "val")
VALIDATED_SCHEMA = ("path string, caption string, label int, key string, image binary, "
                    "width int, height int, orig_width int, orig_height int, status string")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="raw corpus: captions.csv|jsonl and images/")
    p.add_argument("--output", required=True, help="dataset root; train/ and val/ are written inside")
    p.add_argument("--format", choices=("parquet", "webdataset"), default="parquet")
    p.add_argument("--max-side", type=int, default=128, help="longer side after resizing (default 128)")
    p.add_argument("--min-side", type=int, default=16, help="drop images whose shorter side is smaller")
    p.add_argument("--max-aspect", type=float, default=3.0, help="drop images with a longer ratio")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--samples-per-shard", type=int, default=10_000)
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the re-encoded images")
    args = p.parse_args(argv)
    if args.max_side < 1 or args.min_side < 1 or args.max_aspect < 1 or args.samples_per_shard < 1:
        p.error("--max-side, --min-side, --samples-per-shard should be positive and --max-aspect >= 1")
    if not 0 <= args.val_fraction < 1:
        p.error(f"--val-fraction should be in [0, 1), but got {args.val_fraction}")
    return args


def find_captions(root: str) -> str:
    """RAW/captions.csv or RAW/captions.jsonl; a clear error naming what is missing."""
    if "://" in root:  # a cluster URL: let Spark resolve it
        return root.rstrip("/") + "/captions.csv"
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"--input {root!r} does not exist or is not a directory")
    for name in ("captions.csv", "captions.jsonl"):
        if (base / name).is_file():
            if not (base / "images").is_dir():
                raise FileNotFoundError(f"--input {root!r} has {name} but no images/ directory "
                                        f"({base / 'images'} is missing)")
            return str((base / name).resolve())
    raise FileNotFoundError(f"--input {root!r} has neither captions.csv nor captions.jsonl")


def validate_images(max_side: int, quality: int):
    """The mapInPandas function: decode with PIL, hash, resize, re-encode; never raises per row."""

    def run(frames):
        import hashlib

        import pandas as pd
        from PIL import Image

        def one(content):
            if content is None:
                return None, None, None, None, None, None, "missing_image"
            key = hashlib.sha256(content).hexdigest()
            try:
                with Image.open(io.BytesIO(content)) as img:
                    w, h = img.size
                    img.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale
                    img = img.convert("RGB")  # forces a full decode: truncated files fail here
                    img.thumbnail((max_side, max_side))
                    buf = io.BytesIO()
                    img.save(buf, format="JPEG", quality=quality)
                    return key, buf.getvalue(), img.width, img.height, w, h, "ok"
            except Exception:  # noqa: BLE001 - any PIL failure means "undecodable", counted
                return key, None, None, None, None, None, "undecodable"

        for pdf in frames:
            cols = list(zip(*[one(c) for c in pdf["content"]])) or [[]] * 7
            out = pd.DataFrame({"path": pdf["path"], "caption": pdf["caption"], "label": pdf["label"]})
            for name, values in zip(("key", "image", "width", "height", "orig_width",
                                     "orig_height", "status"), cols):
                out[name] = list(values)
            for name in ("width", "height", "orig_width", "orig_height"):
                out[name] = out[name].astype("Int32")
            yield out

    return run


def read_raw(spark, root: str, captions_path: str):
    """Captions left-joined to image bytes on `images/<class>/<file>` (content null: missing)."""
    from pyspark.sql import functions as F

    schema = "path string, caption string, label int"
    if captions_path.endswith(".jsonl"):
        captions = spark.read.schema(schema).json(captions_path)
    else:
        captions = (spark.read.schema(schema).option("header", True).option("multiLine", True)
                    .option("escape", '"').csv(captions_path))
    files = (spark.read.format("binaryFile").option("recursiveFileLookup", True)
             .load(root.rstrip("/") + "/images"))
    # binaryFile paths are absolute URIs; the last three segments are images/<class>/<file>
    files = files.select(F.concat_ws("/", F.slice(F.split("path", "/"), -3, 3)).alias("rel"),
                         "content")
    return captions.join(files, captions.path == files.rel, "left").drop("rel")


def classify(validated, min_side: int, max_aspect: float, val_fraction: float):
    """One `reason` per record: why it was dropped, or which split it joins."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ok = F.col("status") == "ok"
    first = Window.partitionBy(F.when(ok, F.col("key"))).orderBy("path")
    short = F.least("orig_width", "orig_height")
    aspect = F.greatest("orig_width", "orig_height") / short
    in_val = F.pmod(F.xxhash64("key"), F.lit(1_000_000)) < F.lit(int(val_fraction * 1_000_000))
    reason = (F.when(F.col("status") != "ok", F.col("status"))
              .when(F.row_number().over(first) > 1, "duplicate")
              .when(short < min_side, "too_small")
              .when(aspect > max_aspect, "bad_aspect")
              .when(in_val, "val")
              .otherwise("train"))
    return validated.withColumn("reason", reason)


def preprocess(spark, raw: str, output: str, *, format: str = "parquet", max_side: int = 128,
               min_side: int = 16, max_aspect: float = 3.0, val_fraction: float = 0.1,
               samples_per_shard: int = 10_000, quality: int = 90) -> dict:
    """Run the whole job in `spark`; return the summary (also written to OUTPUT/_summary.json)."""
    import sparkfeed
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    started = time.monotonic()
    _size_shuffles(spark)
    captions_path = find_captions(raw)
    joined = read_raw(spark, raw, captions_path)
    validated = joined.mapInPandas(validate_images(max_side, quality), VALIDATED_SCHEMA)
    records = classify(validated, min_side, max_aspect, val_fraction).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts = {r["reason"]: r["count"] for r in records.groupBy("reason").count().collect()}
        summary = {"read": sum(counts.values()), **{k: counts.get(k, 0) for k in REASONS}}
        columns = [F.col("image"), F.col("label"), F.col("caption"), F.col("key"),
                   F.col("width"), F.col("height")]
        manifests = {}
        for split in ("train", "val"):
            part = records.where(F.col("reason") == split).select(*columns)
            if summary[split] == 0:
                print(f"warning: the {split} split is empty; not writing {output}/{split}", file=sys.stderr)
                continue
            m = sparkfeed.write(part, f"{output.rstrip('/')}/{split}", format=format,
                                samples_per_shard=samples_per_shard, cluster_by="label",
                                codecs={"image": "jpeg"}, mode="overwrite")
            manifests[split] = {"num_samples": m.num_samples, "shards": len(m.shards),
                                "num_bytes": m.num_bytes}
    finally:
        records.unpersist()
    summary.update(format=format, input=raw, output=output, datasets=manifests,
                   seconds=round(time.monotonic() - started, 1))
    _write_summary(output, summary)
    return summary


def _size_shuffles(spark) -> None:
    """Unless the user set spark.sql.shuffle.partitions, size it to the cluster (2 per core).

    Spark's default of 200 makes every job after the dedup window run 200 tiny tasks; on a small
    machine under spark-submit that quadruples this job's time.
    """
    key = "spark.sql.shuffle.partitions"
    if type(spark).__module__.startswith("pyspark.sql.connect"):
        return  # Spark Connect: no sparkContext to size from; the server's setting stands
    if not spark.sparkContext.getConf().contains(key):
        spark.conf.set(key, str(max(2, 2 * spark.sparkContext.defaultParallelism)))


def _write_summary(output: str, summary: dict) -> None:
    from sparkfeed import storage

    fs, root = storage.resolve(output)
    with fs.open(f"{root.rstrip('/')}/_summary.json", "w") as f:
        f.write(json.dumps(summary, indent=1) + "\n")


def print_summary(s: dict) -> None:
    print(f"preprocessed {s['input']} -> {s['output']} ({s['format']}) in {s['seconds']}s")
    for name in ("read", "missing_image", "undecodable", "duplicate", "too_small", "bad_aspect",
                 "train", "val"):
        print(f"  {name:<14}{s[name]:>8}")
    for split, m in s["datasets"].items():
        print(f"  {split}: {m['num_samples']} samples in {m['shards']} shard(s), {m['num_bytes']} bytes")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        find_captions(args.input)  # fail before the JVM starts
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import sparkfeed

    # Python workers must run this interpreter (it has PIL, pyarrow, sparkfeed); pyspark takes
    # the workers' Python from PYSPARK_PYTHON, not from the spark.pyspark.python conf.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = sparkfeed.spark_session(app_name="sparkfeed-preprocess-images")
    summary = preprocess(spark, args.input, args.output, format=args.format,
                         max_side=args.max_side, min_side=args.min_side,
                         max_aspect=args.max_aspect, val_fraction=args.val_fraction,
                         samples_per_shard=args.samples_per_shard, quality=args.quality)
    print_summary(summary)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
