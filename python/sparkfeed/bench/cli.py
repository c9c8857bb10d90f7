"""The `sparkfeed bench` subcommand: `add_parser(subparsers)` for the main CLI, `main()` alone."""

from __future__ import annotations

import argparse
import logging
import os
import sys

DESCRIPTION = """\
Measure sparkfeed against the loaders people use, on this machine, side by side:

  tabular  sparkfeed.DataLoader vs a raw pyarrow.dataset scan (the ceiling) vs
           torch.utils.data.DataLoader over a map-style dataset (the baseline);
           Petastorm / Mosaic Streaming when installed
  filter   sparkfeed with a 1%/10%/50%-selective filter on a clustered label vs no filter:
           bytes read, time, shards/row groups pruned
  decode   JPEGs: sparkfeed + DALI (CPU here, GPU where there is one) vs torch + PIL over
           files vs webdataset + PIL over tars vs DALI's own fn.readers.webdataset;
           ceiling: PIL on in-memory bytes
  bytes    the encoded image column delivered as batches, no decode, unshuffled and
           shuffled (target 50,000 images/s per process) vs the pyarrow scan of it
  train    shuffle + a random crop of the stored pixels (7/8 of the side) + flip, decoded:
           sparkfeed + DALI vs torch + PIL (RandomCrop, flip) vs DALI's reader
           (random_shuffle, crop, flip); distinct labels per batch for each
  feed     bench.h2d.feed_benchmark: how long a simulated step waits, prefetch on vs off
  plan     time to plan an epoch from 100 / 1,000 / 10,000-shard manifests
  scaling  sparkfeed throughput and peak RSS at 1x/2x/4x/8x --scaling-base rows (a fresh
           process per size): does memory stay flat?  (+ the plan rows)
  remote   the image dataset over a local HTTP server with 20 ms added per request vs local
           disk, Parquet and WebDataset (target: >= 70% of the local rate), Parquet also
           with shuffle=True; webdataset's own streaming over the same server; the
           Parquet files' bytes alone over it (nothing parsed: the transfer's ceiling)
  mix      the tabular rows as a 2-source sparkfeed.Source mix vs one source of the same
           rows, in order and shuffled (target: the mix at >= 90% of one source)

Petastorm and Mosaic Streaming run in venvs of their own (they conflict with this one):
  python -m sparkfeed.bench.peers install     # build/peers/{petastorm,streaming}

Data are written with Spark (sparkfeed.write) and cached under --cache, keyed by size.
Every loader gets the same batch size and workers; timings are medians of --repeats on
warm files (a runner whose runs are short runs more: --min-seconds). Writes results.json,
results.md and results.png to --out; results.md's "rerun with" line is the command that
repeats the run with every size spelled out.

Exit status: 0 done; 1 a runner delivered a wrong number of samples or raised (its row says
FAILED, the reports are written); 2 a bad option (one line, before any data is built);
130 Ctrl-C (the scenarios that finished are reported)."""

EPILOG = """examples:
  sparkfeed bench --quick                                  # every scenario, small sizes
  sparkfeed bench --quick --scenarios tabular --runners sparkfeed,pyarrow --out /tmp/b
  sparkfeed bench --scenarios decode,train --images 20000 --image-size 224 --image-source 256
  sparkfeed bench --scenarios scaling --scaling-base 100000 --repeats 1
  sparkfeed bench --scenarios tabular --cache /tmp/bench-cache --expect sparkfeed=1   # test the check"""


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _expect(value: str) -> tuple[str, int]:
    label, _, count = value.rpartition("=")
    if not label or not count.isdigit():
        raise argparse.ArgumentTypeError(f"--expect should be LABEL=COUNT, got {value!r}")
    return label, int(count)


def _scenarios(value: str) -> tuple[str, ...]:
    from .scenarios import SCENARIOS

    names = _csv(value)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"should be a comma-separated subset of "
                                         f"{','.join(SCENARIOS)}, but got {value!r}")
    return names


# `Params` fields -> the flags that set them, for its argument errors
_FLAGS = {"samples": "--samples", "scaling_base": "--scaling-base", "images": "--images",
          "image_size": "--image-size", "image_source": "--image-source",
          "batch_size": "--batch-size", "workers": "--workers", "repeats": "--repeats",
          "min_seconds": "--min-seconds", "scenarios": "--scenarios", "runners": "--runners"}
