"""A Manifest's shards and statistics as the JSON document `_sparkfeed.json` holds (moved from
manifest.py, which holds the dataclasses and parses the document back)."""

from __future__ import annotations

from collections.abc import Mapping

from . import binstats


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def _stats_to_dict(stats: Mapping) -> dict:
    """Column name -> `manifest.ColumnStats` as the document's stats object."""
    # Not dataclasses.asdict: it deep-copies, and a 10,000-shard manifest holds ~100,000 of these.
    return {name: {"min": s.min, "max": s.max, "null_count": s.null_count}
            if not (isinstance(s.min, bytes) or isinstance(s.max, bytes)) else  # binary: `binstats`
            {"min": None, "max": None, "null_count": s.null_count, **binstats.bounds_to_json(s.min, s.max)}
            for name, s in stats.items()}


def _shard_to_dict(s) -> dict:
    """One `manifest.Shard` as its entry in the document."""
    d = {"path": s.path, "num_samples": s.num_samples, "num_bytes": s.num_bytes,
         "stats": _stats_to_dict(s.stats)}
    if s.row_groups is not None:
        d["row_groups"] = [{"num_samples": rg.num_samples, "stats": _stats_to_dict(rg.stats)}
                           for rg in s.row_groups]
    if s.members is not None:
        d["members"] = list(s.members)
    for name in ("index", "mtime", "etag"):
        if getattr(s, name) is not None:
            d[name] = getattr(s, name)
    if s.partition is not None:
        d["partition"] = dict(s.partition)
    return d
