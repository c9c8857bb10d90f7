"""Tar shards read through their DALI index (`read/tarindex.py`): the index is a short cut, never
a source of truth. Whatever the index says, the reader delivers what the tar holds (or the error
the streamed tar gives), and the name rule is `storage.path_problem`'s."""

import io
import json
import os
import shutil
import tarfile

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dsutil
import sparkfeed
from sparkfeed import storage
from sparkfeed.errors import ShardReadError
from sparkfeed.read import tarheaders, tarindex, tarnames
from sparkfeed.read.tarinfo import StrictTarInfo, TarHeaderError, split_name

CASES = json.load(open(os.path.join(os.path.dirname(__file__), os.pardir, "data", "path_cases.json"),
                       encoding="utf-8"))["cases"]
BOUNDED = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 80)), deadline=None,
                   derandomize=bool(os.environ.get("CI")), suppress_health_check=list(HealthCheck))
COLUMNS = ["key", "id", "label", "score", "caption", "feature", "image"]


def everything(root: str, **kw) -> dict:
    """Every column of every sample, in order, as plain Python values."""
    out: dict = {c: [] for c in COLUMNS}
    for batch in sparkfeed.DataLoader(root, batch_size=16, columns=COLUMNS, **kw):
        for c in COLUMNS:
            value = batch[c]
            out[c] += value.tolist() if hasattr(value, "tolist") else list(value)
    return out


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same samples twice: tars with DALI indexes, and the same tars without."""
    base = tmp_path_factory.mktemp("ti")
    data = dsutil.table(60, image_bytes=300)
    dsutil.write_tar(str(base / "indexed"), data, 25)
    dsutil.write_tar(str(base / "plain"), data, 25, index=False)
    return str(base / "indexed"), str(base / "plain")


def test_indexed_and_streamed_tars_deliver_the_same_samples(pair):
    indexed, plain = pair
    assert "index" in json.load(open(os.path.join(indexed, "_sparkfeed.json")))["shards"][0]
    got, want = everything(indexed), everything(plain)
    assert len(got["id"]) == 60 and got == want
    with_workers = everything(indexed, num_workers=2, worker_type="process")
    assert sorted(with_workers["id"]) == sorted(want["id"])


@pytest.mark.parametrize("path", [c["path"] for c in CASES], ids=ascii)
def test_name_check_is_the_path_rule(path):
    safe = storage.path_problem(path) is None
    assert tarnames.names_are_safe([path]) == safe
    assert tarnames.names_are_safe(["ok/a.jpg", path, "b.cls"]) == safe
    if not any(0xD800 <= ord(c) <= 0xDFFF for c in path):  # (a lone surrogate is no Arrow string)
        assert tarnames._arrow_names_are_safe(pa.array(["ok/a.jpg", path, "b.cls"], pa.string())) == safe


@BOUNDED
@given(st.lists(st.text(alphabet="ab./:\\\n\x00\x7f\x1f\t..", min_size=0, max_size=8), min_size=1, max_size=4))
def test_name_check_agrees_with_the_path_rule_on_any_names(names):
    safe = all(storage.path_problem(n) is None for n in names)
    assert tarnames.names_are_safe(names) == safe
    assert tarnames._arrow_names_are_safe(pa.array(names, pa.string())) == safe


@pytest.fixture()
def copy_of(pair, tmp_path):
    root = str(tmp_path / "ds")
    shutil.copytree(pair[0], root)
    return root


def _index_file(root: str) -> str:
    return os.path.join(root, json.load(open(os.path.join(root, "_sparkfeed.json")))["shards"][0]["index"])


@BOUNDED
@given(data=st.data())
def test_a_damaged_or_hostile_index_never_changes_what_is_delivered(pair, tmp_path_factory, data):
    indexed, plain = pair
    root = str(tmp_path_factory.mktemp("bad") / "ds")
    shutil.copytree(indexed, root)
    lines = open(_index_file(root)).read().split("\n")
    row = data.draw(st.integers(1, len(lines) - 2))
    tokens = lines[row].split(" ")
    k = data.draw(st.integers(0, len(tokens) - 1))
    tokens[k] = data.draw(st.sampled_from(["0", "512", "1024", "99999999", "-1", "../x.jpg", "a//b",
                                           "s00000001.jpg", "jpg", "cls", "x y"])
                          | st.text(alphabet="0123456789abc./", max_size=12))
    lines[row] = " ".join(tokens)
    if data.draw(st.booleans()):
        lines[1], lines[2] = lines[2], lines[1]
    with open(_index_file(root), "w") as f:
        f.write("\n".join(lines))
    assert everything(root) == everything(plain)


def test_a_missing_index_file_means_streaming(copy_of, pair):
    os.remove(_index_file(copy_of))
    assert everything(copy_of) == everything(pair[1])


def _tar_with(members: list[tarfile.TarInfo], payloads: list[bytes], fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, payload in zip(members, payloads):
            tar.addfile(info, io.BytesIO(payload) if info.isreg() else None)
    return buf.getvalue()


def _regular(name: str, payload: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    return info


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax path", "GNU long name"])
def test_long_names_in_extension_headers_are_read_through_the_index(fmt):
    """A name too long for the ustar fields comes in a header before its member (a pax `path`
    record, a GNU long name), which `tarfile` reads as the member's name: the index is taken when
    that name is the index's (before, such a shard was always streamed), not when it is another."""
    long_key = "d" * 120 + "/k"
    payloads = [b"1", b"2"]
    raw = _tar_with([_regular(f"{long_key}.cls", payloads[0]), _regular("short.cls", payloads[1])], payloads, fmt)
    assert (b"path=" in raw) == (fmt == tarfile.PAX_FORMAT) and (b"././@LongLink" in raw) == (fmt == tarfile.GNU_FORMAT)
    offsets = [raw.index(b"1" + b"\0" * 511), raw.index(b"2" + b"\0" * 511)]
    text = f"v1.2 2\ncls {offsets[0]} 1 {long_key}.cls\ncls {offsets[1]} 1 short.cls\n"
    got = tarindex.members(raw, text, {"cls"}, split_name, 1 << 30)
    assert got.keys == [long_key, "short"] and got.values["cls"].to_pylist() == payloads
    other = text.replace(f"{long_key}.cls", f"{long_key[:-1]}j.cls")  # the header names another member
    assert tarindex.members(raw, other, {"cls"}, split_name, 1 << 30) is None
    for cut in (b"dddd/j.cls", b"ddd\0/k.cls"):  # the long name changed, or a NUL inside it
        bad = raw.replace(b"d" * 116 + b"/k.cls", b"d" * 112 + cut, 1)
        assert tarindex.members(bad, text, {"cls"}, split_name, 1 << 30) is None


