"""Inputs -> rows: decode and normalise in worker processes, classify in batches, keep input order.

One pipeline serves the CLI and the Lambda handler. It streams: at most two windows of inputs
(`window = batch_size * workers`) are in memory at once, however many images there are.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

import numpy as np

from scorer.bundle import Bundle
from scorer.images import Geometry, ImageError, normalize
from scorer.sources import Input

STATUS_OK = "ok"
STATUS_ERROR = "error"


@dataclass(frozen=True)
class Row:
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
    except (MemoryError, RecursionError) as err:  # hostile files; keep the job alive
        return None, f"cannot decode image: {type(err).__name__}"


_worker_geometry: Geometry | None = None


def _init_worker(geometry: Geometry) -> None:
    global _worker_geometry
    _worker_geometry = geometry


def _prepare_in_worker(data: bytes) -> tuple[np.ndarray | None, str]:
    assert _worker_geometry is not None
    return prepare(data, _worker_geometry)


class Decoder:
    """Decodes windows of inputs, in a process pool when there is more than one worker and more
    than one window of work (a single image never pays for starting processes)."""

    def __init__(self, geometry: Geometry, workers: int):
        self.geometry = geometry
        self.workers = max(1, workers)
        self.pool = None

    def submit(self, window: list[Input], use_pool: bool):
        payload = [item.data for item in window if item.error is None]
        if use_pool and self.workers > 1 and self._start_pool():
            chunk = max(1, len(payload) // (self.workers * 4))
            return self.pool.map_async(_prepare_in_worker, payload, chunksize=chunk)
        return [prepare(data, self.geometry) for data in payload]

    def _start_pool(self) -> bool:
        if self.pool is None:
            try:  # fork: workers start in milliseconds and inherit the imported modules
                context = multiprocessing.get_context(
                    "fork" if "fork" in multiprocessing.get_all_start_methods() else None)
                self.pool = context.Pool(self.workers, _init_worker, (self.geometry,))
            except OSError:  # no /dev/shm (AWS Lambda): decode in this process
                self.workers = 1
                return False
        return True

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


def score(inputs: Iterable[Input], bundle: Bundle, *, workers: int | None = None,
          batch_size: int = 256, keep_probabilities: bool = False) -> Iterator[Row]:
    """Yield one Row per input, in input order."""
    workers = workers or default_workers()
    decoder = Decoder(bundle.geometry, workers)
    window_size = batch_size * decoder.workers
    stream = iter(inputs)
    try:
        window = list(islice(stream, window_size))
        pending = decoder.submit(window, use_pool=len(window) == window_size)
        classifier = bundle.classifier()  # after the fork: workers never inherit its threads
        while window:
            following = list(islice(stream, window_size))  # read while the workers decode
            following_pending = decoder.submit(following, use_pool=True) if following else None
            decoded = pending.get() if hasattr(pending, "get") else pending
            yield from classify(window, decoded, classifier, batch_size, keep_probabilities)
            window, pending = following, following_pending
    finally:
        decoder.close()


def classify(window: list[Input], decoded: list[tuple[np.ndarray | None, str]], classifier,
             batch_size: int, keep_probabilities: bool) -> Iterator[Row]:
    """Merge read errors, decode errors and predictions back into input order."""
    results = iter(decoded)
    merged = [(item, (None, item.error) if item.error is not None else next(results))
              for item in window]
    good = [image for _, (image, _) in merged if image is not None]
    probabilities = (np.concatenate([classifier.predict(np.stack(good[i : i + batch_size]))
                                     for i in range(0, len(good), batch_size)])
                     if good else np.zeros((0, 0), np.float32))
    next_good = 0
    for item, (image, reason) in merged:
        if image is None:
            yield Row(item.name, None, None, STATUS_ERROR, reason, item.label)
            continue
        probs = probabilities[next_good]
        next_good += 1
        best = int(probs.argmax())
        yield Row(item.name, best, float(probs[best]), STATUS_OK, "", item.label,
                  probs if keep_probabilities else None, image)
