"""A saved state records the filter it was made under, as text, and a loader with another filter
refuses it. pyarrow prints a value set of more than 20 values as its first and last ten, so two
`is_in` filters differing only in the middle of their sets printed alike: a state saved under
one was taken by a loader under the other, whose positions then meant other rows (samples
delivered twice or never, without a word). The filter's identity now carries a digest of the
whole expression wherever its text is cut short."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import sparkfeed
from sparkfeed.filters import identity_text

EVEN = list(range(0, 40, 2)) + list(range(40, 80, 2))             # 40 values
OTHER = list(range(0, 20, 2)) + list(range(21, 61, 2)) + list(range(60, 80, 2))  # same ends and count


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("identity")
    pq.write_table(pa.table({"id": pa.array(range(100), pa.int64())}), root / "part-0.parquet", row_group_size=10)
    sparkfeed.index(str(root), progress=False)
    return str(root)


def test_two_large_value_sets_with_the_same_ends_refuse_each_others_state(root):
    """Same first and last ten values, same count of rows passing: the state is refused."""
    a, b = pc.field("id").isin(EVEN), pc.field("id").isin(OTHER)
    assert str(a) == str(b) and len(EVEN) == len(OTHER) and EVEN != OTHER
    loader = sparkfeed.DataLoader(root, batch_size=4, shuffle=True, columns=["id"], filter=a)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    other = sparkfeed.DataLoader(root, batch_size=4, shuffle=True, columns=["id"], filter=b)
    with pytest.raises(ValueError, match="filter"):
        other.load_state_dict(state)
    same = sparkfeed.DataLoader(root, batch_size=4, shuffle=True, columns=["id"], filter=pc.field("id").isin(EVEN))
    same.load_state_dict(state)  # the same filter, built again, still resumes


def test_a_filter_printed_whole_keeps_its_text():
    """Filters whose text is whole keep it as their identity (states saved before still match)."""
    for expr in (pc.field("id") < 3, pc.field("id").isin(list(range(20))), pc.field("s") == "..." * 30):
        assert identity_text(expr) == str(expr)
    assert identity_text(None) == "None"
    assert identity_text(pc.field("id").isin(EVEN)) != identity_text(pc.field("id").isin(OTHER))


SETS = ["{'alpha', 'beta', 'gamma', 'delta', 'é'}", "{3, 1, 2}", "{None, 'a', 'b'}", "frozenset({'x', 'y', 'z'})"]


def test_a_dnf_set_reads_as_one_filter_in_every_process():
    """A set of strings iterates in an order that changes with Python's hash seed, and the filter's
    text (a saved state's record of it) changed from one process to the next: a job restarted
    with the same `[("s", "in", {...})]` refused its own state. The text is now the same."""
    code = ("from sparkfeed.filters import to_expression, identity_text\n"
            f"for values in [{', '.join(SETS)}]:\n"
            "    print(identity_text(to_expression([('s', 'in', values)])))")
    texts = {subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": str(seed)},
                            capture_output=True, text=True, check=True).stdout for seed in range(1, 4)}
    assert len(texts) == 1 and texts.pop().count("is_in(s") == len(SETS)


EXPRESSIONS = ["pc.field('s').isin({'alpha', 'beta', 'gamma', 'delta', 'é'})",
               "pc.field('s').isin({None, 'a', 'b', 'c'}) & (pc.field('i') > 2)",
               "~pc.field('s').isin({f'value-{i}' for i in range(40)})",  # (printed cut short: a digest)
               "pc.field('s').isin(frozenset({'x', 'y', 'z'})) | pc.field('t').isin({'p', 'q', 'r'})"]


def test_an_expression_of_a_python_set_reads_as_one_filter_in_every_process():
    """`pc.field('s').isin({...})` takes the set's order, which Python's hash seed changes from one
    process to the next: its text and digest (a saved state's record of the filter) changed with it,
    and a job restarted with the same filter refused its own state. Read with the value sets
    sorted, the identity is the same under every seed, and still tells other sets apart."""
    code = ("import pyarrow.compute as pc\nfrom sparkfeed.filters import identity_text\n"
            f"for expr in [{', '.join(EXPRESSIONS)}]:\n"
            "    print(repr(identity_text(expr)))")
    texts = {subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": str(seed)},
                            capture_output=True, text=True, check=True).stdout for seed in (1, 2)}
    assert len(texts) == 1
    lines = texts.pop().splitlines()
    assert len(set(lines)) == len(EXPRESSIONS) and "#" in lines[2]
    assert identity_text(~pc.field("s").isin({f"value-{i}" for i in range(40)})) != \
        identity_text(~pc.field("s").isin({f"value-{i}" for i in range(1, 41)}))


def test_a_filters_identity_is_read_once_however_often_a_state_is_saved(root, monkeypatch):
    """Reading a value set sorted costs a second at 1,000,000 values, and every `state_dict()`
    asks for the filter's identity: it is read once per expression, and stays the same."""
    from sparkfeed import isinsets

    calls, real = [], isinsets.canonical
    monkeypatch.setattr(isinsets, "canonical", lambda expr: calls.append(1) or real(expr))
    loader = sparkfeed.DataLoader(root, batch_size=4, shuffle=True, columns=["id"], filter=pc.field("id").isin(OTHER))
    it = iter(loader)
    states = []
    for _ in range(3):
        next(it)
        states.append(loader.state_dict())
    assert len(calls) == 1
    other = sparkfeed.DataLoader(root, batch_size=4, shuffle=True, columns=["id"], filter=pc.field("id").isin(OTHER))
    other.load_state_dict(states[-1])  # (a new expression, read again: the same identity)
