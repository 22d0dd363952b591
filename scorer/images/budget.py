"""A time budget per image: decoding and normalizing one input may take at most so long.

Limits on pixels and bytes bound memory, not work: a file can be small and still cost
minutes (e.g. a JPEG of many cheap scans). An interval timer interrupts the work on one image
when its budget runs out, and the image becomes an error row instead of holding up the job
(on Lambda, outlasting the function's timeout fails the whole batch, retry after retry).

The timer is SIGALRM, which Python delivers to the main thread only: elsewhere the budget is
not enforced. Python runs the handler between bytecodes, so a single long call into a C
library ends before it is seen; Pillow decodes in chunks, each a separate call.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from scorer.images.errors import ImageError

SECONDS_PER_IMAGE = 10.0  # default: ordinary photos and scans take well under a second
_settings = {"seconds": SECONDS_PER_IMAGE}
_timed: dict = {"token": None}  # the budget being timed now


class TooSlow(ImageError):
    """One image used up its time budget."""

    def __init__(self, seconds: float):
        super().__init__(f"took too long: more than {seconds:g} s to decode and normalize "
                         "(the time budget per image, --time-per-image)")


def set_seconds_per_image(seconds: float) -> None:
    """The budget of every image this process reads from now on (and workers it forks)."""
    if not seconds > 0:
        raise ValueError(f"the time per image must be positive, not {seconds}")
    _settings["seconds"] = float(seconds)


def seconds_per_image() -> float:
    return _settings["seconds"]


@contextlib.contextmanager
def time_budget() -> Iterator[None]:
    """Raise TooSlow if the block takes longer than the time per image. Budgets do not nest
    (a timer already running is the outer one, which counts), and outside the main thread
    none is set."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getitimer(signal.ITIMER_REAL)[0] > 0:
        yield
        return
    seconds, token = _settings["seconds"], object()
    expired = []

    def expire(signum, frame):
        if _timed["token"] is token and not expired:  # one-shot: never raised twice
            expired.append(True)
            raise TooSlow(seconds)

    previous = signal.signal(signal.SIGALRM, expire)
    _timed["token"] = token
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _timed["token"] = None
        signal.signal(signal.SIGALRM, previous)
    if expired:  # raised inside code that swallowed it: the image still ran out of time
        raise TooSlow(seconds)
