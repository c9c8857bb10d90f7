"""format("webdataset")'s JVM reader against sparkfeed's Python reader on the same tars (written
with Python's `tarfile`): the same samples where the loader delivers some (members in no sample
skipped alike), and where Python refuses a tar (a damaged header, a link, an unsafe name, a key in
two places, a member twice in a sample) the same refusal, naming the dataset, the shard and the
same tar offset."""

import gzip
import io
import json
import os
import sys
import tarfile

import pytest

import sparkfeed
from sparkfeed import ShardReadError

pytestmark = pytest.mark.spark
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

SAMPLES = [("a.txt", b"A"), ("a.cls", b"1"), ("b.txt", b"B"), ("b.cls", b"2")]


def _tar(members, fmt=tarfile.USTAR_FORMAT) -> bytes:
    """A tar of (name, bytes) members and ready TarInfos (links, devices), as `tarfile` writes it."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
                continue
            info = tarfile.TarInfo(m[0])
            info.size, info.mtime = len(m[1]), 1_700_000_000
            tar.addfile(info, io.BytesIO(m[1]))
    return out.getvalue()


def _special(name, type_, target=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = type_, target
    return info


def _dataset(tmp_path, raw: bytes, name="ds") -> str:
    root = tmp_path / name
    root.mkdir()
    (root / "s.tar").write_bytes(raw)
    return str(root)


def _loader_rows(root: str) -> list[tuple]:
    """(key, cls, txt) of every sample the loader delivers, after `sparkfeed.index`."""
    sparkfeed.index(root, progress=False)
    out = []
    for b in sparkfeed.DataLoader(root, batch_size=64, columns=["key", "cls", "txt"]):
        out += [(k, int(c), t) for k, c, t in zip(b["key"], b["cls"], b["txt"])]
    return out


def _spark_rows(spark, root: str) -> list[tuple]:
    df = spark.read.format("webdataset").load(root)
    return [(r.key, r.cls, r.txt) for r in df.select("key", "cls", "txt").collect()]


# Members webdataset and sparkfeed leave out of every sample: no extension, an empty extension,
# no key, webdataset's metadata names; and names that look like them but are in a sample.
IN_NO_SAMPLE = [("README", b"r"), ("a.", b"x"), (".txt", b"z"), ("dir/README", b"y"),
                ("__meta__/a.json", b"{}"), ("__x.y__", b"m"), ("__a__/b.c/d.txt", b"m"),
                ("a.b/.txt", b"q")]
LOOK_ALIKES = [("__k.txt", b"K"), ("__k.cls", b"3"), ("a__.txt", b"L"), ("a__.cls", b"4"),
               ("d/.txt", b"D"), ("d/.cls", b"5")]


def test_members_in_no_sample_are_skipped_as_the_loader_skips_them(spark, tmp_path):
    """Before, every such member became a row of its own (all null but its key): a shard the
    loader reads as 2 samples gave Spark up to 9 rows. Now both give the same samples."""
    members = IN_NO_SAMPLE[:4] + SAMPLES[:2] + IN_NO_SAMPLE[4:] + SAMPLES[2:] + LOOK_ALIKES
    root = _dataset(tmp_path, _tar(members))
    expected = _loader_rows(root)
    assert [k for k, _, _ in expected] == ["a", "b", "__k", "a__", "d/"]
    assert _spark_rows(spark, root) == expected


def test_a_tar_read_without_manifest_has_no_column_for_members_in_no_sample(spark, tmp_path):
    """Before, "a." gave the schema a column named "" (and "__meta__/m.json" one named json),
    all null."""
    members = [("a.", b"x"), ("__meta__/m.json", b"{}"), ("d" * 120 + "/README", b"r")] + SAMPLES
    root = _dataset(tmp_path, _tar(members, tarfile.GNU_FORMAT))
    df = spark.read.format("webdataset").load(root)
    assert df.columns == ["key", "cls", "txt"]
    assert [tuple(r) for r in df.collect()] == [("a", b"1", b"A"), ("b", b"2", b"B")]


def test_names_that_are_not_utf8_are_refused_as_the_loader_refuses_them(spark, tmp_path):
    """Before, commons-compress made each undecodable byte U+FFFD: "caf\\xe9.txt" and
    "caf\\xe8.txt" became one key (a sample of two members from two), where Python refuses both."""
    members = SAMPLES + [("caf\udce9.txt", b"1"), ("caf\udce8.txt", b"2")]
    root = _dataset(tmp_path, _tar(members))
    refusal = _python_refusal(root)
    assert refusal.offset == 4096 and "is not valid UTF-8" in str(refusal)
    with pytest.raises(Exception) as excinfo:
        spark.read.format("webdataset").load(root).collect()
    assert (f"dataset '{root}', shard 's.tar', tar offset 4096: member name b'caf\\xe9.txt' could "
            "escape the dataset: it is not valid UTF-8") in str(excinfo.value)


@pytest.mark.parametrize("raw, words", [
    (b"", "corrupt tar: not a tar file (the file is empty)"),
    (b"not a tar" * 100, "corrupt tar: not a tar file (its first header's checksum is wrong)"),
    (gzip.compress(_tar(SAMPLES)), "is gzip-compressed, though named .tar"),
], ids=["empty", "garbage", "gzip"])
def test_a_file_that_is_no_tar_fails_the_read_naming_it(spark, tmp_path, raw, words):
    """Before, an empty file and a small gzip-compressed tar read as a shard of 0 samples, and
    garbage failed while planning with no word of the shard or what was wrong."""
    root = _dataset(tmp_path, raw)
    with pytest.raises(Exception) as excinfo:
        spark.read.format("webdataset").load(root).collect()
    assert f"dataset '{root}', shard 's.tar', tar offset 0: {words}" in str(excinfo.value)


def test_a_tar_without_end_blocks_reads_as_in_the_loader(spark, tmp_path):
    raw = _tar(SAMPLES).rstrip(b"\0")
    root = _dataset(tmp_path, raw + b"\0" * (-len(raw) % 512))
    expected = _loader_rows(root)
    assert _spark_rows(spark, root) == expected == [("a", 1, "A"), ("b", 2, "B")]


LONG = [("d" * 120 + "/" + name, data) for name, data in SAMPLES]


def _bad_checksum() -> bytes:
    raw = bytearray(_tar(SAMPLES))
    raw[2 * 1024 + 148] ^= 1  # the third member's (b.txt's) header checksum
    return bytes(raw)


def _nul_in_name() -> bytes:
    raw = bytearray(_tar(SAMPLES + [("cXtxt", b"C")]))
    raw[4 * 1024 + 1] = 0  # "c\0txt": tar readers cut the name at the NUL
    raw[4 * 1024 + 148:4 * 1024 + 156] = b"%06o\0 " % (sum(raw[4096:4096 + 512]) - sum(raw[4096 + 148:4096 + 156]) + 256)
    return bytes(raw)


HOSTILE = {
    "damaged header": _bad_checksum(),
    "header cut short": _tar(SAMPLES + [("c.txt", b"C")])[:4096 + 200],
    "nul inside a name": _nul_in_name(),
    "symlink": _tar(SAMPLES + [_special("c.txt", tarfile.SYMTYPE, "a.txt")]),
    "hard link": _tar(SAMPLES + [_special("c.txt", tarfile.LNKTYPE, "a.txt")]),
    "fifo": _tar(SAMPLES + [_special("c.txt", tarfile.FIFOTYPE)]),
    "path traversal": _tar(SAMPLES + [("../x.txt", b"x")]),
    "absolute name": _tar(SAMPLES + [("/x.txt", b"x")]),
    "unsafe name in no sample": _tar(SAMPLES + [("../README", b"x")]),
    "key in two places": _tar(SAMPLES + [("a.jpg", b"J")]),
    "member twice in a sample": _tar(SAMPLES[:2] + [("a.txt", b"A2")] + SAMPLES[2:]),
    # offsets where long names take extra headers: Python names the first header of the member
    "pax symlink": _tar(LONG + [_special("d" * 120 + "/c.txt", tarfile.SYMTYPE, "a.txt")], tarfile.PAX_FORMAT),
    "gnu symlink": _tar(LONG + [_special("d" * 120 + "/c.txt", tarfile.SYMTYPE, "a.txt")], tarfile.GNU_FORMAT),
    "pax member twice": _tar(LONG[:2] + [LONG[0]] + LONG[2:], tarfile.PAX_FORMAT),
}


def _python_refusal(root: str) -> ShardReadError:
    with pytest.raises(ShardReadError) as excinfo:
        sparkfeed.index(root, progress=False)
    return excinfo.value


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_tar_python_refuses_fails_the_spark_read_with_the_same_words_and_offset(spark, tmp_path, case):
    """Before, commons-compress read most of these without a word: a damaged or cut header ended
    the shard (members lost), links and FIFOs were empty members, a repeated key two rows, a
    repeated member the last one's bytes; and errors named only the shard's full path."""
    root = _dataset(tmp_path, HOSTILE[case])
    refusal = _python_refusal(root)
    assert refusal.offset is not None and refusal.offset > 0
    with pytest.raises(Exception) as excinfo:
        spark.read.format("webdataset").load(root).collect()
    assert str(refusal) in str(excinfo.value)
    assert f"dataset '{root}', shard 's.tar', tar offset {refusal.offset}: " in str(excinfo.value)


def test_a_tar_cut_short_inside_member_data_names_the_member_and_offset(spark, tmp_path):
    """Read through its manifest (made while the shard was whole): the JVM reader's error says
    where the data stops, as the Python reader's does, instead of a bare EOFException."""
    raw = _tar(SAMPLES + [("c.txt", b"C" * 1000), ("c.cls", b"3")])
    root = _dataset(tmp_path, raw)
    sparkfeed.index(root, progress=False)
    with open(os.path.join(root, "s.tar"), "r+b") as f:
        f.truncate(4096 + 512 + 300)
    with pytest.raises(Exception, match=rf"dataset '{root}', shard 's.tar', tar offset 4096: the tar is "
                       r"cut short inside the data of member 'c.txt' \(1000 bytes from tar offset 4608\)"):
        spark.read.format("webdataset").load(root).collect()


