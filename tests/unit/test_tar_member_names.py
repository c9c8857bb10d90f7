"""Tar member names that `tarfile` would silently change: a NUL inside a name field (the name is
cut there and the member becomes another one) is an error naming the dataset, the shard and the
header's tar offset, for streamed and indexed shards and for `sparkfeed.index`; so is a key in two
places. Long names written every standard way still read."""

import io
import json
import os
import shutil
import tarfile

import pytest

import dsutil
import sparkfeed
from sparkfeed.errors import ShardReadError

SHARD = "shard-00000.tar"


def _dataset(tmp_path, index: bool) -> str:
    root = str(tmp_path / "ds")
    dsutil.write_tar(root, dsutil.table(3), rows_per_shard=3, index=index)
    return root


def _sizes_again(root: str) -> None:
    """The manifest's sizes set to the shard's (after it was rewritten)."""
    path = os.path.join(root, "_sparkfeed.json")
    doc = json.load(open(path))
    size = os.path.getsize(os.path.join(root, SHARD))
    doc["shards"][0]["num_bytes"] = doc["num_bytes"] = size
    json.dump(doc, open(path, "w"))


def _set_field(raw: bytearray, at: int, start: int, value: bytes, width: int) -> None:
    """A header's field set to `value` (NUL-padded), its checksum made right again."""
    raw[at + start:at + start + width] = value.ljust(width, b"\0")[:width]
    raw[at + 148:at + 156] = b" " * 8
    raw[at + 148:at + 156] = b"%06o\0 " % sum(raw[at:at + 512])


def _read(root: str, **kw) -> list:
    return [c for b in sparkfeed.DataLoader(root, batch_size=3, columns=["id", "caption"], **kw)
            for c in b["caption"]]


@pytest.mark.parametrize("index", [False, True])
@pytest.mark.parametrize("name", [b"s00000001\0.txt", b"s00000001.t\0xt", b"s0000\x001.txt", b"\0s00000001.txt"])
def test_a_nul_inside_a_name_field_is_refused_naming_the_offset(tmp_path, index, name):
    """tarfile cuts a name at its first NUL: "s00000001\\0.txt" was a member "s00000001" in no
    sample, skipped, and the sample's caption delivered as null without a word (indexed too: the
    index no longer matched, and the shard was streamed)."""
    root = _dataset(tmp_path, index)
    path = os.path.join(root, SHARD)
    raw = bytearray(open(path, "rb").read())
    at = raw.index(b"s00000001.txt\0")
    _set_field(raw, at, 0, name, 100)
    open(path, "wb").write(raw)
    with pytest.raises(ShardReadError, match="a NUL inside a member name") as info:
        _read(root)
    assert (info.value.dataset, info.value.shard, info.value.offset) == (root, SHARD, at)
    os.remove(os.path.join(root, "_sparkfeed.json"))
    for idx in [p for p in os.listdir(root) if p.endswith(".idx")]:
        os.remove(os.path.join(root, idx))
    with pytest.raises(ShardReadError, match="a NUL inside a member name") as info:
        sparkfeed.index(root)
    assert (info.value.shard, info.value.offset) == (SHARD, at)


def test_a_nul_inside_a_ustar_prefix_is_refused(tmp_path):
    """The prefix field (names over 100 bytes) is cut at its NUL too: "dir\\0x" + "/" + name."""
    root = _dataset(tmp_path, False)
    path = os.path.join(root, SHARD)
    raw = bytearray(open(path, "rb").read())
    at = raw.index(b"s00000001.txt\0")
    _set_field(raw, at, 345, b"dir\0x", 155)
    open(path, "wb").write(raw)
    with pytest.raises(ShardReadError, match=r"name b'dir' is followed by a NUL and then b'x'") as info:
        _read(root)
    assert info.value.offset == at


def _rewrite(root: str, fmt, names: dict[str, str], pax: dict | None = None) -> list[int]:
    """The shard written again in `fmt` with members renamed (`names`), `pax` records on the
    renamed ones; the tar offsets of the renamed members."""
    path = os.path.join(root, SHARD)
    out = io.BytesIO()
    where = []
    with tarfile.open(path) as src, tarfile.open(fileobj=out, mode="w", format=fmt) as dst:
        for info in src.getmembers():
            data = src.extractfile(info).read()
            if info.name in names:
                where.append(out.tell())
                info.name = names[info.name]
                if pax:
                    info.pax_headers = dict(pax)
            dst.addfile(info, io.BytesIO(data))
    open(path, "wb").write(out.getvalue())
    _sizes_again(root)
    return where


def test_a_nul_inside_a_gnu_long_name_is_refused(tmp_path):
    root = _dataset(tmp_path, False)
    long = "d" * 120 + "/s00000001.txt"
    [at] = _rewrite(root, tarfile.GNU_FORMAT, {"s00000001.txt": long})
    path = os.path.join(root, SHARD)
    raw = bytearray(open(path, "rb").read())
    data = raw.index(long.encode())
    raw[data + 3] = 0  # the long name's data: "ddd\0ddd..."
    open(path, "wb").write(raw)
    with pytest.raises(ShardReadError, match="GNU long name's name b'ddd' is followed by a NUL") as info:
        _read(root)
    assert info.value.offset == at


