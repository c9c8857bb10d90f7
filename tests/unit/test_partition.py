"""partition.py is pure: state its invariants over many shapes (shuffle.py: test_shuffle.py)."""

import pytest

from sparkfeed import partition


def positions(spans):
    return [p for lo, hi in spans for p in range(lo, hi)]


@pytest.mark.parametrize("n", [0, 1, 7, 100, 1001])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
@pytest.mark.parametrize("batch", [1, 2, 32])
@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_then_workers_cover_each_position_once(n, world, batch, drop_last):
    ranks = partition.split_ranks([(0, n)], world, batch, drop_last)
    seen = []
    for spans in ranks:
        for lane in partition.split_workers(spans, 3, batch):
            seen += positions(lane)
    assert len(seen) == len(set(seen))
    if drop_last:
        counts = {partition.total(r) for r in ranks}
        assert len(counts) == 1, "every rank gets the same number of samples"
        per_rank = counts.pop()
        assert per_rank % batch == 0
        assert n - len(seen) < world * batch, "drop only what equal full batches need"
    else:
        assert sorted(seen) == list(range(n))


def test_worked_example_of_the_docstring():
    assert partition.split_ranks([(0, 7)], 1, 2, False) == [[(0, 7)]]
    assert partition.split_ranks([(0, 7)], 1, 2, True) == [[(0, 6)]]
    assert partition.split_ranks([(0, 7)], 2, 2, True) == [[(0, 2)], [(2, 4)]]


def test_workers_get_whole_batches():
    lanes = partition.split_workers([(0, 10), (20, 31)], 2, 4)
    assert [partition.total(l) for l in lanes] == [12, 9]
    assert positions(lanes[0]) + positions(lanes[1]) == list(range(10)) + list(range(20, 31))


def test_take_skip_normalise():
    spans = [(0, 3), (10, 12)]
    assert partition.take(spans, 2, 2) == [(2, 3), (10, 11)]
    assert partition.skip(spans, 4) == [(11, 12)]
    assert partition.normalise([[5, 6], [0, 2], [2, 4], [9, 9]]) == [(0, 4), (5, 6)]


