"""A tar shard replaced after the write by another file of the same size (a copy of another
shard: same sample count, same member sizes) passes the size check; its keys give it away. The
manifest records the key column's min and max per shard (the JVM writer; long keys cut to 64
characters), or, where keys were generated (`p<partition>_<row>`), the shard's name says which
Spark partition and rows its keys come from. A key that is not the shard's is a ShardReadError
naming the dataset, the shard and the tar offset of its sample (a counted skip of the shard
under on_error="skip"), never another shard's samples delivered twice."""

import io
import json
import os
import shutil
import tarfile

import pytest

import dsutil
import sparkfeed
from sparkfeed.errors import ShardReadError
from sparkfeed.footer import json_value


def _write(root: str, shards: dict[str, list[str]], key_column: bool = True, index: bool = True) -> None:
    """A webdataset dataset laid out as the JVM writer lays it out: `shards` maps a shard's name
    to its samples' keys (each with a `.cls` and a 700-byte `.jpg`), the key column's stats as
    the writer records them (cut to 64 characters); without a key column
    the keys are the writer's generated ones (the caller passes them)."""
    os.makedirs(root, exist_ok=True)
    entries = []
    for name, keys in shards.items():
        with tarfile.open(os.path.join(root, name), "w", format=tarfile.PAX_FORMAT) as tar:
            for i, key in enumerate(keys):
                for ext, data in (("cls", str(i % 7).encode()), ("jpg", bytes([i % 251]) * 700)):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime = len(data), 1_700_000_000
                    tar.addfile(info, io.BytesIO(data))
        entry = {"path": name, "num_samples": len(keys), "num_bytes": os.path.getsize(os.path.join(root, name)),
                 "members": ["cls", "jpg"], "stats": {}}
        if index:
            entry.update(dsutil._dali_index(root, name))
        if key_column:
            entry["stats"]["key"] = {"min": json_value(min(keys), False),
                                     "max": json_value(max(keys), True), "null_count": 0}
        entries.append(entry)
    schema = [{"name": "label", "type": "int32", "member": "cls"},
              {"name": "image", "type": "binary", "codec": "jpeg", "member": "jpg"}]
    if key_column:
        schema.insert(0, {"name": "key", "type": "string", "member": "__key__"})
    doc = {"sparkfeed_manifest": 1, "format": "webdataset",
           "created_by": {"sparkfeed": "0.1.0", "spark": "4.3.0"}, "schema": schema,
           "num_samples": sum(e["num_samples"] for e in entries),
           "num_bytes": sum(e["num_bytes"] for e in entries), "shards": entries}
    with open(os.path.join(root, "_sparkfeed.json"), "w") as f:
        json.dump(doc, f)


def _generated(partition: int, rows) -> list[str]:
    return [f"p{partition:05d}_{row:09d}" for row in rows]


def _copy_over(root: str, source: str, target: str) -> None:
    """`source` copied over `target` (its index left alone: the index is only a short cut)."""
    a, b = os.path.join(root, source), os.path.join(root, target)
    assert os.path.getsize(a) == os.path.getsize(b), "the case needs shards of one size"
    shutil.copyfile(a, b)


def _keys(root: str, column: str = "label", **kw) -> list:
    loader = sparkfeed.DataLoader(root, batch_size=64, columns=[column], num_workers=0, **kw)
    return [k for batch in loader for k in batch[column]]


def _three(root: str, index: bool = True) -> None:
    _write(root, {f"part-0000{p}-0000.tar": [f"k{p}{i:03d}" for i in range(100)] for p in range(3)}, index=index)


# ---------------------------------------------------------------- a replaced shard is refused

@pytest.mark.parametrize("index", [True, False], ids=["indexed", "streamed"])
def test_a_shard_copied_over_another_of_the_same_size_is_refused(tmp_path, index):
    """The hunt's case: B copied over A; before, B's 100 samples came twice and A's never (300
    samples, 200 keys), without a word."""
    root = str(tmp_path / "ds")
    _three(root, index=index)
    _copy_over(root, "part-00001-0000.tar", "part-00000-0000.tar")
    with pytest.raises(ShardReadError, match=r"shard 'part-00000-0000.tar', tar offset 0: .*'k1000'.*"
                       r"replaced or changed after the write") as err:
        _keys(root, "key")
    assert err.value.dataset == root and err.value.offset == 0