def test_a_link_hidden_between_indexed_members_is_not_read_through_the_index():
    link = tarfile.TarInfo("evil.jpg")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    raw = _tar_with([_regular("a.cls", b"1"), link, _regular("b.cls", b"2")], [b"1", b"", b"2"])
    text = "v1.2 2\ncls 512 1 a.cls\ncls 2048 1 b.cls\n"
    assert raw[2048:2049] == b"2"
    assert tarindex.members(raw, text, {"cls"}, split_name, 1 << 30) is None


def test_the_index_gives_member_bytes_and_keys():
    payloads = [b"7", b"\xff\xd8jpeg", b"8"]
    raw = _tar_with([_regular("x/a.cls", payloads[0]), _regular("x/a.jpg", payloads[1]),
                     _regular("x/b.cls", payloads[2])], payloads)
    text = "v1.2 2\ncls 512 1 x/a.cls jpg 1536 6 x/a.jpg\ncls 2560 1 x/b.cls\n"
    got = tarindex.members(raw, text, {"cls", "jpg"}, split_name, 1 << 30)
    assert got.keys == ["x/a", "x/b"]
    assert got.values["cls"].to_pylist() == [b"7", b"8"]  # in every sample: one array
    assert got.values["jpg"] == [b"\xff\xd8jpeg", None]   # not in every sample: a list
    assert got.nbytes == (1 + 512) + (6 + 512) + (1 + 512)


def test_a_streamed_error_still_names_the_shard_and_offset(copy_of):
    """A tar whose member is hostile fails as it did without an index: the index is not trusted
    to skip it (here a name that escapes, written into the tar and the index alike)."""
    shard = os.path.join(copy_of, json.load(open(os.path.join(copy_of, "_sparkfeed.json")))["shards"][0]["path"])
    raw = bytearray(open(shard, "rb").read())
    first = raw[:100].rstrip(b"\0")
    evil = (b"../" + first[3:]).ljust(100, b"\0")[:100]
    raw[:100] = evil
    raw[148:156] = b" " * 8
    raw[148:156] = b"%06o\0 " % sum(raw[:512])  # a valid header: only its name is hostile
    open(shard, "wb").write(bytes(raw))
    with open(_index_file(copy_of)) as f:
        text = f.read()
    with open(_index_file(copy_of), "w") as f:
        f.write(text.replace(first.decode(), evil.rstrip(b"\0").decode(), 1))
    with pytest.raises(ShardReadError, match=r"shard-00000\.tar.*offset 0.*could escape the dataset"):
        everything(copy_of)


