"""A `.json` member read through a shard's index (Arrow's JSON reader over the whole column) and
streamed (Python's `json` per sample) gives the same samples or the same error. A member the
read did not ask for fails nothing unless the document itself is invalid: depth in a field that
is not selected is delivered (Python's parser recursed and refused it when streamed), invalid
UTF-8 anywhere in the document is a corrupt sample (Arrow's reader let it through indexed)."""

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dsutil
import sparkfeed
from sparkfeed.errors import CorruptSampleError
from sparkfeed.read import jsondoc

SHARD = "shard-00000.tar"
DEEP = b"[" * 50_000 + b"]" * 50_000


def _dataset(tmp_path, member: bytes, index: bool) -> str:
    """A 3-sample shard whose sample 1 has `member` as its .json; indexed or streamed."""
    root = str(tmp_path / ("indexed" if index else "streamed"))
    dsutil.write_tar(root, dsutil.table(3), rows_per_shard=3, index=False)
    dsutil.rewrite_tar(root, SHARD, lambda info, data: [(info, member if info.name == "s00000001.json" else data)])
    if index:
        manifest = os.path.join(root, "_sparkfeed.json")
        doc = json.load(open(manifest))
        doc["shards"][0].update(dsutil._dali_index(root, SHARD))
        json.dump(doc, open(manifest, "w"))
    return root


def _outcome(root: str, columns: list[str], **kw) -> str:
    """What a read delivers (values, NaN-safe) or the error it raises, as text."""
    try:
        loader = sparkfeed.DataLoader(root, batch_size=3, columns=columns, **kw)
        got = [{c: b[c].tolist() for c in columns} for b in loader]
        return repr((got, loader.stats().get("samples_skipped", 0)))
    except sparkfeed.SparkfeedError as exc:
        return f"{type(exc).__name__}: {str(exc).split(': ', 2)[-1]}"


MEMBERS = [
    b'{"id": 1, "score": 0.5, "feature": [' + DEEP + b"]}",     # deep in an unselected field
    b'{"id": 1, "score": 0.5, "x": {"a": ' * 2000 + b"1" + b"}" * 2001,
    b'{"id": 1, "score": 0.5, "x": [' + b"[" * 5000 + b"]" * 4999 + b"}",  # deep and malformed
    b'{"id": 1, "score": 0.5, "x": "\xff"}',                    # not UTF-8 in an unselected field
    b'{"id": 1, "score": 12345678901234567890123}',             # an integer past int64 for a double
    b'{"id": 1, "score": 1e400}',
    b"null", b"[1]", b"", b"{}",
    b'{"id": 1, "id": 7, "score": 0.5}',
    b'{"id": 1, "score": 0.5, "x": "\\ud800"}',
    b'\xef\xbb\xbf{"id": 1, "score": 0.5}',
    '{"id": 1, "score": 0.5}'.encode("utf-16"),
    b'{"id": 1,\r"score": 0.5}',
    b'{"id": 1, "score": "0.5"}',
    b'{"id": 9223372036854775808, "score": 0.5}',
    b'{"id": 1e2, "score": NaN}',
]


@pytest.mark.parametrize("member", MEMBERS, ids=range(len(MEMBERS)))
def test_indexed_and_streamed_json_members_agree(tmp_path, member):
    streamed, indexed = _dataset(tmp_path, member, False), _dataset(tmp_path, member, True)
    for columns in (["id", "score"], ["id"]):
        for kw in ({}, {"on_error": "skip"}):
            assert _outcome(indexed, columns, **kw) == _outcome(streamed, columns, **kw), (columns, kw)


@pytest.mark.parametrize("index", [False, True])
def test_depth_in_a_field_not_selected_is_delivered_and_in_a_selected_one_is_corrupt(tmp_path, index):
    root = _dataset(tmp_path, MEMBERS[0], index)
    [batch] = list(sparkfeed.DataLoader(root, batch_size=3, columns=["id", "score"]))
    assert batch["id"].tolist() == [0, 1, 2] and batch["score"][1].item() == 0.5
    with pytest.raises(CorruptSampleError, match=r"member .json cannot be parsed \(arrays or objects "
                                                 "nested too deeply\\)") as info:
        list(sparkfeed.DataLoader(root, batch_size=3, columns=["id", "feature"]))
    assert (info.value.shard, info.value.key) == (SHARD, "s00000001")


@pytest.mark.parametrize("index", [False, True])
def test_invalid_utf8_in_a_field_not_selected_is_a_corrupt_sample(tmp_path, index):
    """JSON is UTF-8: the document is invalid, whichever field holds the bytes."""
    root = _dataset(tmp_path, MEMBERS[3], index)
    with pytest.raises(CorruptSampleError, match="can't decode byte 0xff") as info:
        list(sparkfeed.DataLoader(root, batch_size=3, columns=["id"]))
    assert info.value.key == "s00000001"


# ---------------------------------------------------------------- jsondoc against json.loads

_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=4),
                     st.floats(allow_nan=False))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                          st.dictionaries(st.text(max_size=3), inner, max_size=3)),
                       max_leaves=12)
_objects = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), _values, max_size=4)


def _both(raw: bytes, wanted: set[str]):
    """(json.loads's wanted fields, or its error type; jsondoc's, or its error type)."""
    out = []
    for parse in (lambda: {k: v for k, v in json.loads(raw).items() if k in wanted},
                  lambda: jsondoc.loads_fields(raw, wanted)):
        try:
            got = parse()
            out.append(got if isinstance(got, dict) else ValueError)
        except (ValueError, AttributeError) as exc:
            out.append(ValueError if not isinstance(exc, AttributeError) else ValueError)
    return out


@settings(max_examples=300, deadline=None)
@given(_objects, st.sets(st.sampled_from(["a", "b", "c", "d"])))
def test_jsondoc_gives_json_loads_fields(doc, wanted):
    raw = json.dumps(doc).encode()
    a, b = _both(raw, wanted)
    assert a == b


@settings(max_examples=500, deadline=None)
@given(_objects, st.integers(0, 10_000), st.sampled_from(['"', ",", ":", "[", "]", "{", "}", "", " ", "1",
                                                          "\\", "\x01", "-", ".", "e", "N", "x"]))
def test_jsondoc_refuses_what_json_loads_refuses(doc, at, insert):
    """Any document changed once (a character put in, or the one there taken out): both parse it to
    the same wanted fields, or both refuse it."""
    text = json.dumps(doc)
    at %= len(text) + 1
    changed = (text[:at] + insert + text[at:]) if insert else text[:at] + text[at + 1:]
    a, b = _both(changed.encode(), {"a", "b"})
    assert a == b, changed
