"""sparkfeed.index on data written by other tools: pyarrow, pandas, webdataset's TarWriter and
deltalake. Expected rows are computed independently (pyarrow / tarfile / deltalake)."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import sparkfeed
from sparkfeed import ManifestError, ShardReadError
from sparkfeed.manifest import MANIFEST_NAME, read_manifest
from sparkfeed.write import DatasetExistsError


def _ids(loader, column="id") -> list:
    out = []
    for batch in loader:
        values = batch[column]
        out += values.tolist() if hasattr(values, "tolist") else list(values)
    return out


def _hive(tmp_path, n=200):
    """pyarrow's Hive-partitioned write: split=train|val/ directories."""
    ids = np.arange(n, dtype=np.int64)
    table = pa.table({"id": ids, "x": ids * 0.5,
                      "split": np.where(ids % 4 == 0, "val", "train"),
                      "meta": pa.array([{"a": int(i)} for i in ids]),
                      "price": pa.array([1] * n, pa.decimal128(6, 2))})
    root = tmp_path / "hive"
    pq.write_to_dataset(table, str(root), partition_cols=["split"], row_group_size=16)
    return root, table


def test_pyarrow_hive_partitions_become_columns_and_prune_files(tmp_path):
    root, table = _hive(tmp_path)
    m = sparkfeed.index(str(root), progress=False)
    assert (root / MANIFEST_NAME).exists()
    assert {c.name: c.type for c in m.schema}["split"] == "string"
    assert all(s.stats["split"].min == s.stats["split"].max for s in m.shards)
    assert m.num_samples == table.num_rows == sum(pq.ParquetFile(p).metadata.num_rows
                                                   for p in root.rglob("*.parquet"))
    loader = sparkfeed.DataLoader(str(root), batch_size=32, columns=["id", "split"],
                                  filter=[("split", "==", "val")])
    got = _ids(loader)
    expected = table.filter(pa.compute.equal(table["split"], "val"))["id"].to_pylist()
    assert sorted(got) == sorted(expected)
    stats = loader.stats()
    assert stats["shards_pruned"] == 1 and stats["shards_planned"] == 2
    full = sparkfeed.DataLoader(str(root), batch_size=32, columns=["id", "split"])
    assert len(_ids(full)) == table.num_rows
    assert 0 < stats["bytes_read"] < full.stats()["bytes_read"]


def test_unsupported_types_are_marked_left_out_and_refused_by_name(tmp_path, caplog):
    import logging
    from decimal import Decimal

    root, _ = _hive(tmp_path)
    with caplog.at_level(logging.WARNING, logger="sparkfeed.index.build"):
        m = sparkfeed.index(str(root), progress=False)
    assert "1 column(s) cannot become tensors and are left out of batches: price (decimal)" in caplog.text
    kinds = {c.name: c.unsupported for c in m.schema}
    assert kinds == {"id": None, "x": None, "meta.a": None, "price": "decimal", "split": None}
    batch = next(iter(sparkfeed.DataLoader(str(root), batch_size=8)))
    assert set(batch) == {"id", "x", "meta.a", "split"}
    with pytest.raises(ValueError, match=r"'price'.*a decimal column.*columns="):
        sparkfeed.DataLoader(str(root), columns=["id", "price"])
    filtered = sparkfeed.DataLoader(str(root), batch_size=8, filter=[("price", "==", Decimal("1"))])
    assert len(_ids(filtered)) == m.num_samples and "price" not in next(iter(filtered))


def test_struct_columns_are_their_leaves_a_hugging_face_image_decodes(tmp_path):
    from PIL import Image
    import io
    import pyarrow.compute as pc

    def jpeg(k):  # noise: a few KB each, so the image bytes outweigh the footers
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(k).integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(buf, "JPEG")
        return buf.getvalue()

    root = tmp_path / "hf"
    root.mkdir()
    n = 60
    table = pa.table({"image": pa.array([{"bytes": jpeg(k), "path": f"img{k}.jpg"} for k in range(n)]),
                      "label": np.arange(n) % 3,
                      "meta": pa.array([{"a": {"b": k, "c": "x"}} for k in range(n)])})
    pq.write_table(table.slice(0, 30), root / "train-00000-of-00002.parquet", row_group_size=10)
    pq.write_table(table.slice(30), root / "train-00001-of-00002.parquet", row_group_size=10)

    m = sparkfeed.index(str(root), progress=False)
    assert [(c.name, c.type, c.unsupported) for c in m.schema] == [
        ("image.bytes", "binary", None), ("image.path", "string", None), ("label", "int64", None),
        ("meta.a.b", "int64", None), ("meta.a.c", "string", None)]
    assert m.shards[1].row_groups[0].stats["meta.a.b"].min == 30

    loader = sparkfeed.DataLoader(str(root), batch_size=8, filter=pc.field("meta.a.b") >= 50)
    rows = [r for batch in loader for r in zip(batch["meta.a.b"].tolist(), batch["image.path"], batch["image.bytes"])]
    assert rows == [(k, f"img{k}.jpg", jpeg(k)) for k in range(50, n)]
    assert loader.stats()["row_groups_pruned"] == 5  # the leaf's statistics prune

    whole = sparkfeed.DataLoader(str(root), batch_size=8, columns=["label", "image"])  # a struct's name: its leaves
    assert list(next(iter(whole))) == ["label", "image.bytes", "image.path"]

    only_path = sparkfeed.DataLoader(str(root), batch_size=8, columns=["image.path"])
    assert [p for batch in only_path for p in batch["image.path"]] == [f"img{k}.jpg" for k in range(n)]
    with_bytes = sparkfeed.DataLoader(str(root), batch_size=8, columns=["image.path", "image.bytes"])
    assert sum(len(batch["image.bytes"]) for batch in with_bytes) == n
    assert only_path.stats()["bytes_read"] * 4 < with_bytes.stats()["bytes_read"]  # one leaf read, not the struct

    decoded = sparkfeed.DataLoader(str(root), batch_size=8, columns=["image.bytes", "label"], shuffle=True,
                                   num_workers=2, decode={"image.bytes": sparkfeed.ImageDecode(size=8)})
    shapes = [tuple(batch["image.bytes"].shape[1:]) for batch in decoded]
    assert set(shapes) == {(3, 8, 8)} and decoded.stats()["samples"] == n


def test_pandas_files_from_a_list_need_a_manifest_apart(tmp_path):
    pd = pytest.importorskip("pandas")
    data = tmp_path / "pandas"
    data.mkdir()
    frames = [pd.DataFrame({"id": np.arange(k * 50, k * 50 + 50), "label": np.arange(50) % 7})
              for k in range(3)]
    for k, f in enumerate(frames):
        f.to_parquet(data / f"chunk{k}.parquet")
    files = [str(data / f"chunk{k}.parquet") for k in range(3)]
    with pytest.raises(ValueError, match="`manifest` should say where"):
        sparkfeed.index(files, progress=False)
    m = sparkfeed.index(files, manifest=str(tmp_path / "m" / "pandas.json"), progress=False)
    assert m.data_root == str(data)
    expected = sorted(pd.concat(frames).query("label < 3")["id"].tolist())
    got = _ids(sparkfeed.DataLoader(manifest=str(tmp_path / "m" / "pandas.json"), batch_size=16,
                                    filter=[("label", "<", 3)]))
    assert sorted(got) == expected


def test_read_only_data_with_manifest_elsewhere(tmp_path):
    root, table = _hive(tmp_path, n=64)
    os.chmod(root, stat.S_IRUSR | stat.S_IXUSR)
    for d in root.iterdir():
        os.chmod(d, stat.S_IRUSR | stat.S_IXUSR)
    try:
        apart = tmp_path / "work"
        sparkfeed.index(str(root), manifest=str(apart), progress=False)
        assert not (root / MANIFEST_NAME).exists() and (apart / MANIFEST_NAME).exists()
        got = _ids(sparkfeed.DataLoader(str(root), manifest=str(apart), batch_size=10))
        assert sorted(got) == table["id"].to_pylist()
    finally:
        for d in [root, *root.iterdir()]:
            os.chmod(d, stat.S_IRWXU)