def _shard_and_index(root: str, shard: int = 0) -> tuple[bytes, str]:
    doc = json.load(open(os.path.join(root, "_sparkfeed.json")))["shards"][shard]
    with open(os.path.join(root, doc["path"]), "rb") as f, open(os.path.join(root, doc["index"])) as g:
        return f.read(), g.read()


@pytest.mark.parametrize("window", [(0, 1), (3, 11), (24, 25), (0, 25), (10, 25)])
def test_a_window_of_samples_is_cut_from_its_bytes_alone(pair, window):
    """Samples [a, b) from the byte range `window_ranges` names: what the whole shard gives for
    them; bytes outside the range are never looked at, a changed byte inside it is noticed."""
    tar, text = _shard_and_index(pair[0])
    wanted = {"jpg", "cls", "json"}
    index = tarindex.Index.parse(text, split_name, 1 << 20)
    whole = tarindex.members(tar, text, wanted, split_name, 1 << 20)
    a, b = tarindex.window_ranges(text, [window], len(tar))[window]
    assert (b == len(tar)) == (window[1] == 25)  # the last sample's window reaches the trailer
    part = index.members(tar[a:b], wanted, window)
    assert part.keys == whole.keys[window[0]:window[1]]
    for ext in wanted:
        assert [bytes(v) for v in part.values[ext].to_pylist()] == \
            [bytes(v) for v in whole.values[ext].to_pylist()[window[0]:window[1]]]
    outside = bytearray(tar)
    outside[:a] = b"\x01" * a  # garbage before the window: not its business
    assert index.members(bytes(outside)[a:b], wanted, window) is not None
    inside = bytearray(tar[a:b])
    inside[100] ^= 0xFF  # a header byte of the window's first member
    assert index.members(bytes(inside), wanted, window) is None
    assert tarindex.window_ranges(text, [window[::-1]], len(tar)) == {window[::-1]: None}  # empty


def test_an_indexed_shard_is_read_in_pieces_with_the_same_samples_and_errors(tmp_path, monkeypatch):
    """Pieces of 64 samples (`TarReader.chunks`): the samples a whole read gives, in order; a
    corrupt sample in one piece is the same named error, or one counted skip."""
    from sparkfeed.read import tar as tar_reader

    data = dsutil.table(300, image_bytes=200)
    dsutil.write_tar(str(tmp_path / "indexed"), data, 300)
    dsutil.write_tar(str(tmp_path / "plain"), data, 300, index=False)
    monkeypatch.setattr(tar_reader, "CHUNK_BYTES", 1)  # the smallest pieces: MIN_CHUNK_ROWS
    monkeypatch.setattr(tar_reader, "FIRST_CHUNK_BYTES", 1)
    assert tar_reader.MIN_CHUNK_ROWS == 64
    want = everything(str(tmp_path / "plain"))
    assert everything(str(tmp_path / "indexed")) == want and len(want["id"]) == 300
    assert sorted(everything(str(tmp_path / "indexed"), num_workers=3)["id"]) == list(range(300))
    kw = dict(batch_size=24, num_workers=2, columns=["id"])  # resumed inside a piece
    full = [i for b in sparkfeed.DataLoader(str(tmp_path / "indexed"), **kw) for i in b["id"].tolist()]
    L = sparkfeed.DataLoader(str(tmp_path / "indexed"), **kw)
    it = iter(L)
    head = [i for _ in range(5) for i in next(it)["id"].tolist()]
    state = L.state_dict()
    it.close()
    L = sparkfeed.DataLoader(str(tmp_path / "indexed"), **kw)
    L.load_state_dict(state)
    assert head + [i for b in L for i in b["id"].tolist()] == full
    path = str(tmp_path / "indexed" / "shard-00000.tar")
    raw = bytearray(open(path, "rb").read())
    at = raw.index(b'{"id": 100,')  # sample 100's JSON member, spoiled in place (same size)
    raw[at] = ord("x")
    open(path, "wb").write(bytes(raw))
    with pytest.raises(sparkfeed.CorruptSampleError, match=r"shard-00000.tar.*s00000100"):
        everything(str(tmp_path / "indexed"))
    L = sparkfeed.DataLoader(str(tmp_path / "indexed"), batch_size=16, columns=["id"], on_error="skip")
    assert [i for b in L for i in b["id"].tolist()] == [i for i in range(300) if i != 100]
    assert L.stats()["samples_skipped"] == 1


