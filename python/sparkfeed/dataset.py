"""`sparkfeed.Dataset`: a torch IterableDataset over this worker's share of the epoch stream.

A thin layer over the read engine (`engine.py`): arguments are checked here, the engine plans,
partitions and reads. It yields single samples (so `torch.utils.data.DataLoader(ds, batch_size=B)`
works unchanged) or, with `batch_size=B`, whole batches built column-wise (the fast path; use
torch's `batch_size=None`).
"""

from __future__ import annotations

import logging
import numbers
import os
from collections.abc import Mapping, Sequence

import torch
import torch.utils.data

from . import batch as batching
from . import arrowtypes, checks, filters, mix, mixsource, partition
from .engine import Engine, ReadConfig
from .index import open_manifest
from .manifest import Manifest
from .plan import Plan
from .epoch import EpochStream

__all__ = ["Dataset", "resolve_rank"]
log = logging.getLogger(__name__)


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit arguments, else torch.distributed when initialised, else RANK/WORLD_SIZE, else (0, 1)."""
    if rank is None or world_size is None:
        dist = torch.distributed
        if _distributed():
            rank = dist.get_rank() if rank is None else rank
            world_size = dist.get_world_size() if world_size is None else world_size
        else:
            rank = _env_int("RANK", 0) if rank is None else rank
            world_size = _env_int("WORLD_SIZE", 1) if world_size is None else world_size
    checks.positive_int("world_size", world_size)
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"`rank` should be in [0, world_size={world_size}), but got rank={rank!r}")
    return rank, world_size


def _distributed() -> bool:
    """torch.distributed is there and initialised (a process group exists)."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized()


def _env_int(name: str, default: int) -> int:
    """An integer from the environment (torchrun's RANK, WORLD_SIZE), else `default`."""
    value = os.environ.get(name)
    try:
        return default if value is None else int(value)
    except ValueError:
        raise ValueError(f"the environment variable {name} should be an integer (torchrun sets it), "
                         f"but got {name}={value!r}") from None


def _same_ragged_types(mixed, ragged: Mapping) -> None:
    """A ragged column is carried as its values' bytes, so every source of a mix must hold it
    with one element type (numbers of other columns are converted; these cannot be)."""
    for name in ragged:
        types = {str(arrowtypes.arrow_type(r.manifest.column(name).type).value_type) for r in mixed}
        if len(types) > 1:
            raise ValueError(f"`ragged` column {name!r} holds lists of different element types in the "
                             f"sources of the mix ({sorted(types)}); write them with one")


def _epoch_cell(epoch: int) -> torch.Tensor:
    """The epoch as one int64 in shared memory: worker processes get the memory itself (forked, or
    passed by torch's multiprocessing pickler), so `set_epoch` in the main process reaches kept
    ones; plain pickling copies the value."""
    return torch.tensor([epoch], dtype=torch.int64).share_memory_()


