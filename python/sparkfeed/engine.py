"""The read engine shared by `Dataset` and `DataLoader`: plan -> lanes -> segments -> deliveries.

    engine = Engine(config)                     # what to read: a frozen `ReadConfig`
    plan = engine.plan()                        # pruned work units and exact counts, once
    spans = engine.rank_spans(rank, world, unit, drop_last)    # this rank's positions
    lanes = engine.lanes(spans, workers, unit)  # one run of whole batches per worker
    for d in engine.deliveries(epoch, lanes[k], k, batch_size):
        d.batch, d.worker, d.consumed, d.stats  # a batch and its bookkeeping, side by side

Bookkeeping (which positions a batch completes, the counters since the last batch, the keys
naming each row) travels beside the batch in a frozen `Delivery`, never inside it, so a user
column of any name reaches the user and a `collate_fn` may return any object.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import torch

from . import filters, forks, packing, partition, storage
from .errors import redact
from .manifest import Manifest
from .plan import Plan, make_plan, unfiltered, with_counts
from .read import ReadContext, make_reader
from .read.sharedreads import SharedReads
from .stats import Stats
from .threads import close_quietly
from .epoch import EpochStream
from .segments import ROW_KEYS, cut
from .stream import StreamReader

__all__ = ["ReadConfig", "Engine", "Delivery"]

LANE_THREAD_SAMPLE_BYTES = 4096  # stored bytes per sample from which each lane gets a reading thread
SMALL_FILE_SAMPLES = 1024  # samples per data file (on average) under which thread lanes start in turn
# Threads of the filter's count pass (a file each at a time): locally it is pyarrow's work, for
# the cores; over remote storage each file mostly waits for its request (10-50 ms to the first
# byte), so more at once, as object stores' clients do (32 concurrent requests)
LOCAL_COUNT_THREADS, REMOTE_COUNT_THREADS = 8, 32
# Local small files are counted many at once, the filter evaluated once over up to this many rows
# (`plan.with_counts`); remote ones a file a task, so that their requests go out at once
COUNT_TASK_ROWS = 65_536
# every engine's lock for what its thread lanes share: one for all, so it can be free at a fork
# (a forked child's own thread lanes take it; a parent's lane thread may hold it as it forks)
_LANES_SHARED_LOCK = threading.Lock()
forks.free_at_fork(_LANES_SHARED_LOCK)


@dataclass(frozen=True)
class ReadConfig:
    """Everything that fixes a dataset's epoch stream, checked by `Dataset` at the door."""

    path: str
    manifest: Manifest
    columns: tuple[str, ...]
    expr: pc.Expression | None = None
    shuffle: bool = False
    seed: int = 0
    shuffle_buffer: int | None = None  # shuffle block in samples; None: shuffle.default_block
    on_error: str = "raise"
    storage_options: dict | None = dataclasses.field(default=None, hash=False, compare=False)
    ragged: tuple[str, ...] = ()  # list columns delivered as lists of 1-D tensors (any lengths)
    # remote storage: bytes a reader's read-ahead holds in flight or fetched (None: the default,
    # `readahead.READ_AHEAD_BYTES`; 0: off). How fast, never what: not part of the stream.
    read_ahead_bytes: int | None = dataclasses.field(default=None, hash=False, compare=False)
    # Parquet pages checked against their CRCs: what an epoch delivers from intact files is the same
    verify_checksums: bool = dataclasses.field(default=True, hash=False, compare=False)


@dataclass(frozen=True)
class Delivery:
    """One batch and its bookkeeping, handed from a lane to the loader.

    `worker`: the lane it came from; `consumed`: how many of the lane's positions are delivered
    once this batch is; `stats`: the counters since the lane's previous delivery; `batch`: the
    columns (a `packing.Packed` between processes; after a `collate_fn`, any object); `keys`:
    `(unit << 32) | row` per row when asked for (keyed augmentations, naming a bad sample);
    `epoch`: the epoch it belongs to (a prefetch thread may stage the next epoch's first batches
    while the consumer finishes this one: their augmentations follow their own epoch).
    """

    worker: int
    consumed: int
    stats: dict
    batch: Any
    keys: torch.Tensor | None = None
    epoch: int = 0

    def with_batch(self, batch: Any, stats: dict | None = None, keys: Any = ...) -> "Delivery":
        """The same delivery carrying `batch` (and new `stats`/`keys` where given). Built directly:
        `dataclasses.replace` cost ~4 us per batch on the consumer's thread."""
        return Delivery(self.worker, self.consumed, self.stats if stats is None else stats, batch,
                        self.keys if keys is ... else keys, self.epoch)


