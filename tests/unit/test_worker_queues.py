"""The queues sparkfeed's worker processes are started with hold a Ctrl-C until their `put`
returns (`forks.interrupt_safe`, `forks._WorkerQueue`); the whole flow, with torch's shutdown,
is in tests/e2e/test_interrupts.py."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading

import pytest

from sparkfeed import forks


def _ctrl_c_inside(done: list):
    """A call that a real SIGINT reaches halfway, where Python would run its handler."""
    def call(value):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # bytecodes: a handler not held runs here
            pass
        done.append(value)
        return value
    return call


@pytest.fixture
def sigint_handler():
    previous = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_inside_the_call_is_raised_after_it(sigint_handler):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    done: list = []
    with pytest.raises(KeyboardInterrupt):
        forks._interrupts_deferred(_ctrl_c_inside(done), 7)
    assert done == [7]  # the call ran to its end first
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_users_handler_runs_once_after_the_call_and_nothing_is_raised(sigint_handler):
    calls = []
    signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
    done: list = []
    assert forks._interrupts_deferred(_ctrl_c_inside(done), 3) == 3
    assert done == [3] and calls == [signal.SIGINT]


def test_an_ignored_sigint_stays_ignored(sigint_handler):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    done: list = []
    assert forks._interrupts_deferred(_ctrl_c_inside(done), 1) == 1
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_off_the_main_thread_the_call_is_made_as_it_is():
    got = []
    thread = threading.Thread(target=lambda: got.append(forks._interrupts_deferred(max, 2, 5)))
    thread.start()
    thread.join()
    assert got == [5]


def test_without_an_interrupt_the_handler_is_put_back_and_nothing_runs(sigint_handler):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    assert forks._interrupts_deferred(sorted, [3, 1, 2]) == [1, 2, 3]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("method", multiprocessing.get_all_start_methods())
def test_the_context_keeps_its_start_method_and_makes_worker_queues(method):
    context = forks.interrupt_safe(multiprocessing.get_context(method))
    assert context.get_start_method() == method
    assert isinstance(context, multiprocessing.context.BaseContext)
    queue = context.Queue()
    try:
        assert isinstance(queue, forks._WorkerQueue)
        queue.put("x")
        assert queue.get(timeout=10) == "x"
    finally:
        queue.close()
        queue.join_thread()


def test_a_put_to_a_worker_queue_with_a_ctrl_c_inside_its_lock_leaves_it_free(sigint_handler):
    """The race itself: the SIGINT arrives right after the queue's lock was taken."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    queue = forks.interrupt_safe(multiprocessing.get_context("fork")).Queue()
    armed = [True]

    class CtrlCOnceTaken(threading.Condition):
        def __enter__(self):
            taken = super().__enter__()
            if armed:
                armed.pop()
                _ctrl_c_inside([])(None)
            return taken
    queue._notempty = CtrlCOnceTaken(threading.Lock())
    try:
        with pytest.raises(KeyboardInterrupt):
            queue.put(1)
        assert queue._notempty.acquire(timeout=5), "the queue's lock was left held"
        queue._notempty.release()
        queue.put(2)
        assert [queue.get(timeout=10), queue.get(timeout=10)] == [1, 2]
    finally:
        queue.close()
        queue.join_thread()


def test_what_is_not_a_multiprocessing_context_is_handed_back():
    odd = object()
    assert forks.interrupt_safe(odd) is odd


def test_a_ctrl_c_held_while_the_call_fails_is_raised_with_the_failure_as_its_context(sigint_handler):
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def fails(done):
        _ctrl_c_inside(done)(1)
        raise OSError("the queue is closed")
    with pytest.raises(KeyboardInterrupt) as caught:
        forks._interrupts_deferred(fails, [])
    assert isinstance(caught.value.__context__, OSError)