class Dataset(torch.utils.data.IterableDataset):
    """Stream a sparkfeed dataset (Parquet or WebDataset) as samples or batches.

    Example: `ds = sparkfeed.Dataset("ds/", columns=["label"], filter=[("label", "<", 3)])`, then
    `torch.utils.data.DataLoader(ds, batch_size=32, num_workers=2)`. Every sample that passes the
    filter is delivered once per epoch across ranks and workers. `path` may also be a list of
    `sparkfeed.Source` (a mix, see `mix.py`, `mixsource.py`); `with_source=True` then adds `__source__`.
    `read_ahead_bytes` bounds what each reader of remote data holds fetched or in flight (None:
    64 MiB or `SPARKFEED_READ_AHEAD_BYTES`; 0: no read-ahead); it changes speed, never batches.
    `verify_checksums=False` skips checking Parquet pages against their CRCs (on by default: a
    damaged page is a `ShardReadError`, not wrong values; off, a tabular epoch takes ~15% less CPU).
    """

    def __init__(self, path: str | Sequence[mixsource.Source], *, columns: Sequence[str] | None = None,
                 filter=None, shuffle: bool = False, seed: int = 0, batch_size: int | None = None,
                 drop_last: bool = False, shuffle_buffer: int | None = None, rank: int | None = None,
                 world_size: int | None = None, on_error: str = "raise",
                 storage_options: dict | None = None, manifest: Manifest | str | None = None,
                 with_source: bool = False, ragged=None, read_ahead_bytes: int | None = None,
                 verify_checksums: bool = True):
        super().__init__()
        checks.positive_int("batch_size", batch_size, allow_none=True)
        checks.positive_int("shuffle_buffer", shuffle_buffer, allow_none=True)
        if read_ahead_bytes is not None:
            checks.non_negative_int("read_ahead_bytes", read_ahead_bytes)
        checks.one_of("on_error", on_error, checks.ON_ERROR)
        checks.one_of("verify_checksums", verify_checksums, (True, False))
        if not isinstance(seed, int) or isinstance(seed, bool) or not -2**63 <= seed < 2**64:
            raise ValueError("`seed` should be an integer in [-2**63, 2**64) (torch's seed range; a negative "
                             f"one counts modulo 2**64), but got seed={seed!r}")
        checks.one_of("with_source", with_source, (False, True))
        mixed = None
        if mixsource.is_mix(path):  # several datasets: `mix.py` checks them and reads them
            if manifest is not None:
                raise ValueError("`manifest` belongs to one dataset; in a mix give each "
                                 "sparkfeed.Source its own manifest=")
            mixed, self.columns = mixsource.resolve(path, columns=columns, filter=filter,
                                              storage_options=storage_options, with_source=with_source)
            self.path = "mix[" + ", ".join(r.path for r in mixed) + "]"
            self.manifest, self.expr = mixed[0].manifest, None
        else:
            if with_source:
                raise ValueError("`with_source=True` tags each row with its source in a mix; pass a "
                                 "list of sparkfeed.Source, or with_source=False for one dataset")
            self.manifest, data_root = open_manifest(path, manifest, storage_options)
            self.path = str(data_root)  # `path`, or where a manifest kept apart says the data is
            columns = checks.struct_leaves(columns, self.manifest.column_names)
            self.manifest.check_selectable(columns if isinstance(columns, (list, tuple)) else ())
            self.columns = checks.check_columns(columns, self.manifest.column_names, self.path)
            self.expr = filters.to_expression(filter, self.manifest.schema)
            if self.expr is not None:
                used = filters.referenced_columns(self.expr, self.manifest.schema)
                self.manifest.check_selectable(filters.unfilterable(used, self.manifest.schema), "filter")
                filters.check_filter(self.expr, self.manifest.schema, self.path, self.manifest.shards)
        self.ragged = checks.check_ragged(ragged, self.columns, self.manifest, self.path)  # name -> dtype
        if mixed is not None:
            _same_ragged_types(mixed, self.ragged)
        checks.one_of("shuffle", shuffle, (False, True))
        checks.one_of("drop_last", drop_last, (False, True))
        self.shuffle, self.seed, self.batch_size = bool(shuffle), seed, batch_size
        self.drop_last, self.shuffle_buffer, self.on_error = bool(drop_last), shuffle_buffer, on_error
        self._rank_args = (rank, world_size)  # what the caller gave; the rest resolved now (`_ranks`)
        self._resolved = resolve_rank(rank, world_size)
        self.storage_options = storage_options
        self._epoch = _epoch_cell(0)
        config = ReadConfig(
            path=self.path, manifest=self.manifest, columns=self.columns, expr=self.expr,
            shuffle=self.shuffle, seed=seed, shuffle_buffer=shuffle_buffer, on_error=on_error,
            storage_options=storage_options, ragged=tuple(self.ragged),
            read_ahead_bytes=read_ahead_bytes, verify_checksums=bool(verify_checksums))
        self.engine = Engine(config) if mixed is None else mix.MixedEngine(mixed, config, with_source)

    @property
    def rank(self) -> int:
        return self._ranks()[0]

    @property
    def world_size(self) -> int:
        return self._ranks()[1]

    def _ranks(self) -> tuple[int, int]:
        """(rank, world_size) as resolved when built. What no argument fixed must still be
        torch.distributed's once that is initialised: a loader built before `init_process_group`
        where no RANK/WORLD_SIZE is set (`torch.multiprocessing.spawn`) took one rank, and every
        rank would have read every sample, silently."""
        if None in self._rank_args and _distributed():
            now = resolve_rank(*self._rank_args)
            if now != self._resolved:
                raise ValueError(
                    f"this sparkfeed loader of {self.path!r} took rank {self._resolved[0]} of "
                    f"world_size={self._resolved[1]} when it was built, but torch.distributed now says "
                    f"rank {now[0]} of {now[1]}: build it after init_process_group, or pass rank= and "
                    "world_size= (rank=0, world_size=1 for a loader every rank reads whole)")
        return self._resolved

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch: it seeds the shuffle, so every rank must call it with the same value.
        It reaches worker processes that torch keeps between epochs (`persistent_workers=True`):
        the number lives in shared memory, which they got when they started."""
        if isinstance(epoch, numbers.Integral) and not isinstance(epoch, bool):
            epoch = int(epoch)  # a numpy integer too (`for epoch in np.arange(n)`), as torch's samplers take
        if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch < 2**63:
            raise ValueError(f"`epoch` should be an integer in [0, 2**63), but got epoch={epoch!r}")
        self._epoch[0] = epoch

    def __copy__(self) -> "Dataset":
        """A shallow copy with an epoch of its own (the engine and manifest are shared)."""
        twin = type(self).__new__(type(self))
        twin.__dict__.update(self.__dict__)
        twin._epoch = _epoch_cell(self.epoch)
        return twin

    def plan(self) -> Plan:
        """The work units (pruned by statistics) and their exact counts; computed once."""
        return self.engine.plan()

    def stream(self) -> EpochStream:
        """This epoch's stream of positions."""
        return self.engine.stream(self.epoch)

    def rank_spans(self, unit: int | None = None) -> list[partition.Span]:
        """This rank's share of the epoch's positions, in whole batches of `unit`."""
        return self.engine.rank_spans(self.rank, self.world_size, unit or self.batch_size or 1,
                                      self.drop_last)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        size = self.batch_size or 1
        lanes = self.engine.lanes(self.rank_spans(), workers, size)
        deliveries = self.engine.deliveries(self.epoch, lanes[worker], worker,
                                            self.batch_size or 256)
        try:
            for d in deliveries:
                if self.batch_size is None:
                    yield from batching.rows(d.batch, self.ragged)
                else:
                    yield batching.user_facing(d.batch, self.ragged)
        finally:
            deliveries.close()

    def __len__(self) -> int:
        return -(-partition.total(self.rank_spans()) // (self.batch_size or 1))
