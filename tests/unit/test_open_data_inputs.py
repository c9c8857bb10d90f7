"""Data that other tools wrote, as a new user points sparkfeed at it: layouts and types that
`sparkfeed index` once got wrong. Expected rows come from what was written."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import sparkfeed
from sparkfeed import ManifestError, ShardReadError


def _rows(loader, *names) -> list[tuple]:
    out = []
    for batch in loader:
        cols = [batch[n].tolist() if hasattr(batch[n], "tolist") else list(batch[n]) for n in names]
        out += list(zip(*cols))
    return sorted(out, key=repr)


def test_a_hive_key_whose_every_value_is_null_is_a_string_column_of_nulls(tmp_path):
    """pyarrow and Spark write a partition key that is None in every row as one
    `k=__HIVE_DEFAULT_PARTITION__` directory. Spark types such a key string; it was typed int32
    (no value contradicted it), and an integer column cannot deliver nulls: every read failed."""
    ids = np.arange(12, dtype=np.int64)
    root = tmp_path / "allnull"
    pq.write_to_dataset(pa.table({"id": ids, "k": pa.array([None] * 12, pa.string())}), str(root),
                        partition_cols=["k"])
    assert [p.name for p in root.iterdir()] == ["k=__HIVE_DEFAULT_PARTITION__"]
    m = sparkfeed.index(str(root), progress=False)
    assert {c.name: c.type for c in m.schema}["k"] == "string"
    for kw in ({}, {"shuffle": True, "num_workers": 2}):
        got = _rows(sparkfeed.DataLoader(str(root), batch_size=5, **kw), "id", "k")
        assert got == sorted(((int(i), None) for i in ids), key=repr)


def test_partition_directories_of_a_key_starting_with_underscore_are_data(tmp_path):
    """`df.write.partitionBy("_source")` writes `_source=web/` directories, which Spark's listing
    keeps (an `_` name holding `=`); they were ignored like `_SUCCESS`, so such a table had no
    data ("holds no data that sparkfeed.index recognises"). `_SUCCESS`, `_temporary/` and
    `_sparkfeed_index/` stay ignored."""
    ids = np.arange(10, dtype=np.int64)
    root = tmp_path / "us"
    pq.write_to_dataset(pa.table({"id": ids, "_source": ["web"] * 4 + ["app"] * 6}), str(root),
                        partition_cols=["_source"])
    (root / "_SUCCESS").write_bytes(b"")
    (root / "_temporary" / "0").mkdir(parents=True)
    pq.write_table(pa.table({"id": [99]}), root / "_temporary" / "0" / "part-0.parquet")
    m = sparkfeed.index(str(root), progress=False)
    assert m.num_samples == 10 and {c.name for c in m.schema} == {"id", "_source"}
    got = _rows(sparkfeed.DataLoader(str(root), batch_size=4), "id", "_source")
    assert got == sorted(((int(i), "web" if i < 4 else "app") for i in ids), key=repr)
    pruned = sparkfeed.DataLoader(str(root), batch_size=4, filter=[("_source", "==", "web")])
    assert _rows(pruned, "id") == [(i,) for i in range(4)]
    assert pruned.stats()["shards_pruned"] == 1


def _tar(path, members, mode="w") -> None:
    with tarfile.open(path, mode) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("mode,kind", [("w:gz", "gzip"), ("w:bz2", "bzip2"), ("w:xz", "xz")])
def test_a_compressed_tar_named_dot_tar_is_an_error_that_says_so(tmp_path, mode, kind):
    """`tar -czf shard.tar` or a writer's compression under a plain `.tar` name: the index said
    "cannot scan the tar (ReadError: truncated header)" (or "invalid header"), which points at a
    damaged file rather than at what to do."""
    root = tmp_path / "packed"
    root.mkdir()
    _tar(root / "a.tar", [("s0.cls", b"1"), ("s0.txt", b"x")], mode)
    with pytest.raises(ShardReadError, match=rf"shard 'a.tar': is {kind}-compressed, though named .tar"
                                             r".*decompress it"):
        sparkfeed.index(str(root), progress=False)


def test_a_tar_cut_short_inside_a_member_names_that_member_and_its_offset(tmp_path):
    """A tar copied in part (an interrupted upload, a full disk): the error named neither the
    member nor where ("cannot scan the tar (ReadError: unexpected end of data)")."""
    root = tmp_path / "cut"
    root.mkdir()
    _tar(root / "a.tar", [(f"s{i}.jpg", bytes([i]) * 3000) for i in range(5)])
    with tarfile.open(root / "a.tar") as tf:
        second = tf.getmembers()[1]
    data = (root / "a.tar").read_bytes()
    (root / "a.tar").write_bytes(data[:second.offset_data + 1000])
    with pytest.raises(ShardReadError, match=rf"shard 'a.tar', tar offset {second.offset}: the tar is cut "
                                             rf"short inside the data of member 's1.jpg' \(3000 bytes from "
                                             rf"tar offset {second.offset_data}\)"):
        sparkfeed.index(str(root), progress=False)


def test_a_file_with_two_columns_of_one_name_is_refused_as_that(tmp_path):
    """pyarrow writes a table whose two columns share a name; the index refused it as "a column
    and a struct's leaf", though the file holds no struct."""
    root = tmp_path / "twice"
    root.mkdir()
    pq.write_table(pa.table([pa.array([0, 1]), pa.array([2, 3]), pa.array([4, 5])], names=["id", "a", "a"]),
                   root / "x.parquet")
    with pytest.raises(ManifestError, match=r"'x.parquet' holds two columns named \['a'\]; rename one"):
        sparkfeed.index(str(root), progress=False)


