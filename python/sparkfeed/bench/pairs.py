"""`python -m sparkfeed.bench.pairs IMAGES`: sparkfeed's decode (or train) scenario against DALI's
own WebDataset reader in paired rounds, alternated in one process, with each round's rate ratio;
`--shuffle TABULAR`: sparkfeed's shuffled tabular read against its unshuffled one the same way.

One `sparkfeed bench` run times each runner's repeats back to back, so a machine whose load
moves between them moves the ratio (on the 2-core development machine the decode ratio of
single runs spanned 0.87-1.03x for the same code). Here each round runs both, in alternating
order, and the median of the per-round ratios is the figure; the runners are the bench's own
(`imagerunners.sparkfeed_dali` / `sparkfeed_train` and `imagerunners.dali_webdataset`). README
"Performance" and docs/benchmark.md quote it.
"""

from __future__ import annotations

import os
import statistics
import time

from . import datasets, imagerunners, runners


def _context(images: str, webdataset: str, workers: int, batch_size: int, image_size: int,
             tabular: str = "") -> runners.Context:
    data = datasets.Data(tabular=tabular, images=images, image_folder="", webdataset=webdataset,
                         webdataset_note="", build_s=0.0)
    return runners.Context(data=data, batch_size=batch_size, workers=workers, image_size=image_size)


def _timed(runner, ctx: runners.Context) -> tuple[int, float, float]:
    """(samples, samples/s, CPU µs per sample: this process, DALI's and the loader's threads)
    of one epoch."""
    wall, cpu = time.perf_counter(), time.process_time()
    samples = sum(runner(ctx))
    return samples, samples / (time.perf_counter() - wall), (time.process_time() - cpu) / max(1, samples) * 1e6


def pairs(ctx: runners.Context, rounds: int, train: bool = False, sides: dict | None = None) -> dict:
    """Both runners once untimed, then `rounds` rounds of one epoch each (the order alternating);
    the ratios are the first side's rate over the second's. `sides`: name -> runner (default:
    sparkfeed's decode or train runner, then DALI's reader)."""
    sides = sides or {"sparkfeed": imagerunners.sparkfeed_train if train else imagerunners.sparkfeed_dali,
                      "dali": lambda c: imagerunners.dali_webdataset(c, train=train)}
    expected = {name: _timed(runner, ctx)[0] for name, runner in sides.items()}  # untimed: imports, DALI's start
    if len(set(expected.values())) != 1:
        raise RuntimeError(f"the runners saw different numbers of images: {expected}")
    rates: dict[str, list[float]] = {k: [] for k in sides}
    cpus: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(rounds):
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            samples, rate, cpu = _timed(sides[name], ctx)
            if samples != expected[name]:
                raise RuntimeError(f"{name} saw {samples} images in round {r}, {expected[name]} before")
            rates[name].append(rate)
            cpus[name].append(cpu)
    first, second = sides
    ratios = [a / b for a, b in zip(rates[first], rates[second])]
    return {"images": expected[second], "rates": rates, "cpu_us": cpus, "ratios": ratios,
            "median_ratio": statistics.median(ratios),
            "rounds_at_or_above_1": sum(x >= 1.0 for x in ratios)}


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m sparkfeed.bench.pairs", description=(
        "sparkfeed + DALI's decoder against DALI's own fn.readers.webdataset on the same images, "
        "in paired rounds alternated in one process: each round's images/s and CPU µs per image, "
        "the per-round ratios and their median (the bench's decode target is >= 1.0x)."))
    p.add_argument("images", help="the bench's image dataset (e.g. ~/.cache/sparkfeed-bench/images-<key>); "
                                  "with --shuffle its tabular one (tabular-<key>)")
    p.add_argument("--webdataset", help="the same images as tars with DALI indexes (default: IMAGES-wds, "
                                        "as `sparkfeed bench` caches them)")
    p.add_argument("--rounds", type=int, default=8, help="timed rounds, after one untimed (default 8)")
    p.add_argument("--train", action="store_true", help="the train scenario (shuffle, 7/8 random crop, "
                                                        "flip) instead of decode")
    p.add_argument("--shuffle", action="store_true", help="IMAGES is the bench's tabular dataset: "
                   "sparkfeed shuffle=True against shuffle=False (the target: >= 0.90; its epochs are "
                   "short, so use 40 rounds or more)")
    p.add_argument("--workers", type=int, default=2, help="loader workers and DALI threads (default 2)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=128, help="the stored size (decode: no resize)")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds should be a positive integer, but got {args.rounds}")
    images = os.path.realpath(os.path.expanduser(args.images))
    wds = os.path.realpath(os.path.expanduser(args.webdataset or images + "-wds"))
    for what, path in (("IMAGES", images),) + ((("--webdataset", wds),) if not args.shuffle else ()):
        if not os.path.isdir(path):
            p.error(f"{what} should be a dataset directory, but {path!r} is not one (run `sparkfeed bench "
                    f"--scenarios {'tabular' if args.shuffle else 'decode'}` once to build and cache it)")
    if args.shuffle:
        ctx = _context("", "", args.workers, args.batch_size, args.image_size, tabular=images)
        sides = {"shuffled": lambda c: runners.sparkfeed_tabular(c, shuffle=True),
                 "unshuffled": runners.sparkfeed_tabular}
        result = pairs(ctx, args.rounds, sides=sides)
    else:
        ctx = _context(images, wds, args.workers, args.batch_size, args.image_size)
        result = pairs(ctx, args.rounds, args.train)
    for name in result["rates"]:
        rates, cpus = result["rates"][name], result["cpu_us"][name]
        print(f"{name:10s} samples/s median {statistics.median(rates):11,.0f} (range {min(rates):,.0f}-"
              f"{max(rates):,.0f}); CPU µs/sample median {statistics.median(cpus):.2f}")
    print("ratio per round: " + " ".join(f"{x:.3f}" for x in result["ratios"]))
    print(f"median ratio {result['median_ratio']:.3f}; rounds >= 1.0: {result['rounds_at_or_above_1']} of "
          f"{args.rounds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