# ... and those `run` checks (before the data are built: the runners and expected counts)
_RUN_FLAGS = {"runners": "--runners", "out": "--out", "expect": "--expect"}


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from .scenarios import SCENARIOS

    parser.add_argument("--quick", action="store_true",
                        help="small sizes (20k rows, 1k images of 64 px, 1 repeat): under 2 min")
    parser.add_argument("--scenarios", type=_scenarios, default=SCENARIOS, metavar="LIST",
                        help=f"comma-separated subset of {','.join(SCENARIOS)} (default: all)")
    parser.add_argument("--runners", type=_csv, default=None, metavar="LIST",
                        help="keep only runners whose label starts with one of these "
                             "(e.g. sparkfeed,torch); default: all. A prefix that keeps none is an "
                             "error listing the runners")
    parser.add_argument("--samples", type=int, default=None, metavar="N",
                        help="tabular rows (default 200,000; quick 20,000)")
    parser.add_argument("--scaling-base", type=int, default=None, metavar="N",
                        help="rows at 1x in the scaling study (default 100,000; quick 20,000)")
    parser.add_argument("--images", type=int, default=None, metavar="N",
                        help="JPEG images (default 5,000; quick 1,000)")
    parser.add_argument("--image-size", type=int, default=None, metavar="PX",
                        help="side of the decoded, centre-cropped images (default 128; quick 64)")
    parser.add_argument("--image-source", type=int, default=None, metavar="PX",
                        help="shorter side of the stored JPEGs: equal to --image-size (the default) "
                             "stores square images at the training size, as a Spark job that resized "
                             "them would; another value stores 4:3 landscape images that every "
                             "loader resizes")
    parser.add_argument("--batch-size", type=int, default=256, metavar="B",
                        help="batch size of every loader (default 256)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), metavar="W",
                        help="workers of every loader: torch num_workers, DALI num_threads, Petastorm "
                        "workers_count, sparkfeed's reader threads (default: min(2, cores))")
    parser.add_argument("--repeats", type=int, default=None, metavar="R",
                        help="timed runs per runner; the median is reported (default 3; quick 1)")
    parser.add_argument("--min-seconds", type=float, default=None, metavar="S",
                        help="time a runner whose runs are short more often, back to back, until its "
                        "timed runs took S seconds of wall time (at most 51 runs, ending on an odd count; "
                        "default 1; quick 0)")
    parser.add_argument("--out", default="sparkfeed-bench", metavar="DIR",
                        help="directory for results.json/.md/.png, made if missing; earlier results in it are "
                        "replaced (default ./sparkfeed-bench)")
    parser.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "sparkfeed-bench"),
                        metavar="DIR", help="where the generated datasets are kept and reused, keyed by their sizes "
                        "(default ~/.cache/sparkfeed-bench)")
    parser.add_argument("--expect", type=_expect, action="append", default=[], metavar="LABEL=N",
                        help="override the sample count the runner labelled LABEL must deliver (tests the "
                        "check; LABEL as in results.md's runner column); repeatable")
    parser.add_argument("--no-progress", action="store_true",
                        help="no tqdm progress bar (it goes to stderr; the report to stdout)")
    return parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `bench` on the main CLI's subparsers; `args.func(args)` runs it (exit code)."""
    parser = subparsers.add_parser("bench", help="benchmark sparkfeed against other loaders",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(parser)
    parser.set_defaults(func=run_args)
    return parser


def _params(args: argparse.Namespace):
    """`Params` from the command line; its argument checks become a `UsageError` naming the
    flag (`--batch-size 0`: one line, exit 2, before any data is built)."""
    from ..cli import flags_named
    from . import Params

    with flags_named(_FLAGS):
        return Params(quick=args.quick, scenarios=args.scenarios, runners=args.runners,
                      samples=args.samples, scaling_base=args.scaling_base, images=args.images,
                      image_size=args.image_size, image_source=args.image_source,
                      batch_size=args.batch_size, workers=args.workers, repeats=args.repeats,
                      min_seconds=args.min_seconds,
                      out=args.out, cache=args.cache, expect=dict(args.expect),
                      progress=not args.no_progress)


def run_args(args: argparse.Namespace) -> int:
    from ..cli import flags_named
    from . import CountMismatch, run

    params = _params(args)
    try:
        with flags_named(_RUN_FLAGS):
            results = run(params)
    except CountMismatch as exc:
        print(f"sparkfeed bench: FAILED: {exc} (reports written to {args.out})", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        if str(exc).startswith("interrupted while building"):  # nothing timed: say so, not "finished"
            print(f"sparkfeed bench: {exc}; nothing was timed ({args.out}/results.md says so)",
                  file=sys.stderr)
        else:
            print(f"sparkfeed bench: interrupted; the scenarios that finished are in {args.out}/"
                  "results.md, results.json, results.png", file=sys.stderr)
        return 130
    print(open(os.path.join(args.out, "results.md")).read())
    print(f"wrote {args.out}/results.json, results.md, results.png in {results['bench_s']} s "
          f"(+ {results['build_s']} s building data)")
    return 0


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(prog="sparkfeed bench", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(parser)
    from ..cli import UsageError

    try:
        return run_args(parser.parse_args(argv))
    except UsageError as exc:
        parser.error(str(exc))  # exits 2
