"""`sparkfeed.Dataset`: a torch IterableDataset over this worker's share of the epoch stream.

plan (once) -> epoch stream -> this rank's and worker's spans -> read -> batch. It yields single
samples (so `torch.utils.data.DataLoader(ds, batch_size=B)` works unchanged) or, with
`batch_size=B`, whole batches built column-wise (the fast path; use torch's `batch_size=None`).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence

import torch
import torch.utils.data

from . import batch as batching
from . import filters, partition, storage
from .index import open_manifest
from .manifest import Manifest
from .plan import Plan, make_plan, with_counts
from .read import ReadContext, make_reader
from .stats import Stats
from .stream import EpochStream, StreamReader, cut

__all__ = ["Dataset", "resolve_rank"]
log = logging.getLogger(__name__)

ON_ERROR = ("raise", "skip")
PROGRESS_KEY = "__sparkfeed_progress__"
STATS_KEY = "__sparkfeed_stats__"


def _positive_int(name: str, value, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` should be a positive integer{' or None' if allow_none else ''}, "
                         f"but got {name}={value!r}")


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit arguments, else torch.distributed when initialised, else RANK/WORLD_SIZE, else (0, 1)."""
    if rank is None or world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank() if rank is None else rank
            world_size = dist.get_world_size() if world_size is None else world_size
        else:
            rank = int(os.environ.get("RANK", 0)) if rank is None else rank
            world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    _positive_int("world_size", world_size)
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"`rank` should be in [0, world_size={world_size}), but got rank={rank!r}")
    return rank, world_size


