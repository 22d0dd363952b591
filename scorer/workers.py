"""Worker processes: read, normalise and classify chunks of inputs, within byte budgets, and
survive a worker that dies.

`--workers N` means N processes score: this one and N - 1 pool workers, each with its own TFLite
interpreter. Chunks go to the pool; when this process would wait for a result, it takes the
next chunk no worker has started and scores it itself, so no core idles and none is shared by
two busy processes. A chunk is bounded by CHUNK_BYTES (input bytes plus what decoding will
allocate, read from the header), and a large image is always decoded in a worker, one at a time
across all workers, so memory stays bounded however many workers there are, and an image that
kills its process kills a worker, never the job.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import warnings
from collections import deque
from collections.abc import Callable
from concurrent.futures import (
    FIRST_COMPLETED,
    CancelledError,
    Future,
    ProcessPoolExecutor,
    wait,
)
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
from scorer.images.budget import seconds_per_image, set_seconds_per_image
from scorer.images.normalization import WORK_SIDE
from scorer.numbers import FieldCut, Length, Reading, cut_field, read_cut
from scorer.numbers.field import DECODE_SIDE
from scorer.sources import Input, load

CHUNK_BYTES = 16 * 2**20  # most input bytes + decoded bytes per worker task and group
# An image whose pixels take more than this (a photo decodes to ~3 MB, a scan to kB) is
# normalised alone, and in a pool only one at a time across all workers: its float steps take
# several times its size, so the total stays bounded however many workers there are.
LARGE_DECODE_BYTES = 8 * 2**20
WORKER_DIED = "worker died while decoding (killed twice, e.g. out of memory)"


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


CORE_SHARE = 2  # most scoring processes per core
FILES_PER_WORKER = 8  # descriptors a pool worker costs this process (pipes, sentinels), with room
FILES_KEPT = 64  # descriptors left for everything else (sources, outputs, S3 connections)


def usable_workers(requested: int) -> int:
    """`requested` scoring processes, but no more than twice the cores this process may use
    (one a core scores at full speed; a second may help where reading files waits on a slow
    disk; more only share the cores and multiply memory) nor than its open-file limit can feed
    (a low `ulimit -n` ran out of descriptors mid-run)."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # RLIM_INFINITY is -1
    except (ImportError, OSError, ValueError):  # not a POSIX system: no limit known
        soft = -1
    by_files = requested if soft < 0 else max(1, (soft - FILES_KEPT) // FILES_PER_WORKER + 1)
    return max(1, min(requested, CORE_SHARE * default_workers(), by_files))


Prepared = tuple[np.ndarray | None, str]  # a model input, or None and a one-line reason
PreparedField = tuple[FieldCut | None, str]  # a field's candidates, or None and a reason


class NumberMode(NamedTuple):
    """Each image is one field holding one number (`--read number`), of `length` digits."""

    length: Length | None = None

    def describe(self) -> dict:
        """What a job reads, as reports and scale-out parts record it."""
        return {"read": "number", "length": None if self.length is None else str(self.length)}


def prepare(data: bytes, geometry: Geometry) -> Prepared:
    """Bytes -> (model input, "") or (None, one-line reason). Never raises for bad images."""
    return _never_raising(normalize, data, geometry)


def prepare_field(data: bytes, geometry: Geometry) -> PreparedField:
    """Bytes of a field -> (its candidate digits, "") or (None, one-line reason)."""
    return _never_raising(cut_field, data, geometry)


def _never_raising(step: Callable, data: bytes, geometry: Geometry):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. Pillow's "Corrupt EXIF data"
            return step(data, geometry), ""
    except ImageError as err:
        return None, str(err)
    except Exception as err:  # noqa: BLE001 (a hostile or odd file must not end the job)
        return None, f"cannot decode image: {type(err).__name__}: {' '.join(str(err).split())}"


def decode_side(numbers: NumberMode | None) -> int:
    """The largest side images are decoded at: a field is read at up to 2,400 px wide."""
    return WORK_SIDE if numbers is None else DECODE_SIDE


def input_cost(item: Input, numbers: NumberMode | None = None) -> int:
    """Bytes an input takes in flight: its data plus what decoding it will allocate. A local
    file not read yet is a name until the process that scores it reads it, within its own
    budget (classify_chunk): it costs nothing here, and needs no stat per file."""
    if item.data is None:
        return 0
    return len(item.data) + estimated_decoded_bytes(item.data, decode_side(numbers))


class Classified(NamedTuple):
    """What a chunk of inputs became, in compact arrays: cheap to send back from a worker
    (one pickle of two arrays instead of two small arrays per image).

    ``reasons``: one per input, "" where it was classified; ``images``: uint8 (g, h, w) model
    inputs and ``probabilities``: float32 (g, n_classes), for the g classified inputs in order.
    In number mode the g inputs read are ``readings`` instead (images and probabilities empty).
    """

    reasons: list[str]
    images: np.ndarray
    probabilities: np.ndarray
    readings: list[Reading] | None = None

    @staticmethod
    def of(reasons: list[str], geometry: Geometry, n_classes: int) -> Classified:
        """Inputs that were all refused, for these reasons (none classified)."""
        return Classified(reasons, no_images(geometry), np.zeros((0, n_classes), np.float32))

    @staticmethod
    def join(parts: list[Classified]) -> Classified:
        if len(parts) == 1:
            return parts[0]
        readings = None if parts[0].readings is None else \
            [reading for part in parts for reading in part.readings]
        return Classified([r for part in parts for r in part.reasons],
                          np.concatenate([part.images for part in parts]),
                          np.concatenate([part.probabilities for part in parts]), readings)


def score_chunk(items: list[Input], geometry: Geometry, classifier: Classifier,
                numbers: NumberMode | None, large: Callable | None = None) -> Classified:
    """classify_chunk for digits, read_chunk for number fields (`large`: see there)."""
    if numbers is None:
        return classify_chunk(items, geometry, classifier, large)
    return read_chunk(items, geometry, classifier, numbers, large)


def read_chunk(items: list[Input], geometry: Geometry, classifier: Classifier,
               numbers: NumberMode, cut_large: Callable[[bytes], PreparedField] | None = None
               ) -> Classified:
    """Read a chunk of number fields: cut each into candidate digits, classify every
    candidate of the chunk in one model invocation, then choose each field's reading. Fields
    are cut one at a time, so a chunk holds one decoded image at a time; a large one is cut by
    `cut_large` (see classify_chunk)."""
    cuts: list[FieldCut] = []
    reasons: list[str] = []
    for item in items:
        item = load(item)
        if item.error is not None:
            reasons.append(item.error or "cannot read")
            continue
        large = estimated_decoded_bytes(item.data, DECODE_SIDE) > LARGE_DECODE_BYTES
        cut, reason = cut_large(item.data) if large and cut_large else \
            prepare_field(item.data, geometry)
        reasons.append(reason)
        if cut is not None:
            cuts.append(cut)
    images = [cut.found.images for cut in cuts]
    probabilities = classifier.predict(np.concatenate(images)) if cuts else None
    readings, start = [], 0
    for cut in cuts:
        stop = start + len(cut.found.images)
        readings.append(read_cut(cut, probabilities[start:stop], numbers.length))
        start = stop
    return Classified(reasons, no_images(geometry), np.zeros((0, classifier.classes), np.float32),
                      readings)


def classify_chunk(items: list[Input], geometry: Geometry, classifier: Classifier,
                   normalise_large: Callable[[bytes], Prepared] | None = None) -> Classified:
    """Read deferred local files, normalise and classify a chunk of inputs. Files are read and
    normalised in groups of at most CHUNK_BYTES (bytes plus decoded bytes), so a chunk never
    holds all its images at once; a large image is normalised alone, by `normalise_large`
    (in a worker: one at a time across workers; in the main process: sent to a worker)."""
    results: list[Prepared] = [(None, "")] * len(items)
    group: list[tuple[int, bytes]] = []
    group_bytes = 0
    for i, item in enumerate(items):
        item = load(item)
        if item.error is not None:
            results[i] = (None, item.error or "cannot read")
            continue
        decoded = estimated_decoded_bytes(item.data, WORK_SIDE)
        if decoded > LARGE_DECODE_BYTES:
            results[i] = normalise_large(item.data) if normalise_large else \
                normalise_one(item.data, geometry)
            continue
        group.append((i, item.data))
        group_bytes += len(item.data) + decoded
        if group_bytes >= CHUNK_BYTES:
            _normalise_group(group, geometry, results)
            group, group_bytes = [], 0
    _normalise_group(group, geometry, results)
    good = [image for image, _ in results if image is not None]
    images = np.stack(good) if good else no_images(geometry)
    return Classified([reason for _, reason in results], images, classifier.predict(images))


def no_images(geometry: Geometry) -> np.ndarray:
    """An empty stack of model inputs: uint8 (0, height, width)."""
    return np.zeros((0, geometry.height, geometry.width), np.uint8)


def normalise_one(data: bytes, geometry: Geometry) -> Prepared:
    results: list[Prepared] = [(None, "")]
    _normalise_group([(0, data)], geometry, results)
    return results[0]


def _normalise_group(group: list[tuple[int, bytes]], geometry: Geometry,
                     results: list[Prepared]) -> None:
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


PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies


def die_with_parent() -> None:
    """Ask Linux to kill this worker when the process that started it dies, even by SIGKILL
    (which no cleanup code sees): otherwise workers outlive a killed run. Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # no prctl: the pool's owner still stops its workers
        return
    if os.getppid() == 1:  # the parent died before the request was made
        os._exit(1)


_worker: dict = {}  # per worker process: its geometry, its own TFLite interpreter, the gate


def _init_worker(model_content: bytes, geometry: Geometry, large_decode_gate,
                 numbers: NumberMode | None, seconds: float) -> None:
    # Forked from the CLI, a worker inherits its SIGTERM handler; the pool's owner decides.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent()
    set_seconds_per_image(seconds)  # inherited when forked, not when spawned
    _worker["geometry"] = geometry
    _worker["numbers"] = numbers
    _worker["classifier"] = Classifier(model_content, num_threads=1)
    _worker["gate"] = large_decode_gate


def _classify_in_worker(items: list[Input]) -> Classified:
    return score_chunk(items, _worker["geometry"], _worker["classifier"], _worker["numbers"],
                       _normalise_large_in_worker)


def _normalise_large_in_worker(data: bytes) -> Prepared | PreparedField:
    with _worker["gate"]:  # one large image at a time across all workers
        return prepare_large(data, _worker["geometry"], _worker["numbers"])


def prepare_large(data: bytes, geometry: Geometry, numbers: NumberMode | None
                  ) -> Prepared | PreparedField:
    """A large image, alone: normalised (digits) or cut into candidates (number fields)."""
    return normalise_one(data, geometry) if numbers is None else prepare_field(data, geometry)


class Part:
    """A chunk of a window, scored here or in the pool (`future`, once given to a worker)."""

    __slots__ = ("chunk", "future", "generation", "result")

    def __init__(self, chunk: list[Input], result: Classified | None = None):
        self.chunk = chunk
        self.future: Future | None = None
        self.generation = 0  # the pool it was given to; a new one after each crash
        self.result = result


class ScoringPool:
    """Reads, normalises and classifies windows of inputs in chunks. With more than one worker
    and work worth starting processes for (see `submit`'s caller), the chunks of a window are
    queued here and fed to a pool of `workers - 1` processes, a few per
    worker at a time; whenever this process would wait for a result, it scores the next queued
    part itself instead (`collect`). Each process runs its own interpreter; results are the
    same wherever a part is scored.

    A worker that dies (the OOM killer, a crash in a decoder) breaks the whole pool and every
    task in flight: the pool is restarted and the lost chunks run again, one input per task, so
    that an input that kills its worker a second time is known and becomes its own error row.
    Large images are never decoded here: this process sends them to a worker."""

    CHUNK = 64  # most inputs per task (and model invocation): amortises the inter-process
    # overhead while keeping every core busy
    PARTS_PER_WORKER = 3  # given to the pool at a time: one running, two ready, so a worker
    # never waits while this process scores a part or writes rows
    POLL_SECONDS = 0.5  # how often a wait checks that the workers are alive
    REAP_SECONDS = 5.0  # most time to wait for a killed worker to end

    def __init__(self, bundle: Bundle, workers: int, batch_size: int,
                 numbers: NumberMode | None = None):
        self.numbers = numbers
        self.geometry = bundle.geometry
        self.n_classes = len(bundle.labels)
        self.model_content = bundle.model_bytes()
        self.classifier: Classifier | None = None  # this process's, made when first needed
        self.workers = max(1, workers)
        self.chunk = max(1, min(self.CHUNK, batch_size))
        self.executor: ProcessPoolExecutor | None = None
        self.generation = 0  # which pool a part was given to; a new one after each crash
        self.queued: deque[Part] = deque()  # parts of windows in flight no process has taken
        self.given: list[Part] = []  # parts given to the pool and not finished
        # Where the work went, for tests and profiling: parts scored by this process and by the
        # pool, and large images this process met and sent to a worker.
        self.parts_here = self.parts_in_pool = self.large_images_sent = 0

    def submit(self, window: list[Input], costs: list[int], use_pool: bool) -> list[Part]:
        """Queue a window's parts (or, without a pool, score them now); `collect` the returned
        parts for the results in order."""
        payload = [(item, cost) for item, cost in zip(window, costs, strict=True)
                   if item.error is None]
        if use_pool and self.workers > 1 and self._start_pool():
            size = max(1, min(self.chunk, -(-len(payload) // self.workers)))
            parts = [Part(chunk) for chunk in split_by_budget(payload, size, CHUNK_BYTES)]
            self.queued.extend(parts)
            self._feed_pool()
            return parts
        items = [item for item, _ in payload]
        self.parts_here += 1
        # Large images go to a worker whatever the window: they are what may exhaust memory.
        large = self._normalise_large_in_pool if self.workers > 1 else None
        return [Part(items, score_chunk(items, self.geometry, self._classifier(),
                                        self.numbers, large))]

    def collect(self, parts: list[Part]) -> Classified:
        """The parts' results in order. Instead of waiting for the pool, score the oldest
        queued part here (the awaited one, if no worker has it)."""
        for part in parts:
            while part.result is None:
                self._feed_pool()
                if part.future is not None and (part.future.done()
                                                or part.generation != self.generation):
                    part.result = self._result_of(part)  # finished, or lost with its pool
                elif self.queued:
                    self._score_here(self.queued.popleft())
                elif not self._wait_for_any_given():  # a worker died: its pool is broken
                    part.result = self._result_of(part)
        results = [part.result for part in parts]
        return Classified.join(results) if results else self._nothing([])

    def _feed_pool(self) -> None:
        """Keep PARTS_PER_WORKER parts per worker in the pool, oldest first."""
        self.given = [part for part in self.given if not part.future.done()]
        while self.queued and len(self.given) < self.PARTS_PER_WORKER * (self.workers - 1):
            if not self._start_pool():
                return
            part = self.queued.popleft()
            part.future, part.generation = self._submit(_classify_in_worker, part.chunk), \
                self.generation
            self.given.append(part)

    def _nothing(self, reasons: list[str]) -> Classified:
        """The result of inputs that were all refused, for these reasons."""
        empty = Classified.of(reasons, self.geometry, self.n_classes)
        return empty if self.numbers is None else empty._replace(readings=[])

    def _score_here(self, part: Part) -> None:
        part.result = score_chunk(part.chunk, self.geometry, self._classifier(), self.numbers,
                                  self._normalise_large_in_pool)
        self.parts_here += 1

    def _wait_for_any_given(self) -> bool:
        """Block until a part given to the pool finishes: True, or False if a worker died."""
        futures = [part.future for part in self.given]
        while futures and not wait(futures, self.POLL_SECONDS, FIRST_COMPLETED)[0]:
            if self._a_worker_died():
                return False
        return True

    def _result_of(self, part: Part) -> Classified:
        try:
            result = self._wait(part.future, part.generation)
            self.parts_in_pool += 1
            return result
        except (BrokenProcessPool, CancelledError):
            if part.generation == self.generation:
                self._discard_pool()
            return Classified.join([self._run_alone(item) for item in part.chunk])

    def _wait(self, future: Future, generation: int):
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
            return score_chunk([item], self.geometry, self._classifier(), self.numbers)
        result = self._in_own_task(_classify_in_worker, [item])
        return self._nothing([WORKER_DIED]) if result is None else result

    def _normalise_large_in_pool(self, data: bytes) -> Prepared | PreparedField:
        """A large image met in a part scored here goes to a worker: decoding it is what may
        exhaust memory, and a worker that dies is replaced. Killed twice, it is an error."""
        self.large_images_sent += 1
        for _ in range(2):
            if not self._start_pool():
                return prepare_large(data, self.geometry, self.numbers)
            result = self._in_own_task(_normalise_large_in_worker, data)
            if result is not None:
                return result
        return None, WORKER_DIED

    def _in_own_task(self, task: Callable, argument):
        """`task(argument)` in a worker, waited for: its result, or None if the worker died
        (the broken pool is discarded; the next task starts a new one)."""
        future = self._submit(task, argument)
        try:
            return self._wait(future, self.generation)
        except (BrokenProcessPool, CancelledError):
            self._discard_pool()
            return None

    def _classifier(self) -> Classifier:
        if self.classifier is None:
            self.classifier = Classifier(self.model_content, num_threads=1)
        return self.classifier

    def _submit(self, task: Callable, argument) -> Future:
        try:
            return self.executor.submit(task, argument)
        except BrokenProcessPool:  # it broke since the last look: its tasks are collected later
            self._discard_pool()
            self._start_pool()
            return self.executor.submit(task, argument)

    def _a_worker_died(self) -> bool:
        processes = getattr(self.executor, "_processes", None) or {}
        return any(process.exitcode is not None for process in list(processes.values()))

    def _discard_pool(self) -> None:
        """Stop a broken pool without waiting for it: kill its other workers and close this
        process's end of its result pipe, so that its reader thread sees the end and exits."""
        executor, self.executor = self.executor, None
        self.generation += 1
        self.given = []  # lost with the pool: collect runs their inputs again
        if executor is None:
            return
        for process in list((getattr(executor, "_processes", None) or {}).values()):
            with contextlib.suppress(OSError):
                process.kill()
        result_queue = getattr(executor, "_result_queue", None)
        if result_queue is not None:
            with contextlib.suppress(OSError):
                result_queue._writer.close()
        # Not cancel_futures: the pool's thread fails every unfinished task itself, and
        # cancelling as well races with it (CPython 3.11 then raises InvalidStateError there).
        executor.shutdown(wait=False)

    def _start_pool(self) -> bool:
        if self.executor is None:
            try:  # fork: workers start in milliseconds and inherit the imported modules
                methods = multiprocessing.get_all_start_methods()
                context = multiprocessing.get_context("fork" if "fork" in methods else None)
                # The lock lets one large image be decoded at a time across the workers; a new
                # pool gets a new one, in case a killed worker held the old.
                self.executor = ProcessPoolExecutor(self.workers - 1, mp_context=context,
                                                    initializer=_init_worker,
                                                    initargs=(self.model_content, self.geometry,
                                                              context.Lock(), self.numbers,
                                                              seconds_per_image()))
            except OSError:  # no /dev/shm (AWS Lambda): work in this process
                self.workers = 1
                return False
        return True

    def close(self) -> None:
        """Stop the pool after its work is done: the workers finish and exit."""
        self.queued.clear()
        self.given.clear()
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None

    def abandon(self) -> None:
        """Stop the pool now (the run is being stopped): kill the workers and wait for no
        task. Waiting for a pool whose workers a signal to the process group has already
        killed can block for ever (its manager thread waits on a dead worker's pipe)."""
        self.queued.clear()
        processes = list((getattr(self.executor, "_processes", None) or {}).values())
        self._discard_pool()
        for process in processes:  # reap them: no zombies left behind (killed, they end at
            process.join(self.REAP_SECONDS)  # once; a loaded machine may take a moment)


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
