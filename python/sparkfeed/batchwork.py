"""A loader's per-batch work: unpacking, decoding, `on_error`, the user's collate.

It runs on the prefetch thread when there is one (`prefetch.py`), else on the training loop's
thread. Decoding is split in two (`start`, `finish`) so that DALI decodes a batch in the
background while the thread hands the previous one over (`prefetch.Lookahead`)."""

from __future__ import annotations

import torch

from .arrays import NpyDecode, NpyDecoder
from .batch import select_rows, user_facing
from .packing import unpack
from .decoded import MixedSizes
from .engine import Delivery
from .errors import CorruptSampleError

# Batches the prefetch thread starts decoding ahead of the one it hands over. One measured
# best on the CPU (docs/decode.md, "Decoding one batch ahead"); on a GPU, where the thread's
# own work between two runs may leave DALI's "mixed" decoder idle, more is not yet measured
# (`python -m sparkfeed.bench.feed --ahead DATASET --depths 1,2 --device gpu`).
DECODE_AHEAD = 1


class BatchWork:
    """The work on each `Delivery` of one loader: its `decode` columns' decoders (made once),
    the dataset's `on_error` and the user's `collate_fn`. `ahead`: batches decoded ahead of the
    one handed over (0: none); set before the first decode, since the decoders' pipelines are
    sized for it (`bench.feed --ahead` compares depths)."""

    def __init__(self, dataset, decode: dict | None, batch_size: int, collate_fn, ahead: int = DECODE_AHEAD):
        self.dataset, self.decode, self.batch_size, self.collate_fn = dataset, decode, batch_size, collate_fn
        self.ahead = ahead
        self.decoders: dict = {}  # column -> [decoder, (epoch, rank) its draws were set for]

    def fresh(self) -> "BatchWork":
        """The same work with no decoder made yet (a forked child makes its own)."""
        return BatchWork(self.dataset, self.decode, self.batch_size, self.collate_fn, self.ahead)

    def stage(self, d: Delivery) -> Delivery:
        """All of it at once: the bookkeeping stays beside the batch."""
        return self.finish(self.start(d))

    def start(self, d: Delivery) -> tuple:
        """The first half of `stage`: unpack and submit every decoded column (DALI decodes them in
        the background while the prefetch thread hands the previous batch over)."""
        batch, jobs = unpack(d.batch), {}
        try:
            for name in self.decode or ():
                jobs[name] = self.decoder(name, d.epoch).submit(batch[name], keys=d.keys)
        except BaseException:
            self.cancel((d, batch, jobs))
            raise
        return d, batch, jobs

    def finish(self, started: tuple) -> Delivery:
        """The second half: collect the decoded columns, apply on_error, the user's collate."""
        d, batch, jobs = started
        stats = d.stats
        if jobs:
            batch, stats = self._collect(batch, d.keys, jobs, dict(stats))
        batch = user_facing(batch, self.dataset.ragged)
        if self.collate_fn is not None:
            batch = self.collate_fn(batch)
        return d.with_batch(batch, stats=stats, keys=None)

    def cancel(self, started: tuple) -> None:
        """Drop a started batch that will not be handed over (the loader is closing, or an earlier
        batch failed): its decode runs are waited for and discarded."""
        for name, job in started[2].items():
            self.decoder(name).cancel(job)

    def decoder(self, name: str, epoch: int | None = None):
        """Column `name`'s decoder, made once; with `epoch`, drawing that epoch's augmentations."""
        if name not in self.decoders:
            spec = self.decode[name]
            if isinstance(spec, NpyDecode):
                decoder = NpyDecoder(spec)
            else:
                from .decode import ImageDecoder

                decoder = ImageDecoder(spec, max_batch_size=self.batch_size, seed=self.dataset.seed % 2**64,
                                       runs_in_flight=self.ahead + 1)
            self.decoders[name] = [decoder, None]
        entry = self.decoders[name]
        if epoch is not None and entry[1] != (epoch, self.dataset.rank):  # once per epoch: it restarts the draws
            entry[1] = (epoch, self.dataset.rank)
            entry[0].set_epoch(*entry[1])
        return entry[0]

    def _collect(self, batch: dict, keys: torch.Tensor, jobs: dict, stats: dict) -> tuple[dict, dict]:
        """Every column's decoded images, the rows that any column failed dropped (on_error="skip")
        or the first failure raised, column by column in `decode`'s order."""
        # a sample's crop and flip follow from (seed, epoch, unit, row): the same under any batch
        # size, worker count, world size or resume
        results = {}
        try:
            for name, job in jobs.items():
                results[name] = self._sized(name, keys, lambda: self.decoder(name).collect(job))
        finally:  # an error in one column: the other columns' runs are still waited for
            for name, job in jobs.items():
                if name not in results:
                    self.decoder(name).cancel(job)
        bad: set[int] = set()
        for name, result in results.items():
            failures = [f for f in result.failures if f[0] not in bad]
            if failures:
                self._raise_unless_skipping(batch, keys, failures)
                bad.update(row for row, _ in failures)
        if not bad:
            return {**batch, **{name: r.images for name, r in results.items()}}, stats
        keep = torch.tensor(sorted(set(range(len(keys))) - bad), dtype=torch.int64)
        out = select_rows({k: v for k, v in batch.items() if k not in results}, keep)
        for name, result in results.items():
            out[name] = result.images[torch.isin(result.ok_rows, keep)]
        stats["samples_skipped"] = stats.get("samples_skipped", 0) + len(bad)
        stats["samples"] = stats.get("samples", 0) - len(bad)
        for key, n in self.dataset.engine.decode_skips(keys, sorted(bad)).items():  # per source, in a mix
            stats[key] = stats.get(key, 0) + n
        return out, stats

    def _sized(self, name: str, keys: torch.Tensor, collect):
        """`collect()`, a batch of images of several sizes under size=None named by the dataset,
        the column and the shard of the batch's first row (the decoder knows none of them)."""
        try:
            return collect()
        except MixedSizes as exc:
            dataset, unit, _ = self.dataset.engine.locate(int(keys[0]))
            group = f", row group {unit.row_group}" if unit.row_group is not None else ""
            raise MixedSizes(f"dataset {dataset!r}, column {name!r}, the batch starting in shard "
                             f"{unit.path!r}{group}: {exc}") from None

    def _raise_unless_skipping(self, batch: dict, keys: torch.Tensor, failures) -> None:
        if self.dataset.on_error == "skip":
            return
        row, reason = failures[0]
        key = int(keys[row])
        dataset, unit, key_col = self.dataset.engine.locate(key)
        name = batch[key_col][row] if key_col in batch else f"row {key & 0xFFFFFFFF}"
        raise CorruptSampleError(f"cannot decode: {reason} ({len(failures)} bad sample(s) in this "
                                 "batch; on_error='skip' drops and counts them)",
                                 dataset=dataset, shard=unit.path,
                                 row_group=unit.row_group, key=str(name))