@pytest.mark.parametrize("name,encoding,reason", [
    ("a//b.cls", "utf-8", "has an empty part"),
    ("x:y.cls", "utf-8", "starts with a URL scheme or drive"),
    ("s\n0.cls", "utf-8", "holds a control character"),
    ("caf\xe9.cls", "latin-1", "is not valid UTF-8"),  # GNU tar in a Latin-1 locale
])
def test_tar_member_names_the_reader_refuses_are_refused_by_the_index(tmp_path, name, encoding, reason):
    """The reader refuses member names by the one path rule (`storage.path_problem`); the index
    checked only `/`, `..` and `\\`, so it wrote a manifest (and a DALI index with a newline
    inside one of its lines) for a tar whose every read then failed, and a Latin-1 name ended
    the index in a bare UnicodeEncodeError naming no shard."""
    root = tmp_path / "names"
    root.mkdir()
    with tarfile.open(root / "a.tar", "w", format=tarfile.GNU_FORMAT, encoding=encoding) as tf:
        for member in ("ok.cls", name):
            info = tarfile.TarInfo(member)
            info.size = 1
            tf.addfile(info, io.BytesIO(b"1"))
    with pytest.raises(ShardReadError, match=rf"shard 'a.tar', tar offset 1024: member name .* could "
                                             rf"escape the dataset: it {reason}"):
        sparkfeed.index(str(root), progress=False)
    assert not (root / "_sparkfeed.json").exists()


def _two_files_indexed_apart(tmp_path):
    lake = tmp_path / "lake"
    lake.mkdir()
    for i in range(2):
        pq.write_table(pa.table({"x": pa.array([i, i], pa.int64())}), lake / f"part-{i}.parquet")
    sparkfeed.index(str(lake / "part-*.parquet"), manifest=str(tmp_path / "m.json"), progress=False)
    return lake


@pytest.mark.parametrize("given", ["part-*.parquet", "*.parquet", ".", None])
def test_the_glob_that_was_indexed_reads_with_its_manifest(tmp_path, given):
    """`index('lake/part-*.parquet', manifest='m.json')` then `DataLoader('lake/part-*.parquet',
    manifest='m.json')`, the path a user indexed: every shard read as missing, joined under the
    glob (`lake/part-*.parquet/part-0.parquet`); the root the manifest records is the root."""
    lake = _two_files_indexed_apart(tmp_path)
    path = None if given is None else str(lake / given) if given != "." else str(lake)
    loader = sparkfeed.DataLoader(path, manifest=str(tmp_path / "m.json"), batch_size=8)
    assert _rows(loader, "x") == [(0,), (0,), (1,), (1,)]


@pytest.mark.parametrize("given", ["part-0.parquet", "part-1*"])
def test_a_file_or_glob_naming_part_of_the_manifest_is_refused_not_read_whole(tmp_path, given):
    lake = _two_files_indexed_apart(tmp_path)
    with pytest.raises(ValueError, match=r"^`path` .* does not name its 2 shard\(s\); pass that root"):
        sparkfeed.DataLoader(str(lake / given), manifest=str(tmp_path / "m.json"), batch_size=8)


def test_the_one_tar_that_was_indexed_reads_with_its_manifest(tmp_path):
    blob = io.BytesIO()
    with tarfile.open(fileobj=blob, mode="w") as t:
        for key in ("a", "b"):
            info = tarfile.TarInfo(f"{key}.txt")
            info.size = 1
            t.addfile(info, io.BytesIO(key.encode()))
    (tmp_path / "one.tar").write_bytes(blob.getvalue())
    sparkfeed.index(str(tmp_path / "one.tar"), manifest=str(tmp_path / "m"), progress=False)
    loader = sparkfeed.DataLoader(str(tmp_path / "one.tar"), manifest=str(tmp_path / "m"), batch_size=4)
    assert _rows(loader, "txt") == [("a",), ("b",)]


def test_one_file_without_manifest_says_a_file_needs_one(tmp_path):
    """Before: "... when `path` is a glob or a list of files", said of one file."""
    pq.write_table(pa.table({"x": [1]}), tmp_path / "a.parquet")
    with pytest.raises(ValueError, match=r"when `path` is a glob, a file or a list of files"):
        sparkfeed.index(str(tmp_path / "a.parquet"), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet"]


def test_a_list_of_files_as_path_says_how_to_read_them(tmp_path):
    """Before: "a mix should be a non-empty list of sparkfeed.Source, but got ['str', 'str']" and
    nothing on how to read several files of one dataset."""
    lake = _two_files_indexed_apart(tmp_path)
    files = [str(lake / "part-0.parquet"), lake / "part-1.parquet"]
    with pytest.raises(ValueError, match=r"for files of one dataset pass a glob or their directory"):
        sparkfeed.DataLoader(files, batch_size=4)