def test_the_error_names_the_first_sample_whose_key_is_not_the_shards(tmp_path):
    """A shard whose first samples are its own and the rest another's (a shard spliced from two
    files): the offset is that of the first foreign sample's first member header."""
    root = str(tmp_path / "ds")
    _write(root, {"part-00000-0000.tar": [f"a{i:03d}" for i in range(20)],
                  "part-00001-0000.tar": [f"b{i:03d}" for i in range(20)]})
    spliced = [f"a{i:03d}" for i in range(5)] + [f"b{i:03d}" for i in range(15)]
    other = str(tmp_path / "other")
    _write(other, {"part-00000-0000.tar": spliced})
    _copy_over_from(other, root, "part-00000-0000.tar")
    with tarfile.open(os.path.join(root, "part-00000-0000.tar")) as tar:
        foreign = next(m.offset for m in tar.getmembers() if m.name.startswith("b000."))
    with pytest.raises(ShardReadError, match=r"'b000'") as err:
        _keys(root, "key")
    assert err.value.offset == foreign > 0


def _copy_over_from(source_root: str, root: str, name: str) -> None:
    a, b = os.path.join(source_root, name), os.path.join(root, name)
    assert os.path.getsize(a) == os.path.getsize(b)
    shutil.copyfile(a, b)


def test_a_copy_inside_the_key_range_is_refused_by_its_bounds(tmp_path):
    """Shards whose key ranges interleave (keys hashed to partitions): no key of the copy lies
    outside the replaced shard's range, but its smallest and largest keys are not the ones the
    manifest records."""
    root = str(tmp_path / "ds")
    _write(root, {"part-00000-0000.tar": [f"k{i:03d}" for i in range(0, 100, 2)],
                  "part-00001-0000.tar": ["k0005"] + [f"k{i:03d}" for i in range(1, 99, 2)]})
    _copy_over(root, "part-00001-0000.tar", "part-00000-0000.tar")
    with pytest.raises(ShardReadError, match=r"smallest key is 'k0005' where the manifest records 'k000'"):
        _keys(root, "key")


def test_a_copy_is_refused_when_the_key_is_not_read(tmp_path):
    """The check needs no column: keys come with every member's header."""
    root = str(tmp_path / "ds")
    _three(root)
    _copy_over(root, "part-00002-0000.tar", "part-00001-0000.tar")
    with pytest.raises(ShardReadError, match="part-00001-0000.tar"):
        _keys(root, "image")


def test_generated_keys_name_their_partition_and_rows(tmp_path):
    """No key column: the writer generated `p<partition>_<row>` keys, and a shard's name says its
    partition; its rows follow the partition's earlier shards. A shard of another partition, and
    an earlier shard of the same partition, copied over it are refused."""
    shards = {"part-00000-0000.tar": _generated(0, range(50)),
              "part-00000-0001.tar": _generated(0, range(50, 100)),
              "part-00001-0000.tar": _generated(1, range(50))}
    root, other = str(tmp_path / "ds"), str(tmp_path / "ds2")
    _write(root, shards, key_column=False)
    _write(other, shards, key_column=False)
    assert len(_keys(root)) == 150
    _copy_over(root, "part-00001-0000.tar", "part-00000-0000.tar")
    with pytest.raises(ShardReadError, match=r"shard 'part-00000-0000.tar', tar offset 0: .*'p00001_000000000'"):
        _keys(root)
    _copy_over(other, "part-00000-0000.tar", "part-00000-0001.tar")
    with pytest.raises(ShardReadError, match=r"shard 'part-00000-0001.tar', tar offset 0: .*'p00000_000000000'"):
        _keys(other)


def test_skip_counts_the_replaced_shard_as_the_size_check_does(tmp_path):
    """on_error="skip": the replaced shard's samples are skipped and counted, as a shard of the
    wrong size is; the others are delivered once."""
    root = str(tmp_path / "ds")
    _three(root)
    _copy_over(root, "part-00001-0000.tar", "part-00000-0000.tar")
    loader = sparkfeed.DataLoader(root, batch_size=64, columns=["key"], num_workers=0, on_error="skip")
    keys = [k for batch in loader for k in batch["key"]]
    assert sorted(keys) == [f"k{p}{i:03d}" for p in (1, 2) for i in range(100)]
    assert loader.stats()["samples_skipped"] == 100


def test_a_filter_on_the_key_with_a_replaced_shard(tmp_path):
    """A filter counts the rows that pass it before the epoch (reading the key): the copy is
    refused there too."""
    root = str(tmp_path / "ds")
    _three(root)
    _copy_over(root, "part-00001-0000.tar", "part-00000-0000.tar")
    with pytest.raises(ShardReadError, match="part-00000-0000.tar"):
        _keys(root, "key", filter=[("key", "<", "k1050")])


# ---------------------------------------------------------------- legitimate data reads as before

