"""Inputs -> rows: decode and normalise in worker processes, classify in batches, keep input order.

One pipeline serves the CLI and the Lambda handler. It streams: at most WINDOWS_IN_FLIGHT windows
of inputs are in memory at once, however many images there are. A window ends at
`batch_size * workers` inputs or at WINDOW_BYTES, whichever comes first, where an input costs
its bytes plus what decoding it will allocate (from its header), so a few small files that
decode to huge images, or huge zip members, cannot pile up; each worker task is bounded the same
way by CHUNK_BYTES.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

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

WINDOWS_IN_FLIGHT = 3  # windows of inputs in memory at once: with the budgets, the memory bound
WINDOW_BYTES = 32 * 2**20  # most input bytes + decoded bytes per window (one input may exceed it)
IN_FLIGHT_BYTES = 3 * WINDOW_BYTES  # no new window while the windows in flight cost this much
CHUNK_BYTES = 16 * 2**20  # the same per worker task, and per group normalised at once
# An image whose pixels take more than this (a photo decodes to ~3 MB, a scan to kB) is
# normalised alone, and in a pool only one at a time across all workers: its float steps take
# several times its size, so the total stays bounded however many workers there are.
LARGE_DECODE_BYTES = 8 * 2**20
STATUS_OK = "ok"
STATUS_ERROR = "error"
WORKER_DIED = "worker died while decoding (killed twice, e.g. out of memory)"


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


Prepared = tuple[np.ndarray | None, str, np.ndarray | None]  # (model input, reason, probabilities)


def input_cost(item: Input) -> int:
    """Bytes an input takes in flight: its data plus what decoding it will allocate. A local
    file not read yet costs its listed size here; the worker that reads it counts its pixels."""
    if item.data is None:
        return item.size
    return len(item.data) + estimated_decoded_bytes(item.data, WORK_SIDE)


def classify_chunk(items: list[Input], geometry: Geometry, classifier: Classifier,
                   large_decode_gate: contextlib.AbstractContextManager | None = None,
                   ) -> list[Prepared]:
    """Read deferred local files, normalise, classify: per input (model input, "", probabilities)
    or (None, one-line reason, None). Files are read and normalised in groups of at most
    CHUNK_BYTES (bytes plus decoded bytes), so a chunk never holds all its images at once;
    a large image is normalised alone, inside `large_decode_gate` (shared by the workers)."""
    results: list[Prepared] = [(None, "", None)] * len(items)
    group: list[tuple[int, bytes]] = []
    group_bytes = 0
    for i, item in enumerate(items):
        item = load(item)
        if item.error is not None:
            results[i] = (None, item.error, None)
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
    good = [(i, image) for i, (image, _, _) in enumerate(results) if image is not None]
    probabilities = classifier.predict(np.stack([image for _, image in good])) if good else []
    for (i, image), probs in zip(good, probabilities, strict=True):
        results[i] = (image, "", probs)
    return results


def _normalise_group(group: list[tuple[int, bytes]], geometry: Geometry,
                     results: list[Prepared]) -> None:
    """Normalise (index, bytes) pairs into results[index] as (image or None, reason, None)."""
    blobs = [data for _, data in group]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. Pillow's "Corrupt EXIF data": the row says enough
        try:  # small images of one size are normalised together: several times faster
            normalised = normalize_many(blobs, geometry)
        except Exception:  # noqa: BLE001 (find the culprit one by one; it becomes its row)
            normalised = [prepare(blob, geometry) for blob in blobs]
    for (i, _), (image, reason) in zip(group, normalised, strict=True):
        results[i] = (image, reason, None)


_worker: dict = {}  # per worker process: its geometry, its own TFLite interpreter, the gate


def _init_worker(model_content: bytes, geometry: Geometry, large_decode_gate) -> None:
    _worker["geometry"] = geometry
    _worker["classifier"] = Classifier(model_content, num_threads=1)
    _worker["gate"] = large_decode_gate


def _classify_in_worker(items: list[Input]) -> list[Prepared]:
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
            self.classifier = Classifier(self.model_content)
        return [(None, classify_chunk([item for item, _ in payload], self.geometry,
                                      self.classifier), self.generation)]

    def collect(self, handle: list) -> list[Prepared]:
        results: list[Prepared] = []
        for chunk, part, generation in handle:
            if not isinstance(part, Future):
                results += part
                continue
            try:
                results += self._wait(part, generation)
            except (BrokenProcessPool, CancelledError):
                if generation == self.generation:
                    self._discard_pool()
                results += [self._run_alone(item) for item in chunk]
        return results

    def _wait(self, future: Future, generation: int) -> list[Prepared]:
        """The task's result; BrokenProcessPool if its pool lost a worker. Checked by polling too:
        a worker killed while writing its result leaves the pool's reader waiting for ever."""
        while True:
            try:
                return future.result(timeout=self.POLL_SECONDS)
            except FutureTimeout:
                if generation != self.generation or self._a_worker_died():
                    raise BrokenProcessPool("a worker process died") from None

    def _run_alone(self, item: Input) -> Prepared:
        """Run one input of a lost chunk in a task of its own: if its worker dies again, the
        input is the cause and becomes an error row."""
        if not self._start_pool():
            self.classifier = self.classifier or Classifier(self.model_content)
            return classify_chunk([item], self.geometry, self.classifier)[0]
        future = self._submit([item])
        try:
            return self._wait(future, self.generation)[0]
        except (BrokenProcessPool, CancelledError):
            self._discard_pool()
            return None, WORKER_DIED, None

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


