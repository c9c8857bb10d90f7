"""Forked worker processes and the native objects they inherit.

A forked child has a copy of every parent object but none of the parent's threads. An object
whose destructor joins or signals its own threads must therefore never be destroyed in the
child. DALI's pipelines are such objects: a loader dropped in the parent leaves its decoder's
pipeline in a reference cycle until the parent's garbage collector runs; if a forked worker's
collector finds it first, `~Pipeline` waits on threads that do not exist in the child, and the
worker hangs or dies ("DataLoader worker ... killed by signal: Segmentation fault", seen in CI).

The cure is the one Python's `gc.freeze` documents for fork servers: what a child inherited is
moved out of the collector's reach, so the child never collects it (it ends with `os._exit`,
which destroys nothing, and the pages stay shared with the parent as a bonus).
"""

from __future__ import annotations

import _signal
import _thread
import contextlib
import functools
import gc
import multiprocessing.context
import multiprocessing.queues
import os
import sys
import threading

_LOCK = threading.Lock()
_REGISTERED: list[bool] = []  # one entry once the at-fork hook is in place


def never_collect_inherited() -> None:
    """From now on, every forked child of this process freezes what it inherited, first thing.

    Called when DALI is first imported (`imagespec._import_dali`); it covers forks sparkfeed does
    not start, such as a plain `torch.utils.data.DataLoader` over a `sparkfeed.Dataset`."""
    with _LOCK:
        if not _REGISTERED and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=gc.freeze)
            _REGISTERED.append(True)


def free_at_fork(lock) -> None:
    """Fork only while no thread holds `lock` (a module's short lock, taken by lane or prefetch
    threads): it is taken before each fork and let go after it in the parent, and made afresh in
    the child. A child forked while another thread held it (a worker process started while a
    lane thread of another loader was in it) got it held by a thread it does not have, and waited
    for it for ever the first time it needed it. As `concurrent.futures.thread` guards its own.
    The lock must never be held around a fork (nothing that forks runs under it)."""
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(before=lock.acquire, after_in_parent=lock.release,
                            after_in_child=lock._at_fork_reinit)


@contextlib.contextmanager
def frozen_while_forking():
    """Around starting worker processes: the parent's objects are frozen while the workers fork,
    so that no collection in a child, even one that runs before the child's own at-fork hook,
    can reach them. The parent is unfrozen afterwards unless something froze objects before.

    Then that owner's freeze stands, and undoing it is theirs; sparkfeed cannot unfreeze only its
    own part, so it collects instead: the parent's garbage (a dropped loader's DALI pipeline) is
    destroyed here, where its threads exist, before a child could find it. A GPU machine's Python
    was seen starting with 375 objects frozen, and a child then died in `~Pipeline`."""
    ours = gc.get_freeze_count() == 0
    if ours:
        gc.freeze()
    else:
        gc.collect()
    try:
        yield
    finally:
        if ours:
            gc.unfreeze()


class Interrupts(list):
    """Ctrl-Cs kept back for later: KeyboardInterrupts that Python would have dropped, and SIGINTs
    held while a handler was set aside (as the calls to make: that handler with its arguments)."""

    def deliver(self) -> None:
        """Deliver the first one (nothing if none): raise it, or run its handler (Python's raises
        KeyboardInterrupt; a handler of the user's does what it does)."""
        if not self:
            return
        if isinstance(self[0], BaseException):
            raise self[0]
        self[0]()


def _holding_handler(kept: Interrupts):
    """The handler to set aside SIGINT's with while it is held, or None where nothing is to be
    held: off the main thread (Python runs handlers there alone), or with no Python handler (the
    signal ignored or left at its default). `_signal`, not `signal`: the latter's enum wrapping
    costs ~3 µs a call, and `put` holds it once per batch."""
    previous = _signal.getsignal(_signal.SIGINT)
    if not callable(previous) or threading.current_thread() is not threading.main_thread():
        return None
    pid = os.getpid()

    def held(signum, frame):
        if os.getpid() != pid:  # a child forked meanwhile inherited it: as the handler before
            return previous(signum, frame)
        kept.append(functools.partial(previous, signum, frame))
    held.previous = previous
    return held


@contextlib.contextmanager
def _sigint_held(kept: Interrupts):
    """While the block runs on the main thread, a SIGINT is kept in `kept` (its handler's call)
    instead of handled; where Python has no handler for it (ignored, default), nothing changes."""
    held = _holding_handler(kept)
    if held is None:
        yield kept
        return
    _signal.signal(_signal.SIGINT, held)
    try:
        yield kept
    finally:
        _restore(held)


def _restore(held) -> None:
    """Put back the handler `held` set aside (unless something replaced `held` meanwhile)."""
    if _signal.getsignal(_signal.SIGINT) is held:
        _signal.signal(_signal.SIGINT, held.previous)


