"""Which tar header shapes the reader takes through the shard's index (`tarindex`, the fast path)
and which it streams with `tarfile`: a pax record `tarfile` does not act on (extended
attributes and file data that macOS's tar and star write, comments, times, ids) changes no
member and is read through the index; one it acts on (path, linkpath, size, hdrcharset,
GNU.sparse.*) keeps the index out. Whatever the index path delivers is what `tarfile` (and so
webdataset) reads; links, devices and other special members are refused, never followed."""

import io
import logging
import os
import random
import tarfile

import pytest

import sparkfeed
from sparkfeed.errors import ShardReadError
from sparkfeed.read import tarindex
from sparkfeed.read.tarinfo import StrictTarInfo, split_name

HARMLESS = {  # keyword -> a value, as writers put them
    "SCHILY.xattr.user.tag": "a=b\nc\x01",  # an xattr's value is bytes: "=", newlines
    "LIBARCHIVE.xattr.com.apple.quarantine": "MDA4MTs2NTY0YjA4ZDtTYWZhcmk7",
    "LIBARCHIVE.creationtime": "1700000000",
    "SCHILY.dev": "64769", "SCHILY.ino": "1234567", "SCHILY.nlink": "1", "SCHILY.fflags": "hidden",
    "comment": "made by hand", "mtime": "1700000000.25", "uid": "3000000", "uname": "someone",
    "pathx": "other.cls",  # (only `path` itself is a name)
    "path with spaces": "x",
}
ACTED_ON = {"size": "1", "linkpath": "/etc/passwd", "hdrcharset": "BINARY", "GNU.sparse.size": "9",
            "GNU.sparse.major": "1", "path": "other.cls"}
PAYLOADS = [b"1", b"22" * 300, b"333"]
NAMES = ["a.cls", "b.cls", "c.cls"]


def _tar(records: list[dict], global_records: dict | None = None) -> tuple[bytes, str]:
    """A pax tar of `NAMES`, member i with pax records `records[i]` (and a global header of
    `global_records`), and the DALI index of its members as written."""
    buf, lines = io.BytesIO(), []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers=global_records) as tar:
        for name, payload, pax in zip(NAMES, PAYLOADS, records):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.pax_headers = len(payload), 1700000000, dict(pax)
            tar.addfile(info, io.BytesIO(payload))
            data_at = tar.offset - (len(payload) + 511) // 512 * 512
            lines.append(f"cls {data_at} {len(payload)} {name}")
    return buf.getvalue(), f"v1.2 {len(lines)}\n" + "\n".join(lines) + "\n"


def _streamed(raw: bytes) -> list[tuple[str, bytes]] | None:
    """(name, bytes) of each member as the streamed reader's `tarfile` reads them; None: refused."""
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r|", tarinfo=StrictTarInfo) as tar:
            return [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]
    except Exception:  # noqa: BLE001 - any refusal
        return None


def _indexed(raw: bytes, text: str) -> list[tuple[str, bytes]] | None:
    got = tarindex.members(raw, text, {"cls"}, split_name, 1 << 30)
    return None if got is None else [(f"{k}.cls", v) for k, v in zip(got.keys, got.values["cls"].to_pylist())]


@pytest.mark.parametrize("keyword", sorted(HARMLESS))
def test_a_pax_record_tarfile_does_not_act_on_is_read_through_the_index(keyword):
    for records, global_records in (([{}, {keyword: HARMLESS[keyword]}, {}], None),
                                    ([{}, {"mtime": "1.5"}, {}], {keyword: HARMLESS[keyword]})):
        raw, text = _tar(records, global_records)
        assert _indexed(raw, text) == _streamed(raw) == list(zip(NAMES, PAYLOADS)), (records, global_records)


@pytest.mark.parametrize("keyword", sorted(ACTED_ON))
@pytest.mark.parametrize("where", ["extended", "global"])
def test_a_pax_record_tarfile_acts_on_keeps_the_index_out(keyword, where):
    """In a global header too: `tarfile` applies its records to every member that has an
    extended header of its own (webdataset's TarWriter gives each one)."""
    record = {keyword: ACTED_ON[keyword], "comment": "x"}
    if where == "extended":
        raw, text = _tar([{}, record, {}])
    else:
        raw, text = _tar([{"mtime": "1.5"}] * 3, record)
    assert _indexed(raw, text) is None


def test_whatever_pax_records_a_tar_holds_the_index_path_delivers_what_tarfile_reads():
    """Random records of both kinds, per member and global: the index path is taken whenever no
    record is one `tarfile` acts on, and when taken delivers exactly what `tarfile` reads."""
    rng = random.Random(62)
    pool = {**HARMLESS, **ACTED_ON}
    taken = 0
    for _ in range(300):
        records = [{k: pool[k] for k in rng.sample(sorted(pool), rng.randint(0, 2))} for _ in NAMES]
        global_records = {k: pool[k] for k in rng.sample(sorted(pool), rng.choice([0, 0, 1]))} or None
        raw, text = _tar(records, global_records)
        got = _indexed(raw, text)
        keywords = {k for r in records + [global_records or {}] for k in r}
        if not keywords & set(ACTED_ON):
            assert got is not None, (records, global_records)
        if got is not None:
            taken += 1
            assert got == _streamed(raw), (records, global_records)
    assert taken > 50