def test_a_piece_the_index_misdescribes_has_the_rest_of_the_shard_read_whole(tmp_path, monkeypatch):
    """Pieces of 64 samples; the index lies about one member of sample 150 (the third piece):
    the first two pieces come from their own bytes, then the shard is read whole (streamed, as
    the lie spoils the index for the whole shard), and the samples are exactly a streamed read's."""
    from sparkfeed.read import tar as tar_reader

    data = dsutil.table(300, image_bytes=200)
    dsutil.write_tar(str(tmp_path / "indexed"), data, 300)
    dsutil.write_tar(str(tmp_path / "plain"), data, 300, index=False)
    monkeypatch.setattr(tar_reader, "CHUNK_BYTES", 1)
    monkeypatch.setattr(tar_reader, "FIRST_CHUNK_BYTES", 1)
    doc = json.load(open(os.path.join(tmp_path, "indexed", "_sparkfeed.json")))["shards"][0]
    index_path = os.path.join(tmp_path, "indexed", doc["index"])
    lines = open(index_path).read().split("\n")
    fields = lines[1 + 150].split(" ")
    fields[2] = str(int(fields[2]) + 1)  # the first member's size, one byte off
    lines[1 + 150] = " ".join(fields)
    open(index_path, "w").write("\n".join(lines))
    windows = []
    real = tar_reader.TarReader.read_window
    monkeypatch.setattr(tar_reader.TarReader, "read_window", lambda self, unit, n, a, b: windows.append(
        (a, b)) or real(self, unit, n, a, b))
    assert everything(str(tmp_path / "indexed")) == everything(str(tmp_path / "plain"))
    assert windows == [(0, 64), (64, 128), (128, 192)]  # the third piece fell back


@BOUNDED
@given(st.lists(st.sampled_from(["v1.2", "12", "jpg", "a.jpg", " ", "  ", "\n", "\n\n", "\t", "\r",
                                 "\x0b", "\x1c", "\xa0", "\u2028", "é", "7"]), max_size=40))
def test_the_index_fast_split_is_the_per_line_split(pieces):
    """An index's usual form (single spaces, ASCII) is split in one call; whatever the text, the
    tokens and the per-line counts are those of splitting each line."""
    text = "".join(pieces)
    lines = text.split("\n")
    assert tarindex._tokens(text, lines) == tarindex._tokens_per_line(lines)


_FIELD_FORMATS = ["%0{d}o\0", "%0{d}o ", "%0{d}o\0 ", "%{d}o\0", "%o\0", "%o ", " %o\0", "%0{d}o7", "%0{d}o\0x"]


@BOUNDED
@given(st.sampled_from([(12, 11), (8, 6)]), st.lists(st.tuples(st.integers(0, 8**11 + 5),
                                                                st.sampled_from(_FIELD_FORMATS),
                                                                st.sampled_from([0, 0, 1, -1, "wrap"])),
                                                      min_size=1, max_size=12),
       st.lists(st.binary(min_size=12, max_size=12), max_size=3))
def test_numeric_fields_compared_fast_are_those_the_general_parse_reads(shape, rows, garbage):
    """Tar numeric fields (sizes, checksums) written the usual way are compared with digits made
    for all values at once; whatever the fields hold (other layouts, values off by one or by a
    digit more than the field has, garbage), the answer is the general parse's, field by field
    and for all fields: every field reads as its value."""
    import numpy as np

    width, digits = shape
    fields, values = [], []
    for value, layout, off in rows:
        fields.append((layout.format(d=digits) % value).encode("ascii")[:width].ljust(width, b"\0"))
        values.append(value + 8**digits if off == "wrap" else max(0, value + off))
    fields += [g[:width] for g in garbage]
    values += [0] * len(garbage)
    array = np.frombuffer(b"".join(fields), dtype=np.uint8).reshape(len(fields), width)
    values = np.array(values, dtype=np.int64)
    parsed = tarheaders._octal(array)
    for k in range(len(fields)):
        assert tarheaders._octal_is(array[k:k + 1], values[k:k + 1], digits) == (parsed[k] == values[k]), fields[k]
    assert tarheaders._octal_is(array, values, digits) == bool((parsed == values).all())


