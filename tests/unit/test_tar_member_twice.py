"""A sample holding one member twice (`s00000001.cls`, then again): webdataset refuses it
("duplicate file name") and so does `sparkfeed.index`; the loader, reading a shard streamed
(no index) or through an index that lists both copies (as DALI's `wds2idx` writes it), must give
one verdict both ways: a corrupt sample naming the dataset, shard, key and the second copy's
tar offset, or under on_error="skip" that sample skipped and counted. Before, both kept the
last copy without a word."""

import json
import os
import tarfile
from copy import copy as copy_info

import pytest

import dsutil
import sparkfeed
from sparkfeed.errors import CorruptSampleError

SHARD = "shard-00000.tar"


def _dali_index(path: str) -> str:
    """The tar's DALI index as `wds2idx` writes it: one line per sample, every member listed."""
    lines: list[list[str]] = []
    last = None
    with tarfile.open(path) as tar:
        for info in tar:
            key, ext = info.name.split(".", 1)
            if key != last:
                lines.append([])
                last = key
            lines[-1].append(f"{ext} {info.offset_data} {info.size} {info.name}")
    return f"v1.2 {len(lines)}\n" + "".join(" ".join(line) + "\n" for line in lines)


def _dataset(tmp_path, index: bool) -> tuple[str, int]:
    """A 3-sample shard whose sample 1 holds its .cls twice (the second copy "99"), and the
    second copy's header offset; read through an index or streamed."""
    root = str(tmp_path / ("indexed" if index else "streamed"))
    dsutil.write_tar(root, dsutil.table(3), rows_per_shard=3, index=False)

    def twice(info, data):
        copy = [(copy_info(info), b"99".ljust(len(data))[:len(data)])] if info.name == "s00000001.cls" else []
        return [(info, data), *copy]
    second = dsutil.rewrite_tar(root, SHARD, twice)["s00000001.cls"][1]
    if index:
        path, manifest = os.path.join(root, SHARD), os.path.join(root, "_sparkfeed.json")
        with open(path + ".idx", "w") as f:
            f.write(_dali_index(path))
        doc = json.load(open(manifest))
        doc["shards"][0]["index"] = SHARD + ".idx"
        json.dump(doc, open(manifest, "w"))
    return root, second


@pytest.mark.parametrize("index", [False, True], ids=["streamed", "indexed"])
@pytest.mark.parametrize("columns", [["id", "label"], ["id"]])
def test_a_member_twice_in_a_sample_is_a_named_corrupt_sample(tmp_path, index, columns, caplog):
    root, second = _dataset(tmp_path, index)
    caplog.set_level("INFO", "sparkfeed")
    with pytest.raises(CorruptSampleError) as info:
        list(sparkfeed.DataLoader(root, batch_size=3, columns=columns))
    assert "streaming the tar" not in caplog.text  # the indexed shard is read through its index
    err = info.value
    assert (err.shard, err.key, err.offset) == (SHARD, "s00000001", second), str(err)
    assert "member .cls twice" in str(err) and root in str(err)


@pytest.mark.parametrize("shuffle", [False, True], ids=["in pieces", "whole"])
@pytest.mark.parametrize("index", [False, True], ids=["streamed", "indexed"])
def test_a_member_twice_is_skipped_and_counted_under_skip(tmp_path, index, shuffle):
    root, _ = _dataset(tmp_path, index)
    loader = sparkfeed.DataLoader(root, batch_size=1, columns=["id", "label"], on_error="skip",
                                  shuffle=shuffle, seed=1)
    got = [(i, label) for b in loader for i, label in zip(b["id"].tolist(), b["label"].tolist())]
    assert sorted(i for i, _ in got) == [0, 2]
    assert loader.stats().get("samples_skipped", 0) == 1
