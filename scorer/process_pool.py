"""The fragile part of scoring in a process pool: what `ProcessPoolExecutor` does not expose.

The executor has no public way to list its worker processes, to tell that one has died before
a task's result says so, or to stop a pool whose manager thread waits on a dead worker's pipe
without blocking for ever. The functions here reach into CPython's private attributes
(`_processes`, `_result_queue`, `_executor_manager_thread`; the same from 3.9 to 3.14) so that
no other module does; each does nothing if an attribute is missing.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.process import BaseProcess

# Whether a task given to the pool may be cancelled while the pool runs. Before 3.12, when a
# worker dies the pool's manager thread fails every waiting task with set_exception(), which
# raises InvalidStateError for a task cancelled meanwhile: the thread dies with a traceback,
# and the process can hang at exit on the pool's queues (CPython gh-107219, fixed in 3.12).
CANCEL_IS_SAFE = sys.version_info >= (3, 12)


def start_pool(processes: int, initializer: Callable, initargs: tuple
               ) -> ProcessPoolExecutor | None:
    """A pool of `processes` workers, forked where the system can (they start in milliseconds
    and inherit the imported modules); None where processes cannot be pooled (AWS Lambda has
    no /dev/shm). Each worker runs `initializer(*initargs, lock)`, the lock shared by all the
    workers of this pool."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    try:
        return ProcessPoolExecutor(processes, mp_context=context, initializer=initializer,
                                   initargs=(*initargs, context.Lock()))
    except OSError:
        return None


def workers_of(executor: ProcessPoolExecutor | None) -> list[BaseProcess]:
    return list((getattr(executor, "_processes", None) or {}).values())


def a_worker_died(executor: ProcessPoolExecutor | None) -> bool:
    """True as soon as a worker has ended: the pool is broken, though its tasks may not say so
    yet (a worker killed while writing its result leaves the pool's reader waiting for ever)."""
    return any(process.exitcode is not None for process in workers_of(executor))


def kill_pool(executor: ProcessPoolExecutor) -> Callable[[float], None]:
    """Stop a pool now, without waiting for it: kill its workers and close this process's end
    of the result pipe, so that the pool's manager thread sees the end and fails every
    unfinished task. Returns `reap(seconds)`, which waits up to `seconds` for the manager
    thread and the workers to end, so that no zombie is left behind."""
    processes = workers_of(executor)
    manager = getattr(executor, "_executor_manager_thread", None)
    for process in processes:
        with contextlib.suppress(OSError):
            process.kill()
    result_queue = getattr(executor, "_result_queue", None)
    if result_queue is not None:
        with contextlib.suppress(OSError):
            result_queue._writer.close()
    # Not cancel_futures: the manager thread fails every unfinished task itself, and cancelling
    # as well races with it (CPython 3.11 then raises InvalidStateError there).
    executor.shutdown(wait=False)

    def reap(seconds: float) -> None:
        # The manager thread joins the workers too: the one of two joins that loses the race
        # to waitpid() returns before the exit status is recorded, so wait for that thread
        # first, then for any worker it did not reach.
        deadline = time.monotonic() + seconds
        if manager is not None:
            manager.join(seconds)
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))

    return reap
