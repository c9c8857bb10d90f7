"""Preprocess with Spark, then train inside the same Spark application with TorchDistributor.

    python examples/torch_distributor.py --data ds/train --num-processes 2 -- --steps 20
    spark-submit --jars "$(sparkfeed jar)" examples/torch_distributor.py --data ds/train

If `--data` (a `.../train` directory) has no sparkfeed manifest yet, this application first
writes it: it runs `examples/preprocess_images.py`'s `preprocess()` in its own Spark session on
`--raw` (or on a small corpus it generates with `examples/make_raw_corpus.py` in a temporary
directory, removed once the datasets are written), into the parent
directory of `--data`. Then `pyspark.ml.torch.distributor.TorchDistributor(local_mode=True,
use_gpu=...)` launches `examples/train.py` under `torch.distributed.run` with
`--num-processes` ranks on the driver; every argument after `--` goes to train.py unchanged.

On a cluster pass `--cluster` (local_mode=False): the ranks then run in Spark tasks, one per
`spark.task.resource.gpu.amount` GPUs when `--use-gpu` is given.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the sibling examples are importable as modules

MANIFEST = "_sparkfeed.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="training dataset DS/train (written when missing)")
    p.add_argument("--raw", help="raw corpus to preprocess when --data is missing "
                                 "(default: generate a small one)")
    p.add_argument("--format", choices=["parquet", "webdataset"], default="parquet",
                   help="format of the dataset written when --data is missing (default parquet)")
    p.add_argument("--samples-per-shard", type=int, default=10_000,
                   help="shard size of the dataset written when --data is missing")
    p.add_argument("--num-processes", type=int, default=2)
    p.add_argument("--use-gpu", action="store_true", help="one GPU per rank (nccl)")
    p.add_argument("--cluster", action="store_true", help="run ranks in Spark tasks (local_mode=False)")
    p.add_argument("train_args", nargs="*", help="after --: arguments for examples/train.py")
    args = p.parse_args(argv)
    if args.num_processes < 1:
        p.error(f"--num-processes should be a positive integer, but got {args.num_processes}")
    return args


def ensure_dataset(spark, data: str, raw: str | None, format: str = "parquet",
                   samples_per_shard: int = 10_000) -> None:
    """Write DS (the parent of `data`) with the preprocessing job unless `data` already exists."""
    if "://" in data or (Path(data) / MANIFEST).is_file():
        return
    if Path(data).name != "train":
        raise SystemExit(f"--data {data!r} has no {MANIFEST}; to have it written here, name a "
                         "'.../train' directory (its parent receives train/ and val/)")
    import make_raw_corpus
    import preprocess_images

    generated = raw is None
    if generated:  # a scratch corpus, removed once the datasets are written
        raw = tempfile.mkdtemp(prefix="sparkfeed-raw-")
        expected, records = make_raw_corpus.build(Path(raw), images=200, bad=3, seed=0)
        make_raw_corpus.write_captions(Path(raw), records, jsonl=False)
        print(f"generated a raw corpus of {expected['records']} records in {raw}", flush=True)
    try:
        summary = preprocess_images.preprocess(spark, raw, str(Path(data).parent), format=format,
                                               samples_per_shard=samples_per_shard)
    finally:
        if generated:
            shutil.rmtree(raw, ignore_errors=True)
    preprocess_images.print_summary(summary)


def local_gpu_conf() -> dict:
    """Driver GPU resources for TorchDistributor(local_mode=True, use_gpu=True).

    In local mode it takes GPUs from the driver's `spark.driver.resource.gpu.*`, which needs an
    amount and a discovery script (pyspark ships none); this writes one listing torch's GPUs.
    Under spark-submit, pass these confs there instead.
    """
    import torch

    n = torch.cuda.device_count()
    if n == 0:
        raise SystemExit("--use-gpu: torch sees no CUDA device on this machine")
    script = Path(tempfile.mkdtemp(prefix="sparkfeed-gpus-")) / "gpus.sh"
    addresses = ", ".join(f'"{i}"' for i in range(n))
    script.write_text(f"#!/bin/sh\necho '{{\"name\": \"gpu\", \"addresses\": [{addresses}]}}'\n")
    script.chmod(0o755)
    return {"spark.driver.resource.gpu.amount": n,
            "spark.driver.resource.gpu.discoveryScript": str(script)}


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    import sparkfeed
    from pyspark.ml.torch.distributor import TorchDistributor

    conf = local_gpu_conf() if args.use_gpu and not args.cluster else None
    spark = sparkfeed.spark_session(app_name="sparkfeed-torch-distributor", conf=conf)
    try:
        ensure_dataset(spark, args.data, args.raw, args.format, args.samples_per_shard)
        train_args = ["--data", args.data, "--device", "cuda" if args.use_gpu else "cpu",
                      *args.train_args]
        print(f"TorchDistributor: {args.num_processes} processes, local_mode={not args.cluster}, "
              f"use_gpu={args.use_gpu}: train.py {' '.join(train_args)}", flush=True)
        distributor = TorchDistributor(num_processes=args.num_processes,
                                       local_mode=not args.cluster, use_gpu=args.use_gpu)
        distributor.run(str(HERE / "train.py"), *train_args)
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
