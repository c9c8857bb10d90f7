"""Differential: tars written by Python's `tarfile` (ustar, GNU and pax; long names, `./`
prefixes, directories, dotted keys, empty members, no end-of-archive blocks, members in no
sample, webdataset's metadata names, samples split across shards) read by the `webdataset`
package and by sparkfeed (`sparkfeed.index`, then the loader, through each shard's index and
streamed): the same samples, in the same order, with the same bytes. Shuffled and resumed
reads deliver that set exactly once."""

import io
import json
import os
import re
import shutil
import subprocess
import tarfile

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import sparkfeed
from sparkfeed import storage

wds = pytest.importorskip("webdataset")

INT_EXTS = {"cls", "cls2", "class", "count", "index", "inx", "id", "idx"}


def _write(path: str, members, fmt=tarfile.USTAR_FORMAT, trailer=True, dirs=()) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000.5
            tar.addfile(info, io.BytesIO(data))
    raw = out.getvalue()
    if not trailer:  # cut after the last member's data: no end-of-archive blocks
        raw = raw.rstrip(b"\0")
        raw += b"\0" * (-len(raw) % 512)
    with open(path, "wb") as f:
        f.write(raw)


def _sample(key: str, i: int, exts) -> list:
    data = {"cls": str(i).encode(), "txt": f"caption {i}".encode(), "jpg": bytes([i]) * (100 + i),
            "json": json.dumps({"i": i}).encode()}
    return [(f"{key}.{e}", data.get(e.rsplit(".", 1)[-1], b"x" * i)) for e in exts]


def _samples(keys, exts=("cls", "txt", "jpg")) -> list:
    return [m for i, k in enumerate(keys) for m in _sample(k, i, exts)]


KEYS = [f"s{i:03d}" for i in range(6)]
CASES = {
    "ustar": ([_samples(KEYS)], {}),
    "gnu long names": ([_samples(["d" * 60 + "/" + "e" * 50 + "/" + k for k in KEYS])], {"fmt": tarfile.GNU_FORMAT}),
    "pax long unicode names": ([_samples(["ключ/" + "x" * 120 + k for k in KEYS])], {"fmt": tarfile.PAX_FORMAT}),
    "ustar prefix": ([_samples(["p" * 90 + "/" + k for k in KEYS])], {}),
    "pax fractional mtime": ([_samples(KEYS)], {"fmt": tarfile.PAX_FORMAT}),
    "./ prefixes": ([_samples(["./" + k for k in KEYS])], {}),
    "directories": ([_samples(["a/" + k for k in KEYS])], {"dirs": ["a/"]}),
    "dotted keys": ([_samples(KEYS, ("cls", "txt", "seg.png", "a.b.c"))], {}),
    "empty members": ([[(f"{k}.jpg", b"") for k in KEYS]], {}),
    "no end blocks": ([_samples(KEYS)], {"trailer": False}),
    "members in no sample": ([[("README", b"hi")] + _samples(KEYS) + [(".txt", b"x"), ("dir/README", b"y")]], {}),
    "metadata names": ([[("__meta__/a.json", b"{}"), ("__x.y__", b"m")] + _samples(KEYS)
                        + [("__a__/b.c/d.txt", b"m")]], {}),
    "dunder keys": ([_samples(["__k", "__k__x", "a__"])], {}),
    "members missing": ([[("a.txt", b"1"), ("a.jpg", b"x"), ("b.jpg", b"y"), ("c.txt", b"3")]], {}),
    "split across shards": ([_samples(KEYS[:3]), _samples(KEYS[2:])], {}),
    "json and cls": ([_samples(KEYS, ("json", "cls"))], {}),
}


def _dataset(tmp_path, shards, **kw) -> tuple[str, list[str]]:
    root = str(tmp_path / "ds")
    os.makedirs(root)
    paths = []
    for i, members in enumerate(shards):
        paths.append(os.path.join(root, f"shard-{i}.tar"))
        _write(paths[-1], members, **kw)
    return root, paths


def _webdataset(paths) -> list[dict]:
    """webdataset's samples, `.cls` read as webdataset's decoders read it (int)."""
    out = []
    for s in wds.WebDataset(paths, shardshuffle=False, empty_check=False):
        out.append({k: (str(int(v)).encode() if k.rsplit(".", 1)[-1] in INT_EXTS else v)
                    for k, v in s.items() if k not in ("__url__", "__local_path__")})
    return out