def test_integer_members_read_as_the_loader_reads_them(spark, tmp_path):
    """webdataset reads `.cls` with Python's int(): "007", "+5", "1_000" and whitespace around.
    Before, the JVM parsed them as JSON: a leading zero or "_" failed the read."""
    texts = [b"007", b"+5", b" 12\n", b"1_000", b"-3"]
    members = [m for i, t in enumerate(texts) for m in ((f"k{i}.cls", t), (f"k{i}.txt", b"t"))]
    root = _dataset(tmp_path, _tar(members))
    expected = _loader_rows(root)
    assert [c for _, c, _ in expected] == [7, 5, 12, 1000, -3]
    assert _spark_rows(spark, root) == expected


def test_an_integer_member_past_its_type_fails_instead_of_wrapping(spark, tmp_path):
    """Before, 99999999999999999999 in a bigint column was read as 7766279631452241919; the
    loader refuses it (does not fit int64), and so does Spark now."""
    root = _dataset(tmp_path, _tar([("k0.cls", b"99999999999999999999"), ("k0.txt", b"t")]))
    sparkfeed.index(root, progress=False)
    with pytest.raises(Exception, match=rf"dataset '{root}', shard 's.tar', tar offset 0: sample 'k0': cannot "
                       r"decode it: value 99999999999999999999 does not fit bigint"):
        spark.read.format("webdataset").load(root).collect()


