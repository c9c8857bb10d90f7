"""Pruning over float columns a NaN can pass gives each item one guarantee per way its rows can
be NaN (`pruning.select_may_match`, `select_all_match`). Every variant of every item was built
and reasoned over, eight per row group over three such columns: planning 10,000 row groups
under `(x != 1) | (y != 2) | (z != 3)` took 28 s on this machine (select_may_match 14 s,
select_all_match 14 s). The first variant (no column NaN) is now reasoned over every item, the
others only over the items it leaves undecided; the answers are those of every variant at once."""

from __future__ import annotations

import random

import pyarrow.compute as pc
import pytest

from sparkfeed import pruning
from sparkfeed.manifest import Column, ColumnStats

SCHEMA = [Column(n, "double") for n in "xyz"]


def _items(seed: int, n: int = 60) -> list:
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        stats = {}
        for name in "xyz":
            lo = rng.choice([-2.0, 0.0, 1.0, 3.0])
            rows = rng.choice([1, 4])
            nulls = rng.choice([0, 1, rows])
            stats[name] = ColumnStats(None if nulls == rows else lo, None if nulls == rows else lo + rng.choice([0, 1, 5]),
                                      nulls)
        items.append((stats, rows))
    return items


EXPRESSIONS = [(pc.field("x") != 1) | (pc.field("y") != 2) | (pc.field("z") != 3), pc.field("x") > 2,
               ~(pc.field("x") < 1) & ~(pc.field("y") < 3), pc.is_nan(pc.field("z")) | (pc.field("x") == 0),
               ~pc.field("y").isin([1.0, 6.0]), (pc.field("x") >= 0) & (pc.field("z") <= 3)]


def _every_variant_at_once(expr, items, all_match: bool) -> list[int]:
    """The answer of reasoning over every variant of every item in one pass (the former way)."""
    types = {c.name: pruning.arrow_type(c.type) for c in SCHEMA}
    names = pruning.nan_columns(expr, SCHEMA) if not all_match else list("xyz")
    variants = [frozenset(c for bit, c in enumerate(names) if mask >> bit & 1) for mask in range(1 << len(names))]
    target = ~expr | expr.is_null() if all_match else expr
    kept = {int(f.path) for f in pruning._kept(pruning._fragments(items, types, variants, frozenset()), target,
                                               SCHEMA, types)}
    return [i for i in range(len(items)) if (i not in kept) == all_match]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("expr", EXPRESSIONS, ids=str)
def test_staged_variants_answer_as_every_variant_at_once(expr, seed):
    """The same items kept, and the same proven, as reasoning over all variants together."""
    items = _items(seed)
    assert pruning.select_may_match(expr, items, SCHEMA) == _every_variant_at_once(expr, items, False)
    assert pruning.select_all_match(expr, items, SCHEMA) == _every_variant_at_once(expr, items, True)


def test_items_the_first_variant_keeps_get_no_other(monkeypatch):
    """Under `x != 1 | y != 2 | z != 3` every item is kept with no column NaN: one guarantee per
    item is built, not eight."""
    built = []
    real = pruning._fragments

    def counting(*args, **kwargs):
        out = real(*args, **kwargs)
        built.append(len(out))
        return out
    monkeypatch.setattr(pruning, "_fragments", counting)
    items = [({n: ColumnStats(float(i), float(i + 1), 0) for n in "xyz"}, 10) for i in range(100)]
    assert pruning.select_may_match(EXPRESSIONS[0], items, SCHEMA) == list(range(100))
    assert sum(built) == 100


def test_proving_a_huge_filter_is_left_to_the_rows(monkeypatch):
    """A 1,000-term `or` of equalities (what `isin` says in one call) cost pyarrow's simplifier
    0.14 s a row group to prove every row passes: 24 minutes of planning for 10,000 row groups.
    Past `_PROOF_BUDGET` no proof is attempted (the rows are filtered instead); a small filter
    over the same items is still proven."""
    import functools
    import operator

    reasoned = []
    real = pruning._kept
    monkeypatch.setattr(pruning, "_kept", lambda fragments, *a: reasoned.append(len(fragments)) or real(fragments, *a))
    items = [({"i": ColumnStats(5, 5, 0)}, 10) for _ in range(200)]
    schema = [Column("i", "int64")]
    huge = functools.reduce(operator.or_, [pc.field("i") == v for v in range(1000)])
    assert pruning.select_all_match(huge, items, schema) == [] and reasoned == []
    assert pruning.select_all_match(pc.field("i").isin(list(range(1000))), items, schema) == list(range(200))
    assert pruning.select_may_match(huge, items, schema) == list(range(200))
