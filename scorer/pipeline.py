"""Inputs -> rows: decode and normalise in worker processes, classify in batches, keep input order.

One pipeline serves the CLI and the Lambda handler. It streams: at most WINDOWS_IN_FLIGHT windows
of inputs (`window = batch_size * workers`) are in memory at once, however many images there are.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import islice
from typing import NamedTuple

import numpy as np

from scorer.bundle import Bundle, Classifier
from scorer.images import BLANK_REASON, Geometry, ImageError, normalize, normalize_many
from scorer.sources import Input, load

WINDOWS_IN_FLIGHT = 3  # windows of batch_size x workers inputs: the memory bound of a run
# A row's status (docs/output.md): a prediction; a prediction below --min-confidence, for a
# person to check; an image with no ink (a result: empty boxes are normal on forms); an input
# that could not be read (the error column says why).
STATUS_OK = "ok"
STATUS_REVIEW = "review"
STATUS_BLANK = "blank"
STATUS_ERROR = "error"


class Row(NamedTuple):
    """One scored input. `image` is the model's input (uint8 (h, w)), None for errors."""

    source: str
    prediction: int | None
    confidence: float | None
    status: str
    error: str
    label: int | None
    probabilities: np.ndarray | None = None
    image: np.ndarray | None = None


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def prepare(data: bytes, geometry: Geometry) -> tuple[np.ndarray | None, str]:
    """Bytes -> (model input, "") or (None, one-line reason). Never raises for bad images."""
    try:
        return normalize(data, geometry), ""
    except ImageError as err:
        return None, str(err)
    except Exception as err:  # noqa: BLE001 (a hostile or odd file must not end the job)
        return None, f"cannot decode image: {type(err).__name__}: {' '.join(str(err).split())}"


class Classified(NamedTuple):
    """What a chunk of inputs became, in compact arrays: cheap to send back from a worker
    (one pickle of two arrays instead of two small arrays per image).

    ``reasons``: one per input, "" where it was classified; ``images``: uint8 (g, h, w) model
    inputs and ``probabilities``: float32 (g, n_classes), for the g classified inputs in order.
    """

    reasons: list[str]
    images: np.ndarray
    probabilities: np.ndarray

    @staticmethod
    def join(parts: list[Classified]) -> Classified:
        if len(parts) == 1:
            return parts[0]
        return Classified([r for part in parts for r in part.reasons],
                          np.concatenate([part.images for part in parts]),
                          np.concatenate([part.probabilities for part in parts]))


def classify_chunk(items: list[Input], geometry: Geometry, classifier: Classifier) -> Classified:
    """Read deferred local files, normalise and classify a chunk of inputs."""
    loaded = [load(item) for item in items]
    reasons = ["" if item.error is None else item.error or "cannot read" for item in loaded]
    readable = [i for i, item in enumerate(loaded) if item.error is None]
    blobs = [loaded[i].data for i in readable]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. Pillow's "Corrupt EXIF data": the row says enough
        try:  # small images of one size are normalised together: several times faster
            normalised = normalize_many(blobs, geometry)
        except Exception:  # noqa: BLE001 (find the culprit one by one; it becomes its row)
            normalised = [prepare(blob, geometry) for blob in blobs]
    good = []
    for i, (image, reason) in zip(readable, normalised, strict=True):
        if image is None:
            reasons[i] = reason
        else:
            good.append(image)
    images = np.stack(good) if good else np.zeros((0, geometry.height, geometry.width), np.uint8)
    return Classified(reasons, images, classifier.predict(images))


_worker: dict = {}  # per worker process: its geometry and its own TFLite interpreter


def _init_worker(model_content: bytes, geometry: Geometry) -> None:
    _worker["geometry"] = geometry
    _worker["classifier"] = Classifier(model_content, num_threads=1)


def _classify_in_worker(items: list[Input]) -> Classified:
    return classify_chunk(items, _worker["geometry"], _worker["classifier"])


class ScoringPool:
    """Reads, normalises and classifies windows of inputs in chunks: in a process pool when there
    is more than one worker and more than one window of work (a single image never pays for
    starting processes). Each worker runs its own interpreter, so this process only merges rows
    and writes them."""

    CHUNK = 64  # most inputs per task (and model invocation) in a worker: amortises the
    # inter-process overhead while keeping every core busy

    def __init__(self, bundle: Bundle, workers: int, batch_size: int):
        self.geometry = bundle.geometry
        self.model_content = bundle.model_bytes()
        self.classifier: Classifier | None = None  # this process's, only when it does the work
        self.workers = max(1, workers)
        self.chunk = max(1, min(self.CHUNK, batch_size))
        self.executor: ProcessPoolExecutor | None = None

    def submit(self, window: list[Input], use_pool: bool) -> list:
        """Start preparing; `collect` the returned handle for the results in order."""
        payload = [item for item in window if item.error is None]
        if use_pool and self.workers > 1 and self._start_pool():
            size = max(1, min(self.chunk, -(-len(payload) // self.workers)))
            return [self.executor.submit(_classify_in_worker, payload[i : i + size])
                    for i in range(0, len(payload), size)]
        if self.classifier is None:
            self.classifier = Classifier(self.model_content, num_threads=1)
        return [classify_chunk(payload, self.geometry, self.classifier)]

    @staticmethod
    def collect(handle: list) -> Classified:
        # A worker killed (e.g. out of memory) raises BrokenProcessPool here instead of hanging.
        return Classified.join([part.result() if isinstance(part, Future) else part
                                for part in handle])

    def _start_pool(self) -> bool:
        if self.executor is None:
            try:  # fork: workers start in milliseconds and inherit the imported modules
                methods = multiprocessing.get_all_start_methods()
                context = multiprocessing.get_context("fork" if "fork" in methods else None)
                self.executor = ProcessPoolExecutor(self.workers, mp_context=context,
                                                initializer=_init_worker,
                                                initargs=(self.model_content, self.geometry))
            except OSError:  # no /dev/shm (AWS Lambda): work in this process
                self.workers = 1
                return False
        return True

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None


def score(inputs: Iterable[Input], bundle: Bundle, *, workers: int | None = None,
          batch_size: int = 256, keep_probabilities: bool = False,
          min_confidence: float | None = None) -> Iterator[Row]:
    """Yield one Row per input, in input order. Predictions whose confidence is below
    `min_confidence` get status "review" (they keep their prediction)."""
    workers = workers or default_workers()
    scoring = ScoringPool(bundle, workers, batch_size)
    window_size = batch_size * scoring.workers
    stream = iter(inputs)
    in_flight: deque[tuple[list[Input], list]] = deque()
    try:
        window = list(islice(stream, window_size))
        in_flight.append((window, scoring.submit(window, use_pool=len(window) == window_size)))
        while in_flight:
            # Keep the workers a few windows ahead, so they never wait for this process.
            while len(in_flight) < WINDOWS_IN_FLIGHT and (window := list(islice(stream,
                                                                                window_size))):
                in_flight.append((window, scoring.submit(window, use_pool=True)))
            window, pending = in_flight.popleft()
            yield from rows(window, scoring.collect(pending), keep_probabilities,
                            min_confidence)
    finally:
        scoring.close()


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
