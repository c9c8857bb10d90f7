"""A sample whose members are split between two tars (files cut into tars by count): the index
warns naming the key and both shards; the sample is read as two, as webdataset reads it."""

import io
import logging
import os
import tarfile

import sparkfeed


def _shards(root: str, shards: dict[str, list[tuple[str, bytes]]]) -> None:
    os.makedirs(root)
    for name, members in shards.items():
        with tarfile.open(os.path.join(root, name), "w", format=tarfile.USTAR_FORMAT) as tar:
            for member, data in members:
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_a_key_split_between_two_shards_is_warned_of_naming_both(tmp_path, caplog):
    root = str(tmp_path / "ds")
    _shards(root, {"a.tar": [("k1.cls", b"1"), ("k1.txt", b"x"), ("k2.cls", b"2")],
                   "b.tar": [("k2.txt", b"y"), ("k3.cls", b"3"), ("k3.txt", b"z")], "b0.tar": [],
                   "c.tar": [("k3.txt", b"w"), ("k4.cls", b"4"), ("k4.txt", b"v")]})
    caplog.set_level(logging.WARNING, logger="sparkfeed")
    sparkfeed.index(root, progress=False)
    assert "key 'k2' ends shard a.tar and starts shard b.tar" in caplog.text
    assert "key 'k3' ends shard b.tar and starts shard c.tar" not in caplog.text  # (one named)
    assert "(1 more shard boundaries split a sample too)" in caplog.text
    got = [(k, t) for b in sparkfeed.DataLoader(root, batch_size=10, columns=["key", "txt"], shuffle=False)
           for k, t in zip(b["key"], b["txt"])]
    assert got == [("k1", "x"), ("k2", None), ("k2", "y"), ("k3", "z"), ("k3", "w"), ("k4", "v")]


def test_shards_whose_samples_are_whole_are_not_warned_of(tmp_path, caplog):
    root = str(tmp_path / "ds")
    _shards(root, {"a.tar": [("k1.cls", b"1"), ("k2.cls", b"2")], "b.tar": [("k3.cls", b"3"), ("k2x.cls", b"2")],
                   "c.tar": [("k2.cls", b"2")]})
    caplog.set_level(logging.WARNING, logger="sparkfeed")
    sparkfeed.index(root, progress=False)
    assert "ends shard" not in caplog.text
