"""sparkfeed: Spark writes sharded Parquet or WebDataset plus a manifest; PyTorch streams it.

    import sparkfeed
    spark = sparkfeed.spark_session()
    sparkfeed.write(df, "ds/", format="parquet", cluster_by="label")
    for batch in sparkfeed.DataLoader("ds/", batch_size=256, shuffle=True, num_workers=8):
        ...

Names load lazily, so `import sparkfeed` does not start the JVM or import DALI.
"""

from __future__ import annotations

from importlib import import_module

from ._version import __version__
from .errors import (CorruptSampleError, ManifestError, PathEscapeError, ShardReadError,
                     SparkfeedError, WorkerError)
from .write import write  # eager: the submodule shares the name (it imports pyspark lazily)
from .index import index  # eager for the same reason (deltalake and pyspark load lazily)

__all__ = [
    "__version__",
    "spark_session", "configure_spark", "jar_path",
    "write", "index",
    "read_manifest", "Manifest",
    "Dataset", "DataLoader", "Source",
    "ImageDecode", "NpyDecode",
    "SparkfeedError", "ManifestError", "ShardReadError", "CorruptSampleError",
    "PathEscapeError", "WorkerError",
]

_LAZY = {
    "spark_session": "session", "configure_spark": "session", "jar_path": "session",
    "read_manifest": "manifest", "Manifest": "manifest",
    "Dataset": "dataset", "DataLoader": "loader", "Source": "mixsource",
    "ImageDecode": "imagespec", "NpyDecode": "arrays",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sparkfeed' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
