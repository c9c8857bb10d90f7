"""Manifest + filter + columns -> the work units of a dataset. Reads only the manifest.

A work unit is one Parquet row group, or one whole WebDataset shard. Shards are pruned with the
manifest's shard statistics, row groups with its row-group statistics, both through
`filters.select_may_match` (pyarrow's own guarantee simplification). With a filter, the loader
then counts the rows of each surviving unit that pass it (`with_counts`), reading only the
filter columns, so every rank knows the exact size of the epoch without talking to the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import pyarrow.compute as pc

from . import filters
from .errors import redact
from .manifest import Manifest

__all__ = ["WorkUnit", "Plan", "make_plan", "with_counts"]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkUnit:
    """One piece of reading: a row group of a Parquet shard, or a whole tar shard."""

    index: int               # position in the plan
    shard: int               # position of the shard in the manifest
    path: str                # shard path relative to the dataset root
    row_group: int | None    # None: the whole shard
    num_rows: int            # rows before filtering (from the manifest)


@dataclass(frozen=True)
class Plan:
    """The surviving units and, per unit, how many samples it delivers (after the filter)."""

    units: tuple[WorkUnit, ...]
    counts: tuple[int, ...]
    columns: tuple[str, ...]          # delivered to the user
    filter_columns: tuple[str, ...]   # read first to evaluate the filter
    shards_planned: int
    shards_pruned: int
    row_groups_planned: int
    row_groups_pruned: int
    counted: bool                     # True when counts come from a pass over the filter columns

    @property
    def num_samples(self) -> int:
        return sum(self.counts)

    def pruning_stats(self) -> dict[str, int]:
        return {"shards_planned": self.shards_planned, "shards_pruned": self.shards_pruned,
                "row_groups_planned": self.row_groups_planned,
                "row_groups_pruned": self.row_groups_pruned}


def make_plan(manifest: Manifest, expr: pc.Expression | None, columns: Sequence[str]) -> Plan:
    """Prune shards and row groups by statistics; no data file is opened."""
    shards = list(range(len(manifest.shards)))
    nan = filters.nan_columns(expr, manifest.schema) if expr is not None else []
    if expr is not None:
        shards = filters.select_may_match(
            expr, [(s.stats, s.num_samples) for s in manifest.shards], manifest.schema, nan)
    units: list[WorkUnit] = []
    groups_total = groups_pruned = 0
    for si in shards:
        shard = manifest.shards[si]
        if shard.row_groups is None:
            units.append(WorkUnit(len(units), si, shard.path, None, shard.num_samples))
            continue
        groups_total += len(shard.row_groups)
        keep = range(len(shard.row_groups))
        if expr is not None:
            keep = filters.select_may_match(
                expr, [(rg.stats, rg.num_samples) for rg in shard.row_groups], manifest.schema, nan)
        groups_pruned += len(shard.row_groups) - len(keep)
        units.extend(WorkUnit(len(units) + k, si, shard.path, rg, shard.row_groups[rg].num_samples)
                     for k, rg in enumerate(keep))
    kept_shards = set(shards)
    pruned_shards = [s for i, s in enumerate(manifest.shards) if i not in kept_shards]
    groups_total += sum(len(s.row_groups or ()) for s in pruned_shards)
    groups_pruned += sum(len(s.row_groups or ()) for s in pruned_shards)
    units = [u for u in units if u.num_rows > 0]
    units = [replace(u, index=i) for i, u in enumerate(units)]
    fcols = tuple(filters.referenced_columns(expr, manifest.schema))
    plan = Plan(units=tuple(units), counts=tuple(u.num_rows for u in units), columns=tuple(columns),
                filter_columns=fcols, shards_planned=len(manifest.shards),
                shards_pruned=len(manifest.shards) - len(shards), row_groups_planned=groups_total,
                row_groups_pruned=groups_pruned, counted=False)
    log.info("plan for %s: %d units, %d/%d shards and %d/%d row groups pruned", redact(manifest.root),
             len(units), plan.shards_pruned, plan.shards_planned, groups_pruned, groups_total)
    return plan


def with_counts(plan: Plan, count: Callable[[Sequence[WorkUnit]], list[int]], threads: int = 8) -> Plan:
    """The plan with exact per-unit counts of rows passing the filter; empty units dropped.

    `count` gets the units of one shard (so each file is opened once) and reads only the filter
    columns; threads overlap shards (pyarrow releases the GIL). Counts do not depend on the epoch.
    """
    by_shard: dict[int, list[WorkUnit]] = {}
    for u in plan.units:
        by_shard.setdefault(u.shard, []).append(u)
    groups = list(by_shard.values())
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(groups)))) as pool:
        counted = dict(zip((u.index for g in groups for u in g),
                           (c for cs in pool.map(count, groups) for c in cs)))
    counts = [counted[u.index] for u in plan.units]
    kept = [(u, c) for u, c in zip(plan.units, counts) if c > 0]
    units = tuple(replace(u, index=i) for i, (u, _) in enumerate(kept))
    return replace(plan, units=units, counts=tuple(c for _, c in kept), counted=True)
