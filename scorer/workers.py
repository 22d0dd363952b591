"""Worker processes: read, normalise and classify chunks of inputs, within byte budgets, and
survive a worker that dies.

Each worker runs its own TFLite interpreter, so the main process (``scorer.pipeline``) only
merges rows and writes them. A chunk is bounded by CHUNK_BYTES (input bytes plus what decoding
will allocate, read from the header), and one large image is decoded at a time across all
workers, so memory stays bounded however many workers there are.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import warnings
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import NamedTuple

import numpy as np

from scorer.bundle import Bundle, Classifier
from scorer.images import (
    Geometry,
    ImageError,
    estimated_decoded_bytes,
    normalize,
    normalize_many,
)
from scorer.images.normalization import WORK_SIDE
from scorer.sources import Input, load

CHUNK_BYTES = 16 * 2**20  # most input bytes + decoded bytes per worker task and group
# An image whose pixels take more than this (a photo decodes to ~3 MB, a scan to kB) is
# normalised alone, and in a pool only one at a time across all workers: its float steps take
# several times its size, so the total stays bounded however many workers there are.
LARGE_DECODE_BYTES = 8 * 2**20
WORKER_DIED = "worker died while decoding (killed twice, e.g. out of memory)"


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


def input_cost(item: Input) -> int:
    """Bytes an input takes in flight: its data plus what decoding it will allocate. A local
    file not read yet costs its listed size here; the worker that reads it counts its pixels."""
    if item.data is None:
        return item.size
    return len(item.data) + estimated_decoded_bytes(item.data, WORK_SIDE)


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
    def of(reasons: list[str], geometry: Geometry, n_classes: int) -> Classified:
        """Inputs that were all refused, for these reasons (none classified)."""
        return Classified(reasons, np.zeros((0, geometry.height, geometry.width), np.uint8),
                          np.zeros((0, n_classes), np.float32))

    @staticmethod
    def join(parts: list[Classified]) -> Classified:
        if len(parts) == 1:
            return parts[0]
        return Classified([r for part in parts for r in part.reasons],
                          np.concatenate([part.images for part in parts]),
                          np.concatenate([part.probabilities for part in parts]))


def classify_chunk(items: list[Input], geometry: Geometry, classifier: Classifier,
                   large_decode_gate: contextlib.AbstractContextManager | None = None,
                   ) -> Classified:
    """Read deferred local files, normalise and classify a chunk of inputs. Files are read and
    normalised in groups of at most CHUNK_BYTES (bytes plus decoded bytes), so a chunk never
    holds all its images at once; a large image is normalised alone, inside
    `large_decode_gate` (shared by the workers)."""
    results: list[tuple[np.ndarray | None, str]] = [(None, "")] * len(items)
    group: list[tuple[int, bytes]] = []
    group_bytes = 0
    for i, item in enumerate(items):
        item = load(item)
        if item.error is not None:
            results[i] = (None, item.error or "cannot read")
            continue
        decoded = estimated_decoded_bytes(item.data, WORK_SIDE)
        if decoded > LARGE_DECODE_BYTES:
            with large_decode_gate or contextlib.nullcontext():
                _normalise_group([(i, item.data)], geometry, results)
            continue
        group.append((i, item.data))
        group_bytes += len(item.data) + decoded
        if group_bytes >= CHUNK_BYTES:
            _normalise_group(group, geometry, results)
            group, group_bytes = [], 0
    _normalise_group(group, geometry, results)
    good = [image for image, _ in results if image is not None]
    images = np.stack(good) if good else np.zeros((0, geometry.height, geometry.width), np.uint8)
    return Classified([reason for _, reason in results], images, classifier.predict(images))


def _normalise_group(group: list[tuple[int, bytes]], geometry: Geometry,
                     results: list[tuple[np.ndarray | None, str]]) -> None:
    """Normalise (index, bytes) pairs into results[index] as (image or None, reason)."""
    if not group:
        return
    blobs = [data for _, data in group]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. Pillow's "Corrupt EXIF data": the row says enough
        try:  # small images of one size are normalised together: several times faster
            normalised = normalize_many(blobs, geometry)
        except Exception:  # noqa: BLE001 (find the culprit one by one; it becomes its row)
            normalised = [prepare(blob, geometry) for blob in blobs]
    for (i, _), (image, reason) in zip(group, normalised, strict=True):
        results[i] = (image, reason)


_worker: dict = {}  # per worker process: its geometry, its own TFLite interpreter, the gate


def _init_worker(model_content: bytes, geometry: Geometry, large_decode_gate) -> None:
    # Forked from the CLI, a worker inherits its SIGTERM handler; the pool's owner decides.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _worker["geometry"] = geometry
    _worker["classifier"] = Classifier(model_content, num_threads=1)
    _worker["gate"] = large_decode_gate


def _classify_in_worker(items: list[Input]) -> Classified:
    return classify_chunk(items, _worker["geometry"], _worker["classifier"], _worker["gate"])


class ScoringPool:
    """Reads, normalises and classifies windows of inputs in chunks: in a process pool when there
    is more than one worker and more than one window of work (a single image never pays for
    starting processes). Each worker runs its own interpreter, so this process only merges rows
    and writes them.

    A worker that dies (the OOM killer, a crash in a decoder) breaks the whole pool and every
    task in flight: the pool is restarted and the lost chunks run again, one input per task, so
    that an input that kills its worker a second time is known and becomes its own error row."""

    CHUNK = 64  # most inputs per task (and model invocation) in a worker: amortises the
    # inter-process overhead while keeping every core busy
    POLL_SECONDS = 0.5  # how often a wait checks that the workers are alive

    def __init__(self, bundle: Bundle, workers: int, batch_size: int):
        self.geometry = bundle.geometry
        self.n_classes = len(bundle.labels)
        self.model_content = bundle.model_bytes()
        self.classifier: Classifier | None = None  # this process's, only when it does the work
        self.workers = max(1, workers)
        self.chunk = max(1, min(self.CHUNK, batch_size))
        self.executor: ProcessPoolExecutor | None = None
        self.generation = 0  # which pool a task was submitted to; a new one after each crash

    def submit(self, window: list[Input], costs: list[int], use_pool: bool) -> list:
        """Start preparing; `collect` the returned handle for the results in order."""
        payload = [(item, cost) for item, cost in zip(window, costs, strict=True)
                   if item.error is None]
        if use_pool and self.workers > 1 and self._start_pool():
            size = max(1, min(self.chunk, -(-len(payload) // self.workers)))
            return [(chunk, self._submit(chunk), self.generation)
                    for chunk in split_by_budget(payload, size, CHUNK_BYTES)]
        if self.classifier is None:
            self.classifier = Classifier(self.model_content, num_threads=1)
        return [(None, classify_chunk([item for item, _ in payload], self.geometry,
                                      self.classifier), self.generation)]

    def collect(self, handle: list) -> Classified:
        results: list[Classified] = []
        for chunk, part, generation in handle:
            if not isinstance(part, Future):
                results.append(part)
                continue
            try:
                results.append(self._wait(part, generation))
            except (BrokenProcessPool, CancelledError):
                if generation == self.generation:
                    self._discard_pool()
                results += [self._run_alone(item) for item in chunk]
        return Classified.join(results) if results else \
            Classified.of([], self.geometry, self.n_classes)

    def _wait(self, future: Future, generation: int) -> Classified:
        """The task's result; BrokenProcessPool if its pool lost a worker. Checked by polling too:
        a worker killed while writing its result leaves the pool's reader waiting for ever."""
        while True:
            try:
                return future.result(timeout=self.POLL_SECONDS)
            except FutureTimeout:
                if generation != self.generation or self._a_worker_died():
                    raise BrokenProcessPool("a worker process died") from None

    def _run_alone(self, item: Input) -> Classified:
        """Run one input of a lost chunk in a task of its own: if its worker dies again, the
        input is the cause and becomes an error row."""
        if not self._start_pool():
            self.classifier = self.classifier or Classifier(self.model_content)
            return classify_chunk([item], self.geometry, self.classifier)
        future = self._submit([item])
        try:
            return self._wait(future, self.generation)
        except (BrokenProcessPool, CancelledError):
            self._discard_pool()
            return Classified.of([WORKER_DIED], self.geometry, self.n_classes)

    def _submit(self, chunk: list[Input]) -> Future:
        try:
            return self.executor.submit(_classify_in_worker, chunk)
        except BrokenProcessPool:  # it broke since the last look: its tasks are collected later
            self._discard_pool()
            self._start_pool()
            return self.executor.submit(_classify_in_worker, chunk)

    def _a_worker_died(self) -> bool:
        processes = getattr(self.executor, "_processes", None) or {}
        return any(process.exitcode is not None for process in list(processes.values()))

    def _discard_pool(self) -> None:
        """Stop a broken pool without waiting for it: kill its other workers and close this
        process's end of its result pipe, so that its reader thread sees the end and exits."""
        executor, self.executor = self.executor, None
        self.generation += 1
        if executor is None:
            return
        for process in list((getattr(executor, "_processes", None) or {}).values()):
            with contextlib.suppress(OSError):
                process.kill()
        result_queue = getattr(executor, "_result_queue", None)
        if result_queue is not None:
            with contextlib.suppress(OSError):
                result_queue._writer.close()
        executor.shutdown(wait=False, cancel_futures=True)

    def _start_pool(self) -> bool:
        if self.executor is None:
            try:  # fork: workers start in milliseconds and inherit the imported modules
                methods = multiprocessing.get_all_start_methods()
                context = multiprocessing.get_context("fork" if "fork" in methods else None)
                # The lock lets one large image be decoded at a time across the workers; a new
                # pool gets a new one, in case a killed worker held the old.
                self.executor = ProcessPoolExecutor(self.workers, mp_context=context,
                                                    initializer=_init_worker,
                                                    initargs=(self.model_content, self.geometry,
                                                              context.Lock()))
            except OSError:  # no /dev/shm (AWS Lambda): work in this process
                self.workers = 1
                return False
        return True

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None


def split_by_budget(items: list[tuple[Input, int]], most: int, budget: int) -> list[list[Input]]:
    """(input, cost) pairs -> consecutive chunks of at most `most` inputs and, unless a single
    input exceeds it alone, at most `budget` cost."""
    chunks: list[list[Input]] = []
    chunk: list[Input] = []
    spent = 0
    for item, cost in items:
        if chunk and (len(chunk) >= most or spent + cost > budget):
            chunks.append(chunk)
            chunk, spent = [], 0
        chunk.append(item)
        spent += cost
    if chunk:
        chunks.append(chunk)
    return chunks
