"""Thread lanes (`lanes.LaneReader`): every lane starts at once (or in turn), items in order,
errors and early closes handled by the one protocol of `threads.py`."""

import threading

import pytest

from sparkfeed.errors import WorkerError
from sparkfeed.lanes import LaneReader, round_robin


def _lane(k: int, n: int, started: list[threading.Event], wait_for: int | None = None):
    """Lane k's items (k, 0..n-1); it notes that it started, and its first item waits until lane
    `wait_for` has started too (False in the item when that never happened)."""
    started[k].set()
    met = True if wait_for is None else started[wait_for].wait(10)
    for i in range(n):
        yield (k, i, met)


def test_lanes_on_one_thread_start_at_once():
    """Lane 0's first item waits for lane 1 to start: on one reading thread that only happens
    if lane 1 is started beside lane 0, not after lane 0's first item (before: a 10 s wait, and
    False in the item)."""
    started = [threading.Event() for _ in range(3)]
    reader = LaneReader([lambda: _lane(0, 3, started, wait_for=1), lambda: _lane(1, 2, started),
                         lambda: _lane(2, 0, started)], depth=1, threads=1)
    items = list(round_robin([reader.lane(k) for k in range(3)], on_close=reader.close))
    assert items == [(0, 0, True), (1, 0, True), (0, 1, True), (1, 1, True), (0, 2, True)]


def test_lanes_on_one_thread_start_in_turn_once_the_first_lane_has_an_item():
    """`in_turn=True` (data in small files, read under the GIL): on one reading thread lane 0
    reads its first item alone, and lanes 1 and 2 start once it has it; lanes started together
    delayed the consumer's first batch until every lane had read its first item (a shuffle block
    each). Lane 0's first item waits up to 1 s for lane 1 to start; at once, lane 1 started
    meanwhile."""
    started = [threading.Event() for _ in range(3)]

    def lane0():
        met = started[1].wait(1)
        yield (0, 0, met)
        yield from ((0, i, started[1].is_set() and started[2].is_set()) for i in (1, 2))

    reader = LaneReader([lane0, lambda: _lane(1, 2, started), lambda: _lane(2, 0, started)],
                        depth=1, threads=1, in_turn=True)
    items = list(round_robin([reader.lane(k) for k in range(3)], on_close=reader.close))
    assert items == [(0, 0, False), (1, 0, True), (0, 1, True), (1, 1, True), (0, 2, True)]


def _failing_first(started: threading.Event):
    started.set()
    raise ValueError("lane 1 cannot open part-00001.parquet")
    yield  # pragma: no cover


def test_a_lane_failing_on_its_first_item_raises_in_the_consumer():
    started = threading.Event()
    reader = LaneReader([lambda: iter(range(5)), lambda: _failing_first(started)], depth=1, threads=1)
    with pytest.raises(ValueError, match="part-00001"):
        list(round_robin([reader.lane(k) for k in range(2)], on_close=reader.close))
    assert started.is_set()
    with pytest.raises(WorkerError, match="after the lanes were closed"):
        next(reader.lane(0))


def test_closing_early_closes_every_lane_including_started_ones():
    closed = []

    def lane(k: int):
        try:
            yield from range(100)
        finally:
            closed.append(k)

    reader = LaneReader([lambda k=k: lane(k) for k in range(3)], depth=1, threads=1)
    it = round_robin([reader.lane(k) for k in range(3)], on_close=reader.close)
    assert [next(it) for _ in range(4)] == [0, 0, 0, 1]
    it.close()
    assert sorted(closed) == [0, 1, 2]


def test_a_starter_reads_a_queue_s_worth_then_the_serving_thread_takes_over():
    """The starter of lane 1 reads `depth` items, no more (it never becomes a second reading
    thread); the rest are read by the thread that serves both lanes."""

    def names(n: int):
        for _ in range(n):
            yield threading.current_thread().name

    reader = LaneReader([lambda: names(4), lambda: names(5)], depth=2, threads=1, name="t")
    items = list(round_robin([reader.lane(k) for k in range(2)], on_close=reader.close))
    lane1 = items[1::2] + items[8:]
    assert items[0::2][:4] == ["t-0"] * 4
    assert lane1 == ["t-0-start-1"] * 2 + ["t-0"] * 3, items


def test_closing_from_one_of_the_closed_threads_joins_the_others_and_returns():
    """A LaneReader whose last reference dies on one of its own threads is closed there (its
    `__del__`): joining must skip that thread (it printed `RuntimeError: cannot join current
    thread` from the finalizer, and left the other threads unjoined)."""
    from sparkfeed.threads import join

    release = threading.Event()
    other = threading.Thread(target=release.wait, args=(5,))
    other.start()
    outcome = []

    def close_from_inside():
        release.set()
        try:
            join([threading.current_thread(), other], [])
            outcome.append(other.is_alive())
        except RuntimeError as exc:
            outcome.append(str(exc))

    closer = threading.Thread(target=close_from_inside)
    closer.start()
    closer.join(10)
    assert outcome == [False]
