"""Inputs -> rows: classify in worker processes (``scorer.workers``), keep input order.

One pipeline serves the CLI and the Lambda handler. It streams: at most WINDOWS_IN_FLIGHT windows
of inputs are in memory at once, however many images there are. A window ends at
`batch_size * workers` inputs or at WINDOW_BYTES, whichever comes first, where an input costs
its bytes plus what decoding it will allocate (from its header), so a few small files that
decode to huge images, or huge zip members, cannot pile up. Windows are cut into chunks, one for
a process at a time, by what their inputs cost (``scorer.costs``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np

from scorer.bundle import Bundle
from scorer.costs import input_cost, size_on_disk
from scorer.images import BLANK_REASON
from scorer.numbers import NumberMode, Reading
from scorer.sources import Input
from scorer.workers import Classified, ScoringPool, default_workers, usable_workers

WINDOWS_IN_FLIGHT = 3  # windows of inputs in memory at once: with the budgets, the memory bound
FIELDS_PER_CHUNK = 16  # a field costs as much as ~50 digits: smaller chunks keep cores busy
WINDOW_BYTES = 32 * 2**20  # most input bytes + decoded bytes per window (one input may exceed it)
# A single window of fewer input bytes than this is scored in this process: starting workers
# (a fork and an interpreter each) would cost more than they save.
POOL_WORTHY_BYTES = 2 * 2**20
IN_FLIGHT_BYTES = 3 * WINDOW_BYTES  # no new window while the windows in flight cost this much
# A row's status (docs/output.md): a prediction; a prediction below --min-confidence, for a
# person to check; an image with no ink (a result: empty boxes are normal on forms); an input
# that could not be read (the error column says why).
STATUS_OK = "ok"
STATUS_REVIEW = "review"
STATUS_BLANK = "blank"
STATUS_ERROR = "error"


class Row(NamedTuple):
    """One scored input. `image` is the model's input (uint8 (h, w)), None for errors.

    In number mode `prediction` and `label` are digit strings (class names joined),
    `confidence` is the field's, and `reading` holds the digits and the field's thumbnail."""

    source: str
    prediction: int | str | None
    confidence: float | None
    status: str
    error: str
    label: int | str | None
    probabilities: np.ndarray | None = None
    image: np.ndarray | None = None
    reading: Reading | None = None


def next_window(stream: Iterator[Input], most: int, numbers: NumberMode | None = None
                ) -> tuple[list[Input], list[int], bool]:
    """The next window: (inputs, their costs, whether it ended on a limit rather than at the
    end of the stream). It ends after `most` inputs or once WINDOW_BYTES are reached."""
    window: list[Input] = []
    costs: list[int] = []
    spent = 0
    for item in stream:
        window.append(item)
        costs.append(input_cost(item, numbers))
        spent += costs[-1]
        if len(window) >= most or spent >= WINDOW_BYTES:
            return window, costs, True
    return window, costs, False


def worth_a_pool(window: list[Input], costs: list[int], numbers: NumberMode | None) -> bool:
    """Whether a job of one window is worth starting worker processes for: judged by what its
    inputs cost (local files not read yet by their size on disk), not by how many there are.
    A few hundred MNIST PNGs are scored sooner here; a few phone photos use every core, and so
    do more number fields than one chunk (a field costs as much as ~50 digits)."""
    if numbers is not None and len(window) > FIELDS_PER_CHUNK:
        return True
    spent = 0
    for item, cost in zip(window, costs, strict=True):
        spent += cost or size_on_disk(item)
        if spent >= POOL_WORTHY_BYTES:
            return True
    return False


def score(inputs: Iterable[Input], bundle: Bundle, *, workers: int | None = None,
          batch_size: int = 256, keep_probabilities: bool = False,
          min_confidence: float | None = None, numbers: NumberMode | None = None
          ) -> Iterator[Row]:
    """Yield one Row per input, in input order. Predictions whose confidence is below
    `min_confidence` get status "review" (they keep their prediction). With `numbers`, each
    input is a field read as a number (a reading outside its length is "review" too)."""
    workers = usable_workers(workers or default_workers())
    if numbers is not None:
        batch_size = min(batch_size, FIELDS_PER_CHUNK)
    scoring = ScoringPool(bundle, workers, batch_size, numbers)
    window_size = batch_size * scoring.workers
    stream = iter(inputs)
    in_flight: deque[tuple[list[Input], int, list]] = deque()  # (window, its cost, handle)

    def start(window: list[Input], costs: list[int], use_pool: bool) -> None:
        handle = scoring.submit(window, costs, use_pool)
        # Rows need names and labels only: the bytes now belong to the workers' tasks.
        in_flight.append(([without_data(item) for item in window], sum(costs), handle))

    try:
        window, costs, more = next_window(stream, window_size, numbers)
        start(window, costs, use_pool=more or worth_a_pool(window, costs, numbers))
        while in_flight:
            # Keep the workers a few windows ahead, so they never wait for this process, within
            # the byte budget of what is in flight.
            while more and len(in_flight) < WINDOWS_IN_FLIGHT and \
                    sum(cost for _, cost, _ in in_flight) < IN_FLIGHT_BYTES:
                window, costs, more = next_window(stream, window_size, numbers)
                if window:
                    start(window, costs, use_pool=True)
            window, _, pending = in_flight.popleft()
            classified = scoring.collect(pending)
            if numbers is None:
                yield from rows(window, classified, keep_probabilities, min_confidence)
            else:
                yield from field_rows(window, classified, bundle.labels, min_confidence)
    except BaseException:  # SIGTERM, Ctrl-C, a failed write: stop the workers, wait for none
        scoring.abandon()
        raise
    scoring.close()


def without_data(item: Input) -> Input:
    return item if item.data is None else Input(item.name, None, item.error, item.label)


def printable(name: str) -> str:
    """A source name that encodes as UTF-8: file names that are not valid UTF-8 reach Python as
    lone surrogates, which would crash the CSV and report writers; show their bytes as \\xNN."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape" if _only_escapes(name) else
                           "backslashreplace").decode("utf-8", "backslashreplace")


