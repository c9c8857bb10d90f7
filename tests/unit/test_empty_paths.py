"""An empty path names nothing: fsspec takes it for the file system's root, so
`DataLoader("")` listed the whole machine looking for data and `index(path, manifest="")` wrote
`/_sparkfeed.json`. Every entry point refuses it before touching storage."""

import pytest

import dsutil
import sparkfeed

EMPTY = r"a path should name a dataset, a file or a directory, but got '\s*' \(read as the file system's root '/'\)"


@pytest.fixture(scope="module")
def tars(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("empty") / "tars")
    dsutil.write_tar(root, dsutil.table(20), 10, index=False)
    return root


@pytest.mark.parametrize("empty", ["", "  "])
@pytest.mark.parametrize("call", ["DataLoader", "Dataset", "read_manifest", "index path", "index manifest"])
def test_an_empty_path_is_refused_before_storage_is_touched(tars, call, empty):
    calls = {
        "DataLoader": lambda: sparkfeed.DataLoader(empty, batch_size=2),
        "Dataset": lambda: sparkfeed.Dataset(empty, batch_size=2),
        "read_manifest": lambda: sparkfeed.read_manifest(empty),
        "index path": lambda: sparkfeed.index(empty),
        "index manifest": lambda: sparkfeed.index(tars, manifest=empty),
    }
    with pytest.raises(ValueError, match=EMPTY):
        calls[call]()
