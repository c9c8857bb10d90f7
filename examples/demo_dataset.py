"""Generate a small image-caption dataset inside Spark and write it with sparkfeed (`make demo`).

Each row is drawn by a Spark task, deterministically from its id: a 64x64 JPEG of a coloured
shape whose class is the label, a caption that describes it, and a 16-dim float feature vector.
The dataset is written with `sparkfeed.write(..., cluster_by="label", codecs={"image": "jpeg"})`
and then summarised as `sparkfeed inspect` prints it.

    python examples/demo_dataset.py --output /tmp/demo-ds --samples 2000
    spark-submit --jars "$(sparkfeed jar)" examples/demo_dataset.py --output s3a://bucket/demo
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

SHAPES = ["circle", "square", "triangle", "cross", "diamond"]
COLOURS = {"red": (220, 40, 40), "blue": (40, 80, 220)}
CLASSES = [(shape, colour) for colour in COLOURS for shape in SHAPES]  # 10 labels
FEATURE_DIMS = 16
SIZE = 64
SCHEMA = "id long, label int, caption string, feature array<float>, image binary"


def _draw(label: int, rng) -> bytes:
    """A SIZE x SIZE JPEG of the shape and colour of class `label`, placed by `rng`."""
    import io

    from PIL import Image, ImageDraw

    shape, colour = CLASSES[label]
    background = tuple(int(v) for v in rng.integers(150, 256, size=3))
    img = Image.new("RGB", (SIZE, SIZE), background)
    d = ImageDraw.Draw(img)
    r = int(rng.integers(12, 24))
    cx, cy = (int(v) for v in rng.integers(r, SIZE - r, size=2))
    fill = COLOURS[colour]
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        d.rectangle(box, fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif shape == "cross":
        d.rectangle([cx - r, cy - r // 3, cx + r, cy + r // 3], fill=fill)
        d.rectangle([cx - r // 3, cy - r, cx + r // 3, cy + r], fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90)
    return out.getvalue()


def generate(batches):
    """mapInArrow function: id batches -> rows of the dataset (runs in the Spark workers)."""
    import numpy as np
    import pyarrow as pa

    for batch in batches:
        ids = batch.column("id").to_pylist()
        labels, captions, features, images = [], [], [], []
        for i in ids:
            rng = np.random.default_rng(i)
            label = int(rng.integers(0, len(CLASSES)))
            shape, colour = CLASSES[label]
            labels.append(label)
            captions.append(f"a {colour} {shape} at {'left' if rng.random() < 0.5 else 'right'}")
            features.append((rng.standard_normal(FEATURE_DIMS) + label).astype(np.float32))
            images.append(_draw(label, rng))
        yield pa.RecordBatch.from_arrays(
            [pa.array(ids, pa.int64()), pa.array(labels, pa.int32()), pa.array(captions, pa.string()),
             pa.array(features, pa.list_(pa.float32())), pa.array(images, pa.binary())],
            names=["id", "label", "caption", "feature", "image"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Generate a small image-caption dataset in Spark (64x64 JPEG shapes whose "
                    "class is the label, captions, 16-dim features), write it with "
                    "sparkfeed.write(cluster_by='label', codecs={'image': 'jpeg'}), and print "
                    "`sparkfeed inspect` of it. Overwrites OUTPUT.",
        epilog="example: python examples/demo_dataset.py --output /tmp/demo-ds --samples 2000")
    parser.add_argument("--output", required=True, help="dataset directory or URL (overwritten)")
    parser.add_argument("--samples", type=int, default=2000, help="number of samples (default 2000)")
    parser.add_argument("--format", choices=["parquet", "webdataset"], default="parquet",
                        help="shard format (default parquet; webdataset needs the real jar)")
    parser.add_argument("--samples-per-shard", type=int, default=500,
                        help="at most this many samples per shard (default 500)")
    parser.add_argument("--samples-per-row-group", type=int, default=128,
                        help="samples per Parquet row group (default 128)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    # Spark's Python workers must be this interpreter, the one that has sparkfeed and PIL.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    import sparkfeed
    from sparkfeed.cli import main as sparkfeed_cli

    started = time.monotonic()
    spark = sparkfeed.spark_session(app_name="sparkfeed-demo")
    # write() reads its input more than once (count, range sampling, the write itself), so an
    # expensive input is cached once instead of being drawn three times.
    df = spark.range(args.samples).mapInArrow(generate, SCHEMA).persist()
    sparkfeed.write(df, args.output, format=args.format,
                    samples_per_shard=args.samples_per_shard,
                    samples_per_row_group=args.samples_per_row_group,
                    cluster_by="label", codecs={"image": "jpeg"}, mode="overwrite")
    df.unpersist()
    logging.info("demo dataset written in %.1fs", time.monotonic() - started)
    print()
    return sparkfeed_cli(["inspect", args.output, "--shards", "3"])


if __name__ == "__main__":
    sys.exit(main())
