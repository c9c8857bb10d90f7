"""`sparkfeed.DataLoader`: the one-line replacement for `torch.utils.data.DataLoader`.

Wiring only: argument checks, the epoch's split of work over this rank's workers, torch's own
worker processes (batch_size=None: workers build whole batches), then on a background thread
image decoding and pinned copies (`prefetch.Prefetcher`), and bookkeeping of exactly which
positions the consumer received, which is what `state_dict()` saves.
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.utils.data

from . import partition
from .batch import select_rows, unpack, user_facing
from .dataset import PROGRESS_KEY, STATS_KEY, Dataset, _positive_int
from .errors import CorruptSampleError, WorkerError
from .lanes import LaneReader, round_robin
from .prefetch import Prefetcher
from .stats import Stats

__all__ = ["DataLoader"]
log = logging.getLogger(__name__)
STATE_VERSION = 1
WORKER_TYPES = ("auto", "thread", "process")


class DataLoader:
    """Batches of a sparkfeed dataset as dicts of tensors, with torch's familiar arguments.

    Example::

        loader = sparkfeed.DataLoader("s3://bucket/ds", batch_size=256, shuffle=True,
                                      num_workers=8, pin_memory=True, device="cuda",
                                      columns=["image", "label"], filter=[("label", "<", 10)],
                                      decode={"image": sparkfeed.ImageDecode(size=224)})
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            for batch in loader: ...

    `state_dict()` / `load_state_dict()` resume mid-epoch exactly (any world size or worker
    count); `stats()` says where the time and bytes went. `worker_type="auto"` reads Parquet
    with `num_workers` threads (pyarrow releases the GIL, and batches need not cross processes)
    and WebDataset tars with torch worker processes; "thread" or "process" chooses explicitly.
    Both give the same batches in the same order.
    """

    def __init__(self, path_or_dataset=None, batch_size: int = 1, shuffle: bool = False, seed: int = 0,
                 columns: Sequence[str] | None = None, filter=None,
                 decode: Mapping[str, object] | None = None, num_workers: int = 0, prefetch: int = 2,
                 pin_memory: bool = False, device=None, drop_last: bool = False,
                 collate_fn: Callable | None = None, on_error: str = "raise",
                 rank: int | None = None, world_size: int | None = None, shuffle_buffer: int = 2048,
                 storage_options: dict | None = None, timeout: float = 0,
                 multiprocessing_context=None, prefetch_factor: int | None = None,
                 worker_type: str = "auto", manifest=None):
        _positive_int("batch_size", batch_size)
        if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 0:
            raise ValueError(f"`num_workers` should be a non-negative integer, but got num_workers={num_workers!r}")
        if not isinstance(prefetch, int) or isinstance(prefetch, bool) or prefetch < 0:
            raise ValueError(f"`prefetch` should be a non-negative integer, but got prefetch={prefetch!r}")
        if worker_type not in WORKER_TYPES:
            raise ValueError(f"`worker_type` should be one of {WORKER_TYPES}, but got worker_type={worker_type!r}")
        if collate_fn is not None and not callable(collate_fn):
            raise ValueError(f"`collate_fn` should be callable, but got collate_fn={collate_fn!r}")
        self.dataset = self._dataset(path_or_dataset, batch_size=batch_size, shuffle=shuffle, seed=seed,
                                     columns=columns, filter=filter, drop_last=drop_last,
                                     on_error=on_error, rank=rank, world_size=world_size,
                                     shuffle_buffer=shuffle_buffer, storage_options=storage_options,
                                     manifest=manifest)
        self.batch_size, self.num_workers, self.prefetch = batch_size, num_workers, prefetch
        self.pin_memory, self.collate_fn, self.timeout = pin_memory, collate_fn, timeout
        self.worker_type = worker_type
        self.multiprocessing_context, self.prefetch_factor = multiprocessing_context, prefetch_factor
        self.device = self._check_device(device)
        self.decode = self._check_decode(decode or {})
        self._decoders: dict | None = None
        self._stats = Stats()
        self._resume: list[partition.Span] | None = None
        self._resume_lanes: list[list[partition.Span]] | None = None
        self._lanes: list[list[partition.Span]] = []
        self._delivered: list[int] = []

    # ------------------------------------------------------------ arguments

    @staticmethod
    def _dataset(path_or_dataset, **kwargs) -> Dataset:
        if isinstance(path_or_dataset, Dataset):
            # The loader's own shallow copy: its batch size and bookkeeping never leak into the
            # caller's Dataset (which may also feed a plain torch DataLoader).
            ds = copy.copy(path_or_dataset)
            ds.batch_size = kwargs["batch_size"]
            return ds
        if path_or_dataset is None and kwargs.get("manifest") is not None:
            return Dataset(None, **kwargs)
        if not isinstance(path_or_dataset, str) and not hasattr(path_or_dataset, "__fspath__"):
            raise ValueError("`path_or_dataset` should be a dataset path/URL or a sparkfeed.Dataset, "
                             f"but got {type(path_or_dataset).__name__}")
        return Dataset(str(path_or_dataset), **kwargs)

    @staticmethod
    def _check_device(device):
        if device is None:
            return None
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"`device` is {device!r} but CUDA is not available on this machine; "
                             "use device=None or 'cpu'")
        return dev

    def _check_decode(self, decode: Mapping[str, object]) -> dict:
        from .decode import ImageDecode

        ds = self.dataset
        for name, spec in decode.items():
            if name not in ds.columns:
                raise ValueError(f"`decode` names column {name!r}, which is not among the loaded "
                                 f"columns {list(ds.columns)}")
            if ds.manifest.column(name).type not in ("binary", "large_binary"):
                raise ValueError(f"`decode` column {name!r} is {ds.manifest.column(name).type}, "
                                 "not a binary column of encoded images")
            if not isinstance(spec, ImageDecode):
                raise ValueError(f"`decode[{name!r}]` should be a sparkfeed.ImageDecode, but got {spec!r}")
        return dict(decode)

    # ------------------------------------------------------------ epochs and state

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` at the next iteration (same value on every rank)."""
        self.dataset.set_epoch(epoch)
        self._resume, self._resume_lanes, self._lanes, self._delivered = None, None, [], []

    def _rank_spans(self) -> list[partition.Span]:
        return self._resume if self._resume is not None else self.dataset.rank_spans()

    def __len__(self) -> int:
        lanes = self._resume_lanes or self.dataset.lanes_for(self._rank_spans(), max(1, self.num_workers))
        return sum(-(-partition.total(lane) // self.batch_size) for lane in lanes)

    def _remaining_lanes(self) -> list[list[partition.Span]]:
        """Per worker lane, the positions not delivered yet."""
        if not self._lanes:
            return self._resume_lanes or [list(self._rank_spans())]
        return [partition.skip(lane, done) for lane, done in zip(self._lanes, self._delivered)]

    def _lanes_in_turn(self) -> list[list[list[int]]]:
        """Remaining lanes, starting with the one whose batch is due next (torch's workers
        take turns), so that resuming with the same workers continues in the same order."""
        lanes = [[list(s) for s in lane] for lane in self._remaining_lanes()]
        turn = sum(-(-d // self.batch_size) for d in self._delivered) % len(lanes) if self._lanes else 0
        return lanes[turn:] + lanes[:turn]

    def _remaining(self) -> list[partition.Span]:
        return partition.normalise([s for lane in self._remaining_lanes() for s in lane])

    def state_dict(self, all_ranks: bool = False) -> dict:
        """Plain values: the epoch and the stream positions this rank has not delivered yet.

        With `all_ranks=True` (under torch.distributed) the ranks' states are gathered into one
        global state that any world size can load.
        """
        ds = self.dataset
        remaining = [list(s) for s in self._remaining()]
        scope, rank = "rank", ds.rank
        if all_ranks:
            remaining, scope, rank = _gather(remaining, ds.world_size), "global", None
        return {"version": STATE_VERSION, "epoch": ds.epoch, "seed": ds.seed,
                "scope": scope, "rank": rank, "world_size": ds.world_size,
                "num_samples": ds.plan().num_samples, "fingerprint": self._fingerprint(),
                "remaining": remaining,
                "lanes": self._lanes_in_turn() if scope == "rank" else None}

    def _fingerprint(self) -> str:
        ds = self.dataset
        return (f"{ds.manifest.num_samples}|{ds.expr}|{ds.shuffle}|{ds.shuffle_buffer}|"
                f"{ds.batch_size}|{ds.drop_last}")

    def load_state_dict(self, state) -> None:
        """Resume from `state_dict()` (one rank's, a list of every rank's, or a global one)."""
        states = state if isinstance(state, list) else [state]
        first = states[0]
        if not isinstance(first, Mapping) or first.get("version") != STATE_VERSION:
            raise ValueError(f"`state` should come from DataLoader.state_dict() (version "
                             f"{STATE_VERSION}), but got {str(first)[:200]!r}")
        if first["fingerprint"] != self._fingerprint() or first["num_samples"] != self.dataset.plan().num_samples:
            raise ValueError("`state` was saved by a loader over other data or with other settings "
                             f"({first['fingerprint']!r}); resume with the same dataset, filter, "
                             "shuffle, shuffle_buffer, batch_size and drop_last")
        ds = self.dataset
        ds.set_epoch(int(first["epoch"]))
        self._resume_lanes = None
        if len(states) == 1 and first["scope"] == "rank" and first["world_size"] == ds.world_size:
            self._resume = partition.normalise(first["remaining"])
            lanes = [[tuple(s) for s in lane] for lane in first.get("lanes") or []]
            if len(lanes) == max(1, self.num_workers):  # same lanes: the same order continues
                self._resume_lanes = lanes
        else:
            everything = partition.normalise([s for st in states for s in st["remaining"]])
            self._resume = ds.rank_spans(everything)
        self._lanes, self._delivered = [], []

    def stats(self) -> dict:
        """Counters summed over workers: samples, bytes read, pruning, filtering, skips, wait time."""
        out = self._stats.snapshot()
        out.update(self.dataset.plan().pruning_stats())
        for key, value in self.dataset._count_stats.items():
            out[key] = out.get(key, 0) + value
        return out

    # ------------------------------------------------------------ iteration

    def __iter__(self):
        ds = self.dataset
        workers = max(1, self.num_workers)
        self._lanes = self._resume_lanes or ds.lanes_for(self._rank_spans(), workers)
        self._resume_lanes = None
        self._delivered = [0] * workers
        ds._lanes, ds._annotate, ds._row_ids = self._lanes, True, bool(self.decode)
        source = self._worker_batches()
        if not self._staged():
            return self._deliver(_waited(source, self._stage, self._stats))
        prefetcher = Prefetcher(source, depth=self.prefetch, pin_memory=self.pin_memory,
                                device=self.device, stage=self._stage, stats=self._stats)
        return self._deliver(prefetcher)

    def _staged(self) -> bool:
        """Whether batches need work on a prefetch thread (decoding, pinning, a device copy, a
        collate_fn). Without it there is no such thread: the reading already runs ahead on the
        lane threads or worker processes, and a thread that only passed batches on would only
        add a hand-over per batch."""
        return bool(self.decode) or self.collate_fn is not None or self.device is not None \
            or (self.pin_memory and torch.cuda.is_available())

    def _threads(self) -> bool:
        """Threads read Parquet (pyarrow releases the GIL); processes parse tars (Python work).
        With num_workers=0 one background thread reads (`prefetch` segments ahead)."""
        if self.worker_type == "auto" or self.num_workers == 0:
            return self.num_workers == 0 or self.dataset.manifest.format == "parquet"
        return self.worker_type == "thread"

    def _worker_batches(self):
        ds = self.dataset
        if self.num_workers == 0 and self.prefetch == 0:
            return iter(ds)  # everything on the caller's thread, as asked
        if self._threads():
            stats = [Stats() for _ in self._lanes]
            depth = self.prefetch_factor or max(2, self.prefetch if self.num_workers == 0 else 2)
            reader = LaneReader([functools.partial(ds._segments, spans, stats[k])
                                 for k, spans in enumerate(self._lanes)], depth=depth)
            return round_robin([ds._batches(spans, k, ds.batch_size, reader.lane(k), stats[k])
                                for k, spans in enumerate(self._lanes)], on_close=reader.close)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=None, num_workers=self.num_workers, timeout=self.timeout,
            multiprocessing_context=self.multiprocessing_context,
            prefetch_factor=self.prefetch_factor)
        return _named_worker_errors(iter(loader), self.dataset.rank)

    def _deliver(self, batches):
        complete = False
        try:
            for batch in batches:
                worker, consumed = batch.pop(PROGRESS_KEY)
                self._delivered[worker] = consumed
                self._stats.merge(batch.pop(STATS_KEY))  # counted when delivered, not read ahead
                yield batch
            complete = True
        finally:
            batches.close()
            if complete:  # the epoch is done: state says so, a new iteration starts it over
                self._resume = None

    def _stage(self, batch: dict) -> dict:
        """Per-batch work (on the prefetch thread when there is one): unpacking, decoding, user
        collate; the bookkeeping rides along."""
        batch = unpack(batch)
        if self.decode:
            batch = self._decode(batch)
        progress, stats = batch.pop(PROGRESS_KEY), batch.pop(STATS_KEY, {})
        batch = user_facing(batch)
        if self.collate_fn is not None:
            batch = self.collate_fn(batch)
            if not isinstance(batch, dict):
                batch = {"batch": batch}
        batch[PROGRESS_KEY], batch[STATS_KEY] = progress, stats
        return batch

    def _decoder(self, name: str):
        from .decode import ImageDecoder

        if self._decoders is None:
            self._decoders, self._decoder_epochs = {}, {}
        if name not in self._decoders:
            self._decoders[name] = ImageDecoder(self.decode[name], max_batch_size=self.batch_size,
                                                seed=self.dataset.seed)
            self._decoder_epochs[name] = None
        dec, epoch = self._decoders[name], (self.dataset.epoch, self.dataset.rank)
        if self._decoder_epochs[name] != epoch:  # once per epoch: it restarts the draws
            dec.set_epoch(*epoch)
            self._decoder_epochs[name] = epoch
        return dec

    def _decode(self, batch: dict) -> dict:
        # a sample's crop and flip follow from (seed, epoch, unit, row): the same under any batch
        # size, worker count, world size or resume
        keys = (batch["__unit__"] << 32) | batch["__row__"]
        for name in self.decode:
            images = batch[name]
            result = self._decoder(name).decode(images, keys=keys)
            if result.failures:
                self._handle_failures(batch, result.failures)
                delta = batch[STATS_KEY]
                batch = select_rows({k: v for k, v in batch.items() if k != name}, result.ok_rows)
                delta["samples_skipped"] = delta.get("samples_skipped", 0) + len(result.failures)
                delta["samples"] = delta.get("samples", 0) - len(result.failures)
                batch[STATS_KEY] = delta
            batch[name] = result.images
        return batch

    def _handle_failures(self, batch: dict, failures) -> None:
        if self.dataset.on_error == "skip":
            return
        row, reason = failures[0]
        unit = self.dataset.plan().units[int(batch["__unit__"][row])]
        key_col = next((c.name for c in self.dataset.manifest.schema if c.member == "__key__"), None)
        key = batch[key_col][row] if key_col in batch else f"row {int(batch['__row__'][row])}"
        raise CorruptSampleError(f"cannot decode: {reason} ({len(failures)} bad image(s) in this "
                                 "batch; on_error='skip' drops and counts them)",
                                 dataset=self.dataset.path, shard=unit.path,
                                 row_group=unit.row_group, key=str(key))


def _waited(source, stage: Callable[[dict], dict], stats: Stats):
    """Batches staged on the consumer's thread (nothing worth a prefetch thread), with the time
    spent waiting for each counted in `wait_s`, as the prefetcher counts it."""
    it = iter(source)
    try:
        while True:
            start = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            finally:
                stats.add("wait_s", time.perf_counter() - start)
            yield stage(batch)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def _named_worker_errors(it, rank: int):
    """Re-raise a crashed worker as WorkerError naming the rank (torch names the worker)."""
    try:
        yield from it
    except RuntimeError as exc:
        if "DataLoader worker" in str(exc):
            raise WorkerError(f"a sparkfeed loader worker of rank {rank} died: {exc}") from exc
        raise
    finally:
        # Stop the workers now, not when the iterator is collected: an error's traceback keeps
        # it alive, and torch's SIGCHLD handler would keep watching the dead workers meanwhile.
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def _gather(remaining: list, world_size: int) -> list:
    """Every rank's remaining spans, merged (torch.distributed when initialised)."""
    dist = torch.distributed
    if world_size == 1 or not (dist.is_available() and dist.is_initialized()):
        return [list(s) for s in partition.normalise(remaining)]
    parts = [None] * world_size
    dist.all_gather_object(parts, remaining)
    return [list(s) for s in partition.normalise([s for p in parts for s in p])]