@pytest.mark.parametrize("value, words", [(1.5, "value 1.5 is not a whole number, as int needs"),
                                          (3_000_000_000, "value 3000000000 does not fit int"),
                                          (True, "value true is not a whole number, as int needs")])
def test_a_json_field_that_is_no_integer_of_its_column_fails_the_read(spark, tmp_path, value, words):
    """Integer columns beside the `.cls` one live in the sample's `.json`; there 1.5 and true were
    read as 1 and 3000000000 wrapped to -1294967296 without a word."""
    shard = _spark_shard_with_json(spark, tmp_path / "ds", "key string, label int, n int", ("k1", 1, 2),
                                   json.dumps({"n": value}).encode())
    with pytest.raises(Exception, match=rf"shard '{shard}', tar offset 0: sample 'k1': cannot decode it: {words}"):
        spark.read.format("webdataset").load(str(tmp_path / "ds")).collect()


def _spark_shard_with_json(spark, root, schema: str, row: tuple, doc: bytes) -> str:
    """A one-sample dataset written by Spark whose `.json` member is replaced by `doc`; the shard's name."""
    spark.createDataFrame([row], schema).coalesce(1).write.format("webdataset").save(str(root))
    shard = next(root.glob("*.tar"))
    with tarfile.open(shard) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    assert any(n.endswith(".json") for n, _ in members)
    shard.write_bytes(_tar([(n, doc if n.endswith(".json") else d) for n, d in members]))
    return shard.name


@pytest.mark.parametrize("doc, words", [
    (b'{"score": "abc"}', "value \"abc\" is not a number, as double needs"),
    (b'{"score": true}', "value true is not a number, as double needs"),
    (b'{"feat": 5}', "value 5 is not a list, as array<float> needs"),
    (b'{"ok": 1}', "value 1 is not true or false, as boolean needs"),
    (b'[1, 2]', "member .json holds a JSON array, not an object"),
    (b'', "member .json holds no JSON value, not an object"),
], ids=["text for double", "bool for double", "scalar for array", "number for boolean", "array", "empty"])
def test_a_json_value_of_the_wrong_kind_fails_the_read_instead_of_a_made_up_value(spark, tmp_path, doc, words):
    """Before, "abc" and true read as 0.0 and 1.0, 5 as an empty list, 1 as true, and a .json
    that is no object as nulls in every column, all without a word."""
    schema = "key string, label int, score double, feat array<float>, ok boolean"
    shard = _spark_shard_with_json(spark, tmp_path / "ds", schema, ("k1", 1, 0.5, [1.0], False), doc)
    with pytest.raises(Exception) as excinfo:
        spark.read.format("webdataset").load(str(tmp_path / "ds")).collect()
    assert f"shard '{shard}', tar offset 0: sample 'k1': cannot decode it: {words}" in str(excinfo.value)


def test_a_string_member_that_is_not_utf8_fails_the_read(spark, tmp_path):
    """A schema given to a read without manifest reads `.txt` as string: bytes that are not UTF-8
    were kept (shown as U+FFFD); the loader refuses them (`sparkfeed.index` too), and so does
    Spark now."""
    root = _dataset(tmp_path, _tar(SAMPLES[:2] + [("b.txt", b"\xff\xfe"), ("b.cls", b"2")]))
    assert "cannot be read as string" in str(_python_refusal(root))
    with pytest.raises(Exception) as excinfo:
        spark.read.format("webdataset").schema("key string, txt string").load(root).collect()
    assert (f"dataset '{root}', shard 's.tar', tar offset 2048: sample 'b': cannot decode it: member .txt "
            "cannot be read as string (not UTF-8)") in str(excinfo.value)
