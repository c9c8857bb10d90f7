"""A stand-in for torchvision in the Mosaic Streaming peer venv.

`import streaming` imports `streaming.vision`, which imports torchvision (`VisionDataset`,
`to_tensor`). mosaicml-streaming pulls torchvision from PyPI, a CUDA build that cannot load
beside the CPU torch (`RuntimeError: operator torchvision::nms does not exist`), so the
installer uninstalls it and the peer script registers this stub before importing streaming.
Only the names streaming's vision datasets touch at import time exist; the benchmark uses
`StreamingDataset` over tabular MDS, which never calls them.
"""

import sys
import types


def install() -> None:
    if "torchvision" in sys.modules:
        return
    try:
        import torchvision  # noqa: F401  (a working one, if someone installed a CPU build)

        del torchvision
        return
    except Exception:
        sys.modules.pop("torchvision", None)

    def _unavailable(*_a, **_k):
        raise RuntimeError("torchvision is a stub in this venv (see _torchvision_stub.py)")

    tv = types.ModuleType("torchvision")
    datasets = types.ModuleType("torchvision.datasets")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")

    class VisionDataset:  # noqa: D401  (never instantiated by the benchmark)
        def __init__(self, *_a, **_k):
            _unavailable()

    datasets.VisionDataset = VisionDataset
    datasets.CIFAR10 = VisionDataset
    functional.to_tensor = _unavailable
    transforms.functional = functional
    tv.datasets, tv.transforms, tv.__version__ = datasets, transforms, "0+stub"
    import importlib.machinery

    for mod in (tv, datasets, transforms, functional):  # find_spec() must not choke on them
        mod.__spec__ = importlib.machinery.ModuleSpec(mod.__name__, None)
    sys.modules.update({"torchvision": tv, "torchvision.datasets": datasets,
                        "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": functional})