def _sparkfeed(root: str, indexed: bool, **kw) -> list[dict]:
    """sparkfeed's samples of the dataset `sparkfeed.index` makes, as webdataset's dicts."""
    manifest = sparkfeed.index(root, progress=False)
    if not indexed:
        path = os.path.join(root, "_sparkfeed.json")
        doc = json.load(open(path))
        for shard in doc["shards"]:
            shard.pop("index", None)
        json.dump(doc, open(path, "w"))
    key = next(c.name for c in manifest.schema if c.member == "__key__")
    out = []
    for b in sparkfeed.DataLoader(root, batch_size=4, columns=[c.name for c in manifest.schema], **kw):
        for i, k in enumerate(b[key]):
            sample = {"__key__": k}
            for c in manifest.schema:
                v = b[c.name][i] if c.member != "__key__" else None
                if v is not None:
                    v = v.item() if hasattr(v, "item") else v
                    sample[c.member] = str(v).encode() if c.type == "int64" else v.encode() if c.type == "string" else v
            out.append(sample)
    return out


@pytest.mark.parametrize("indexed", [True, False], ids=["indexed", "streamed"])
@pytest.mark.parametrize("case", list(CASES))
def test_sparkfeed_delivers_what_webdataset_delivers(tmp_path, case, indexed):
    shards, kw = CASES[case]
    root, paths = _dataset(tmp_path, shards, **kw)
    expected = _webdataset(paths)
    assert expected, "webdataset read no sample"
    assert _sparkfeed(root, indexed) == expected


def _ids(samples) -> list:
    return [(s["__key__"], s.get("jpg")) for s in samples]


@pytest.mark.parametrize("indexed", [True, False], ids=["indexed", "streamed"])
def test_a_shuffled_read_delivers_webdatasets_samples_once(tmp_path, indexed):
    keys = [f"k{i:04d}" for i in range(60)]
    root, paths = _dataset(tmp_path, [_samples(keys[:25]), _samples(keys[25:40]), _samples(keys[40:])])
    expected = sorted(_ids(_webdataset(paths)))
    got = _ids(_sparkfeed(root, indexed, shuffle=True, seed=3))
    assert sorted(got) == expected and got != sorted(got)


@pytest.mark.parametrize("indexed", [True, False], ids=["indexed", "streamed"])
def test_a_shuffled_read_resumed_mid_epoch_delivers_the_rest_once(tmp_path, indexed):
    keys = [f"k{i:04d}" for i in range(60)]
    root, paths = _dataset(tmp_path, [_samples(keys[:25]), _samples(keys[25:40]), _samples(keys[40:])])
    _sparkfeed(root, indexed)  # the manifest (and whether shards are read through their index)
    loader = sparkfeed.DataLoader(root, batch_size=4, shuffle=True, seed=5, columns=["key"])
    loader.set_epoch(2)
    it = iter(loader)
    first = [k for _ in range(6) for k in next(it)["key"]]
    state = loader.state_dict()
    again = sparkfeed.DataLoader(root, batch_size=4, shuffle=True, seed=5, columns=["key"])
    again.load_state_dict(state)
    rest = [k for b in again for k in b["key"]]
    assert sorted(first + rest) == sorted(keys) and len(first) == 24


def test_extensions_differing_in_case_alone_are_warned_of(tmp_path, caplog):
    """webdataset lowercases extensions ("a.JPG" and "b.jpg" are one field "jpg"); sparkfeed keeps
    each spelling as a column (as its Spark reader does), and `sparkfeed.index` now says so
    instead of leaving two half-null columns to be found at training time."""
    root, paths = _dataset(tmp_path, [[("a.cls", b"1"), ("a.JPG", b"x"), ("b.cls", b"2"), ("b.jpg", b"y")]])
    assert [s.get("jpg") for s in _webdataset(paths)] == [b"x", b"y"]
    caplog.set_level("WARNING", "sparkfeed.index.tar")
    manifest = sparkfeed.index(root, progress=False)
    assert {"JPG", "jpg"} <= {c.name for c in manifest.schema}
    assert "extensions 'JPG', 'jpg' differ in case alone" in caplog.text


