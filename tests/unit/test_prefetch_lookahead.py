"""Prefetcher with a `Lookahead` stage: batch n+ahead started before batch n is finished, with
every batch finished or cancelled exactly once, in order, and every error at its own batch."""

from __future__ import annotations

import gc
import threading

import pytest

from sparkfeed.prefetch import Lookahead, Marker, Prefetcher
from sparkfeed.stats import Stats


class Recorder:
    """A two-half stage that logs what it does, so tests can check the order of the halves."""

    def __init__(self, fail_start: int | None = None, fail_finish: int | None = None, ahead: int = 1):
        self.log: list[tuple[str, int]] = []
        self.ahead = ahead
        self.fail_start, self.fail_finish = fail_start, fail_finish
        self.lock = threading.Lock()
        self.finished = threading.Condition(self.lock)

    def _add(self, what: str, i: int) -> None:
        with self.lock:
            self.log.append((what, i))
            self.finished.notify_all()

    def start(self, i: int) -> int:
        if i == self.fail_start:
            raise ValueError(f"start failed at {i}")
        self._add("start", i)
        return i

    def finish(self, i: int) -> dict:
        self._add("finish", i)
        if i == self.fail_finish:
            raise ValueError(f"finish failed at {i}")
        return {"i": i}

    def cancel(self, i: int) -> None:
        self._add("cancel", i)

    def stage(self) -> Lookahead:
        return Lookahead(self.start, self.finish, self.cancel, depth=self.ahead)

    def ended(self) -> set[int]:
        """Started batches that were finished or cancelled (each exactly once is checked)."""
        done = [i for what, i in self.log if what != "start"]
        assert len(done) == len(set(done)), self.log
        return set(done)


def numbers(n: int, fail_at: int | None = None):
    for i in range(n):
        if i == fail_at:
            raise OSError(f"source failed at {i}")
        yield i


def thread_gone(name: str) -> bool:
    for t in [t for t in threading.enumerate() if t.name == name]:
        t.join(60)  # returns as soon as it ends; the bound only stops a hang
    return not any(t.name == name for t in threading.enumerate())


@pytest.mark.parametrize("ahead", [1, 2, 3])
@pytest.mark.parametrize("depth", [0, 2])
def test_every_batch_in_order_with_the_next_ones_started_first(depth, ahead):
    rec = Recorder(ahead=ahead)
    got = [b["i"] for b in Prefetcher(numbers(6), depth=depth, stage=rec.stage())]
    assert got == list(range(6))
    if depth:  # the thread starts batch n+ahead before it finishes batch n
        first = min(ahead, 6)
        assert rec.log == [("start", i) for i in range(first)] \
            + [e for i in range(first, 6) for e in (("start", i), ("finish", i - ahead))] \
            + [("finish", i) for i in range(6 - ahead, 6)]
    else:  # inline: nothing to overlap with
        assert rec.log == [e for i in range(6) for e in (("start", i), ("finish", i))]


@pytest.mark.parametrize("ahead", [1, 3])
@pytest.mark.parametrize("where", ["source", "start", "finish"])
def test_an_error_surfaces_at_its_own_batch(where, ahead):
    """Batches 0..2 are delivered, then batch 3's error; the batches started after it are
    cancelled, and every batch started is finished or cancelled exactly once."""
    rec = Recorder(ahead=ahead, **({"start": {"fail_start": 3}, "finish": {"fail_finish": 3}}.get(where, {})))
    source = numbers(8, fail_at=3 if where == "source" else None)
    got = []
    err = {"source": OSError, "start": ValueError, "finish": ValueError}[where]
    with pytest.raises(err, match=f"{where} failed at 3"):
        for b in Prefetcher(source, depth=2, stage=rec.stage(), name="pf-ahead-err"):
            got.append(b["i"])
    assert got == [0, 1, 2]
    assert thread_gone("pf-ahead-err")
    started = {i for what, i in rec.log if what == "start"}
    assert rec.ended() == started  # nothing left started: finished or cancelled
    if where == "finish":
        assert {("cancel", i) for i in range(4, 4 + ahead)} <= set(rec.log)


def test_a_lookahead_depth_is_a_positive_integer():
    rec = Recorder()
    for bad in (0, -1, 1.5, True, None):
        with pytest.raises(ValueError, match=r"`depth` should be a positive integer, but got depth="):
            Lookahead(rec.start, rec.finish, rec.cancel, depth=bad)


def test_close_mid_epoch_cancels_the_started_batch_and_stops_the_thread():
    rec = Recorder()
    p = Prefetcher(numbers(10_000), depth=2, stage=rec.stage(), name="pf-ahead-close")
    assert [next(p)["i"] for _ in range(3)] == [0, 1, 2]
    p.close()
    assert thread_gone("pf-ahead-close")
    started = {i for what, i in rec.log if what == "start"}
    assert rec.ended() == started and any(what == "cancel" for what, _ in rec.log)


def test_garbage_collected_mid_epoch_cancels_the_started_batch():
    rec = Recorder()
    p = Prefetcher(numbers(10_000), depth=2, stage=rec.stage(), name="pf-ahead-gc")
    next(p)
    with rec.finished:  # the thread runs ahead: batches 1-3 finished, batch 4 started
        assert rec.finished.wait_for(lambda: ("start", 4) in rec.log, timeout=60)
    del p
    gc.collect()
    assert thread_gone("pf-ahead-gc")
    started = {i for what, i in rec.log if what == "start"}
    assert rec.ended() == started and any(what == "cancel" for what, _ in rec.log)


class Mark(Marker):
    __slots__ = ("n",)

    def __init__(self, n: int):
        self.n = n


@pytest.mark.parametrize("ahead", [1, 2])
@pytest.mark.parametrize("depth", [0, 2])
def test_a_marker_passes_in_its_place_untouched_and_uncounted(depth, ahead):
    """A Marker reaches the consumer where the source put it: the stage never sees it, it is not
    counted as a batch, and an error after it counts the batches from it."""
    rec = Recorder(fail_finish=4, ahead=ahead)
    stats = Stats()
    source = iter([0, 1, Mark(7), 2, 3, 4, 5])
    p = Prefetcher(source, depth=depth, stage=rec.stage(), stats=stats, name="pf-mark")
    got = []
    with pytest.raises(ValueError, match="finish failed at 4") as info:
        for item in p:
            got.append(item.n if isinstance(item, Mark) else item["i"])
    assert got == [0, 1, 7, 2, 3]
    assert all(isinstance(i, int) for _, i in rec.log)  # the stage saw no marker
    assert stats.snapshot()["prefetch_batches"] == 4
    # batches count from the marker: 2 and 3 are its part's 0..1
    note = " ".join(getattr(info.value, "__notes__", []))
    assert "batches 0..1 were delivered" in note
