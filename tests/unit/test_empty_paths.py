"""An empty path names nothing: fsspec takes it for the file system's root, so
`DataLoader("")` listed the whole machine looking for data and `index(path, manifest="")` wrote
`/_sparkfeed.json`. Every entry point refuses it before touching storage."""

import pytest

import sparkfeed

EMPTY = r"a path should name a dataset, a file or a directory, but got '\s*' \(read as the file system's root '/'\)"


@pytest.mark.parametrize("empty", ["", "  "])
@pytest.mark.parametrize("call", ["DataLoader", "Dataset", "read_manifest", "index path", "index manifest"])
def test_an_empty_path_is_refused_before_storage_is_touched(call, empty, monkeypatch):
    calls = {
        "DataLoader": lambda: sparkfeed.DataLoader(empty, batch_size=2),
        "Dataset": lambda: sparkfeed.Dataset(empty, batch_size=2),
        "read_manifest": lambda: sparkfeed.read_manifest(empty),
        "index path": lambda: sparkfeed.index(empty),
        "index manifest": lambda: sparkfeed.index("never/listed", manifest=empty),
    }
    monkeypatch.setattr(sparkfeed.storage.fsspec.core, "url_to_fs", _never_listed)
    with pytest.raises(ValueError, match=EMPTY):
        calls[call]()


def _never_listed(*args, **kwargs):
    raise AssertionError(f"storage was reached ({args}) before the empty path was refused")