def _same_index(a, b) -> bool:
    """Two parses name the same members, samples, keys and header name fields (or both refuse)."""
    import numpy as np

    if a is None or b is None:
        return a is b
    return (np.array_equal(a.sample, b.sample) and [a.kinds[k] for k in a.kind] == [b.kinds[k] for k in b.kind]
            and np.array_equal(a.offsets, b.offsets) and np.array_equal(a.sizes, b.sizes) and a.keys == b.keys
            and (a.name_fields is None) == (b.name_fields is None)
            and (a.name_fields is None or np.array_equal(a.name_fields, b.name_fields)))


_MEMBERS = st.lists(st.tuples(st.sampled_from(["jpg", "cls", "txt", "json.gz"]), st.integers(0, 9000),
                              st.integers(0, 9000)), min_size=1, max_size=4)
# one change that makes the index wrong, or read differently by Python's int and Arrow's cast
_CHANGES = st.sampled_from([None] * 8 + [
    ("number", "007"), ("number", "+5"), ("number", "1_0"), ("number", "0x1f"), ("number", "-1"),
    ("number", "1e3"), ("number", "99999999999999999999"), ("key", "../k"), ("key", "a:b"), ("key", "/abs"),
    ("key", "k.6"), ("name", "other.png"), ("name", "bare"), ("count", 1), ("count", -1), ("repeat", None),
    ("empty", None), ("max_member", 600)])


@BOUNDED
@given(st.lists(st.tuples(st.sampled_from(["k", "d/k", "d/e/k", "x" * 97]), _MEMBERS), min_size=1, max_size=6),
       _CHANGES, st.data())
def test_the_usual_index_is_parsed_with_arrow_as_any_index_is(samples, change, data):
    """An index of single spaces in ASCII (the usual one) is parsed with Arrow's kernels. A valid
    index, or one changed once (numbers that Python and Arrow read differently, an unsafe or
    dotted key, a member outside its key, a wrong count, a repeated key, a blank line, a member
    over the size limit): the answer is the per-token parse's, and it refuses what is wrong."""
    kind, value = change or (None, None)
    pick = lambda n: data.draw(st.integers(0, n - 1))  # noqa: E731
    s, max_member = pick(len(samples)), 600 if kind == "max_member" else 1 << 30
    keys = [f"{base}{i}" for i, (base, _) in enumerate(samples)]
    if kind == "key":
        keys[s] = value
    if kind == "repeat" and len(keys) > 1:
        keys[s] = keys[s - 1]
    rows = [[[ext, str(offset), str(size), f"{keys[i]}.{ext}"] for ext, offset, size in members]
            for i, (_, members) in enumerate(samples)]
    m = pick(len(rows[s]))
    if kind == "number":
        rows[s][m][1 + pick(2)] = value
    if kind == "max_member":
        rows[s][m][2] = "601"
    if kind == "name":
        rows[s][m][3] = f"{keys[s]}.png" if value == "other.png" else keys[s]
    if kind == "empty":
        rows.insert(s, [])
    lines = [f"v1.2 {len(samples) + (value if kind == 'count' else 0)}"]
    lines += [" ".join(" ".join(member) for member in row) for row in rows]
    text = "\n".join(lines)
    assert tarindex._single_spaced(text)
    fast = tarindex._parse_usual(text, split_name, max_member)
    assert _same_index(fast, tarindex._parse_any(text, split_name, max_member))
    assert _same_index(tarindex.Index.parse(text, split_name, max_member), fast)
    read_by_int = kind == "number" and value in ("007", "+5", "1_0", "-1")  # Python reads these
    # both skip blank lines; a key repeated needs two samples
    harmless = kind in (None, "empty") or read_by_int or kind == "repeat" and len(keys) == 1
    assert (fast is not None) == harmless


# ---------------------------------------------------------------- pax headers before members