def test_a_nul_inside_a_pax_path_is_refused_naming_the_offset(tmp_path):
    root = _dataset(tmp_path, False)
    [at] = _rewrite(root, tarfile.PAX_FORMAT, {"s00000001.txt": "s00000001.txt"},
                    pax={"path": "s00000001\0x.txt"})
    with pytest.raises(ShardReadError, match="holds a control character") as info:
        _read(root)
    assert (info.value.shard, info.value.offset) == (SHARD, at)


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_long_names_of_every_format_still_read(tmp_path, fmt):
    """A key in a directory deep enough for a GNU long name, a pax path or a ustar prefix."""
    root = _dataset(tmp_path, False)
    deep = "/".join(["d" * 40] * 3)
    path = os.path.join(root, SHARD)
    with tarfile.open(path) as src:
        renames = {m.name: f"{deep}/{m.name}" for m in src.getmembers()}
    _rewrite(root, fmt, renames)
    loader = sparkfeed.DataLoader(root, batch_size=3, columns=["key", "id", "caption"])
    [batch] = list(loader)
    assert batch["key"] == [f"{deep}/s{i:08d}" for i in range(3)]
    assert batch["caption"] == [f"caption {i}" for i in range(3)]


def test_a_name_filling_its_whole_field_reads(tmp_path):
    """A 100-byte name has no NUL at all (ustar allows it)."""
    root = _dataset(tmp_path, False)
    key = "s00000001" + "k" * 87
    _rewrite(root, tarfile.GNU_FORMAT, {f"s00000001.{e}": f"{key}.{e}" for e in ("cls", "txt", "json")})
    raw = open(os.path.join(root, SHARD), "rb").read()
    assert f"{key}.txt".encode() in raw and len(f"{key}.txt") == 100
    [batch] = list(sparkfeed.DataLoader(root, batch_size=3, columns=["key", "caption"]))
    assert batch["key"] == ["s00000000", key, "s00000002"]
    assert batch["caption"] == ["caption 0", "caption 1", "caption 2"]


def test_a_key_in_two_places_names_the_offset_of_its_second_place(tmp_path):
    """The streamed reader's error named no offset (the index scan's did)."""
    root = _dataset(tmp_path, False)
    path = os.path.join(root, SHARD)
    out = io.BytesIO()
    with tarfile.open(path) as src, tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as dst:
        members = src.getmembers()
        for info in members[:6] + members[:1]:
            dst.addfile(info, io.BytesIO(src.extractfile(info).read()))
    open(path, "wb").write(out.getvalue())
    _sizes_again(root)
    with pytest.raises(ShardReadError, match=r"key 's00000000' appears in two places \(samples 0 and 2\)") as info:
        _read(root)
    assert info.value.offset == 6 * 1024
    shutil.rmtree(root)


def test_a_shard_with_a_space_in_a_member_name_gets_no_dali_index(tmp_path, caplog):
    """An index line's fields are split at spaces (DALI's reader, sparkfeed's): "my photo 1.jpg"
    was written as fields "my", "photo", "1.jpg", an index DALI misreads and sparkfeed's reader
    refused as malformed at every read. Now that shard has none (the other keeps its own), and
    every sample is read."""
    root = tmp_path / "ds"
    root.mkdir()
    for shard, keys in (("a.tar", ["my photo 1", "my photo 2"]), ("b.tar", ["plain1", "plain2"])):
        with tarfile.open(root / shard, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i, key in enumerate(keys):
                for ext, data in (("cls", str(i).encode()), ("jpg", bytes([i]) * 50)):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    caplog.set_level("WARNING", "sparkfeed.index.tar")
    manifest = sparkfeed.index(str(root), progress=False)
    assert [s.index is None for s in manifest.shards] == [True, False]
    assert "member 'my photo 1.cls' (tar offset 0) has a space in its name" in caplog.text
    [batch] = list(sparkfeed.DataLoader(str(root), batch_size=4, columns=["key", "cls", "jpg"]))
    assert batch["key"] == ["my photo 1", "my photo 2", "plain1", "plain2"]
    assert batch["jpg"] == [b"\0" * 50, b"\1" * 50] * 2


def test_an_index_is_not_taken_for_a_header_whose_prefix_field_names_a_directory(tmp_path):
    """The index check compared only the name field, and `tarfile` (so webdataset, and the
    streamed read) reads "<prefix>/<name>": a header with prefix "evil" and the index's name was
    delivered as key 's00000001' through the index, 'evil/s00000001' streamed."""
    root = _dataset(tmp_path, True)
    path = os.path.join(root, SHARD)
    raw = bytearray(open(path, "rb").read())
    for at in range(0, len(raw), 512):
        if raw[at:at + 9] == b"s00000001":
            _set_field(raw, at, 345, b"evil", 155)
    open(path, "wb").write(raw)
    with tarfile.open(path) as tar:
        assert [m.name for m in tar.getmembers()][3] == "evil/s00000001.cls"
    [batch] = list(sparkfeed.DataLoader(root, batch_size=3, columns=["key", "id"]))
    assert batch["key"] == ["s00000000", "evil/s00000001", "s00000002"]


@pytest.mark.parametrize("index", [False, True])
def test_a_gzipped_shard_named_tar_is_said_to_be_compressed(tmp_path, index):
    """The reader said "corrupt or truncated tar after the member at this offset (ReadError:
    truncated header)"; `sparkfeed.index` already said what it is."""
    import gzip

    root = _dataset(tmp_path, index)
    path = os.path.join(root, SHARD)
    raw = gzip.compress(open(path, "rb").read())
    open(path, "wb").write(raw)
    _sizes_again(root)
    with pytest.raises(ShardReadError, match="is gzip-compressed, though named .tar") as info:
        _read(root)
    assert (info.value.dataset, info.value.shard) == (root, SHARD)