def next_window(stream: Iterator[Input], most: int) -> tuple[list[Input], list[int], bool]:
    """The next window: (inputs, their costs, whether it ended on a limit rather than at the
    end of the stream). It ends after `most` inputs or once WINDOW_BYTES are reached."""
    window: list[Input] = []
    costs: list[int] = []
    spent = 0
    for item in stream:
        window.append(item)
        costs.append(input_cost(item))
        spent += costs[-1]
        if len(window) >= most or spent >= WINDOW_BYTES:
            return window, costs, True
    return window, costs, False


def score(inputs: Iterable[Input], bundle: Bundle, *, workers: int | None = None,
          batch_size: int = 256, keep_probabilities: bool = False) -> Iterator[Row]:
    """Yield one Row per input, in input order."""
    workers = workers or default_workers()
    scoring = ScoringPool(bundle, workers, batch_size)
    window_size = batch_size * scoring.workers
    stream = iter(inputs)
    in_flight: deque[tuple[list[Input], int, list]] = deque()  # (window, its cost, handle)

    def start(window: list[Input], costs: list[int], use_pool: bool) -> None:
        handle = scoring.submit(window, costs, use_pool)
        # Rows need names and labels only: the bytes now belong to the workers' tasks.
        in_flight.append(([without_data(item) for item in window], sum(costs), handle))

    try:
        window, costs, more = next_window(stream, window_size)
        start(window, costs, use_pool=more)  # a single window never pays for starting processes
        while in_flight:
            # Keep the workers a few windows ahead, so they never wait for this process, within
            # the byte budget of what is in flight.
            while more and len(in_flight) < WINDOWS_IN_FLIGHT and \
                    sum(cost for _, cost, _ in in_flight) < IN_FLIGHT_BYTES:
                window, costs, more = next_window(stream, window_size)
                if window:
                    start(window, costs, use_pool=True)
            window, _, pending = in_flight.popleft()
            yield from rows(window, scoring.collect(pending), keep_probabilities)
    finally:
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


def rows(window: list[Input], prepared: list[Prepared], keep_probabilities: bool) -> Iterator[Row]:
    """Merge read errors, decode errors and predictions back into input order."""
    results = iter(prepared)
    for item in window:
        image, reason, probs = (None, item.error, None) if item.error is not None \
            else next(results)
        if image is None:
            yield Row(printable(item.name), None, None, STATUS_ERROR, reason, item.label)
            continue
        best = int(probs.argmax())
        yield Row(printable(item.name), best, float(probs[best]), STATUS_OK, "", item.label,
                  probs if keep_probabilities else None, image)