_PARTS = ["a", "b", ".", "/", "_", "__", "x.y", "-", "é", "..", " ", "c1", "./", "~", ":", "#", "%20", "readme"]


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 25)), deadline=None,
          derandomize=bool(os.environ.get("CI")), suppress_health_check=list(HealthCheck))
@given(st.lists(st.lists(st.sampled_from(_PARTS), min_size=1, max_size=5).map("".join), min_size=1, max_size=6))
def test_any_member_names_give_webdatasets_samples_or_a_named_refusal(tmp_path_factory, names):
    """Whatever the names, sparkfeed (indexed and streamed) delivers webdataset's samples, or
    refuses the shard naming why (a name the path rule refuses, a key in two places, a member
    twice in a sample, which webdataset refuses too). Left out: names whose extension is empty
    as tarfile reads them back (webdataset keeps a field "", which no column can be named), and
    upper case (webdataset lowercases extensions; the case test above)."""
    from webdataset.tariterators import base_plus_ext

    root = str(tmp_path_factory.mktemp("names"))
    path = os.path.join(root, "a.tar")
    _write(path, [(n, f"data{i}".encode()) for i, n in enumerate(names)], fmt=tarfile.PAX_FORMAT)
    with tarfile.open(path) as tar:
        read_back = [m.name for m in tar.getmembers() if m.isreg()]
    assume(all(base_plus_ext(n)[1] != "" for n in read_back))
    try:
        expected = _webdataset([path])
    except ValueError as exc:  # webdataset: "duplicate file name"
        expected = exc
    for indexed in (True, False):
        for made in ("_sparkfeed.json", "_sparkfeed_index"):
            shutil.rmtree(os.path.join(root, made), ignore_errors=True) if made.endswith("index") \
                else os.path.exists(os.path.join(root, made)) and os.remove(os.path.join(root, made))
        try:
            got = _sparkfeed(root, indexed)
        except sparkfeed.SparkfeedError as exc:
            assert any(storage.path_problem(n) for n in read_back) or \
                re.search("appears in two places|has two|no webdataset", str(exc)), str(exc)
            continue
        assert got == expected, (names, indexed, got)


def _git_archive(tmp_path, keys, exts=("cls", "txt", "jpg")) -> str:
    """A tar made by `git archive` of a repository holding `keys`' samples (`_sample`) and files
    in no sample: git's pax global header first, a directory entry per directory, long names
    split into the ustar prefix field."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README").write_bytes(b"a file in no sample, as a repository has\n")
    (repo / ".gitattributes").write_bytes(b"*.jpg binary\n")
    for i, key in enumerate(keys):
        for name, data in _sample(key, i, exts):
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            (repo / name).write_bytes(data)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "samples"], check=True)
    root = tmp_path / "ds"
    root.mkdir()
    with open(root / "shard-0.tar", "wb") as out:
        subprocess.run(git + ["archive", "--format=tar", "HEAD"], check=True, stdout=out)
    return str(root)


LONG = "d" * 60 + "/" + "e" * 50  # a directory whose members' names need the ustar prefix field


@pytest.mark.parametrize("made", ["git archive", "tarfile ustar"])
def test_prefixed_names_are_cut_through_the_index_as_streamed(tmp_path, made, caplog):
    """Members whose names sit in the ustar prefix field (and git archive's pax global header,
    directory entries and files in no sample) are cut through the shard's index, giving the streamed samples sample for
    sample; before, the index was refused for them and every such shard streamed (~25x slower)."""
    keys = [f"{LONG}/s{i:03d}" for i in range(5)] + [f"short/k{i}" for i in range(3)]
    if made == "git archive":
        root = _git_archive(tmp_path, keys)
    else:
        root, _ = _dataset(tmp_path, [_samples(keys)])
    paths = [os.path.join(root, "shard-0.tar")]
    with tarfile.open(paths[0]) as tar:
        assert sum(len(m.name) > 100 for m in tar.getmembers() if m.isreg()) == 15  # in the prefix field
    expected = _webdataset(paths)
    caplog.set_level("INFO", "sparkfeed")
    indexed = _sparkfeed(root, True)
    assert "does not match its index" not in caplog.text and "streaming the tar" not in caplog.text
    os.remove(os.path.join(root, "_sparkfeed.json"))
    shutil.rmtree(os.path.join(root, "_sparkfeed_index"))
    assert indexed == expected == _sparkfeed(root, False) and len(indexed) == 8