def _only_escapes(name: str) -> bool:
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in name)


def rows(window: list[Input], classified: Classified, keep_probabilities: bool,
         min_confidence: float | None = None) -> Iterator[Row]:
    """Merge read errors, decode errors, blanks and predictions back into input order."""
    probabilities = classified.probabilities
    best = probabilities.argmax(1) if len(probabilities) else np.zeros(0, np.intp)
    confidence = probabilities[np.arange(len(best)), best].tolist()  # Python floats, as before
    reasons, g = iter(classified.reasons), 0
    for item in window:
        reason = next(reasons) if item.error is None else item.error or "cannot read"
        if reason:  # read errors were not sent to the workers and have no reason there
            status = STATUS_BLANK if reason == BLANK_REASON else STATUS_ERROR
            yield Row(printable(item.name), None, None, status, reason, item.label)
            continue
        conf = confidence[g]
        status = STATUS_REVIEW if min_confidence is not None and conf < min_confidence \
            else STATUS_OK
        yield Row(printable(item.name), int(best[g]), conf, status, "", item.label,
                  probabilities[g] if keep_probabilities else None, classified.images[g])
        g += 1


def field_rows(window: list[Input], classified: Classified, labels: list[str],
               min_confidence: float | None) -> Iterator[Row]:
    """Number mode: merge errors, blanks and readings back into input order. A field with no
    digit (only printed lines and marks) is blank; a reading below `min_confidence` or outside
    the expected length is for review."""
    reasons, readings = iter(classified.reasons), iter(classified.readings)
    for item in window:
        reason = next(reasons) if item.error is None else item.error or "cannot read"
        label = item.label if isinstance(item.label, str) else None  # not a folder's digit
        if reason:
            status = STATUS_BLANK if reason == BLANK_REASON else STATUS_ERROR
            yield Row(printable(item.name), None, None, status, reason, label)
            continue
        reading = next(readings)
        if not reading.digits:  # only printed lines and marks (a dash in an empty amount)
            yield Row(printable(item.name), None, None, STATUS_BLANK, BLANK_REASON, label)
            continue
        problem = reading.problem
        low = min_confidence is not None and reading.confidence < min_confidence
        status = STATUS_REVIEW if problem or low else STATUS_OK
        text = "".join(labels[digit.value] for digit in reading.digits)
        yield Row(printable(item.name), text, reading.confidence, status, problem, label,
                  image=reading.thumb, reading=reading)