def _pax_tar(pax: list[dict], payloads: list[bytes], names: list[str]) -> tuple[bytes, str]:
    """A tar whose i-th member has pax records `pax[i]` (none: {}), and its index (each member's
    data offset as tarfile reads it)."""
    infos = []
    for name, payload, records in zip(names, payloads, pax):
        info = _regular(name, payload)
        info.pax_headers = records
        infos.append(info)
    raw = _tar_with(infos, payloads)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        read = tar.getmembers()
    lines = [f"{m.name.rsplit('.', 1)[1]} {m.offset_data} {m.size} {m.name}" for m in read]
    return raw, f"v1.2 {len(lines)}\n" + "\n".join(lines) + "\n"


HARMLESS = [{"mtime": "1795805630.1773822"}, {},
            {"atime": "1795805630.5", "ctime": "1795805631.25", "mtime": "1795805630.125"}]
NAMES = ["a.cls", "b.cls", "c.cls"]


def test_pax_headers_that_change_nothing_are_read_through_the_index():
    """webdataset's TarWriter (a fractional mtime) and `tar --format=posix` (atime, ctime, mtime)
    put a pax header before members: the index still describes the members exactly."""
    raw, text = _pax_tar(HARMLESS, [b"1", b"22", b"333"], NAMES)
    assert raw.count(b"PaxHeader") == 2
    got = tarindex.members(raw, text, {"cls"}, split_name, 1 << 30)
    assert got is not None and got.keys == ["a", "b", "c"]
    assert got.values["cls"].to_pylist() == [b"1", b"22", b"333"]
    index = tarindex.Index.parse(text, split_name, 1 << 30)
    for window in [(0, 1), (1, 3), (2, 3), (1, 2)]:
        a, b = tarindex.window_ranges(text, [window], len(raw))[window]
        part = index.members(raw[a:b], {"cls"}, window)
        assert part is not None and part.keys == got.keys[window[0]:window[1]], window


@pytest.mark.parametrize("records", [
    {"size": "2"},                          # its size too
    {"mtime": "1", "linkpath": "/etc/passwd"},
    {"GNU.sparse.map": "0,1"},              # a keyword not known to change nothing
])
def test_a_pax_record_that_changes_a_member_keeps_the_index_out(records):
    raw, text = _pax_tar([{}, records, {}], [b"1", b"22", b"333"], NAMES)
    assert tarindex.members(raw, text, {"cls"}, split_name, 1 << 30) is None
    index = tarindex.Index.parse(text, split_name, 1 << 30)
    if index is not None:  # the window that starts at the member with the pax header sees it too
        a, b = tarindex.window_ranges(text, [(1, 2)], len(raw))[(1, 2)]
        assert index.members(raw[a:b], {"cls"}, (1, 2)) is None


def test_a_pax_record_whose_length_field_lies_keeps_the_index_out():
    """tarfile walks records by their length fields: "28 mtime=...\\n" with 27 would make the
    next record start inside this one, where a `path=` could hide."""
    raw, text = _pax_tar([{}, {"mtime": "1795805630.1773822"}, {}], [b"1", b"22", b"333"], NAMES)
    at = raw.index(b"28 mtime=")
    for lie in (b"27", b"29"):
        bad = bytearray(raw)
        bad[at:at + 2] = lie
        assert tarindex.members(bytes(bad), text, {"cls"}, split_name, 1 << 30) is None


def test_webdataset_tarwriter_shards_are_read_through_their_index(tmp_path, caplog):
    wds = pytest.importorskip("webdataset")
    root = tmp_path / "tw"
    root.mkdir()
    for s in range(2):
        with wds.TarWriter(str(root / f"shard-{s}.tar")) as w:  # mtime=time.time(): a pax header each
            for i in range(50):
                w.write({"__key__": f"s{s}_{i:03d}", "cls": s * 100 + i, "txt": f"t{i}"})
    sparkfeed.index(str(root), progress=False)
    caplog.set_level("INFO", logger="sparkfeed")
    got = [(k, c) for b in sparkfeed.DataLoader(str(root), batch_size=16, columns=["key", "cls"])
           for k, c in zip(b["key"], b["cls"].tolist())]
    assert got == [(f"s{s}_{i:03d}", s * 100 + i) for s in range(2) for i in range(50)]
    assert "does not match its index" not in caplog.text


# ------------------------------------------------------------------ header fields tarfile refuses

def _field(width: int):
    """Bytes of a tar numeric field: as writers write it, or anything."""
    return st.one_of(st.integers(0, 8**(width - 1) - 1).map(lambda v: b"%0*o\0" % (width - 1, v)),
                     st.integers(0, 8**(width - 2) - 1).map(lambda v: b"%0*o \0" % (width - 2, v)),
                     st.just(b"\0" * width), st.binary(min_size=width, max_size=width),
                     st.lists(st.sampled_from(b"0127 \0x8+_o\x80\xff"), min_size=width, max_size=width).map(bytes))