class Engine:
    """One dataset's read path. Holds the plan once computed; everything else is per call, so one
    engine serves a `Dataset`, its `DataLoader` and every worker alike."""

    def __init__(self, config: ReadConfig):
        self.config = config
        self._plan: Plan | None = None
        self._count_stats: dict = {}
        self._count_emptied: dict = {}  # what the filter's count pass found empty (`_emptied_by_count`)
        # id(lanes) -> (lanes, what their readers share), for the last iterations
        self._shared: OrderedDict[int, tuple[list, SharedReads]] = OrderedDict()
        self._shared_lock = _LANES_SHARED_LOCK
        self._counted: SharedReads | None = None  # the count pass's, for the first iteration's lanes

    @property
    def format(self) -> str:
        """The dataset's format ("parquet" or "webdataset"): which reader, threads or processes."""
        return self.config.manifest.format

    @property
    def reads_in_c(self) -> bool:
        """True when reading is mostly work outside the GIL (pyarrow, numpy): Parquet, and tars
        that every shard's DALI index lets `read.tarindex` cut up; threads suit it. Tars without
        indexes are parsed member by member in Python (`tarfile`), which processes suit."""
        m = self.config.manifest
        return m.format == "parquet" or (bool(m.root) and all(s.index for s in m.shards))

    @functools.cached_property
    def remote(self) -> bool:
        """True when the data are on remote storage (object stores, HTTP)."""
        return not storage.is_local(storage.resolve(self.config.path, self.config.storage_options)[0])

    @functools.cached_property
    def thread_per_lane(self) -> bool:
        """Whether each thread lane gets a reading thread of its own, not the cores' share
        (`lanes.reading_threads`): over remote storage, where a lane mostly waits for its
        fetches, and for samples of `LANE_THREAD_SAMPLE_BYTES` or more stored (images, audio),
        whose reading is copies and page faults outside the GIL (docs/INTERNALS.md, "Lanes")."""
        m = self.config.manifest
        return self.remote or (m.num_bytes or 0) >= LANE_THREAD_SAMPLE_BYTES * max(1, m.num_samples or 0)

    @functools.cached_property
    def lanes_start_in_turn(self) -> bool:
        """Whether thread lanes that share a reading thread start one after the other
        (`lanes.LaneReader(in_turn=True)`): for data in small files (fewer than
        `SMALL_FILE_SAMPLES` samples a file on average), whose reading is Python's work per file,
        under the GIL, so lanes started together only split it and the first batch waited for
        every lane's first block (docs/INTERNALS.md, "Workers"). Larger files are read by
        pyarrow outside the GIL, where lanes started together read in parallel."""
        m = self.config.manifest
        return bool(m.shards) and (m.num_samples or 0) < SMALL_FILE_SAMPLES * len(m.shards)

    def identity(self) -> str:
        """What a saved state must match besides the loader's settings: the data and the filter."""
        return f"{self.config.manifest.num_samples}|{filters.identity_text(self.config.expr)}"

    @functools.cached_property
    def data_digest(self) -> str:
        """The shards a saved state's positions refer to, digested: each one's path, size and
        sample counts (row groups too). Data rewritten or re-indexed with the same number of samples
        has other files or other counts, and a state saved over the old data is refused on it
        instead of delivering other rows. Recorded mtimes and ETags are left out: copies of the
        same data on several machines, indexed on each, differ there and nowhere else."""
        h = hashlib.blake2b(digest_size=8)
        for s in self.config.manifest.shards:
            groups = ",".join(str(g.num_samples) for g in s.row_groups or ())
            h.update(f"{s.path}|{s.num_bytes}|{s.num_samples}|{groups}\n".encode())
        return h.hexdigest()

    def locate(self, key: int):
        """A row key `(unit << 32) | row` -> (dataset, work unit, the column holding tar keys)."""
        cfg = self.config
        key_col = next((c.name for c in cfg.manifest.schema if c.member == "__key__"), None)
        return cfg.path, self.plan().units[key >> 32], key_col

    # ------------------------------------------------------------ plan

    def plan(self) -> Plan:
        """The work units (pruned by statistics) and their exact counts; computed once."""
        if self._plan is None:
            cfg = self.config
            try:
                plan = make_plan(cfg.manifest, cfg.expr, cfg.columns)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                raise filters.unprunable(exc, cfg.expr, redact(cfg.path)) from exc
            if cfg.expr is not None:
                stats = Stats()
                ctx = self.context(stats, plan)
                self._counted = ctx.shared  # small files' bytes it fetched: read again by no one
                counted = with_counts(plan, functools.partial(_count_units, cfg.manifest.format, ctx),
                                      threads=REMOTE_COUNT_THREADS if self.remote else LOCAL_COUNT_THREADS,
                                      task_rows=0 if self.remote else COUNT_TASK_ROWS)
                self._count_stats, self._count_emptied = stats.take(), _emptied_by_count(plan, counted)
                plan = counted
            self._plan = plan
        return self._plan

    def planning_stats(self) -> dict:
        """What planning pruned by statistics (shards, row groups), what the filter's count pass
        found without a matching row (`*_emptied`: no epoch reads them either) and what that
        count pass read."""
        pruning = {**self.plan().pruning_stats(), "shards_emptied": 0, "row_groups_emptied": 0}
        pruning.update(self._count_emptied)  # (planning runs the count pass)
        return {"pruning": pruning, "counted": dict(self._count_stats)}

    def context(self, stats: Stats, plan: Plan | None = None, lanes: list | None = None) -> ReadContext:
        """What a reader needs. Readers of one context (a lane and its helper threads) share
        footers and fetches (`SharedReads`), and with `lanes` (the list every thread lane of one
        iteration gets) the readers of all those lanes do."""
        cfg = self.config
        fs, root = storage.resolve(cfg.path, cfg.storage_options)
        plan = plan or self.plan()
        return ReadContext(fs=fs, root=root, dataset=redact(cfg.path), schema=cfg.manifest.schema,
                           columns=cfg.columns, filter_columns=plan.filter_columns, expr=cfg.expr,
                           on_error=cfg.on_error, ragged=cfg.ragged, stats=stats,
                           read_ahead_bytes=cfg.read_ahead_bytes, verify_checksums=cfg.verify_checksums,
                           manifest_bytes={s.path: s.num_bytes for s in cfg.manifest.shards},
                           shards={s.path: s for s in cfg.manifest.shards},
                           indexes=self._indexes(fs, root),
                           shared=self._first_shared() if lanes is None else self._lanes_shared(lanes),
                           unfiltered=unfiltered(plan))

    def _first_shared(self) -> SharedReads:
        """A lone reader context's `SharedReads`: the count pass's for the first (inline reads; a
        forked worker process's lane, with the parent's copy), so the small files it holds are
        not fetched again there; else a new one."""
        with self._shared_lock:
            shared, self._counted = self._counted or SharedReads(), None
            return shared

    def let_go_counted(self) -> None:
        """Worker processes started (forked with a copy, or spawned without): the parent lets go
        of the count pass's bytes, which it would otherwise hold to the end (up to 16 MiB). (The
        module's lock: a `MixedEngine` has no `_shared_lock`, and its sources keep theirs.)"""
        with _LANES_SHARED_LOCK:
            self._counted = None

    def _lanes_shared(self, lanes: list) -> SharedReads:
        """What one iteration's thread lanes share (the last two iterations kept, each with its
        lanes held, so an id is not reused while it is a key)."""
        with self._shared_lock:
            entry = self._shared.get(id(lanes))
            if entry is None or entry[0] is not lanes:
                shared, self._counted = self._counted or SharedReads(), None
                entry = self._shared[id(lanes)] = (lanes, shared)
                while len(self._shared) > 2:
                    self._shared.popitem(last=False)
            return entry[1]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_shared"], state["_shared_lock"], state["_counted"] = OrderedDict(), None, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _shared_lock=_LANES_SHARED_LOCK)

    def _indexes(self, fs, root: str) -> tuple | None:
        """Where the DALI index paths of a tar manifest are relative to: the manifest's directory
        (the data root unless the manifest is kept apart)."""
        m, cfg = self.config.manifest, self.config
        if m.format != "webdataset" or not m.root or not any(s.index for s in m.shards):
            return None
        url = storage.normalise_url(m.root)
        url = url.rsplit("/", 1)[0] if url.endswith(".json") else url
        if url == storage.normalise_url(cfg.path):
            return fs, root
        return storage.resolve(url, cfg.storage_options)

    @functools.cached_property
    def runs_capped(self) -> bool:
        """Shuffled with the default block, whose run cap (`shuffle.MAX_BLOCK_RUNS`) cuts more
        blocks than its size alone would: the same for every epoch (runs do not depend on it)."""
        return self.config.shuffle and self.stream(0).capped

    def stream(self, epoch: int) -> EpochStream:
        cfg = self.config
        return EpochStream(self.plan(), seed=cfg.seed, epoch=epoch, shuffle=cfg.shuffle,
                           shuffle_buffer=cfg.shuffle_buffer,
                           sample_bytes=(cfg.manifest.num_bytes or 0) / max(1, cfg.manifest.num_samples or 0))

    # ------------------------------------------------------------ partition

    def rank_spans(self, rank: int, world_size: int, unit: int, drop_last: bool,
                   spans: Sequence[partition.Span] | None = None) -> list[partition.Span]:
        """This rank's share of `spans` (the whole epoch by default), in whole `unit`s."""
        spans = [(0, self.plan().num_samples)] if spans is None else spans
        return partition.split_ranks(spans, world_size, unit, drop_last)[rank]

    @staticmethod
    def lanes(spans: Sequence[partition.Span], workers: int, unit: int) -> list[list[partition.Span]]:
        """A rank's spans cut into one run of whole batches per worker."""
        return partition.split_workers(spans, workers, unit)

    # ------------------------------------------------------------ read

    def segments(self, epoch: int, spans: Sequence[partition.Span], stats: Stats,
                 row_ids: bool = False, lanes: list | None = None) -> Iterator:
        """A lane's positions as blocks (unit pieces or shuffle-block pieces), read in order; run
        inline, or on a lane thread ahead of the batching (`lanes.py`)."""
        reader = StreamReader(self.stream(epoch), make_reader(self.format,
                                                              self.context(stats, lanes=lanes)), row_ids=row_ids,
                              lanes=lanes)  # lanes: thread lanes share shuffle blocks
        try:
            yield from reader.segments(spans)
        finally:
            reader.close()

    def deliveries(self, epoch: int, spans: Sequence[partition.Span], worker: int, size: int, *,
                   segments: Iterator | None = None, stats: Stats | None = None,
                   row_ids: bool = False, pack: bool = False) -> Iterator[Delivery]:
        """Batches of `size` positions cut out of a lane's segments, each with its bookkeeping.
        `pack` puts a batch's tensors into one buffer (between processes)."""
        stats = Stats() if stats is None else stats
        segments = self.segments(epoch, spans, stats, row_ids) if segments is None else segments
        account, consumed = self._accounting(epoch, spans), 0
        try:
            for block in cut(segments, size):
                start, consumed = consumed, consumed + block.positions
                columns = dict(block.columns)
                keys = columns.pop(ROW_KEYS, None)
                delta = stats.take()  # the readers' counters since the last batch, and this batch's
                delta["samples"] = delta.get("samples", 0) + block.rows
                delta["batches"] = delta.get("batches", 0) + 1
                if account is not None:
                    account(block, start, columns, delta)
                if block.skipped:
                    delta["samples_skipped"] = delta.get("samples_skipped", 0) + block.skipped
                yield Delivery(worker, consumed, delta, packing.pack(columns) if pack else columns, keys,
                               epoch)
        finally:
            close_quietly(segments)

    def decode_skips(self, keys: torch.Tensor, rows: Sequence[int]) -> dict:
        """Counters beside the totals for `rows` of a batch that decoding dropped (on_error=
        "skip"; the loader counts the totals): none for one dataset, per source in a mix."""
        return {}

    def _accounting(self, epoch: int, spans: Sequence[partition.Span]):
        """Per-batch bookkeeping of an engine over several datasets (`mix.MixedEngine`): a callable
        `(block, first lane position, columns, counters)` for a lane, or None (none here)."""
        return None


def _emptied_by_count(before: Plan, after: Plan) -> dict[str, int]:
    """Row groups and shards that the filter's count pass dropped (no row of them passes; their
    statistics could not tell): no epoch reads them. `stats()` reports them beside the pruned
    ones (`row_groups_emptied`, `shards_emptied`); without them their rows were in neither
    `row_groups_pruned` nor `rows_filtered`."""
    kept = {(u.shard, u.row_group) for u in after.units}
    dropped = [u for u in before.units if (u.shard, u.row_group) not in kept]
    left = {u.shard for u in after.units}
    return {"row_groups_emptied": sum(u.row_group is not None for u in dropped),
            "shards_emptied": len({u.shard for u in dropped} - left)}


def _count_units(fmt: str, ctx: ReadContext, units) -> list[int]:
    """Rows passing the filter in each unit of one task (a shard's, or several small shards'),
    with one reader (each file opened once) and one evaluation of the filter."""
    reader = make_reader(fmt, ctx)
    try:
        return reader.count_many(units)
    finally:
        reader.close()
