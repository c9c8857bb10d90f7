"""What a sparkfeed `DataLoader` is made from, and what may change once it is made.

The dataset its first argument names and the batch size a `Dataset` brings; then torch's rule for
attributes set later: those torch refuses after construction (`FIXED`) are refused here too, the
others are checked as the constructor checks them and take effect at the next epoch (an epoch
read ahead with the old values is dropped: `settings`)."""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping

from . import checks, mixsource
from .dataset import Dataset
from .workerprocs import mp_context

# torch's DataLoader.__setattr__ refuses these once it is made; `decode` is sparkfeed's own (the
# decoders and the columns read are made from it)
FIXED = ("batch_size", "batch_sampler", "sampler", "drop_last", "dataset", "persistent_workers", "decode")
TORCH_ONLY = ("generator", "worker_init_fn", "pin_memory_device")


def dataset_for(path_or_dataset, defaults: Mapping, **kwargs) -> Dataset:
    """The loader's dataset: a copy of a `Dataset` given (its epoch never leaks into the caller's,
    which may also feed a plain torch DataLoader; the engine is shared), or one made from a path,
    a mix of sources or a manifest. `defaults`: the loader's parameters (`inspect.signature`)."""
    if isinstance(path_or_dataset, Dataset):
        refuse_dataset_overrides(kwargs, defaults)
        return copy.copy(path_or_dataset)
    if mixsource.is_mix(path_or_dataset):
        return Dataset(path_or_dataset, **kwargs)
    if path_or_dataset is None and kwargs.get("manifest") is not None:
        return Dataset(None, **kwargs)  # the data root is the one the manifest recorded
    if not isinstance(path_or_dataset, str) and not hasattr(path_or_dataset, "__fspath__"):
        raise ValueError("`path_or_dataset` should be a dataset path/URL, a list of "
                         f"sparkfeed.Source or a sparkfeed.Dataset, but got {type(path_or_dataset).__name__}")
    return Dataset(str(path_or_dataset), **kwargs)


def dataset_batch_size(path_or_dataset, batch_size: int) -> int:
    """A `Dataset` made with a batch size keeps it (the loader's default of 1 takes it); another
    one given to the loader is refused rather than either ignored."""
    own = path_or_dataset.batch_size if isinstance(path_or_dataset, Dataset) else None
    if own is None or batch_size in (1, own):
        return own or batch_size
    raise ValueError(f"the sparkfeed.Dataset passed to DataLoader was made with batch_size={own}, but "
                     f"the loader got batch_size={batch_size}; give one of them (leave the loader's "
                     "out to take the Dataset's)")


def refuse_dataset_overrides(kwargs: dict, defaults: Mapping) -> None:
    """A `Dataset` passed in keeps what it was made with: the loader's arguments that would
    change it (rank, filter, ...) are refused rather than ignored."""
    given = [name for name, value in kwargs.items() if value is not defaults[name].default
             and not (isinstance(value, (bool, int, str)) and value == defaults[name].default)]
    if given:
        raise ValueError(
            "a sparkfeed.Dataset passed to DataLoader keeps its own " + ", ".join(kwargs)
            + f"; give them to sparkfeed.Dataset(...) instead (got {', '.join(f'{n}=' for n in given)})")


WORKER_TYPES = ("auto", "thread", "process")


def checked_timeout(timeout) -> float:
    """torch's `timeout`: a non-negative number of seconds (0: wait for ever)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise ValueError(f"`timeout` should be a non-negative number, but got timeout={timeout!r}")
    return timeout


def _in_order(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"`in_order` should be True or False, but got in_order={value!r}")


# what an attribute set on a made loader must be, as the constructor checks it (each raises or passes)
_CHECKS = {
    "num_workers": checks.non_negative_int,
    "prefetch": checks.non_negative_int,
    "prefetch_factor": functools.partial(checks.positive_int, allow_none=True),
    "timeout": lambda name, value: checked_timeout(value),
    "multiprocessing_context": lambda name, value: mp_context(value),
    "worker_type": lambda name, value: checks.one_of(name, value, WORKER_TYPES),
    "pin_memory": lambda name, value: checks.one_of(name, value, (False, True)),
    "in_order": _in_order,
}
# what an epoch read ahead was read with: one made with other values is not taken (`settings`)
_SETTINGS = ("num_workers", "timeout", "multiprocessing_context", "prefetch_factor", "prefetch",
             "pin_memory", "worker_type", "device")


def checked(name: str, value):
    """`value` for the attribute `name` set on a made loader, as torch's `DataLoader.__setattr__`
    allows it: `FIXED` ones refused (their value is woven into the lanes, the decoders, the
    state), torch's arguments sparkfeed does not take refused with what does their job, the
    others checked as the constructor checks them. They take effect at the next epoch."""
    if name in FIXED:
        why = "its decoders are made from it" if name == "decode" else "torch's DataLoader refuses it too"
        raise ValueError(f"`{name}` cannot be set after the DataLoader is made ({why}); make a new "
                         f"sparkfeed.DataLoader(..., {name}=...)")
    if name in TORCH_ONLY:
        checks.torch_only(False, 1, **{name: value})
        return value
    if name == "device":
        return checks.resolve_device(value)
    if name in _CHECKS:
        _CHECKS[name](name, value)
    return value


def settings(loader) -> tuple:
    """The values of `loader`'s attributes that an epoch is read with (workers, their settings,
    prefetching): an epoch read ahead under other values is dropped, not delivered."""
    return tuple(getattr(loader, name) for name in _SETTINGS)
