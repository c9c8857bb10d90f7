"""What a sparkfeed `DataLoader` is made from, and what may change once it is made.

The dataset its first argument names and the batch size a `Dataset` brings; then torch's rule for
attributes set later: those torch refuses after construction (`FIXED`) are refused here too, the
others are checked as the constructor checks them and take effect at the next epoch (an epoch
read ahead with the old values is dropped: `settings`)."""

from __future__ import annotations

import copy
from collections.abc import Mapping

from . import mixsource
from .dataset import Dataset

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
