"""Inputs -> rows: decode and normalise in worker processes, classify in batches, keep input order.

One pipeline serves the CLI and the Lambda handler. It streams: at most two windows of inputs
(`window = batch_size * workers`) are in memory at once, however many images there are.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice

import numpy as np

from scorer.bundle import Bundle
from scorer.images import Geometry, ImageError, normalize, normalize_many
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
    except Exception as err:  # noqa: BLE001 (a hostile or odd file must not end the job)
        return None, f"cannot decode image: {type(err).__name__}: {' '.join(str(err).split())}"


def prepare_chunk(items: list[Input], geometry: Geometry) -> list[tuple[np.ndarray | None, str]]:
    """Read deferred local files, then normalise; one (model input, "") or (None, reason) each."""
    loaded = [item.read() for item in items]
    results: list[tuple[np.ndarray | None, str]] = [(None, item.error or "") for item in loaded]
    readable = [i for i, item in enumerate(loaded) if item.error is None]
    blobs = [loaded[i].data for i in readable]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. Pillow's "Corrupt EXIF data": the row says enough
        try:  # small images of one size are normalised together: several times faster
            normalised = normalize_many(blobs, geometry)
        except Exception:  # noqa: BLE001 (find the culprit one by one; it becomes its row)
            normalised = [prepare(blob, geometry) for blob in blobs]
    for i, result in zip(readable, normalised, strict=True):
        results[i] = result
    return results


class Decoder:
    """Decodes windows of inputs in chunks: in a process pool when there is more than one worker
    and more than one window of work (a single image never pays for starting processes)."""

    CHUNK = 64  # inputs per task: amortises inter-process overhead, keeps both cores busy

    def __init__(self, geometry: Geometry, workers: int):
        self.geometry = geometry
        self.workers = max(1, workers)
        self.pool: ProcessPoolExecutor | None = None

    def submit(self, window: list[Input], use_pool: bool) -> list:
        """Start decoding; `collect` the returned handle for the results in order."""
        payload = [item for item in window if item.error is None]
        if use_pool and self.workers > 1 and self._start_pool():
            size = max(1, min(self.CHUNK, -(-len(payload) // self.workers)))
            return [self.pool.submit(prepare_chunk, payload[i : i + size], self.geometry)
                    for i in range(0, len(payload), size)]
        return [prepare_chunk(payload, self.geometry)]

    @staticmethod
    def collect(handle: list) -> list[tuple[np.ndarray | None, str]]:
        # A worker killed (e.g. out of memory) raises BrokenProcessPool here instead of hanging.
        return [result for part in handle
                for result in (part.result() if isinstance(part, Future) else part)]

    def _start_pool(self) -> bool:
        if self.pool is None:
            try:  # fork: workers start in milliseconds and inherit the imported modules
                methods = multiprocessing.get_all_start_methods()
                context = multiprocessing.get_context("fork" if "fork" in methods else None)
                self.pool = ProcessPoolExecutor(self.workers, mp_context=context)
            except OSError:  # no /dev/shm (AWS Lambda): decode in this process
                self.workers = 1
                return False
        return True

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
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
            decoded = decoder.collect(pending)
            yield from classify(window, decoded, classifier, batch_size, keep_probabilities)
            window, pending = following, following_pending
    finally:
        decoder.close()


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
            yield Row(printable(item.name), None, None, STATUS_ERROR, reason, item.label)
            continue
        probs = probabilities[next_good]
        next_good += 1
        best = int(probs.argmax())
        yield Row(printable(item.name), best, float(probs[best]), STATUS_OK, "", item.label,
                  probs if keep_probabilities else None, image)
