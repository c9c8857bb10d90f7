"""A member whose extension is `__key__` ("k1.__key__"): `sparkfeed.index` refuses it naming the
shard and tar offset (webdataset refuses such a sample: a duplicate of its `__key__` field); a
reader given such a tar under a hand-made manifest still delivers each sample's key, never the
member's bytes in its place (before, the indexed read did)."""

import io
import json
import os
import tarfile

import pytest

import sparkfeed
from sparkfeed.errors import ShardReadError

MEMBERS = [("k1.cls", b"1"), ("k1.__key__", b"payload1"), ("k2.cls", b"2"), ("k2.__key__", b"payload2")]


def _tar(root: str) -> tuple[str, list[tarfile.TarInfo]]:
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, "a.tar")
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in MEMBERS:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with tarfile.open(path) as tar:
        return path, tar.getmembers()


def test_the_index_refuses_a_member_named_like_the_key_field(tmp_path):
    root = str(tmp_path / "ds")
    _, infos = _tar(root)
    with pytest.raises(ShardReadError, match="has the extension '__key__'") as info:
        sparkfeed.index(root, progress=False)
    assert (info.value.shard, info.value.offset) == ("a.tar", infos[1].offset)


@pytest.mark.parametrize("indexed", [True, False])
def test_a_reader_delivers_keys_not_a_key_members_bytes(tmp_path, indexed):
    root = str(tmp_path / "ds")
    path, infos = _tar(root)
    lines = [" ".join(f"{i.name.split('.', 1)[1]} {i.offset_data} {i.size} {i.name}" for i in infos[k:k + 2])
             for k in (0, 2)]
    if indexed:
        with open(path + ".idx", "w") as f:
            f.write("v1.2 2\n" + "\n".join(lines) + "\n")
    doc = {"sparkfeed_manifest": 1, "format": "webdataset", "created_by": {"sparkfeed": "test"},
           "schema": [{"name": "key", "type": "string", "member": "__key__"},
                      {"name": "cls", "type": "int64", "member": "cls"}],
           "num_samples": 2, "num_bytes": os.path.getsize(path),
           "shards": [{"path": "a.tar", "num_samples": 2, "num_bytes": os.path.getsize(path),
                       **({"index": "a.tar.idx"} if indexed else {})}]}
    with open(os.path.join(root, "_sparkfeed.json"), "w") as f:
        json.dump(doc, f)
    got = [(k, c) for b in sparkfeed.DataLoader(root, batch_size=4, columns=["key", "cls"], shuffle=False)
           for k, c in zip(b["key"], b["cls"].tolist())]
    assert got == [("k1", 1), ("k2", 2)]