@contextlib.contextmanager
def interrupts_kept(hold: bool = False):
    """Around starting worker processes on the main thread: a Ctrl-C that arrives while a worker
    forks is kept in the `Interrupts` yielded, for the caller to deliver once the workers are
    shut down. With `hold`, any Ctrl-C during the block is kept (not raised inside it), so that
    what the block started is never left half made.

    The parent runs its at-fork hooks right after each fork (logging registers one), and CPython
    reports an exception raised in a hook as "ignored" (`sys.unraisablehook`): a KeyboardInterrupt
    delivered during the fork, handled at the hook's first line, was lost, and the training loop
    went on (a loop that breaks and restarts iterations of process workers ignored Ctrl-C in 1 of
    the 3 runs it was caught; torch's own DataLoader loses it the same way)."""
    kept = Interrupts()
    if threading.current_thread() is not threading.main_thread():  # only it gets KeyboardInterrupt
        yield kept
        return
    previous = sys.unraisablehook

    def hook(unraisable):
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            kept.append(unraisable.exc_value)
        else:
            previous(unraisable)
    sys.unraisablehook = hook
    try:
        with _sigint_held(kept) if hold else contextlib.nullcontext():
            yield kept
    finally:
        if sys.unraisablehook is hook:
            sys.unraisablehook = previous


def close_redelivering_interrupts(close) -> None:
    """Run `close()` (an iteration's shutdown: lanes, worker processes) so that a Ctrl-C landing
    in it is not lost. After a `break`, Python runs that shutdown while it finalises the
    abandoned iterator, and drops what is raised there, as it drops what a finaliser under it
    raises (torch's worker iterator's `__del__`): a Ctrl-C there was lost and training went on
    (2 of 6 runs of a break-and-restart stress over process workers; torch's own DataLoader
    loses it the same way). Now the shutdown is finished, then the KeyboardInterrupt raised;
    where Python drops it (a finaliser), `_redelivered` delivers it again to the main thread."""
    with interrupts_kept() as lost:
        try:
            close()
        except KeyboardInterrupt as exc:
            lost.append(exc)
            close()  # the rest of it: each close is idempotent
    if lost:
        _redeliver_dropped_interrupts()
        lost.deliver()


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_REDELIVER_S = 0.05  # how long after Python dropped it a Ctrl-C is delivered again


def _redeliver_dropped_interrupts() -> None:
    """Chain (once) a `sys.unraisablehook` that, for a KeyboardInterrupt Python drops while
    finalising one of sparkfeed's iterators, delivers the Ctrl-C again to the main thread
    (`_thread.interrupt_main` on a timer thread: its SIGINT handler runs once the finaliser has returned, so the
    training loop gets the KeyboardInterrupt, `_REDELIVER_S` later); anything else goes to the
    hook before it."""
    previous = sys.unraisablehook
    if getattr(previous, "sparkfeed_redelivers", False):
        return

    def hook(unraisable):
        code = getattr(unraisable.object, "gi_code", None)
        ours = code is not None and os.path.abspath(code.co_filename).startswith(_PACKAGE)
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and ours:
            # from another thread, a moment later: raised on this one, inside the hook, it
            # would be dropped again; the main thread is back in the training loop by then
            threading.Timer(_REDELIVER_S, _thread.interrupt_main).start()
        else:
            previous(unraisable)
    hook.sparkfeed_redelivers = True
    sys.unraisablehook = hook


def _interrupts_deferred(call, *args):
    """`call(*args)` with a Ctrl-C that arrives meanwhile handled once it has returned (inline,
    not `_sigint_held`: this runs once per batch)."""
    kept = Interrupts()
    held = _holding_handler(kept)
    if held is None:
        return call(*args)
    _signal.signal(_signal.SIGINT, held)
    try:
        return call(*args)
    finally:
        _restore(held)
        kept.deliver()  # (raised while the call raised, its error is the KeyboardInterrupt's context)


class _WorkerQueue(multiprocessing.queues.Queue):
    """torch's queues to and from worker processes, whose `put` and `close` a Ctrl-C cannot cut
    in half. Both take the queue's lock in a `with` block: a KeyboardInterrupt raised right after
    the lock was taken, before the block was entered, left it held, and torch's shutdown then
    waited forever for it in its own `put` (1 in ~25 runs of Ctrl-C at an epoch start with kept
    workers). torch's queues are unbounded, so a `put` waits for nothing but that lock."""

    def put(self, obj, block=True, timeout=None):
        _interrupts_deferred(super().put, obj, block, timeout)

    def close(self):
        _interrupts_deferred(super().close)


_SAFE_CONTEXTS: dict[type, type] = {}


def interrupt_safe(context):
    """`context` (a multiprocessing context) whose `Queue()` makes `_WorkerQueue`s, for torch's
    DataLoader to start its workers with; anything else is handed back for torch to judge."""
    if not isinstance(context, multiprocessing.context.BaseContext):
        return context
    base = type(context)
    with _LOCK:
        if base not in _SAFE_CONTEXTS:
            def worker_queue(self, maxsize=0):
                return _WorkerQueue(maxsize, ctx=self.get_context())
            _SAFE_CONTEXTS[base] = type(f"InterruptSafe{base.__name__}", (base,), {"Queue": worker_queue})
    return _SAFE_CONTEXTS[base]()