def test_changed_file_is_a_shard_read_error_naming_it(tmp_path):
    root = tmp_path / "plain"
    root.mkdir()
    for k in range(2):
        pq.write_table(pa.table({"id": np.arange(k * 10, k * 10 + 10)}), root / f"f{k}.parquet")
    sparkfeed.index(str(root), progress=False)
    target = root / "f1.parquet"
    before = os.stat(target)
    pq.write_table(pa.table({"id": np.arange(100, 110)}), target)  # same size, other rows
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    with pytest.raises(ShardReadError, match=r"f1\.parquet.*changed after it was indexed"):
        _ids(sparkfeed.DataLoader(str(root), batch_size=4))


def test_changed_tar_is_a_shard_read_error_when_read_in_pieces(tmp_path, monkeypatch):
    """An indexed tar changed after indexing: the error names it, also when the shard would be
    read in pieces of its own (`TarReader.chunks`), not only when it is read whole."""
    from sparkfeed.read import tar as tar_reader

    root = _tars(tmp_path, shards=2, per=200)
    sparkfeed.index(root, progress=False)
    monkeypatch.setattr(tar_reader, "CHUNK_BYTES", 1)
    monkeypatch.setattr(tar_reader, "FIRST_CHUNK_BYTES", 1)
    assert len(_ids(sparkfeed.DataLoader(root, batch_size=16, columns=["key"]), "key")) == 400
    target = sorted(p for p in os.listdir(root) if p.endswith(".tar"))[1]
    before = os.stat(os.path.join(root, target))
    os.utime(os.path.join(root, target), ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    with pytest.raises(ShardReadError, match=rf"{target}.*changed after it was indexed"):
        _ids(sparkfeed.DataLoader(root, batch_size=16, columns=["key"]), "key")


def test_no_manifest_parquet_is_indexed_in_memory_with_the_command_logged(tmp_path, caplog):
    root = tmp_path / "plain"
    root.mkdir()
    pq.write_table(pa.table({"id": np.arange(30)}), root / "a.parquet")
    (root / "_SUCCESS").write_text("")
    (root / ".a.parquet.crc").write_text("x")
    with caplog.at_level("INFO", logger="sparkfeed.index"):
        got = _ids(sparkfeed.DataLoader(str(root), batch_size=8))
    assert sorted(got) == list(range(30))
    assert f"sparkfeed index {root}" in caplog.text and not (root / MANIFEST_NAME).exists()


def test_one_parquet_file_or_a_glob_loads_without_a_manifest(tmp_path, caplog):
    root = tmp_path / "plain"
    (root / "sub").mkdir(parents=True)
    pq.write_table(pa.table({"id": np.arange(30)}), root / "a.parquet", row_group_size=7)
    pq.write_table(pa.table({"id": np.arange(30, 40)}), root / "sub" / "b.parquet")
    with caplog.at_level("INFO", logger="sparkfeed.index"):
        one = _ids(sparkfeed.DataLoader(str(root / "a.parquet"), batch_size=8))
    assert sorted(one) == list(range(30))
    assert f"sparkfeed index {root / 'a.parquet'} --manifest" in caplog.text
    assert sorted(_ids(sparkfeed.DataLoader(f"{root}/**/*.parquet", batch_size=8))) == list(range(40))
    caplog.clear()
    with caplog.at_level("INFO", logger="sparkfeed.index"):
        assert sorted(_ids(sparkfeed.DataLoader(f"{root}/sub/b*", batch_size=8))) == list(range(30, 40))
    assert f"sparkfeed index '{root}/sub/b*' --manifest DIR" in caplog.text  # (quoted: a shell would expand it)
    assert not list(root.rglob(MANIFEST_NAME))
    with pytest.raises(ManifestError, match=r"nope.parquet.*no such file or directory"):
        sparkfeed.DataLoader(str(root / "nope.parquet"))
    with pytest.raises(ManifestError, match=r"zz\*.*matches no files"):
        sparkfeed.DataLoader(f"{root}/zz*")


def test_mixed_and_empty_directories_are_clear_errors(tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    pq.write_table(pa.table({"id": [1]}), mixed / "a.parquet")
    with tarfile.open(mixed / "b.tar", "w"):
        pass
    with pytest.raises(ManifestError, match=r"'a.parquet'.*'b.tar'"):
        sparkfeed.index(str(mixed), progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ManifestError, match="sparkfeed.write"):
        sparkfeed.DataLoader(str(empty))


def test_existing_manifest_needs_overwrite(tmp_path):
    root = tmp_path / "plain"
    root.mkdir()
    pq.write_table(pa.table({"id": [1, 2]}), root / "a.parquet")
    sparkfeed.index(str(root), progress=False)
    with pytest.raises(DatasetExistsError, match="overwrite"):
        sparkfeed.index(str(root), progress=False)
    pq.write_table(pa.table({"id": [3]}), root / "b.parquet")
    assert sparkfeed.index(str(root), mode="overwrite", progress=False).num_samples == 3


# ---------------------------------------------------------------- WebDataset


def _tars(tmp_path, shards=3, per=10):
    wds = pytest.importorskip("webdataset")
    root = tmp_path / "tars"
    root.mkdir()
    for s in range(shards):
        with wds.TarWriter(str(root / f"shard-{s:03d}.tar")) as w:
            for i in range(per):
                k = s * per + i
                sample = {"__key__": f"s{k:05d}", "cls": k % 5, "jpg": bytes([k % 251]) * 30}
                if k % 3:
                    sample["txt"] = f"caption {k}"
                w.write(sample)
    return root


def _expected_tar_rows(root):
    """key -> {ext: bytes}, read with tarfile (independent of sparkfeed)."""
    rows = {}
    for path in sorted(root.glob("*.tar")):
        with tarfile.open(path) as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                rows.setdefault(key, {})[ext] = tar.extractfile(info).read()
    return rows


def test_webdataset_tars_index_with_missing_members_as_nulls(tmp_path):
    root = _tars(tmp_path)
    m = sparkfeed.index(str(root), progress=False)
    assert [(c.name, c.type, c.codec) for c in m.schema] == [
        ("key", "string", None), ("cls", "int64", None), ("jpg", "binary", "jpeg"),
        ("txt", "string", None)]
    expected = _expected_tar_rows(root)
    got = {}
    for batch in sparkfeed.DataLoader(str(root), batch_size=7, num_workers=2):
        for key, cls, jpg, txt in zip(batch["key"], batch["cls"].tolist(), batch["jpg"], batch["txt"]):
            got[key] = (cls, jpg, txt)
    assert got == {k: (int(v["cls"]), v["jpg"], v["txt"].decode() if "txt" in v else None)
                   for k, v in expected.items()}
    assert m.shards[0].stats["txt"].null_count == sum(1 for k in range(10) if k % 3 == 0)


def test_webdataset_dali_index_points_at_member_data(tmp_path):
    root = _tars(tmp_path, shards=1)
    m = sparkfeed.index(str(root), progress=False)
    lines = (root / m.shards[0].index).read_text().splitlines()
    assert lines[0] == "v1.2 10"
    data = (root / m.shards[0].path).read_bytes()
    fields = lines[1].split()
    for ext, offset, size, name in zip(fields[0::4], fields[1::4], fields[2::4], fields[3::4]):
        with tarfile.open(root / m.shards[0].path) as tar:
            assert data[int(offset):int(offset) + int(size)] == tar.extractfile(name).read()


def test_webdataset_class_filter_prunes_shards_by_scanned_stats(tmp_path):
    wds = pytest.importorskip("webdataset")
    root = tmp_path / "sorted"
    root.mkdir()
    for s in range(4):
        with wds.TarWriter(str(root / f"{s}.tar")) as w:
            for i in range(5):
                w.write({"__key__": f"k{s}_{i}", "cls": s, "txt": "x"})
    sparkfeed.index(str(root), progress=False)
    loader = sparkfeed.DataLoader(str(root), batch_size=5, filter=[("cls", "==", 2)])
    assert _ids(loader, "key") == [f"k2_{i}" for i in range(5)]
    assert loader.stats()["shards_pruned"] == 3


def test_hostile_tar_member_is_refused_naming_shard_and_offset(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    with tarfile.open(root / "evil.tar", "w") as tar:
        info = tarfile.TarInfo("a.txt")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(ShardReadError, match=r"'evil.tar'.*tar offset 0.*link"):
        sparkfeed.index(str(root), progress=False)


# ---------------------------------------------------------------- Delta


def _delta_table(tmp_path, partition_by=("split",)):
    deltalake = pytest.importorskip("deltalake")

    def rows(lo, hi):
        ids = np.arange(lo, hi, dtype=np.int64)
        return pa.table({"id": ids, "split": np.where(ids % 4 == 0, "val", "train"),
                         "ts": pa.array(ids * 1000, pa.timestamp("us", tz="UTC"))})

    root = tmp_path / "delta"
    deltalake.write_deltalake(str(root), rows(0, 50), partition_by=list(partition_by) or None)   # version 0
    deltalake.write_deltalake(str(root), rows(50, 80), mode="append")          # 1
    deltalake.write_deltalake(str(root), rows(100, 130), mode="overwrite")     # 2
    deltalake.write_deltalake(str(root), rows(200, 210), mode="append")        # 3
    return root, deltalake


def test_a_delta_tables_decimal_statistics_prune_its_files(tmp_path):
    """Delta's log holds exact decimal bounds per file: a decimal filter skips the files they
    rule out, and reads the column only for the filter."""
    from decimal import Decimal

    deltalake = pytest.importorskip("deltalake")
    root = tmp_path / "prices"
    for ids, prices in (([0, 1], ["1.25", "3.50"]), ([2, 3], ["10.00", "12.75"])):
        deltalake.write_deltalake(str(root), pa.table({
            "id": pa.array(ids, pa.int64()),
            "price": pa.array([Decimal(p) for p in prices], pa.decimal128(10, 2))}), mode="append")
    loader = sparkfeed.DataLoader(str(root), batch_size=4, filter=[("price", ">", Decimal("5"))])
    batches = list(loader)
    assert sorted(i for b in batches for i in b["id"].tolist()) == [2, 3]
    assert loader.stats()["shards_pruned"] == 1 and all("price" not in b for b in batches)


@pytest.mark.parametrize("version", [None, 1, 2])
def test_delta_versions_match_deltalake(tmp_path, version):
    root, deltalake = _delta_table(tmp_path)
    table = deltalake.DeltaTable(str(root), version=version)
    expected = sorted(pa.table(table.to_pyarrow_table() if hasattr(table, "to_pyarrow_table")
                               else table.to_pyarrow_dataset().to_table())["id"].to_pylist())
    apart = tmp_path / f"m{version}.json"
    m = sparkfeed.index(str(root), version=version, manifest=str(apart), progress=False)
    assert m.created_by["delta_version"] == str(table.version())
    assert sorted(_ids(sparkfeed.DataLoader(str(root), manifest=str(apart), batch_size=9))) == expected
    got = _ids(sparkfeed.DataLoader(str(root), manifest=str(apart), batch_size=9,
                                    filter=[("split", "==", "val")]))
    assert sorted(got) == [i for i in expected if i % 4 == 0]


def test_delta_struct_columns_are_their_leaves_with_the_logs_statistics(tmp_path):
    deltalake = pytest.importorskip("deltalake")
    root = tmp_path / "delta_struct"
    for lo in (0, 40):  # two files: the log's per-file statistics of a leaf prune one of them
        ids = np.arange(lo, lo + 40)
        deltalake.write_deltalake(str(root), pa.table({
            "id": ids, "image": pa.array([{"bytes": bytes([k % 251]) * 9, "path": f"p{k}"} for k in ids]),
            "meta": pa.array([{"a": {"b": int(k)}} for k in ids])}), mode="append")
    m = sparkfeed.index(str(root), progress=False)
    assert [(c.name, c.type, c.unsupported) for c in m.schema] == [
        ("id", "int64", None), ("image.bytes", "binary", None), ("image.path", "string", None),
        ("meta.a.b", "int64", None)]
    assert sorted((s.stats["meta.a.b"].min, s.stats["meta.a.b"].max) for s in m.shards) == [(0, 39), (40, 79)]
    loader = sparkfeed.DataLoader(str(root), batch_size=16, filter=[("meta.a.b", ">=", 70)])
    rows = sorted(r for b in loader for r in zip(b["id"].tolist(), b["image.path"], b["image.bytes"]))
    assert rows == [(k, f"p{k}", bytes([k % 251]) * 9) for k in range(70, 80)]
    assert loader.stats()["shards_pruned"] == 1


def test_delta_without_manifest_indexes_in_memory(tmp_path):
    root, _ = _delta_table(tmp_path)
    got = _ids(sparkfeed.DataLoader(str(root), batch_size=16, filter=[("id", ">=", 200)]))
    assert sorted(got) == list(range(200, 210))


def test_a_delta_table_of_linked_files_is_read_with_its_targets_versions(tmp_path):
    """Data files kept elsewhere and linked in: the manifest records each target's mtime, which
    is what the loader checks, so reading it is not taken for a file changed since."""
    root, _ = _delta_table(tmp_path)
    elsewhere = tmp_path / "blobs"
    elsewhere.mkdir()
    for path in sorted(root.rglob("*.parquet")):
        target = elsewhere / f"{len(list(elsewhere.iterdir()))}.parquet"
        path.rename(target)
        os.utime(target, (1_000_000_000, 1_000_000_000))  # older than the link made next
        path.symlink_to(target)
    sparkfeed.index(str(root), progress=False)
    assert sorted(_ids(sparkfeed.DataLoader(str(root), batch_size=16))) == \
        list(range(100, 130)) + list(range(200, 210))


@pytest.mark.parametrize("feature, config, match", [
    ("columnMapping", {"delta.columnMapping.mode": "name"}, "column mapping")])
def test_delta_features_sparkfeed_cannot_honour_are_refused(tmp_path, feature, config, match):
    """Column mapping is refused from the metadata alone. (Deletion vectors are refused only
    where a live file carries one: tests/unit/test_delta_tables.py.)"""
    root, _ = _delta_table(tmp_path, partition_by=())
    # A later commit that turns the feature on, as Spark writes it: protocol + metadata.
    log = root / "_delta_log"
    first = [json.loads(line) for line in (log / f"{0:020d}.json").read_text().splitlines()]
    meta = next(a["metaData"] for a in first if "metaData" in a)
    meta["configuration"] = {**meta.get("configuration", {}), **config}
    if feature == "columnMapping":  # physical names, as a column-mapped table carries them
        schema = json.loads(meta["schemaString"])
        for i, f in enumerate(schema["fields"], 1):
            f["metadata"] = {"delta.columnMapping.id": i, "delta.columnMapping.physicalName": f"col-{i}"}
        meta["schemaString"] = json.dumps(schema)
        meta["configuration"]["delta.columnMapping.maxColumnId"] = str(len(schema["fields"]))
    protocol = {"minReaderVersion": 3, "minWriterVersion": 7, "readerFeatures": [feature],
                "writerFeatures": [feature]}
    (log / f"{4:020d}.json").write_text(json.dumps({"protocol": protocol}) + "\n"
                                        + json.dumps({"metaData": meta}) + "\n")
    with pytest.raises(ManifestError, match=match):
        sparkfeed.index(str(root), progress=False)


def test_cli_index_help_and_run(tmp_path, capsys):
    from sparkfeed.cli import main

    with pytest.raises(SystemExit):
        main(["index", "--help"])
    assert "--manifest" in capsys.readouterr().out
    root = tmp_path / "plain"
    root.mkdir()
    pq.write_table(pa.table({"id": np.arange(5)}), root / "a.parquet")
    assert main(["index", str(root), "--no-progress"]) == 0
    assert "indexed 1 parquet files: 5 samples" in capsys.readouterr().out
    assert main(["index", str(root), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert read_manifest(str(root)).num_samples == 5


def test_missing_integer_member_is_an_error_naming_the_column_or_a_counted_skip(tmp_path):
    wds = pytest.importorskip("webdataset")
    root = tmp_path / "holes"
    root.mkdir()
    with wds.TarWriter(str(root / "h.tar")) as w:
        for i in range(6):
            w.write({"__key__": f"k{i}", "txt": "t", **({"cls": i} if i != 4 else {})})
    sparkfeed.index(str(root), progress=False)
    with pytest.raises(ShardReadError, match=r"'h.tar'.*no value in \['cls'\]"):
        _ids(sparkfeed.DataLoader(str(root), batch_size=3), "cls")
    loader = sparkfeed.DataLoader(str(root), batch_size=5, on_error="skip")
    assert sorted(_ids(loader, "cls")) == [0, 1, 2, 3, 5]
    assert loader.stats()["samples_skipped"] == 1


def test_indexed_jpegs_decode(tmp_path):
    wds = pytest.importorskip("webdataset")
    Image = pytest.importorskip("PIL.Image")
    import io

    root = tmp_path / "img"
    root.mkdir()
    with wds.TarWriter(str(root / "i.tar")) as w:
        for i in range(4):
            buf = io.BytesIO()
            Image.new("RGB", (20, 24), (60 * i, 0, 0)).save(buf, format="JPEG")
            w.write({"__key__": f"k{i}", "jpg": buf.getvalue(), "cls": i})
    sparkfeed.index(str(root), progress=False)
    loader = sparkfeed.DataLoader(str(root), batch_size=4, columns=["jpg", "cls"], decode={
        "jpg": sparkfeed.ImageDecode(size=16, device="cpu")})
    batch = next(iter(loader))
    assert tuple(batch["jpg"].shape) == (4, 3, 16, 16)
    reds = batch["jpg"][:, 0].float().mean(dim=(1, 2))
    order = batch["cls"].argsort()
    assert (reds[order].diff() > 0).all()  # decoded pixels follow the red level written per class


def test_indexed_manifest_round_trips_and_old_readers_fields_stay_valid(tmp_path):
    root, _ = _hive(tmp_path, n=40)
    m = sparkfeed.index(str(root), manifest=str(tmp_path / "m.json"), progress=False)
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["root"] == str(root) and doc["shards"][0]["partition"]["split"] in ("train", "val")
    assert isinstance(doc["shards"][0]["mtime"], float)
    doc["shards"][0]["future_field"] = {"x": 1}  # unknown extra fields are tolerated
    doc["added_later"] = True
    again = sparkfeed.manifest.parse_manifest(doc, dataset="m")
    assert again.shards == m.shards and again.data_root == m.data_root and again.schema == m.schema
    for bad, match in [({"mtime": "yesterday"}, "mtime should be a number"),
                       ({"partition": [1]}, "partition should be an object")]:
        broken = json.loads((tmp_path / "m.json").read_text())
        broken["shards"][0].update(bad)
        with pytest.raises(ManifestError, match=match):
            sparkfeed.manifest.parse_manifest(broken, dataset="m")


def test_inspect_shows_indexed_partition_and_unsupported_columns(tmp_path, capsys):
    from sparkfeed.cli import main

    root, _ = _hive(tmp_path, n=40)
    sparkfeed.index(str(root), manifest=str(tmp_path / "m.json"), progress=False)
    assert main(["inspect", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "split" in out and "meta" in out and "40" in out


def test_a_tar_sample_missing_its_cls_names_only_that_column(tmp_path):
    """A missing `.jpg` is None in its batch; a missing `.cls` cannot be a tensor: the error
    names `cls` alone, not every member the sample lacks."""
    root = tmp_path / "tn"
    root.mkdir()
    with tarfile.open(root / "s.tar", "w") as tf:
        for key, members in (("k0", {"cls": b"1", "jpg": b"x"}), ("k1", {"txt": b"t"}), ("k2", {"cls": b"2"})):
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    sparkfeed.index(str(root), format="webdataset", progress=False)
    with pytest.raises(ShardReadError, match=r"'s.tar': sample at row 1 has no value in \['cls'\], which"):
        list(sparkfeed.DataLoader(str(root), batch_size=3))
    kept = sparkfeed.DataLoader(str(root), batch_size=3, on_error="skip")
    assert [(k, c) for b in kept for k, c in zip(b["key"], b["cls"].tolist())] == [("k0", 1), ("k2", 2)]


def test_int96_timestamps_far_from_1970_are_delivered_exactly_not_wrapped(tmp_path):
    """Spark writes timestamps as INT96 by default; read at pyarrow's default nanoseconds, the
    warehouse's "no end" date 9999-12-31 came back as 1816-03-29, silently."""
    import datetime as dt

    root = tmp_path / "int96"
    root.mkdir()
    when = [dt.datetime(9999, 12, 31), dt.datetime(1500, 1, 1), dt.datetime(2024, 1, 1, 12, 0, 0, 5)]
    pq.write_table(pa.table({"id": pa.array(range(3), pa.int64()), "ts": pa.array(when, pa.timestamp("us"))}),
                   root / "part-0.parquet", use_deprecated_int96_timestamps=True)
    m = sparkfeed.index(str(root), progress=False)
    assert {c.name: c.type for c in m.schema}["ts"] == "timestamp[us]"
    micros = [(w - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1) for w in when]
    for workers in (0, 2):
        got = {i: t for b in sparkfeed.DataLoader(str(root), batch_size=2, num_workers=workers, shuffle=True)
               for i, t in zip(b["id"].tolist(), b["ts"].tolist())}
        assert got == dict(enumerate(micros))
    late = sparkfeed.DataLoader(str(root), batch_size=3, filter=[("ts", ">", dt.datetime(3000, 1, 1))])
    assert _ids(late) == [0]
    # a manifest an earlier sparkfeed wrote (INT96 at nanoseconds): in-range rows read, and a
    # date it cannot hold is an error that says to index again, never a wrapped date
    doc = json.loads((root / "_sparkfeed.json").read_text())
    doc["schema"] = [dict(c, type="timestamp[ns]") if c["name"] == "ts" else c for c in doc["schema"]]
    (root / "_sparkfeed.json").write_text(json.dumps(doc))
    with pytest.raises(ShardReadError, match=r"part-0.parquet', row group 0: a value does not fit .*index the data again"):
        list(sparkfeed.DataLoader(str(root), batch_size=3))


def test_a_column_named_like_a_structs_leaf_is_refused_naming_the_file(tmp_path):
    """pandas or pyarrow may write a column `a.b` beside a struct `a` with a field `b`: both
    would be the column `a.b` (the manifest kept one, and reading failed with a bare KeyError)."""
    root = tmp_path / "clash"
    root.mkdir()
    pq.write_table(pa.table({"id": pa.array([0, 1], pa.int64()), "a.b": pa.array([10, 11], pa.int64()),
                             "a": pa.array([{"b": 20}, {"b": 21}])}), root / "x.parquet")
    with pytest.raises(ManifestError, match=r"'x.parquet' holds \['a.b'\] both as a column and as a struct's leaf"):
        sparkfeed.index(str(root), progress=False)


def test_null_in_an_integer_column_of_plain_parquet_raises_never_drops(tmp_path):
    root = tmp_path / "nulls"
    root.mkdir()
    pq.write_table(pa.table({"a": pa.array([1, 2, None, 4], pa.int64())}), root / "a.parquet")
    with pytest.raises(ShardReadError, match=r"'a.parquet', row group 0: sample at row 2 has no value"):
        _ids(sparkfeed.DataLoader(str(root), batch_size=3), "a")
    assert sorted(_ids(sparkfeed.DataLoader(str(root), batch_size=3, on_error="skip"), "a")) == [1, 2, 4]


def test_numeric_hive_partitions_are_typed_as_spark_infers_them(tmp_path):
    ids = np.arange(60, dtype=np.int64)
    table = pa.table({"id": ids, "label": ids % 3, "big": np.where(ids < 30, 1, 2**40),
                      "name": np.where(ids % 2 == 0, "a b", "c/d"), "ratio": np.where(ids % 5 == 0, 0.5, 2.0)})
    root = tmp_path / "typed"
    pq.write_to_dataset(table, str(root), partition_cols=["label", "big", "name", "ratio"])
    assert {p.name for p in root.rglob("ratio=*")} == {"ratio=0.5", "ratio=2"}  # an int beside a double
    m = sparkfeed.index(str(root), progress=False)
    types = {c.name: c.type for c in m.schema}
    assert (types["label"], types["big"], types["name"], types["ratio"]) == ("int32", "int64", "string", "double")
    loader = sparkfeed.DataLoader(str(root), batch_size=8,
                                  filter=[("label", "==", 2), ("big", ">", 5), ("name", "==", "c/d"), ("ratio", ">", 1)])
    got = []
    for batch in loader:
        assert batch["label"].dtype.is_floating_point is False and set(batch["name"]) == {"c/d"}
        assert batch["ratio"].dtype == torch.float64 and set(batch["ratio"].tolist()) == {2.0}
        got += batch["id"].tolist()
    assert sorted(got) == [i for i in range(60) if i % 3 == 2 and i >= 30 and i % 2 == 1 and i % 5 != 0]
    assert loader.stats()["shards_pruned"] == len(m.shards) - 1


def test_a_file_that_is_not_parquet_is_an_error_naming_it(tmp_path):
    root = tmp_path / "junk"
    root.mkdir()
    pq.write_table(pa.table({"id": [1]}), root / "good.parquet")
    (root / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ShardReadError, match=r"shard 'bad.parquet'.*Parquet footer"):
        sparkfeed.index(str(root), progress=False)


@pytest.mark.slow
def test_indexed_tars_exactly_once_and_resume_with_two_worker_processes(tmp_path):
    root = _tars(tmp_path, shards=4, per=10)
    sparkfeed.index(str(root), progress=False)
    kw = dict(batch_size=6, shuffle=True, seed=1, num_workers=2, columns=["key", "cls"])
    loader = sparkfeed.DataLoader(str(root), **kw)
    it = iter(loader)
    head = [k for _ in range(2) for k in next(it)["key"]]
    state = loader.state_dict()
    it.close()
    resumed = sparkfeed.DataLoader(str(root), **kw)
    resumed.load_state_dict(state)
    rest = _ids(resumed, "key")
    assert sorted(head + rest) == sorted(_expected_tar_rows(root))
    assert len(head + rest) == 40


def test_a_glob_indexes_the_matching_files_under_their_common_root(tmp_path):
    root = tmp_path / "globbed"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    pq.write_table(pa.table({"id": [1, 2]}), root / "a" / "x.parquet")
    pq.write_table(pa.table({"id": [3]}), root / "b" / "y.parquet")
    pq.write_table(pa.table({"id": [99]}), root / "b" / "skip.parquet")
    m = sparkfeed.index(str(root / "*" / "[xy].parquet"), manifest=str(tmp_path / "g.json"),
                        progress=False)
    assert [s.path for s in m.shards] == ["a/x.parquet", "b/y.parquet"] and m.data_root == str(root)
    assert sorted(_ids(sparkfeed.DataLoader(manifest=str(tmp_path / "g.json"), batch_size=2))) == [1, 2, 3]


def test_pandas_categoricals_are_indexed_filtered_and_delivered_as_their_values(tmp_path):
    pd = pytest.importorskip("pandas")
    import pyarrow.compute as pc

    root = tmp_path / "categorical"
    root.mkdir()
    ids = np.arange(120)
    frame = pd.DataFrame({"id": ids, "label": pd.Categorical(np.array(["cat", "dog", "eel"])[ids // 40]),
                          "code": pd.Categorical(ids % 4 * 10)})
    frame.iloc[:60].to_parquet(root / "a.parquet", row_group_size=20)
    plain = frame.iloc[60:].astype({"label": str})  # the other file holds the same column as plain strings
    plain.to_parquet(root / "b.parquet", row_group_size=20)
    assert pa.types.is_dictionary(pq.read_schema(root / "a.parquet").field("label").type)

    m = sparkfeed.index(str(root), progress=False)
    assert {c.name: (c.type, c.unsupported) for c in m.schema} == {
        "id": ("int64", None), "label": ("string", None), "code": ("int64", None)}
    assert m.shards[0].row_groups[0].stats["label"].min == "cat"

    loader = sparkfeed.DataLoader(str(root), batch_size=16, filter=pc.field("label") == "dog")
    got = {"id": [], "label": [], "code": []}
    for batch in loader:
        got["id"] += batch["id"].tolist()
        got["label"] += list(batch["label"])
        got["code"] += batch["code"].tolist()
    dogs = frame[frame["label"] == "dog"]
    assert sorted(got["id"]) == dogs["id"].tolist()
    assert set(got["label"]) == {"dog"}
    assert sorted(got["code"]) == sorted(dogs["code"].astype(int).tolist())
    assert loader.stats()["row_groups_pruned"] == 4  # the statistics of the values prune row groups


def test_fixed_size_binary_is_delivered_as_bytes(tmp_path):
    root = tmp_path / "digests"
    root.mkdir()
    digests = [bytes([k, k + 1, k + 2, k + 3]) for k in range(40)]
    pq.write_table(pa.table({"id": np.arange(40), "digest": pa.array(digests, pa.binary(4))}),
                   root / "a.parquet", row_group_size=16)
    m = sparkfeed.index(str(root), progress=False)
    assert {c.name: (c.type, c.unsupported) for c in m.schema}["digest"] == ("binary", None)
    got = {}
    for batch in sparkfeed.DataLoader(str(root), batch_size=6, shuffle=True, num_workers=2):
        got.update(zip(batch["id"].tolist(), batch["digest"]))
    assert got == dict(enumerate(digests))


def test_lists_of_different_lengths_name_the_row_group_that_holds_them(tmp_path):
    root = tmp_path / "ragged"
    root.mkdir()
    lists = [[1.0, 2.0]] * 50
    lists[34] = [1.0]  # in row group 3 of 10 rows each, read in one run with its neighbours
    pq.write_table(pa.table({"id": np.arange(50), "emb": pa.array(lists, pa.list_(pa.float32()))}),
                   root / "a.parquet", row_group_size=10)
    sparkfeed.index(str(root), progress=False)
    with pytest.raises(ShardReadError, match=r"'a.parquet', row group 3: column 'emb' holds lists of "
                                             r"different lengths \(1..2\).*pad them.*columns="):
        _ids(sparkfeed.DataLoader(str(root), batch_size=8))
    assert sorted(_ids(sparkfeed.DataLoader(str(root), batch_size=8, columns=["id"]))) == list(range(50))


def test_a_sample_without_its_image_member_is_none_and_a_named_decode_error(tmp_path):
    wds = pytest.importorskip("webdataset")
    from PIL import Image
    import io

    root = tmp_path / "holes"
    root.mkdir()
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, "JPEG")
    with wds.TarWriter(str(root / "a.tar")) as w:
        for k in range(12):
            sample = {"__key__": f"s{k:02d}", "cls": k}
            if k % 4 != 1:  # s01, s05, s09 have no image
                sample["jpg"] = buf.getvalue()
            w.write(sample)
    sparkfeed.index(str(root), progress=False)
    got = {}
    for batch in sparkfeed.DataLoader(str(root), batch_size=5, num_workers=2):
        got.update(zip(batch["key"], batch["jpg"]))
    assert {k for k, v in got.items() if v is None} == {"s01", "s05", "s09"}
    assert all(v == buf.getvalue() for v in got.values() if v is not None)

    decode = {"jpg": sparkfeed.ImageDecode(size=8)}
    with pytest.raises(sparkfeed.CorruptSampleError, match=r"'a.tar': sample 's01': .*no value"):
        _ids(sparkfeed.DataLoader(str(root), batch_size=5, decode=decode), "cls")
    loader = sparkfeed.DataLoader(str(root), batch_size=5, decode=decode, on_error="skip")
    assert sorted(_ids(loader, "cls")) == [k for k in range(12) if k % 4 != 1]
    assert loader.stats()["samples_skipped"] == 3


def test_compressed_tars_are_refused_with_what_to_do_never_left_out(tmp_path):
    root = _tars(tmp_path, shards=2)
    with tarfile.open(root / "more.tar.gz", "w:gz") as tar:
        tar.add(root / "shard-000.tar", arcname="inner.tar")
    for call in (lambda: sparkfeed.index(str(root), progress=False),
                 lambda: sparkfeed.index(str(root), format="webdataset", progress=False),
                 lambda: sparkfeed.index([str(root / "more.tar.gz")], manifest=str(tmp_path / "m.json"),
                                         format="webdataset", progress=False)):
        with pytest.raises(ManifestError, match=r"compressed tars \(e.g. 'more.tar.gz', 1 in all\).*gunzip"):
            call()
    (root / "more.tar.gz").unlink()
    assert sparkfeed.index(str(root), progress=False).num_samples == 20


def test_parquet_files_with_a_column_added_later_merge_and_read_nulls(tmp_path, caplog):
    import logging

    root = tmp_path / "evolved"
    root.mkdir()
    pq.write_table(pa.table({"id": np.arange(0, 30), "x": np.arange(30) * 1.0}), root / "a.parquet", row_group_size=10)
    pq.write_table(pa.table({"id": np.arange(30, 60), "x": np.arange(30) * 1.0,
                             "score": np.arange(30, 60) * 0.5, "tag": [f"t{k}" for k in range(30, 60)]}),
                   root / "b.parquet", row_group_size=10)
    with caplog.at_level(logging.WARNING, logger="sparkfeed.index.parquet"):
        m = sparkfeed.index(str(root), progress=False)
    assert [c.name for c in m.schema] == ["id", "x", "score", "tag"]
    assert "1 of 2 files have no column 'score'" in caplog.text
    got = {}
    for batch in sparkfeed.DataLoader(str(root), batch_size=8, num_workers=2, shuffle=True):
        got.update(zip(batch["id"].tolist(), zip(batch["score"].tolist(), batch["tag"])))
    assert all(np.isnan(s) and t is None for s, t in (got[k] for k in range(30)))
    assert all(got[k] == (k * 0.5, f"t{k}") for k in range(30, 60))
    filtered = sparkfeed.DataLoader(str(root), batch_size=8, columns=["id"], filter=[("score", ">=", 25)])
    assert sorted(_ids(filtered)) == list(range(50, 60))

    pq.write_table(pa.table({"id": np.arange(3), "x": ["a", "b", "c"]}), root / "c.parquet")
    with pytest.raises(ManifestError, match=r"disagree on column 'x': 'a.parquet' holds it as double but "
                                            r"'c.parquet' as string"):
        sparkfeed.index(str(root), mode="overwrite", progress=False)


def test_a_column_that_one_file_holds_as_null_takes_the_type_of_the_others(tmp_path):
    """pandas and pyarrow type a column that is None in every row as `null`; it merges with the
    other files' type as in `pyarrow.unify_schemas`, a `null` struct reads as nulls in its leaves,
    and a filter on such a column prunes the file from its footer alone."""
    root = tmp_path / "nulls"
    root.mkdir()
    image = {"bytes": b"jpeg", "path": "a.jpg"}
    pq.write_table(pa.table({"id": np.arange(0, 20), "caption": [f"c{k}" for k in range(20)],
                             "score": np.arange(20) * 0.5, "image": [image] * 20,
                             "tokens": [list(range(k % 3)) for k in range(20)]}), root / "a.parquet")
    pq.write_table(pa.table({"id": np.arange(20, 30), "caption": [None] * 10, "score": [None] * 10,
                             "image": [None] * 10, "tokens": [[]] * 10}), root / "b.parquet")
    assert pq.read_schema(root / "b.parquet").field("caption").type == pa.null()
    assert pq.read_schema(root / "b.parquet").field("tokens").type.value_type == pa.null()
    m = sparkfeed.index(str(root), progress=False)
    assert [(c.name, c.type) for c in m.schema] == [("id", "int64"), ("caption", "string"), ("score", "double"),
                                                    ("image.bytes", "binary"), ("image.path", "string"),
                                                    ("tokens", "list<element: int64>")]
    got = {}
    for batch in sparkfeed.DataLoader(str(root), batch_size=8, num_workers=2, shuffle=True, ragged=["tokens"]):
        got.update(zip(batch["id"].tolist(), zip(batch["caption"], batch["score"].tolist(),
                                                 batch["image.bytes"], batch["image.path"],
                                                 (t.tolist() for t in batch["tokens"]))))
    assert sorted(got) == list(range(30))
    assert all(got[k] == (f"c{k}", k * 0.5, b"jpeg", "a.jpg", list(range(k % 3))) for k in range(20))
    assert all(c is None and np.isnan(s) and b is None and p is None and t == []
               for c, s, b, p, t in (got[k] for k in range(20, 30)))
    for f in ([("caption", "==", "c3")], [("score", ">", 1.0)]):
        loader = sparkfeed.DataLoader(str(root), batch_size=8, columns=["id"], filter=f)
        assert sorted(_ids(loader)) == ([3] if f[0][0] == "caption" else list(range(3, 20)))
        assert loader.stats()["shards_pruned"] == 1  # b.parquet: all null, from its footer


def test_the_unnamed_index_pandas_stores_for_a_filtered_frame_is_not_a_column(tmp_path):
    """`df[mask].to_parquet()` stores the frame's row labels as `__index_level_0__`; a frame with
    a plain range index stores none. That column is the writer's artifact: it is left out, where
    it made every file without it a null in an integer column. A named index is data and stays."""
    import pandas as pd

    root = tmp_path / "pandas"
    root.mkdir()
    df = pd.DataFrame({"id": np.arange(20), "x": np.arange(20) * 0.5})
    df.iloc[:10].to_parquet(root / "a.parquet")
    df[(df.id >= 10) & (df.id % 2 == 0)].to_parquet(root / "b.parquet")
    assert "__index_level_0__" in pq.read_schema(root / "b.parquet").names
    m = sparkfeed.index(str(root), progress=False)
    assert [c.name for c in m.schema] == ["id", "x"]
    got = {}
    for batch in sparkfeed.DataLoader(str(root), batch_size=4, num_workers=2, shuffle=True):
        assert set(batch) == {"id", "x"}
        got.update(zip(batch["id"].tolist(), batch["x"].tolist()))
    assert got == {k: k * 0.5 for k in list(range(10)) + list(range(10, 20, 2))}

    named = tmp_path / "named"
    named.mkdir()
    df.set_index("id").to_parquet(named / "a.parquet")
    assert [c.name for c in sparkfeed.index(str(named), progress=False).schema] == ["x", "id"]


def test_files_with_the_large_types_polars_writes_merge_with_the_plain_ones(tmp_path):
    """Polars writes large_string, large_binary and large_list where pandas and pyarrow write
    string, binary and list: one dataset of both kinds of file reads as the large types, every
    value intact, images decoded from either kind; numbers of two widths stay an error."""
    import io

    from PIL import Image

    jpegs = []
    for k in range(3):
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (40 * k, 0, 0)).save(buf, "JPEG", quality=95)
        jpegs.append(buf.getvalue())
    root = tmp_path / "mixed"
    root.mkdir()

    def table(ids, large):
        s, b = (pa.large_string(), pa.large_binary()) if large else (pa.string(), pa.binary())
        lst = pa.large_list(pa.int64()) if large else pa.list_(pa.int64())
        return pa.table({"id": pa.array(ids, pa.int64()), "caption": pa.array([f"c{k}" for k in ids], s),
                         "image": pa.array([jpegs[k % 3] for k in ids], b),
                         "tokens": pa.array([list(range(k % 4)) for k in ids], lst)})

    pq.write_table(table(range(0, 12), large=False), root / "a.parquet", row_group_size=5)
    pq.write_table(table(range(12, 20), large=True), root / "b.parquet", row_group_size=5)
    m = sparkfeed.index(str(root), progress=False)
    assert {c.name: c.type for c in m.schema} == {"id": "int64", "caption": "large_string",
                                                   "image": "large_binary", "tokens": "large_list<element: int64>"}
    got = {}
    loader = sparkfeed.DataLoader(str(root), batch_size=6, num_workers=2, shuffle=True, ragged=["tokens"],
                                  decode={"image": sparkfeed.ImageDecode(size=16)})
    for batch in loader:
        for k, c, img, t in zip(batch["id"].tolist(), batch["caption"], batch["image"], batch["tokens"]):
            got[k] = (c, int(img[0].float().mean().round()), t.tolist())
    assert sorted(got) == list(range(20))
    assert all(got[k][0] == f"c{k}" and got[k][2] == list(range(k % 4)) for k in range(20))
    assert all(abs(got[k][1] - 40 * (k % 3)) <= 3 for k in range(20))  # red channel of each image
    for ids in ([3], [15]):
        loader = sparkfeed.DataLoader(str(root), batch_size=8, columns=["id"], filter=[("caption", "==", f"c{ids[0]}")])
        assert _ids(loader) == ids

    pq.write_table(pa.table({"id": pa.array([20], pa.int32())}), root / "c.parquet")
    with pytest.raises(ManifestError, match=r"disagree on column 'id': 'a.parquet' holds it as int64 but "
                                            r"'c.parquet' as int32"):
        sparkfeed.index(str(root), mode="overwrite", progress=False)


def test_string_and_binary_views_read_as_string_and_binary(tmp_path):
    """Arrow's view layout (pyarrow keeps it in files written from views, e.g. a Polars frame
    exported at its newest compatibility level) is recorded and delivered as string / binary,
    beside files of the plain types, with statistics that prune."""
    root = tmp_path / "views"
    root.mkdir()
    pq.write_table(pa.table({"id": np.arange(0, 10), "t": pa.array([f"v{k}" for k in range(10)], pa.string_view()),
                             "b": pa.array([bytes([k]) * 3 for k in range(10)], pa.binary_view())}),
                   root / "a.parquet", row_group_size=5)
    pq.write_table(pa.table({"id": np.arange(10, 15), "t": [f"w{k}" for k in range(10, 15)],
                             "b": [bytes([k]) * 3 for k in range(10, 15)]}), root / "b.parquet")
    assert pq.read_schema(root / "a.parquet").field("t").type == pa.string_view()
    m = sparkfeed.index(str(root), progress=False)
    assert {c.name: c.type for c in m.schema} == {"id": "int64", "t": "string", "b": "binary"}
    got = {}
    for batch in sparkfeed.DataLoader(str(root), batch_size=4, num_workers=2, shuffle=True):
        got.update(zip(batch["id"].tolist(), zip(batch["t"], batch["b"])))
    assert got == {k: (f"{'v' if k < 10 else 'w'}{k}", bytes([k]) * 3) for k in range(15)}
    loader = sparkfeed.DataLoader(str(root), batch_size=4, columns=["id"], filter=[("t", "==", "v7")])
    assert _ids(loader) == [7]
    assert loader.stats()["row_groups_pruned"] == 2  # a.parquet's first row group and b.parquet


def test_delta_columns_added_by_schema_evolution_are_nulls_in_older_files(tmp_path):
    deltalake = pytest.importorskip("deltalake")
    root = tmp_path / "delta_evolved"
    deltalake.write_deltalake(str(root), pa.table({"id": pa.array(np.arange(20), pa.int64())}))
    deltalake.write_deltalake(str(root), pa.table({"id": pa.array(np.arange(20, 30), pa.int64()),
                                                   "score": np.arange(20, 30) * 1.0}),
                              mode="append", schema_mode="merge")
    got = {}
    for batch in sparkfeed.DataLoader(str(root), batch_size=7):
        got.update(zip(batch["id"].tolist(), batch["score"].tolist()))
    assert sorted(got) == list(range(30))
    assert all(np.isnan(got[k]) for k in range(20)) and all(got[k] == k for k in range(20, 30))


def test_lists_whose_elements_cannot_be_null_are_tensors_and_merge_with_nullable_ones(tmp_path):
    """Spark's arrays with containsNull=false (vector_to_array, F.array of columns) and the
    fixed-size embeddings other tools write type their elements `not null`: such columns are
    delivered like any list, and files that differ only there (or in list vs large_list) merge
    to nullable elements, as Spark's mergeSchema does."""
    root = tmp_path / "nn"
    root.mkdir()
    required = pa.field("element", pa.float32(), nullable=False)
    kinds = [pa.list_(required), pa.list_(pa.float32()), pa.large_list(required)]
    for f, kind in enumerate(kinds):
        ids = list(range(3 * f, 3 * f + 3))
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64()),
                                 "v": pa.array([[float(i), -float(i)] for i in ids], kind),
                                 "e": pa.array([[float(i)] * 4 for i in ids], pa.list_(required, 4))}),
                       root / f"part-{f}.parquet")
    m = sparkfeed.index(str(root), progress=False)
    assert {c.name: (c.type, c.unsupported) for c in m.schema} == {
        "id": ("int64", None), "v": ("large_list<element: float>", None),
        "e": ("fixed_size_list<element: float not null>[4]", None)}
    for workers in (0, 2):
        got = {}
        for batch in sparkfeed.DataLoader(str(root), batch_size=4, num_workers=workers,
                                          filter=pa.compute.list_value_length(pa.compute.field("v")) == 2):
            assert batch["v"].dtype == batch["e"].dtype == torch.float32
            got.update({i: (v.tolist(), e.tolist()) for i, v, e in zip(batch["id"].tolist(), batch["v"], batch["e"])})
        assert got == {i: ([float(i), -float(i)], [float(i)] * 4) for i in range(9)}


def test_a_delta_table_with_files_of_large_and_plain_strings_reads_whole(tmp_path):
    """delta-rs writes the Arrow type it is given: a table Polars wrote (large_string) and
    pandas appended to (string) has one string type in its log but two in its files."""
    deltalake = pytest.importorskip("deltalake")
    root = tmp_path / "delta_large"
    deltalake.write_deltalake(str(root), pa.table({"id": pa.array(np.arange(10), pa.int64()),
                                                   "t": pa.array([f"a{k}" for k in range(10)], pa.large_string())}))
    deltalake.write_deltalake(str(root), pa.table({"id": pa.array(np.arange(10, 15), pa.int64()),
                                                   "t": [f"b{k}" for k in range(10, 15)]}), mode="append")
    held = {str(pq.read_schema(f).field("t").type) for f in root.glob("*.parquet")}
    assert held == {"string", "large_string"}
    m = sparkfeed.index(str(root), progress=False)
    assert {c.name: c.type for c in m.schema}["t"] == "large_string"
    got = {}
    for batch in sparkfeed.DataLoader(str(root), batch_size=4, num_workers=2, shuffle=True):
        got.update(zip(batch["id"].tolist(), batch["t"]))
    assert got == {k: f"{'a' if k < 10 else 'b'}{k}" for k in range(15)}
    assert _ids(sparkfeed.DataLoader(str(root), batch_size=4, columns=["id"], filter=[("t", "==", "b12")])) == [12]


def test_a_loader_indexing_many_files_itself_shows_progress(tmp_path, monkeypatch, capfd):
    import importlib

    index_module = importlib.import_module("sparkfeed.index")  # the package, not the function
    root = tmp_path / "plain"
    root.mkdir()
    for k in range(3):
        pq.write_table(pa.table({"id": np.arange(k * 10, k * 10 + 10)}), root / f"part-{k}.parquet")
    sparkfeed.DataLoader(str(root), batch_size=8)
    assert "file" not in capfd.readouterr().err  # three files: no bar
    monkeypatch.setattr(index_module, "_IN_MEMORY_BAR_FILES", 3)
    assert sorted(_ids(sparkfeed.DataLoader(str(root), batch_size=8))) == list(range(30))
    assert "reading Parquet footers" in capfd.readouterr().err  # tqdm's bar, on stderr


def test_tar_indexes_beside_the_tars_are_no_left_out_data(tmp_path, caplog):
    """A tar's DALI index beside it (`x.tar.idx`, as sparkfeed.write and DALI's wds2idx put it)
    is expected there: indexing warns only about files that are neither, such as a `.txt`."""
    root = tmp_path / "wds"
    root.mkdir()
    for k in range(2):
        with tarfile.open(root / f"shard-{k}.tar", "w") as tar:
            for key in range(3):
                data = str(k * 3 + key).encode()
                info = tarfile.TarInfo(f"{k}-{key}.cls")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with caplog.at_level("WARNING", logger="sparkfeed.index.discover"):
        sparkfeed.index(str(root), progress=False)
        for idx in (root / "_sparkfeed_index").iterdir():
            (root / idx.name).write_bytes(idx.read_bytes())
        assert sorted(p.name for p in root.glob("*.idx")) == ["shard-0.tar.idx", "shard-1.tar.idx"]
        assert sparkfeed.index(str(root), mode="overwrite", progress=False).num_samples == 6
        assert "left out" not in caplog.text
        (root / "notes.txt").write_text("not data")
        sparkfeed.index(str(root), mode="overwrite", progress=False)
    assert "left out" in caplog.text and "'notes.txt'" in caplog.text and ".idx'" not in caplog.text


def _parquet(path, ids) -> None:
    pq.write_table(pa.table({"id": pa.array(ids, pa.int64())}), path)


def test_parquet_files_without_an_extension_are_read_and_other_names_left_out_with_one_warning(
        tmp_path, caplog):
    """Hive writes `000000_0`: Parquet with no extension is read (as pyarrow.dataset reads it);
    a `.txt` or `.json` beside it is left out, never silently: one warning counts and names them."""
    root = tmp_path / "hive_names"
    root.mkdir()
    _parquet(root / "000000_0", [1, 2, 3])
    _parquet(root / "000001_0.parquet", [4, 5])
    for name in ("notes.txt", "schema.json", "x.crc", "y.md"):
        (root / name).write_text("not data")
    with caplog.at_level("WARNING", logger="sparkfeed.index.discover"):
        assert sorted(_ids(sparkfeed.DataLoader(str(root), batch_size=8))) == [1, 2, 3, 4, 5]
    warned = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(warned) == 1 and "), 4: " in warned[0] and "'notes.txt'" in warned[0], warned
    assert sparkfeed.index(str(root), format="parquet", progress=False).num_samples == 5
    only = tmp_path / "only_hive"  # nothing named .parquet: the first bare file's PAR1 says so
    only.mkdir()
    _parquet(only / "000000_0", [7, 8])
    assert sparkfeed.index(str(only), progress=False).num_samples == 2


@pytest.mark.parametrize("name", ["run[1]", "exp*", "v?"])
def test_an_existing_path_with_glob_characters_is_that_path(tmp_path, name):
    root = tmp_path / name
    root.mkdir()
    _parquet(root / "a.parquet", [1, 2, 3])
    assert _ids(sparkfeed.DataLoader(str(root / "a.parquet"), batch_size=8)) == [1, 2, 3]
    assert _ids(sparkfeed.DataLoader(str(root), batch_size=8)) == [1, 2, 3]
    assert sparkfeed.index(str(root), progress=False).num_samples == 3
    assert _ids(sparkfeed.DataLoader(str(root), batch_size=8)) == [1, 2, 3]  # through its manifest
    with pytest.raises(ManifestError, match="matches no files"):  # a real glob still globs
        sparkfeed.DataLoader(str(tmp_path / "zz*"), batch_size=8)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_among_the_files_is_left_out_with_a_warning_and_refused_when_named(tmp_path, caplog):
    """open() of a FIFO waits for a writer forever: only regular files (and links to them) are
    data. A link's target gives its size and mtime, so a linked file passes the version check."""
    root = tmp_path / "fifo"
    root.mkdir()
    _parquet(root / "a.parquet", [1, 2])
    _parquet(tmp_path / "elsewhere.parquet", [3])
    os.symlink(tmp_path / "elsewhere.parquet", root / "c.parquet")
    os.utime(root / "c.parquet", (1, 1), follow_symlinks=False)  # the link's own mtime differs
    os.mkfifo(root / "b.parquet")
    with caplog.at_level("WARNING", logger="sparkfeed.index.discover"):
        assert sorted(_ids(sparkfeed.DataLoader(str(root), batch_size=8))) == [1, 2, 3]
    assert "not regular files" in caplog.text and "'b.parquet'" in caplog.text
    sparkfeed.index(str(root), progress=False)
    assert sorted(_ids(sparkfeed.DataLoader(str(root), batch_size=8))) == [1, 2, 3]
    with pytest.raises(ManifestError, match="b.parquet' is not a regular file"):
        sparkfeed.index([str(root / "a.parquet"), str(root / "b.parquet")],
                        manifest=str(tmp_path / "m.json"), progress=False)


@pytest.mark.parametrize("kwargs, match", [
    ({"storage_options": 3}, r"`storage_options` should be a dict .* got storage_options=3"),
    ({"storage_options": "anon=true"}, r"`storage_options` should be a dict .*'anon=true'"),
    ({"manifest": 3}, r"`manifest` should be where to write the manifest .* got manifest=3"),
])
def test_index_refuses_bad_argument_types_up_front(tmp_path, monkeypatch, kwargs, match):
    root = tmp_path / "plain"
    root.mkdir()
    _parquet(root / "a.parquet", [1])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=match):
        sparkfeed.index(str(root), progress=False, **kwargs)
    assert sorted(os.listdir(tmp_path)) == ["plain"] and os.listdir(root) == ["a.parquet"]
    if "storage_options" in kwargs:
        with pytest.raises(ValueError, match=match):
            sparkfeed.DataLoader(str(root), batch_size=1, **kwargs)


def test_a_glob_looks_in_a_directory_whose_existing_name_holds_glob_characters(tmp_path):
    """`run[1]/*.parquet` means the files in `run[1]`, not in `run1`, when `run[1]` exists;
    a part that does not exist as written stays a pattern."""
    _parquet(_mkdir(tmp_path / "run[1]") / "a.parquet", [1, 2])
    _parquet(_mkdir(tmp_path / "run1") / "b.parquet", [3])
    _parquet(_mkdir(tmp_path / "run2") / "c.parquet", [4])
    assert _ids(sparkfeed.DataLoader(str(tmp_path / "run[1]" / "*.parquet"), batch_size=8)) == [1, 2]
    assert _ids(sparkfeed.DataLoader(str(tmp_path / "run[12]" / "*.parquet"), batch_size=8)) == [3, 4]
    _parquet(_mkdir(tmp_path / "x*" / "run[1]") / "d.parquet", [5])
    assert _ids(sparkfeed.DataLoader(str(tmp_path / "x*" / "run[1]" / "*.parquet"), batch_size=8)) == [5]


def _mkdir(path):
    path.mkdir(parents=True)
    return path
