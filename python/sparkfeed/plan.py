"""Manifest + filter + columns -> the work units of a dataset. Reads only the manifest.

A work unit is one Parquet row group, or one whole WebDataset shard. Shards are pruned with the
manifest's shard statistics, row groups with its row-group statistics, both through
`pruning.select_may_match` (pyarrow's own guarantee simplification). With a filter, the loader
then counts the rows of each surviving unit that pass it (`with_counts`), reading only the
filter columns, so every rank knows the exact size of the epoch without talking to the others;
a unit whose statistics prove that every row passes (`pruning.select_all_match`) counts its rows
without reading them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import pyarrow.compute as pc

from . import filters, pruning
from .errors import redact
from .manifest import Manifest, collection_paused

__all__ = ["WorkUnit", "Plan", "make_plan", "with_counts", "unfiltered"]
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
    # units (by index) whose statistics prove that every row passes the filter: `with_counts`
    # takes their row count without reading them, and readers evaluate no filter over them
    proven: frozenset[int] = frozenset()

    @property
    def num_samples(self) -> int:
        return sum(self.counts)

    def pruning_stats(self) -> dict[str, int]:
        return {"shards_planned": self.shards_planned, "shards_pruned": self.shards_pruned,
                "row_groups_planned": self.row_groups_planned,
                "row_groups_pruned": self.row_groups_pruned}


def make_plan(manifest: Manifest, expr: pc.Expression | None, columns: Sequence[str]) -> Plan:
    """Prune shards and row groups by statistics, and find the units whose statistics prove
    that every row passes the filter (`Plan.proven`); no data file is opened. The row groups of
    every shard left are pruned in one pass of pyarrow's reasoning (one per shard took 1.2 s for
    10,000 shards), with the garbage collector paused (`manifest.collection_paused`)."""
    with collection_paused():
        return _make_plan(manifest, expr, columns)


def _make_plan(manifest: Manifest, expr: pc.Expression | None, columns: Sequence[str]) -> Plan:
    shards = list(range(len(manifest.shards)))
    exact = pruning.exact_columns(manifest.shards)  # partition keys: never NaN
    nan = pruning.nan_columns(expr, manifest.schema, exact) if expr is not None else []
    if expr is not None:
        shards = pruning.select_may_match(
            expr, [(s.stats, s.num_samples) for s in manifest.shards], manifest.schema, nan, exact)
    groups = [(si, rg) for si in shards for rg in range(len(manifest.shards[si].row_groups or ()))]
    keep = set(range(len(groups)))
    if expr is not None and groups:
        # a shard of one row group with the shard's statistics (small files) was just decided
        ask = [k for k, g in enumerate(groups) if not _same_as_shard(manifest, g)]
        asked = pruning.select_may_match(expr, [_group_stats(manifest, groups[k]) for k in ask],
                                         manifest.schema, nan) if ask else []
        keep -= set(ask) - {ask[i] for i in asked}
    kept_groups: dict[int, list[int]] = {}
    for k, (si, rg) in enumerate(groups):
        if k in keep:
            kept_groups.setdefault(si, []).append(rg)
    units: list[WorkUnit] = []
    for si in shards:
        shard = manifest.shards[si]
        if shard.row_groups is None:
            units.append(WorkUnit(len(units), si, shard.path, None, shard.num_samples))
        else:
            units.extend(WorkUnit(len(units) + k, si, shard.path, rg, shard.row_groups[rg].num_samples)
                         for k, rg in enumerate(kept_groups.get(si, ())))
    groups_total = sum(len(s.row_groups or ()) for s in manifest.shards)
    groups_pruned = groups_total - sum(len(v) for v in kept_groups.values())
    units = [u for u in units if u.num_rows > 0]
    units = [replace(u, index=i) for i, u in enumerate(units)]
    fcols = tuple(filters.referenced_columns(expr, manifest.schema))
    proven = frozenset() if expr is None else frozenset(
        units[i].index for i in pruning.select_all_match(expr, [_unit_stats(manifest, u) for u in units],
                                                         manifest.schema, exact))
    plan = Plan(units=tuple(units), counts=tuple(u.num_rows for u in units), columns=tuple(columns),
                filter_columns=fcols, shards_planned=len(manifest.shards),
                shards_pruned=len(manifest.shards) - len(shards), row_groups_planned=groups_total,
                row_groups_pruned=groups_pruned, counted=False, proven=proven)
    log.info("plan for %s: %d units, %d/%d shards and %d/%d row groups pruned, %d units whose every "
             "row passes the filter", redact(manifest.root), len(units), plan.shards_pruned,
             plan.shards_planned, groups_pruned, groups_total, len(proven))
    return plan


def _group_stats(manifest: Manifest, group: tuple[int, int]) -> tuple:
    """(statistics, rows) of row group `group` = (shard, row group)."""
    rg = manifest.shards[group[0]].row_groups[group[1]]
    return rg.stats, rg.num_samples


def _same_as_shard(manifest: Manifest, group: tuple[int, int]) -> bool:
    """True for the only row group of a shard whose statistics it has (what a shard's say)."""
    shard = manifest.shards[group[0]]
    return len(shard.row_groups) == 1 and shard.row_groups[0].stats == shard.stats


def _unit_stats(manifest: Manifest, unit: WorkUnit) -> tuple:
    """(statistics, rows) of a unit: its row group's, or its whole shard's."""
    shard = manifest.shards[unit.shard]
    if unit.row_group is None:
        return shard.stats, shard.num_samples
    return _group_stats(manifest, (unit.shard, unit.row_group))


def with_counts(plan: Plan, count: Callable[[Sequence[WorkUnit]], list[int]], threads: int = 8,
                task_rows: int = 0) -> Plan:
    """The plan with exact per-unit counts of rows passing the filter; empty units dropped.

    `count` gets the units of one shard (so each file is opened once), or with `task_rows` those
    of consecutive shards up to that many rows (small files: one evaluation of the filter for
    many), and reads only the filter columns; threads overlap tasks (pyarrow releases the GIL).
    Counts do not depend on the epoch.
    """
    by_shard: dict[int, list[WorkUnit]] = {}
    for u in plan.units:
        if u.index not in plan.proven:  # the statistics say every row passes: nothing to read
            by_shard.setdefault(u.shard, []).append(u)
    groups = _tasks(list(by_shard.values()), task_rows)
    counted = {u.index: u.num_rows for u in plan.units if u.index in plan.proven}
    if groups:
        with ThreadPoolExecutor(max_workers=max(1, min(threads, len(groups)))) as pool:
            counted.update(zip((u.index for g in groups for u in g),
                               (c for cs in pool.map(count, groups) for c in cs)))
    counts = [counted[u.index] for u in plan.units]
    kept = [(u, c) for u, c in zip(plan.units, counts) if c > 0]
    units = tuple(replace(u, index=i) for i, (u, _) in enumerate(kept))
    proven = frozenset(i for i, (u, _) in enumerate(kept) if u.index in plan.proven)
    return replace(plan, units=units, counts=tuple(c for _, c in kept), counted=True, proven=proven)


def _tasks(shards: list[list[WorkUnit]], rows: int) -> list[list[WorkUnit]]:
    """The units of consecutive shards joined while they hold at most `rows` rows (0: a task per
    shard)."""
    if rows <= 0:
        return shards
    tasks: list[list[WorkUnit]] = []
    size = rows
    for units in shards:
        n = sum(u.num_rows for u in units)
        if size + n > rows:
            tasks.append([])
            size = 0
        tasks[-1].extend(units)
        size += n
    return tasks


def unfiltered(plan: Plan) -> frozenset:
    """(shard path, row group) of the units whose statistics prove that every row passes the
    filter: readers read them as without one (`ReadContext.unfiltered`)."""
    return frozenset((plan.units[i].path, plan.units[i].row_group) for i in plan.proven)