@BOUNDED
@given(st.lists(st.tuples(_field(8), _field(8), _field(8), _field(12), _field(8), _field(8)), min_size=1, max_size=5),
       st.binary(min_size=512, max_size=512))
def test_numeric_fields_are_taken_where_tarfile_parses_them(rows, filler):
    """`_numbers_parse` (word masks, then per-byte runs, then `tarfile.nti`) answers as tarfile
    does for mode, uid, gid, mtime and the device numbers, whatever their bytes."""
    heads = []
    for mode, uid, gid, mtime, major, minor in rows:
        head = bytearray(filler)
        head[100:124] = mode + uid + gid
        head[124:136] = b"%011o\0" % 3
        head[136:148] = mtime
        head[329:345] = major + minor
        heads.append(bytes(head))
    arr = np.frombuffer(b"".join(heads), dtype=np.uint8).reshape(len(heads), 512)
    assert tarheaders._numbers_parse(arr) == all(tarheaders._tarfile_parses(row) for row in arr)


@pytest.mark.parametrize("field, value", [(100, b"x"), (108, b"x"), (116, b"9"), (136, b"x"),
                                          (329, b"x"), (337, b"1 2")])
def test_a_header_tarfile_refuses_is_refused_through_the_index_too(copy_of, field, value):
    """The index check left mode, ids, mtime and device numbers unread: a header whose mode is
    "x" (tarfile: "invalid header") was delivered through the index and refused streamed."""
    root = copy_of
    path = os.path.join(root, "shard-00001.tar")
    raw = bytearray(open(path, "rb").read())
    with tarfile.open(path) as tar:
        at = tar.getmembers()[4].offset
    raw[at + field:at + field + len(value)] = value
    raw[at + 148:at + 156] = b" " * 8
    raw[at + 148:at + 156] = b"%06o\0 " % sum(raw[at:at + 512])
    open(path, "wb").write(raw)
    with pytest.raises(ShardReadError, match="member header damaged") as info:
        everything(root)
    assert (info.value.shard, info.value.offset) == ("shard-00001.tar", at)


def _with_checksum(head: bytes) -> bytes:
    """A 512-byte header with its checksum made again (after a test changed it)."""
    head = head[:148] + b" " * 8 + head[156:]
    return head[:148] + b"%06o\0 " % sum(head) + head[156:]


def _prefixed_tar() -> tuple[bytes, str]:
    """A ustar tar of two samples whose names sit in the prefix field, and its index."""
    names = ["p" * 90 + "/" + "q" * 20 + f"/k{i}.cls" for i in range(2)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i, name in enumerate(names):
            tar.addfile(_regular(name, b"%d" % i), io.BytesIO(b"%d" % i))
    raw = buf.getvalue()
    assert raw[345:346] == b"p" and raw[1024 + 345:1024 + 346] == b"p"
    return raw, "v1.2 2\n" + "".join(f"cls {512 + 1024 * i} 1 {n}\n" for i, n in enumerate(names))


def test_names_in_the_ustar_prefix_field_are_read_through_the_index():
    raw, text = _prefixed_tar()
    assert _with_checksum(raw[:512]) == raw[:512]
    got = tarindex.members(raw, text, {"cls"}, split_name, 1 << 30)
    assert got.values["cls"].to_pylist() == [b"0", b"1"] and got.keys[1].endswith("/k1")
    # the header names another directory than the index: not read through the index
    other = raw[:345] + b"r" + raw[346:512]
    assert tarindex.members(_with_checksum(other) + raw[512:], text, {"cls"}, split_name, 1 << 30) is None
    # a NUL inside the prefix field (the streamed reader refuses it: `StrictTarInfo`)
    cut = raw[:345 + 40] + b"\0" + raw[345 + 41:512]
    assert tarindex.members(_with_checksum(cut) + raw[512:], text, {"cls"}, split_name, 1 << 30) is None


def test_a_global_pax_header_is_taken_only_when_its_records_change_no_member():
    payloads = [b"1", b"2"]
    for records, taken in (({"comment": "d" * 40}, True), ({"path": "other.cls"}, False),
                           ({"comment": "1" * 70}, False)):  # a run of digits tarfile refuses
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers=records) as tar:
            for i, payload in enumerate(payloads):
                tar.addfile(_regular(f"k{i}.cls", payload), io.BytesIO(payload))
        raw = buf.getvalue()
        assert raw[156:157] == b"g"
        offsets = [raw.index(p + b"\0" * 511) for p in payloads]
        text = f"v1.2 2\ncls {offsets[0]} 1 k0.cls\ncls {offsets[1]} 1 k1.cls\n"
        got = tarindex.members(raw, text, {"cls"}, split_name, 1 << 30)
        assert (got is not None) == taken, records


