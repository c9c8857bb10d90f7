"""Argument checks and device resolution, in one place, in torch's sentence.

Every public constructor validates its arguments here before any work starts, so a bad argument
is a `ValueError` when the loader is built, never a failure at the first batch on a thread:
"`batch_size` should be a positive integer, but got batch_size=0".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["positive_int", "non_negative_int", "one_of", "resolve_device", "check_columns",
           "struct_leaves", "check_ragged", "check_decode", "torch_only", "ON_ERROR"]

ON_ERROR = ("raise", "skip")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(name: str, value, allow_none: bool = False) -> None:
    """`value` must be an int > 0 (or None when allowed)."""
    if allow_none and value is None:
        return
    if not _is_int(value) or value <= 0:
        raise ValueError(f"`{name}` should be a positive integer{' or None' if allow_none else ''}, "
                         f"but got {name}={value!r}")


def non_negative_int(name: str, value) -> None:
    """`value` must be an int >= 0."""
    if not _is_int(value) or value < 0:
        raise ValueError(f"`{name}` should be a non-negative integer, but got {name}={value!r}")


def one_of(name: str, value, choices: Sequence) -> None:
    """`value` must be one of `choices`."""
    if value not in choices:
        raise ValueError(f"`{name}` should be one of {tuple(choices)}, but got {name}={value!r}")


# torch.utils.data.DataLoader arguments that have no meaning here, and what does their job
_TORCH_ONLY = {
    "sampler": "sparkfeed orders the samples itself: shuffle=, seed= and set_epoch(), "
               "rank=/world_size= for DDP (no DistributedSampler)",
    "batch_sampler": "batches are cut by batch_size= (and drop_last=) from sparkfeed's own order",
    "generator": "the order is a function of seed= and the epoch (set_epoch), never of torch's RNG",
    "worker_init_fn": "sparkfeed's workers run its own code only; random augmentations are "
                      "keyed by (seed, epoch, sample) in ImageDecode, the same in any worker",
    "pin_memory_device": "pass device= (pinned batches are copied there asynchronously)",
}


def torch_only(persistent_workers, num_workers: int, **unsupported) -> None:
    """Arguments of `torch.utils.data.DataLoader` (so that replacing it is one line): those that
    hold here are accepted, the others refused with what sparkfeed does instead."""
    for name, value in unsupported.items():
        if value is not None and not (isinstance(value, str) and value == ""):
            raise ValueError(f"`{name}` is a torch.utils.data.DataLoader argument that sparkfeed "
                             f"does not take: {_TORCH_ONLY[name]}; leave it out (got {name}={value!r})")
    if not isinstance(persistent_workers, bool):
        raise ValueError(f"`persistent_workers` should be True or False, but got "
                         f"persistent_workers={persistent_workers!r}")
    if persistent_workers and num_workers == 0:
        raise ValueError("`persistent_workers` needs num_workers > 0 (as in torch), but got "
                         "persistent_workers=True with num_workers=0")


def resolve_device(device) -> "torch.device | None":
    """The one device rule: None or "cpu" mean the host (no copy); a CUDA device must exist and
    gets its index fixed now (a background thread's current device is not the caller's);
    anything else is refused."""
    if device is None:
        return None
    import torch  # here: the Spark side (write.py) checks its arguments without loading torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"`device` should be None, 'cpu' or a CUDA device such as 'cuda' or "
                         f"'cuda:0', but got device={device!r}") from exc
    if dev.type == "cpu":
        return None
    if dev.type != "cuda":
        raise ValueError(f"`device` should be None, 'cpu' or a CUDA device, but got device={device!r} "
                         f"(sparkfeed copies batches to CUDA devices only)")
    if not torch.cuda.is_available():
        raise ValueError(f"`device` is {device!r} but CUDA is not available on this machine; "
                         "pass device=None (or 'cpu') to keep batches on the host")
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.index >= torch.cuda.device_count():
        raise ValueError(f"`device` is {device!r} but this machine has {torch.cuda.device_count()} "
                         "CUDA device(s)")
    return dev


def struct_leaves(columns, names: Sequence[str]):
    """`columns` with a struct's name (`image`) standing for its leaves (`image.bytes`,
    `image.path`: the columns a struct is delivered as), in the dataset's order; anything else
    as given (checked by `check_columns`)."""
    if columns is None or isinstance(columns, str) or not isinstance(columns, Sequence):
        return columns
    known, out = set(names), []
    for c in columns:
        leaves = [] if not isinstance(c, str) or c in known else [n for n in names if n.startswith(c + ".")]
        out.extend(leaves or [c])
    return out


def check_columns(columns, names: Sequence[str], dataset: str) -> tuple[str, ...]:
    """The columns to load: all of `names` by default, else a non-empty list of known names."""
    if columns is None:
        return tuple(names)
    if isinstance(columns, str) or not isinstance(columns, Sequence) or not columns:
        raise ValueError(f"`columns` should be a non-empty list of column names, but got "
                         f"columns={columns!r}")
    unknown = [c for c in columns if c not in names]
    if unknown:
        raise ValueError(f"`columns` names {unknown} which dataset {dataset!r} does not have; "
                         f"its columns are {list(names)}")
    if len(set(columns)) != len(columns):
        raise ValueError(f"`columns` should name each column once, but got columns={list(columns)!r}")
    return tuple(columns)


def check_ragged(ragged, columns: Sequence[str], manifest, dataset: str) -> dict:
    """{column: torch dtype} of the list columns to deliver as lists of 1-D tensors (lists of
    any lengths); `ragged` is None, a column name or a list of them, each a delivered column
    holding lists of numbers or booleans."""
    import pyarrow as pa
    import torch

    from .arrowtypes import arrow_type, torch_dtype

    if ragged is None:
        return {}
    names = [ragged] if isinstance(ragged, str) else ragged
    if not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"`ragged` should be a column name or a list of them, but got ragged={ragged!r}")
    out = {}
    for name in names:
        if name not in columns:
            raise ValueError(f"`ragged` names {name!r}, which is not among the columns dataset {dataset!r} "
                             f"delivers ({list(columns)})")
        t = arrow_type(manifest.column(name).type)
        lists = t is not None and (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))
        value = t.value_type if lists else None
        if value is None or not (pa.types.is_integer(value) or pa.types.is_floating(value) or pa.types.is_boolean(value)):
            raise ValueError(f"`ragged` names {name!r} of dataset {dataset!r}, a {manifest.column(name).type} "
                             "column; only lists of numbers or booleans can be ragged")
        out[name] = torch.bool if pa.types.is_boolean(value) else torch_dtype(value)
    return out


def check_decode(decode: Mapping | None, columns: Sequence[str], manifest) -> dict:
    """`decode` maps loaded binary columns to `ImageDecode`s or `NpyDecode`s; each image spec's
    backend and device are resolved now (`ImageDecode.resolve`), so a missing GPU or DALI fails
    here, not later."""
    if decode is None:
        return {}
    if not isinstance(decode, Mapping):
        raise ValueError(f"`decode` should be a dict of column name -> sparkfeed.ImageDecode or "
                         f"sparkfeed.NpyDecode, but got decode={decode!r}")
    if not decode:
        return {}
    from .arrays import NpyDecode
    out = {}
    for name, spec in decode.items():
        if name not in columns:
            raise ValueError(f"`decode` names column {name!r}, which is not among the loaded "
                             f"columns {list(columns)}")
        column_type = manifest.column(name).type
        if column_type not in ("binary", "large_binary"):
            raise ValueError(f"`decode` column {name!r} is {column_type}, not a binary column of "
                             "encoded images or arrays")
        if not isinstance(spec, NpyDecode):
            from .imagespec import ImageDecode  # here: PIL and DALI load only for a loader that decodes images

            if not isinstance(spec, ImageDecode):
                raise ValueError(f"`decode[{name!r}]` should be a sparkfeed.ImageDecode or "
                                 f"sparkfeed.NpyDecode, but got {spec!r}")
        out[name] = spec.resolve()
    return out