def test_long_unicode_and_sanitised_keys_read_once(tmp_path):
    """Keys over 64 characters (stats cut: min a prefix, max a prefix rounded up, by code points),
    keys past ASCII and keys as sanitising writes them (`a.b` -> `a_b`): each sample once, shuffled
    or filtered on the key, through the index and streamed (names over 100 bytes). A shard of long
    keys copied over another is refused by the cut bounds."""
    root = str(tmp_path / "ds")
    long = "x" * 70
    shards = {"part-00000-0000.tar": [f"{long}{i:03d}" for i in range(30)],   # index (84 bytes)
              "part-00001-0000.tar": ["é" * 60 + f"ü{i:03d}" for i in range(30)],  # streamed (over 100)
              "part-00002-0000.tar": [f"a_b_{i:02d}" for i in range(30)] + ["___x", "z" * 64 + "\U0010ffff"],
              "part-00003-0000.tar": [f"{'w' * 70}{i:03d}" for i in range(30)]}
    _write(root, shards)
    copied = str(tmp_path / "copied")
    shutil.copytree(root, copied)
    _copy_over(copied, "part-00000-0000.tar", "part-00003-0000.tar")
    with pytest.raises(ShardReadError, match=r"part-00003-0000.tar', tar offset 0: sample key 'x{70}000' is outside"):
        _keys(copied, "key")
    stats = json.load(open(os.path.join(root, "_sparkfeed.json")))["shards"]
    assert len(stats[0]["stats"]["key"]["min"]) == 64 and stats[0]["stats"]["key"]["max"] == "x" * 63 + "y"
    everything = sorted(k for keys in shards.values() for k in keys)
    assert sorted(_keys(root, "key")) == everything
    assert sorted(_keys(root, "key", shuffle=True, seed=3)) == everything
    assert sorted(_keys(root, "key", filter=[("key", ">=", "a_b_10")])) == [k for k in everything if k >= "a_b_10"]
    assert sorted(_keys(root, "key", filter=[("key", ">", long)])) == [k for k in everything if k > long]


def test_stats_of_an_older_writer_are_taken(tmp_path):
    """Manifests from before the 64-character cut (whole keys), of a plain prefix as max, and of
    the raw keys before sanitising (`a.b` recorded, `a_b` written), and none at all: read as
    written. Only the last is not checked."""
    root = str(tmp_path / "ds")
    shards = {"part-00000-0000.tar": ["y" * 80 + "0", "y" * 80 + "9"],
              "part-00001-0000.tar": ["z" * 80 + "0", "z" * 80 + "9"],
              "part-00002-0000.tar": ["a_b", "c_d"],
              "part-00003-0000.tar": ["q1", "q2"]}
    _write(root, shards)
    path = os.path.join(root, "_sparkfeed.json")
    doc = json.load(open(path))
    doc["shards"][0]["stats"]["key"].update(min="y" * 80 + "0", max="y" * 80 + "9")  # not cut
    doc["shards"][1]["stats"]["key"]["max"] = "z" * 64  # a plain prefix
    doc["shards"][2]["stats"]["key"].update(min="a.b", max="c d")  # raw keys
    del doc["shards"][3]["stats"]["key"]
    json.dump(doc, open(path, "w"))
    assert sorted(_keys(root, "key")) == sorted(k for keys in shards.values() for k in keys)
    _copy_over(root, "part-00001-0000.tar", "part-00000-0000.tar")  # whole stats still check
    with pytest.raises(ShardReadError, match=r"part-00000-0000.tar', tar offset 0: sample key 'z{80}0'"):
        _keys(root, "key")


def test_dsutil_tars_and_worker_processes(tmp_path):
    """A Python-made set (`dsutil.write_tar`, keys `s<id>`) with the key stats added reads once
    through worker processes and thread lanes; with shard 1 copied over shard 0 it is refused
    in a worker process too."""
    root = str(tmp_path / "ds")
    m = dsutil.write_tar(root, dsutil.table(300), 100)
    path = os.path.join(root, "_sparkfeed.json")
    doc = json.load(open(path))
    for k, s in enumerate(doc["shards"]):
        s["stats"]["key"] = {"min": f"s{100 * k:08d}", "max": f"s{100 * k + 99:08d}", "null_count": 0}
    json.dump(doc, open(path, "w"))
    for kind in ("thread", "process"):
        loader = sparkfeed.DataLoader(root, batch_size=32, columns=["id"], num_workers=2, worker_type=kind)
        assert sorted(int(i) for b in loader for i in b["id"]) == list(range(300))
    assert [s.num_bytes for s in m.shards][0] == m.shards[1].num_bytes
    shutil.copyfile(os.path.join(root, "shard-00001.tar"), os.path.join(root, "shard-00000.tar"))
    loader = sparkfeed.DataLoader(root, batch_size=32, columns=["id"], num_workers=2, worker_type="process")
    with pytest.raises(ShardReadError, match=r"shard-00000.tar', tar offset 0: .*'s00000100'"):
        [b for b in loader]