@pytest.mark.parametrize("change", ["digits", "nul in name", "mode"])
def test_a_pax_header_the_streamed_reader_refuses_is_not_read_through_the_index(change):
    """A pax extended header before a member, its one record harmless, but refused streamed
    (`StrictTarInfo`): a comment holding a run of 70 digits, a NUL inside the header's own name,
    a mode field that does not parse. The index is not taken for it (before, it was: the
    indexed read delivered the samples the streamed read refuses)."""
    info = _regular("k0.cls", b"1")
    info.pax_headers = {"comment": "1" * 70 if change == "digits" else "x"}
    raw = bytearray(_tar_with([info], [b"1"]))
    assert raw[156:157] == b"x"
    at = raw.index(b"1" + bytes(511))
    text = f"v1.2 1\ncls {at} 1 k0.cls\n"
    if change != "digits":  # the same tar undamaged is read through its index
        assert tarindex.members(bytes(raw), text, {"cls"}, split_name, 1 << 30) is not None
    if change == "nul in name":
        raw[:512] = _with_checksum(bytes(raw[:20]) + b"\0evil" + bytes(raw[25:512]))
    elif change == "mode":
        raw[:512] = _with_checksum(bytes(raw[:100]) + b"9999999\0" + bytes(raw[108:512]))
    with pytest.raises((tarfile.TarError, TarHeaderError)):
        with tarfile.open(fileobj=io.BytesIO(bytes(raw)), mode="r|", tarinfo=StrictTarInfo) as tar:
            list(tar)
    assert tarindex.members(bytes(raw), text, {"cls"}, split_name, 1 << 30) is None


@pytest.mark.parametrize("other, taken", [("README", True), (".gitattributes", True), ("../README", False),
                                          ("dir/.gitattributes", False),  # webdataset: a sample "dir/"
                                          ("__meta__/a.json", True), ("c.txt", False)])
def test_a_file_in_no_sample_between_members_is_passed_as_the_streamed_reader_skips_it(other, taken):
    """The streamed reader skips a member in no sample once its checks pass (a safe path): the
    index is taken over one; not over an unsafe name (streamed: refused, naming its offset), nor a
    sample member the index does not list."""
    payloads = [b"1", b"x", b"2"]
    raw = _tar_with([_regular("a.cls", b"1"), _regular(other, b"x"), _regular("b.cls", b"2")], payloads)
    text = "v1.2 2\ncls 512 1 a.cls\ncls 2560 1 b.cls\n"
    assert raw[2560:2561] == b"2"
    assert (tarindex.members(raw, text, {"cls"}, split_name, 1 << 30) is not None) == taken


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax path", "GNU long name"])
def test_long_named_directories_and_files_in_no_sample_between_members_are_passed(fmt):
    """A long name can name what sits between members too: a directory, a file in no sample
    ("<long dir>/README"), which the streamed reader skips; a long name that makes such a file a
    sample member (one the index does not list) is not passed."""
    long_dir = "d" * 120
    folder = tarfile.TarInfo(long_dir)
    folder.type = tarfile.DIRTYPE
    for between, taken in ((folder, True), (_regular(f"{long_dir}/README", b"x"), True),
                           (_regular(f"{long_dir}/k.txt", b"x"), False)):
        payloads = [b"1", b"x" if between.isreg() else b"", b"2"]
        raw = _tar_with([_regular("a.cls", b"1"), between, _regular("b.cls", b"2")], payloads, fmt)
        offsets = [raw.index(b"1" + bytes(511)), raw.index(b"2" + bytes(511))]
        text = f"v1.2 2\ncls {offsets[0]} 1 a.cls\ncls {offsets[1]} 1 b.cls\n"
        got = tarindex.members(raw, text, {"cls"}, split_name, 1 << 30)
        assert (got is not None) == taken, between.name
        assert got is None or got.values["cls"].to_pylist() == [b"1", b"2"]
