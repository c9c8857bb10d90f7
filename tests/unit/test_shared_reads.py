"""read.sharedreads.SharedReads: what the readers of one iteration share (footers, offered fetches),
with real threads and futures."""

from __future__ import annotations

import pickle
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from sparkfeed.read.sharedreads import SharedReads


def test_once_learns_a_file_once_while_the_others_wait_for_it():
    shared, calls, gate = SharedReads(), [], threading.Event()

    def learn():
        calls.append(threading.current_thread().name)
        gate.wait(10)
        return ("footer", {"image": [2]})

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(shared.once, "part-0.parquet", learn) for _ in range(4)]
        gate.set()
        results = [f.result(10) for f in futures]
    assert len(calls) == 1
    assert results == [("footer", {"image": [2]})] * 4
    assert shared.get("part-0.parquet") == ("footer", {"image": [2]})
    assert shared.get("part-1.parquet") is None


def test_a_failed_first_read_is_not_shared_each_reader_meets_its_own():
    shared, calls = SharedReads(), []

    def failing():
        calls.append(1)
        raise OSError("part-0.parquet: cut short")

    for _ in range(2):
        with pytest.raises(OSError, match="cut short"):
            shared.once("part-0.parquet", failing)
    assert len(calls) == 2 and shared.get("part-0.parquet") is None
    assert shared.once("part-0.parquet", lambda: "ok") == "ok"  # a later success is kept
    assert shared.get("part-0.parquet") == "ok"


def test_an_offered_fetch_is_read_by_the_other_lane_once():
    shared, key = SharedReads(), ("part-0.parquet", 3)
    place = shared.reserve([key])[key]
    assert shared.reserve([key]) == {}  # reserved: nobody reserves it twice
    fetch = Future()
    got = []
    waiter = threading.Thread(target=lambda: got.append(shared.offered(key)))
    waiter.start()  # asks before the offer: waits for it, does not read in place
    shared.offer(key, place, fetch)
    fetch.set_result(b"row group 3")
    waiter.join(10)
    assert got == [b"row group 3"]
    assert shared.offered(key) is None  # taken: a second reader reads in place...
    assert shared.claimed(key)  # ...and nobody fetches it ahead after that
    assert shared.reserve([key]) == {}


def test_a_fetch_not_made_or_cancelled_sends_the_reader_in_place():
    shared, a, b = SharedReads(), ("p", 1), ("p", 2)
    places = shared.reserve([a, b])
    shared.offer(a, places[a], None)  # over read-ahead's budget: not submitted
    assert list(shared.reserve([a])) == [a]  # free to reserve again at the next hint
    cancelled = Future()
    shared.offer(b, places[b], cancelled)
    cancelled.cancel()  # its reader closed
    assert shared.offered(b) is None and shared.claimed(b)


def test_the_offering_reader_withdraws_what_it_read_itself():
    shared, key = SharedReads(), ("p", 7)
    fetch = Future()
    shared.offer(key, shared.reserve([key])[key], fetch)
    fetch.set_result(b"x")
    shared.withdraw(key)
    assert shared.offered(key) is None


def test_bounded_and_empty_in_another_process():
    shared = SharedReads(limit=3)
    for i in range(10):
        shared.once(f"part-{i}", lambda i=i: i)
    assert [shared.get(f"part-{i}") for i in range(10)] == [None] * 7 + [7, 8, 9]
    copy = pickle.loads(pickle.dumps(shared))
    assert isinstance(copy, SharedReads) and copy.get("part-9") is None


def test_a_small_files_bytes_are_held_until_its_last_row_group_is_read():
    shared = SharedReads()
    shared.hold("a.parquet", b"x" * 100, 3)
    assert shared.whole("a.parquet") == b"x" * 100 and shared.held() == 100
    shared.done("a.parquet", [0, 2])
    assert shared.whole("a.parquet") == b"x" * 100  # row group 1 still to read
    shared.done("a.parquet", range(1, 2))
    assert shared.whole("a.parquet") is None and shared.held() == 0


def test_row_groups_read_before_the_bytes_arrive_are_not_waited_for():
    """A lane may read a row group in place before the file's fetch is in: it counts."""
    shared = SharedReads()
    shared.done("a.parquet", [0])
    shared.hold("a.parquet", b"abc", 2)
    shared.done("a.parquet", [1])
    assert shared.held() == 0
    shared.done("b.parquet", [0, 1])
    shared.hold("b.parquet", b"abc", 2)  # every row group read already: not kept at all
    assert shared.whole("b.parquet") is None


def test_small_files_held_are_bounded_the_least_recently_used_dropped():
    shared = SharedReads(held_bytes=250)
    for name in "abc":
        shared.hold(name, name.encode() * 100, 1)
    assert shared.whole("a") is None and shared.held() == 200  # 'a' dropped past 250 bytes
    assert shared.whole("b") == b"b" * 100  # used: now the most recent
    shared.hold("d", b"d" * 100, 1)
    assert shared.whole("c") is None and shared.whole("b") is not None
    copy = pickle.loads(pickle.dumps(shared))
    assert copy.held() == 0 and copy._held_bytes == 250
