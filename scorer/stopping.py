"""Stop signals (SIGTERM, Ctrl-C) raised as exceptions, but never inside a call into a pool.

Python runs a signal handler in the main thread between any two bytecodes. An exception it
raises can land after a lock was taken and before the code that releases it was entered (inside
`with lock:`, or in concurrent.futures' `wait()`, which takes the locks of several futures one
by one). The lock is then never released: the pool's own thread waits for it for ever to hand
over a result, and so does the interpreter's exit, which joins that thread.

So the CLI installs `install_stop_handlers()`, and every call into a process or thread pool runs
in `signals_deferred()` (or through `result_of`): a stop signal that arrives there is raised as
the call returns, which keeps stopping prompt (the waits inside are short polls).
"""

from __future__ import annotations

import os
import signal
from concurrent.futures import Future, wait
from contextlib import ContextDecorator
from typing import TypeVar

T = TypeVar("T")

POLL_SECONDS = 0.2  # how long a wait for a future goes without letting a stop signal through


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C, so temporary files go and workers stop. Not an
    Exception, like KeyboardInterrupt: code that turns a bad image's exception into an error row
    must not catch it."""


class _Deferral(ContextDecorator):
    """While entered (in the main thread), a stop signal is noted instead of raised; leaving
    the outermost section raises it. Reentrant and shared: there is one main thread."""

    depth = 0
    pending: type[BaseException] | None = None

    def __enter__(self) -> None:
        _Deferral.depth += 1

    def __exit__(self, *_exc) -> bool:
        _Deferral.depth -= 1
        if _Deferral.depth == 0 and _Deferral.pending is not None:
            stop, _Deferral.pending = _Deferral.pending, None
            raise stop
        return False


def signals_deferred() -> _Deferral:
    """A section (or, as a decorator, a function) that a stop signal does not interrupt."""
    return _Deferral()


def _forget_deferral() -> None:
    # A worker forked from inside a deferred section must not inherit it.
    _Deferral.depth, _Deferral.pending = 0, None


os.register_at_fork(after_in_child=_forget_deferral)


def raising(stop: type[BaseException]):
    """A signal handler that raises `stop`, or notes it while a section is deferred."""
    def handle(_signum, _frame) -> None:
        if _Deferral.depth:
            _Deferral.pending = _Deferral.pending or stop
        else:
            raise stop
    return handle


def install_stop_handlers() -> None:
    """SIGTERM raises Terminated and SIGINT KeyboardInterrupt, outside deferred sections."""
    signal.signal(signal.SIGTERM, raising(Terminated))
    signal.signal(signal.SIGINT, raising(KeyboardInterrupt))


@signals_deferred()
def finished(future: Future) -> bool:
    """`future.done()` (it takes the future's lock)."""
    return future.done()


def result_of(future: Future[T]) -> T:
    """`future.result()`, waited for in short deferred polls so a stop signal gets through."""
    while True:
        with signals_deferred():
            if wait((future,), POLL_SECONDS).done:
                return future.result()