def _macos_like_shard(root: str, n: int = 40) -> None:
    """A shard as macOS's tar (libarchive) writes one from files with extended attributes: a
    pax header before every member, with `LIBARCHIVE.xattr.*`, `SCHILY.xattr.*` and a creation time."""
    os.makedirs(root)
    with tarfile.open(os.path.join(root, "s.tar"), "w", format=tarfile.PAX_FORMAT) as tar:
        for k in range(n):
            for ext, payload in (("cls", str(k).encode()), ("jpg", bytes([k % 256]) * 900)):
                info = tarfile.TarInfo(f"{k:05d}.{ext}")
                info.size = len(payload)
                info.pax_headers = {"LIBARCHIVE.creationtime": "1700000000",
                                    "LIBARCHIVE.xattr.com.apple.provenance": "AQIAeQ==",
                                    "SCHILY.xattr.com.apple.provenance": "\x01\x02\x00y"}
                tar.addfile(info, io.BytesIO(payload))


def test_a_shard_from_macos_tar_is_read_through_its_index(tmp_path, caplog):
    root = str(tmp_path / "mac")
    _macos_like_shard(root)
    sparkfeed.index(root, progress=False)
    caplog.set_level(logging.INFO, logger="sparkfeed")
    got = [(c, j) for b in sparkfeed.DataLoader(root, batch_size=16, columns=["cls", "jpg"], shuffle=False)
           for c, j in zip(b["cls"].tolist(), b["jpg"])]
    assert got == [(k, bytes([k % 256]) * 900) for k in range(40)]
    assert "streaming the tar" not in caplog.text


def test_contiguous_file_members_are_read_through_the_index_as_tarfile_reads_them():
    """Type "7" (a contiguous file) is a regular file to `tarfile` and webdataset."""
    buf, lines = io.BytesIO(), []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, payload in zip(NAMES, PAYLOADS):
            info = tarfile.TarInfo(name)
            info.size, info.type = len(payload), tarfile.CONTTYPE
            tar.addfile(info, io.BytesIO(payload))
            lines.append(f"cls {tar.offset - (len(payload) + 511) // 512 * 512} {len(payload)} {name}")
    raw, text = buf.getvalue(), "v1.2 3\n" + "\n".join(lines) + "\n"
    assert _indexed(raw, text) == _streamed(raw) == list(zip(NAMES, PAYLOADS))


def _retyped(raw: bytes, at: int, kind: bytes, link: bytes) -> bytes:
    """The header at `at` made a member of type `kind` linking to `link`, its checksum made anew."""
    out = bytearray(raw)
    head = out[at:at + 512]
    head[156:157], head[157:257] = kind, link.ljust(100, b"\0")
    head[148:156] = b" " * 8
    head[148:156] = b"%06o\0 " % sum(head)
    out[at:at + 512] = head
    return bytes(out)


@pytest.mark.parametrize("kind, words", [(b"2", "is a link"), (b"1", "is a link"),
                                         (b"3", "not a regular file"), (b"6", "not a regular file")])
def test_a_member_made_a_link_or_device_after_indexing_is_refused_never_followed(tmp_path, kind, words):
    """Indexed shard, then a member's header retyped (symbolic or hard link to /etc/passwd, a
    character device, a FIFO), its size and mtime kept: the index is not taken, and the stream
    refuses the member naming its offset; under on_error="skip" the shard is skipped, counted."""
    root = str(tmp_path / "ds")
    _macos_like_shard(root, 6)
    sparkfeed.index(root, progress=False)
    path = os.path.join(root, "s.tar")
    raw = open(path, "rb").read()
    with tarfile.open(path) as tar:
        member = tar.getmembers()[5]  # sample 2's .jpg (its own header, after its pax header)
    at = member.offset_data - 512
    assert raw[at:at + 9] == b"00002.jpg"
    st = os.stat(path)
    with open(path, "wb") as f:
        f.write(_retyped(raw, at, kind, b"/etc/passwd"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ShardReadError, match=words) as info:
        list(sparkfeed.DataLoader(root, batch_size=4, columns=["cls", "jpg"]))
    assert (info.value.shard, info.value.offset) == ("s.tar", member.offset)  # (where its pax header starts it)
    loader = sparkfeed.DataLoader(root, batch_size=4, columns=["cls", "jpg"], on_error="skip")
    assert [c for b in loader for c in b["cls"].tolist()] == []
    assert loader.stats()["samples_skipped"] == 6


@pytest.mark.parametrize("space", ["\u3000", "\u00a0", "\u202f", "\x85"])
def test_names_holding_a_unicode_space_are_read_through_the_index(tmp_path, caplog, space):
    """An index line's fields are split at ASCII whitespace, as DALI splits them: a name holding
    an ideographic or no-break space made its line malformed (`str.split` splits there), and the
    shard was streamed at every read; windows of it were not read apart either."""
    root = str(tmp_path / "ds")
    os.makedirs(root)
    with tarfile.open(os.path.join(root, "s.tar"), "w", format=tarfile.PAX_FORMAT) as tar:
        for k in range(6):
            for ext, payload in (("cls", str(k).encode()), ("jpg", bytes([k]) * 700)):
                info = tarfile.TarInfo(f"photo{space}{k}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    sparkfeed.index(root, progress=False)
    text = open(os.path.join(root, "_sparkfeed_index", "s.tar.idx")).read()
    raw = open(os.path.join(root, "s.tar"), "rb").read()
    index = tarindex.Index.parse(text, split_name, 1 << 30)
    assert index is not None and index.keys == [f"photo{space}{k}" for k in range(6)]
    for window in [(0, 2), (2, 5), (5, 6)]:
        a, b = tarindex.window_ranges(text, [window], len(raw))[window]
        part = index.members(raw[a:b], {"jpg"}, window)
        assert part.values["jpg"].to_pylist() == [bytes([k]) * 700 for k in range(*window)]
    caplog.set_level(logging.INFO, logger="sparkfeed")
    got = [c for b in sparkfeed.DataLoader(root, batch_size=4, columns=["cls"], shuffle=False) for c in b["cls"].tolist()]
    assert got == list(range(6)) and "streaming the tar" not in caplog.text
