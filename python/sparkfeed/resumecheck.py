"""What a refused saved state has other than the loader that refused it, and every rank's state
gathered through torch.distributed (`DataLoader.state_dict(all_ranks=True)`)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .integrations import every_rank_arrives

_SETTINGS = ("shuffle", "seed", "shuffle_buffer", "drop_last")  # `DataLoader._fingerprint`'s fields after the identity


def settings_differ(state, fingerprint: str, num_samples: int) -> str:
    """What a refused saved state has other than this loader, as "seed 3 saved, 0 now", from the
    first rank state found in it: the settings `DataLoader._fingerprint` holds, the filter and the samples
    after it. Empty where nothing of these differs (or `state` is not a state at all)."""
    saved = state[0] if isinstance(state, (list, tuple)) and state else state
    saved = saved.get("ranks", [saved])[0] if isinstance(saved, Mapping) else None
    if not isinstance(saved, Mapping) or "batch_size" not in saved:  # (older states hold it in the fingerprint)
        return ""
    saved_n = saved.get("num_samples")
    ours, theirs = _fields(fingerprint), _fields(saved.get("fingerprint"))
    out = [f"{name} {theirs[name]} saved, {ours[name]} now" for name in ours if ours[name] != theirs.get(name)]
    if saved_n != num_samples:
        out.append(f"{saved_n} samples (after the filter) saved, {num_samples} now")
    return "; ".join(out)


def _fields(fingerprint: str) -> dict:
    """A settings fingerprint (`DataLoader._fingerprint`, batch size left out) by field."""
    head, _, cap = str(fingerprint).partition("|block runs<=")
    parts = head.rsplit("|", len(_SETTINGS))
    if len(parts) != len(_SETTINGS) + 1:
        return {"settings": fingerprint}
    identity, values = parts[0], parts[1:]
    _, _, expr = identity.partition("|")
    out = {"data and filter" if identity.startswith("mix(") else "filter": identity if identity.startswith("mix(")
           else expr}
    out.update(zip(_SETTINGS, values))
    out["shuffle block cap"] = cap or None
    return out


def gather(state: dict, world_size: int, timeout: float, path: str) -> list[dict]:
    """Every rank's state, in rank order, through torch.distributed (never a guess), once every
    rank has checked in (`integrations.every_rank_arrives`)."""
    if world_size == 1:
        return [state]
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(f"`state_dict(all_ranks=True)` gathers every rank's state through "
                         f"torch.distributed, which is not initialised here (world_size={world_size} "
                         "came from arguments or RANK/WORLD_SIZE); save state_dict() on every rank "
                         "and pass the list of all ranks' states to load_state_dict()")
    every_rank_arrives(timeout, path)
    parts: list = [None] * world_size
    dist.all_gather_object(parts, state)
    return parts
