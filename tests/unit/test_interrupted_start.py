"""A Ctrl-C that lands while a `LaneReader` or a `Prefetcher` starts its threads (Thread.start
waits for the new thread to run, so a KeyboardInterrupt lands there easily) leaves no thread
running that nobody can stop: the threads already started are stopped before the error goes
on, and the owner is closed at exit either way.

Before, a LaneReader interrupted there was never closed (its `close()` needs `_closed`, set
after the starts) nor registered for exit: a script interrupted at an epoch start with
`persistent_workers=True` (the next epoch's reading starts there) aborted at exit with rc 134
in 2 of 25 runs, its reading thread left inside pyarrow."""

import threading

import pytest

from sparkfeed import threads as protocol
from sparkfeed.lanes import LaneReader
from sparkfeed.prefetch import Prefetcher


def _endless():
    while True:
        yield b"segment"


def _interrupt_start(monkeypatch, at: int) -> list:
    """Thread.start raises KeyboardInterrupt at its `at`-th call, once that thread runs (where a
    Ctrl-C lands: in the wait for the new thread to start)."""
    real, calls = threading.Thread.start, []

    def start(self):
        calls.append(self)
        real(self)
        if len(calls) == at:
            raise KeyboardInterrupt
    monkeypatch.setattr(threading.Thread, "start", start)
    return calls


def test_a_lane_reader_interrupted_while_starting_stops_its_started_threads(monkeypatch):
    started = _interrupt_start(monkeypatch, at=2)
    with pytest.raises(KeyboardInterrupt):
        LaneReader([_endless, _endless], depth=1, threads=2, name="interrupted-lane")
    for t in started:
        t.join(protocol.JOIN_S)
        assert not t.is_alive(), f"{t.name}, started before the interrupt, still runs"


def test_a_prefetcher_interrupted_while_starting_stops_its_thread(monkeypatch):
    """The traceback is kept, as the interpreter keeps an uncaught error's (`sys.last_traceback`)
    through the exit hooks: it holds the Prefetcher, so no finaliser closes it."""
    started = _interrupt_start(monkeypatch, at=1)
    with pytest.raises(KeyboardInterrupt) as kept:
        Prefetcher(_endless(), depth=1, name="interrupted-prefetch")
    started[0].join(protocol.JOIN_S)
    assert kept.tb is not None
    assert not started[0].is_alive(), "the prefetch thread runs on, and is not closed at exit"
