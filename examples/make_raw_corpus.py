"""Generate a small raw image-text corpus, laid out the way CLIP-style datasets are shipped.

    python examples/make_raw_corpus.py --output raw/ --images 300 --bad 5

    raw/images/<class>/<id>.jpg    coloured shapes drawn with PIL, varied sizes and aspect ratios
    raw/captions.csv               path,caption,label   (raw/captions.jsonl with --jsonl)
    raw/_expected.json             what a correct preprocessing job must count (for tests)

On top of the `--images` good images it plants the bad records real crawls have, so that
`examples/preprocess_images.py` has something to count:

* `--bad` undecodable files named *.jpg (truncated JPEGs and random bytes),
* one caption naming an image that does not exist,
* one tiny image (8x8) and one with an extreme aspect ratio (16:1),
* exact duplicates: byte-identical copies of good images under new ids and captions.

Deterministic for a given `--seed`; no downloads.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import shutil
import sys
from pathlib import Path

from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220),
           "yellow": (230, 210, 40), "purple": (150, 60, 190), "orange": (240, 140, 30)}


def draw_shape(cls: str, width: int, height: int, colour: tuple, background: tuple) -> Image.Image:
    """One RGB image of a `cls` shape in `colour`, centred, on a plain background."""
    img = Image.new("RGB", (width, height), background)
    d = ImageDraw.Draw(img)
    side = min(width, height)
    cx, cy, r = width / 2, height / 2, side * 0.35
    box = (cx - r, cy - r, cx + r, cy + r)
    if cls == "circle":
        d.ellipse(box, fill=colour)
    elif cls == "square":
        d.rectangle(box, fill=colour)
    elif cls == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    else:
        w = max(1, r / 3)
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
    return img


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class Corpus:
    """Accumulates image files and caption records under one output directory."""

    def __init__(self, root: Path, rng: random.Random):
        self.root, self.rng = root, rng
        self.records: list[dict] = []
        self.next_id = 0

    def _path(self, cls: str) -> str:
        self.next_id += 1
        return f"images/{cls}/{self.next_id:06d}.jpg"

    def add(self, cls: str, data: bytes | None, caption: str) -> str:
        """Write `data` (None: write nothing, the caption names a missing file) and its record."""
        rel = self._path(cls)
        if data is not None:
            path = self.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        self.records.append({"path": rel, "caption": caption, "label": CLASSES.index(cls)})
        return rel

    def shape(self, cls: str, width: int, height: int) -> tuple[bytes, str]:
        name, colour = self.rng.choice(sorted(COLOURS.items()))
        bg = tuple(self.rng.randrange(0, 80) for _ in range(3))
        img = draw_shape(cls, width, height, colour, bg)
        article = "an" if name[0] in "aeiou" else "a"
        return jpeg(img, quality=self.rng.randrange(75, 96)), f"{article} {name} {cls} on a dark background"


def build(root: Path, images: int, bad: int, seed: int) -> dict:
    """Write the corpus under `root`; return the counts a preprocessing job must report."""
    rng = random.Random(seed)
    c = Corpus(root, rng)
    good: list[tuple[str, bytes]] = []
    for i in range(images):
        cls = CLASSES[i % len(CLASSES)]
        side = rng.randrange(48, 257)
        aspect = rng.uniform(0.6, 1.7)
        w, h = (side, max(24, int(side / aspect))) if rng.random() < 0.5 else (max(24, int(side / aspect)), side)
        data, caption = c.shape(cls, w, h)
        c.add(cls, data, caption)
        good.append((cls, data))

    duplicates = max(1, images // 30)
    for cls, data in rng.sample(good, duplicates):
        c.add(cls, data, f"another photo of a {cls}")  # byte-identical content, new id and caption

    for i in range(bad):  # undecodable: alternately a truncated JPEG and random bytes
        cls = CLASSES[i % len(CLASSES)]
        if i % 2 == 0:
            data = rng.choice(good)[1]
            data = data[: len(data) // 2]
        else:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(64, 2048)))
        c.add(cls, data, f"a broken {cls}")

    c.add("circle", None, "a circle whose file was never downloaded")     # missing image
    tiny, _ = c.shape("square", 8, 8)
    c.add("square", tiny, "a very small square")                          # too small
    wide, _ = c.shape("cross", 640, 40)
    c.add("cross", wide, "a banner-shaped cross")                         # bad aspect ratio

    c.records.sort(key=lambda r: r["path"])
    return {"records": len(c.records), "good": images, "duplicates": duplicates,
            "undecodable": bad, "missing_image": 1, "too_small": 1, "bad_aspect": 1,
            "classes": list(CLASSES)}, c.records


def write_captions(root: Path, records: list[dict], jsonl: bool) -> Path:
    if jsonl:
        path = root / "captions.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path = root / "captions.csv"
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["path", "caption", "label"])
            w.writeheader()
            w.writerows(records)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", required=True, help="directory to create (must be empty or absent)")
    p.add_argument("--images", type=int, default=300, help="good images to draw (default 300)")
    p.add_argument("--bad", type=int, default=5, help="undecodable image files (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true",
                   help="replace --output if it holds a corpus this script made before")
    p.add_argument("--jsonl", action="store_true", help="write captions.jsonl instead of captions.csv")
    args = p.parse_args(argv)
    if args.images < 1 or args.bad < 0:
        p.error("--images should be at least 1 and --bad at least 0")
    root = Path(args.output)
    if args.overwrite and (root / "_expected.json").is_file():
        shutil.rmtree(root)
    if root.exists() and any(root.iterdir()):
        print(f"error: {root} exists and is not empty; choose another --output "
              "(or --overwrite to replace a corpus made by this script)", file=sys.stderr)
        return 2
    root.mkdir(parents=True, exist_ok=True)
    expected, records = build(root, args.images, args.bad, args.seed)
    captions = write_captions(root, records, args.jsonl)
    (root / "_expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(f"wrote {expected['records']} caption records to {captions} and images under "
          f"{root / 'images'}: {args.images} good, {expected['duplicates']} duplicates, "
          f"{args.bad} undecodable, 1 missing, 1 tiny, 1 extreme aspect")
    return 0


if __name__ == "__main__":
    sys.exit(main())