class Dataset(torch.utils.data.IterableDataset):
    """Stream a sparkfeed dataset (Parquet or WebDataset) as samples or batches.

    Example: `ds = sparkfeed.Dataset("ds/", columns=["label"], filter=[("label", "<", 3)])`, then
    `torch.utils.data.DataLoader(ds, batch_size=32, num_workers=2)`. Every sample that passes the
    filter is delivered once per epoch across ranks and workers.
    """

    def __init__(self, path: str | None = None, *, columns: Sequence[str] | None = None, filter=None,
                 shuffle: bool = False, seed: int = 0, batch_size: int | None = None,
                 drop_last: bool = False, shuffle_buffer: int = 2048, rank: int | None = None,
                 world_size: int | None = None, on_error: str = "raise",
                 storage_options: dict | None = None, manifest: Manifest | str | None = None):
        super().__init__()
        _positive_int("batch_size", batch_size, allow_none=True)
        _positive_int("shuffle_buffer", shuffle_buffer)
        if on_error not in ON_ERROR:
            raise ValueError(f"`on_error` should be one of {ON_ERROR}, but got on_error={on_error!r}")
        if not isinstance(seed, int):
            raise ValueError(f"`seed` should be an integer, but got seed={seed!r}")
        self.manifest, self.data_root = open_manifest(path, manifest, storage_options)
        self.path = str(path if path is not None else self.data_root)
        self.columns = self._check_columns(columns)
        self.expr = filters.to_expression(filter)
        if self.expr is not None:
            filters.check_filter(self.expr, self.manifest.schema, self.path)
        self.shuffle, self.seed, self.batch_size = bool(shuffle), seed, batch_size
        self.drop_last, self.shuffle_buffer, self.on_error = bool(drop_last), shuffle_buffer, on_error
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.storage_options = storage_options
        self.epoch = 0
        self._plan: Plan | None = None
        self._lanes: list[list[partition.Span]] | None = None  # set by sparkfeed.DataLoader
        self._annotate = False  # set by sparkfeed.DataLoader: progress and stats ride with batches
        self._row_ids = False   # set by sparkfeed.DataLoader when decoding: `__unit__`, `__row__`
        self._count_stats: dict = {}

    def _check_columns(self, columns) -> tuple[str, ...]:
        names = self.manifest.column_names
        if columns is None:
            return tuple(names)
        if isinstance(columns, str) or not isinstance(columns, Sequence) or not columns:
            raise ValueError(f"`columns` should be a non-empty list of column names, but got "
                             f"columns={columns!r}")
        self.manifest.check_selectable(columns)
        unknown = [c for c in columns if c not in names]
        if unknown:
            raise ValueError(f"`columns` names {unknown} which dataset {self.path!r} does not have; "
                             f"its columns are {names}")
        return tuple(columns)

    # ------------------------------------------------------------ planning

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch: it seeds the shuffle, so every rank must call it with the same value."""
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"`epoch` should be a non-negative integer, but got epoch={epoch!r}")
        self.epoch = epoch

    def _context(self, stats: Stats, plan: Plan | None = None) -> ReadContext:
        fs, root = storage.resolve(self.data_root, self.storage_options)
        plan = plan or self.plan()
        return ReadContext(fs=fs, root=root, dataset=self.path, schema=self.manifest.schema,
                           columns=self.columns, filter_columns=plan.filter_columns, expr=self.expr,
                           on_error=self.on_error, stats=stats,
                           manifest_bytes={s.path: s.num_bytes for s in self.manifest.shards},
                           shards={s.path: s for s in self.manifest.shards})

    def plan(self) -> Plan:
        """The work units (pruned by statistics) and their exact counts; computed once."""
        if self._plan is None:
            plan = make_plan(self.manifest, self.expr, self.columns)
            if self.expr is not None:
                stats = Stats()
                ctx = self._context(stats, plan)
                plan = with_counts(plan, functools.partial(_count_units, self.manifest.format, ctx))
                self._count_stats = stats.take()
            self._plan = plan
        return self._plan

    def stream(self) -> EpochStream:
        return EpochStream(self.plan(), seed=self.seed, epoch=self.epoch, shuffle=self.shuffle,
                           shuffle_buffer=self.shuffle_buffer)

    def _unit_size(self) -> int:
        return self.batch_size or 1

    def lanes_for(self, spans: Sequence[partition.Span], num_workers: int) -> list[list[partition.Span]]:
        """This rank's spans cut into one run of whole batches per worker."""
        return partition.split_workers(spans, num_workers, self._unit_size())

    def rank_spans(self, spans: Sequence[partition.Span] | None = None) -> list[partition.Span]:
        """This rank's share of `spans` (the whole epoch by default)."""
        spans = [(0, self.plan().num_samples)] if spans is None else spans
        return partition.split_ranks(spans, self.world_size, self._unit_size(),
                                     self.drop_last)[self.rank]

    # ------------------------------------------------------------ iteration

    def _my_lane(self) -> tuple[int, list[partition.Span]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        lanes = self._lanes if self._lanes is not None else self.lanes_for(self.rank_spans(), workers)
        if len(lanes) != workers:
            raise RuntimeError(f"internal: {len(lanes)} lanes for {workers} workers")
        return worker, lanes[worker]

    def __iter__(self):
        worker, spans = self._my_lane()
        if self.batch_size is None:
            for b in self._batches(spans, worker, 256):
                yield from batching.rows(b)
        else:
            yield from self._batches(spans, worker, self.batch_size)

    def _segments(self, spans, stats: Stats):
        """This lane's positions as blocks (whole unit pieces or shuffle-chunk pieces), read in
        order; run inline, or on a lane thread ahead of the batching (`lanes.py`)."""
        reader = StreamReader(self.stream(), make_reader(self.manifest.format, self._context(stats)),
                              row_ids=self._row_ids)
        try:
            yield from reader.segments(spans)
        finally:
            reader.close()

    def _batches(self, spans, worker: int, size: int, segments=None, stats: Stats | None = None):
        """Batches of `size` positions cut out of the lane's segments, with the bookkeeping."""
        stats = Stats() if stats is None else stats
        segments = self._segments(spans, stats) if segments is None else segments
        consumed = 0
        try:
            for block in cut(segments, size):
                consumed += block.positions
                batch = block.columns
                if not self._annotate:  # a plain torch DataLoader's batch: what users see
                    yield batching.user_facing(batch)
                    continue
                if torch.utils.data.get_worker_info() is not None:
                    batch = batching.pack(batch)  # one shared-memory buffer per batch
                else:
                    batch = dict(batch)
                delta = stats.take()  # the readers' counters since the last batch, and this batch's
                delta["samples"] = delta.get("samples", 0) + block.rows
                delta["batches"] = delta.get("batches", 0) + 1
                if block.skipped:
                    delta["samples_skipped"] = delta.get("samples_skipped", 0) + block.skipped
                batch[PROGRESS_KEY], batch[STATS_KEY] = (worker, consumed), delta
                yield batch
        finally:
            close = getattr(segments, "close", None)
            if close is not None:
                close()

    def __len__(self) -> int:
        lanes = self.lanes_for(self.rank_spans(), 1)
        return -(-partition.total(lanes[0]) // self._unit_size())


def _count_units(fmt: str, ctx: ReadContext, units) -> list[int]:
    """Rows passing the filter in each unit of one shard, with one reader (the file opened once)."""
    reader = make_reader(fmt, ctx)
    try:
        return [reader.count(u) for u in units]
    finally:
        reader.close()

