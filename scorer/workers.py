"""Worker processes: read, normalize and classify chunks of inputs, within byte budgets, and
survive a worker that dies.

`--workers N` means N processes score: this one and N - 1 pool workers, each with its own TFLite
interpreter. Chunks go to the pool; when this process would wait for a result, it takes the
next chunk no worker has started and scores it itself, so no core idles and none is shared by
two busy processes. Chunks are cut by what their inputs cost (``scorer.costs``), not
by how many they are, so a few hundred photos are shared as evenly as 30,000 small PNGs.
A chunk is read in groups of at most GROUP_BYTES, and a large image is always decoded in a
worker, one at a time across all workers, so memory stays bounded however many workers there
are, and an image that kills its process kills a worker, never the job.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import NamedTuple

import numpy as np

from scorer.bundle import Bundle, Classifier
from scorer.costs import GROUP_BYTES, LARGE_DECODE_BYTES, cut_by_cost
from scorer.images import (
    Geometry,
    Prepared,
    estimated_decoded_bytes,
    no_images,
    prepare,
    prepare_many,
)
from scorer.images.budget import seconds_per_image, set_seconds_per_image
from scorer.images.normalization import WORK_SIDE
from scorer.numbers import (
    FieldCut,
    NumberMode,
    PreparedField,
    Reading,
    prepare_field,
    read_cut,
)
from scorer.numbers.field import DECODE_SIDE
from scorer.process_pool import CANCEL_IS_SAFE, a_worker_died, kill_pool, start_pool
from scorer.sources import Input, load
from scorer.stopping import finished, signals_deferred

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
    def join(chunks: list[Classified]) -> Classified:
        if len(chunks) == 1:
            return chunks[0]
        readings = None if chunks[0].readings is None else \
            [reading for chunk in chunks for reading in chunk.readings]
        return Classified([r for chunk in chunks for r in chunk.reasons],
                          np.concatenate([chunk.images for chunk in chunks]),
                          np.concatenate([chunk.probabilities for chunk in chunks]), readings)


def score_chunk(items: list[Input], geometry: Geometry, classifier: Classifier,
                numbers: NumberMode | None, large: Callable | None = None,
                stop_at_large: bool = False, field_reader: Classifier | None = None
                ) -> Classified:
    """classify_chunk for digits, read_chunk for number fields (`large`, `stop_at_large`,
    `field_reader`: see there)."""
    if numbers is None:
        return classify_chunk(items, geometry, classifier, large, stop_at_large)
    return read_chunk(items, geometry, classifier, numbers, large, stop_at_large, field_reader)


def read_chunk(items: list[Input], geometry: Geometry, classifier: Classifier,
               numbers: NumberMode, cut_large: Callable[[bytes], PreparedField] | None = None,
               stop_at_large: bool = False, field_reader: Classifier | None = None
               ) -> Classified:
    """Read a chunk of number fields: cut each into candidate digits, classify every
    candidate of the chunk in one model invocation, read every field's line with the
    `field_reader` (the bundle's sequence model, if it has one) in another, then choose each
    field's reading. Fields are cut one at a time, so a chunk holds one decoded image at a
    time; a large one is cut by `cut_large` (see classify_chunk, also for `stop_at_large`)."""
    cuts: list[FieldCut] = []
    reasons: list[str] = []
    for item in items:
        item = load(item)
        if item.error is not None:
            reasons.append(item.error or "cannot read")
            continue
        large = estimated_decoded_bytes(item.data, DECODE_SIDE) > LARGE_DECODE_BYTES
        if large and stop_at_large:
            break
        cut, reason = cut_large(item.data) if large and cut_large else \
            prepare_field(item.data, geometry)
        reasons.append(reason)
        if cut is not None:
            cuts.append(cut)
    images = [cut.found.images for cut in cuts]
    probabilities = classifier.predict(np.concatenate(images)) if cuts else None
    lines = field_reader.predict(np.stack([cut.line.pixels for cut in cuts])) \
        if cuts and field_reader is not None else [None] * len(cuts)
    readings, start = [], 0
    for cut, line in zip(cuts, lines, strict=True):
        stop = start + len(cut.found.images)
        readings.append(read_cut(cut, probabilities[start:stop], numbers.length, line))
        start = stop
    return Classified(reasons, no_images(geometry), np.zeros((0, classifier.classes), np.float32),
                      readings)


def classify_chunk(items: list[Input], geometry: Geometry, classifier: Classifier,
                   prepare_large: Callable[[bytes], Prepared] | None = None,
                   stop_at_large: bool = False) -> Classified:
    """Read deferred local files, normalize and classify a chunk of inputs. Files are read and
    normalized in groups of at most GROUP_BYTES (bytes plus decoded bytes), so a chunk never
    holds all its images at once; a large image is normalized alone, by `prepare_large`
    (in a worker: one at a time across workers; in the main process: sent to a worker).
    With `stop_at_large`, the chunk ends before its first large image: the result covers
    only the inputs before it (`len(result.reasons)` of them)."""
    results: list[Prepared] = [(None, "")] * len(items)
    group: dict[int, bytes] = {}  # index in items -> bytes, normalized together
    group_bytes = 0
    for i, item in enumerate(items):
        item = load(item)
        if item.error is not None:
            results[i] = (None, item.error or "cannot read")
            continue
        decoded = estimated_decoded_bytes(item.data, WORK_SIDE)
        if decoded > LARGE_DECODE_BYTES and stop_at_large:
            del results[i:]
            break
        if decoded > LARGE_DECODE_BYTES:
            results[i] = prepare_large(item.data) if prepare_large else \
                prepare(item.data, geometry)
            continue
        group[i] = item.data
        group_bytes += len(item.data) + decoded
        if group_bytes >= GROUP_BYTES:
            _prepare_group(group, geometry, results)
            group, group_bytes = {}, 0
    _prepare_group(group, geometry, results)
    good = [image for image, _ in results if image is not None]
    images = np.stack(good) if good else no_images(geometry)
    return Classified([reason for _, reason in results], images, classifier.predict(images))


def _prepare_group(group: dict[int, bytes], geometry: Geometry, results: list[Prepared]) -> None:
    """Normalize a group's images together into their places in `results`."""
    for i, prepared in zip(group, prepare_many(list(group.values()), geometry), strict=True):
        results[i] = prepared


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


def _init_worker(model_content: bytes, field_reader: bytes | None, geometry: Geometry,
                 numbers: NumberMode | None, seconds: float, large_decode_gate) -> None:
    # Forked from the CLI, a worker inherits its stop handlers; the pool's owner decides. A
    # SIGTERM ends a worker at once; Ctrl-C (sent to the terminal's whole process group) is left
    # to the owner, which kills the workers (here it would only print a worker's traceback).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    set_seconds_per_image(seconds)  # inherited when forked, not when spawned
    _worker["geometry"] = geometry
    _worker["numbers"] = numbers
    _worker["classifier"] = Classifier(model_content, num_threads=1)
    _worker["field_reader"] = field_reader and Classifier(field_reader, num_threads=1)
    _worker["gate"] = large_decode_gate


def _classify_in_worker(items: list[Input]) -> Classified:
    return score_chunk(items, _worker["geometry"], _worker["classifier"], _worker["numbers"],
                       _prepare_large_in_worker, field_reader=_worker["field_reader"])


def _prepare_large_in_worker(data: bytes) -> Prepared | PreparedField:
    with _worker["gate"]:  # one large image at a time across all workers
        return prepare_alone(data, _worker["geometry"], _worker["numbers"])


def prepare_alone(data: bytes, geometry: Geometry, numbers: NumberMode | None
                  ) -> Prepared | PreparedField:
    """A large image, alone: normalized (digits) or cut into candidates (number fields)."""
    return (prepare if numbers is None else prepare_field)(data, geometry)


class Chunk:
    """A chunk of a window, scored here or in the pool (`future`, once given to a worker).
    `head` is what this process scored of it before handing the rest, from a large image on,
    to a worker: then `items` is that rest."""

    __slots__ = ("future", "generation", "head", "items", "result")

    def __init__(self, items: list[Input], result: Classified | None = None):
        self.items = items
        self.future: Future | None = None
        self.generation = 0  # the pool it was given to; a new one after each crash
        self.head: Classified | None = None
        self.result = result

    def finish(self, rest: Classified) -> None:
        self.result = rest if self.head is None else Classified.join([self.head, rest])


class ScoringPool:
    """Reads, normalizes and classifies windows of inputs in chunks. With more than one worker
    and work worth starting processes for (see `submit`'s caller), the chunks of a window are
    queued here and fed to a pool of `workers - 1` processes, a few per
    worker at a time; whenever this process would wait for a result, it scores the next queued
    chunk itself instead (`collect`). Each process runs its own interpreter; results are the
    same wherever a chunk is scored.

    A worker that dies (the OOM killer, a crash in a decoder) breaks the whole pool and every
    task in flight: the pool is restarted and the lost chunks run again, one input per task, so
    that an input that kills its worker a second time is known and becomes its own error row.
    Large images are never decoded here: this process sends them to a worker."""

    CHUNK = 64  # most inputs per task (and model invocation): amortises the inter-process
    # overhead while keeping every core busy
    CHUNKS_PER_WORKER = 3  # given to the pool at a time: one running, two ready, so a worker
    # never waits while this process scores a chunk or writes rows
    POLL_SECONDS = 0.5  # how often a wait checks that the workers are alive
    REAP_SECONDS = 5.0  # most time to wait for a killed worker to end

    def __init__(self, bundle: Bundle, workers: int, batch_size: int,
                 numbers: NumberMode | None = None):
        self.numbers = numbers
        self.geometry = bundle.geometry
        self.n_classes = len(bundle.labels)
        self.model_content = bundle.model_bytes()
        self.field_reader_content = bundle.field_reader_bytes() if numbers else None
        self.classifier: Classifier | None = None  # this process's, made when first needed
        self.field_reader: Classifier | None = None  # likewise, in number mode
        self.workers = max(1, workers)
        self.most_per_chunk = max(1, min(self.CHUNK, batch_size))
        self.executor: ProcessPoolExecutor | None = None
        self.generation = 0  # which pool a chunk was given to; a new one after each crash
        self.queued: deque[Chunk] = deque()  # chunks of windows in flight no process has taken
        self.given: list[Chunk] = []  # chunks given to the pool and not finished
        # Where the work went, for tests and profiling: chunks scored by this process and by the
        # pool, and large images this process met and sent to a worker.
        self.chunks_here = self.chunks_in_pool = self.large_images_sent = 0

    def submit(self, window: list[Input], costs: list[int], use_pool: bool) -> list[Chunk]:
        """Queue a window's chunks (or, without a pool, score them now); `collect` the returned
        chunks for the results in order."""
        payload = [(item, cost) for item, cost in zip(window, costs, strict=True)
                   if item.error is None]
        if use_pool and self.workers > 1 and self._start_pool():
            size = max(1, min(self.most_per_chunk, -(-len(payload) // self.workers)))
            chunks = [Chunk(items) for items in cut_by_cost(payload, size)]
            self.queued.extend(chunks)
            self._feed_pool()
            return chunks
        items = [item for item, _ in payload]
        self.chunks_here += 1
        # Large images go to a worker whatever the window: they are what may exhaust memory.
        large = self._prepare_large_in_pool if self.workers > 1 else None
        return [Chunk(items, self._score(items, large))]

    def collect(self, chunks: list[Chunk]) -> Classified:
        """The chunks' results in order. Instead of waiting for the pool, score the oldest
        queued chunk here (the awaited one, if no worker has it)."""
        for chunk in chunks:
            while chunk.result is None:
                self._feed_pool()
                if chunk.future is not None and (finished(chunk.future)
                                                or chunk.generation != self.generation):
                    chunk.finish(self._result_of(chunk))  # finished, or lost with its pool
                elif self.queued:
                    self._score_here(self.queued.popleft())
                elif (taken_back := self._take_back()) is not None:
                    self._score_here(taken_back)
                elif not self._wait_for_any_given():  # a worker died: its pool is broken
                    chunk.finish(self._result_of(chunk))
        results = [chunk.result for chunk in chunks]
        return Classified.join(results) if results else self._nothing([])

    @signals_deferred()
    def _feed_pool(self) -> None:
        """Keep CHUNKS_PER_WORKER chunks per worker in the pool, oldest first."""
        self.given = [chunk for chunk in self.given if not chunk.future.done()]
        while self.queued and len(self.given) < self.CHUNKS_PER_WORKER * (self.workers - 1):
            if not self._start_pool():
                return
            self._give(self.queued.popleft())

    def _give(self, chunk: Chunk) -> None:
        chunk.future, chunk.generation = self._submit(_classify_in_worker, chunk.items), \
            self.generation
        self.given.append(chunk)

    @signals_deferred()
    def _take_back(self) -> Chunk | None:
        """A chunk given to the pool that no worker has started (the newest), taken back: at the
        end of a job this process scores it instead of waiting for the pool to. Not a chunk
        handed over for its large image (`head`): that one is for a worker. Only where the
        pool survives a cancelled task (CANCEL_IS_SAFE): elsewhere this process waits."""
        if not CANCEL_IS_SAFE:
            return None
        for chunk in reversed(self.given):
            if chunk.head is None and chunk.future.cancel():
                self.given.remove(chunk)
                chunk.future = None
                return chunk
        return None

    def _nothing(self, reasons: list[str]) -> Classified:
        """The result of inputs that were all refused, for these reasons."""
        empty = Classified.of(reasons, self.geometry, self.n_classes)
        return empty if self.numbers is None else empty._replace(readings=[])

    def _score_here(self, chunk: Chunk) -> None:
        """Score a queued chunk here, up to its first large image: that image and the rest of
        the chunk go to a worker (decoding it is what may exhaust memory), and this process
        goes on with other chunks instead of waiting for it."""
        pool = self._start_pool()
        result = self._score(chunk.items, stop_at_large=pool)
        self.chunks_here += 1
        done = len(result.reasons)
        if done == len(chunk.items):
            chunk.finish(result)
            return
        self.large_images_sent += 1
        chunk.head, chunk.items = result, chunk.items[done:]
        self._give(chunk)

    def _wait_for_any_given(self) -> bool:
        """Block until a chunk given to the pool finishes: True, or False if a worker died."""
        futures = [chunk.future for chunk in self.given]
        while futures and not self._wait_a_while(futures):
            if a_worker_died(self.executor):
                return False
        return True

    @signals_deferred()
    def _wait_a_while(self, futures: list[Future]) -> bool:
        """True once one of the futures is done; False after POLL_SECONDS without."""
        return bool(wait(futures, self.POLL_SECONDS, FIRST_COMPLETED).done)

    def _result_of(self, chunk: Chunk) -> Classified:
        try:
            result = self._wait(chunk.future, chunk.generation)
            self.chunks_in_pool += 1
            return result
        except (BrokenProcessPool, CancelledError):
            if chunk.generation == self.generation:
                self._discard_pool()
            return Classified.join([self._run_alone(item) for item in chunk.items])

    def _wait(self, future: Future, generation: int):
        """The task's result; BrokenProcessPool if its pool lost a worker. Checked by polling too:
        a worker killed while writing its result leaves the pool's reader waiting for ever."""
        while not self._wait_a_while([future]):
            if generation != self.generation or a_worker_died(self.executor):
                raise BrokenProcessPool("a worker process died")
        with signals_deferred():
            return future.result()

    def _run_alone(self, item: Input) -> Classified:
        """Run one input of a lost chunk in a task of its own: if its worker dies again, the
        input is the cause and becomes an error row."""
        if not self._start_pool():
            return self._score([item])
        result = self._in_own_task(_classify_in_worker, [item])
        return self._nothing([WORKER_DIED]) if result is None else result

    def _prepare_large_in_pool(self, data: bytes) -> Prepared | PreparedField:
        """A large image met in a chunk scored here goes to a worker: decoding it is what may
        exhaust memory, and a worker that dies is replaced. Killed twice, it is an error."""
        self.large_images_sent += 1
        for _ in range(2):
            if not self._start_pool():
                return prepare_alone(data, self.geometry, self.numbers)
            result = self._in_own_task(_prepare_large_in_worker, data)
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

    def _score(self, items: list[Input], large: Callable | None = None,
               stop_at_large: bool = False) -> Classified:
        """score_chunk in this process, with its own interpreters (made when first needed)."""
        if self.classifier is None:
            self.classifier = Classifier(self.model_content, num_threads=1)
            if self.field_reader_content is not None:
                self.field_reader = Classifier(self.field_reader_content, num_threads=1)
        return score_chunk(items, self.geometry, self.classifier, self.numbers, large,
                           stop_at_large, self.field_reader)

    @signals_deferred()
    def _submit(self, task: Callable, argument) -> Future:
        try:
            return self.executor.submit(task, argument)
        except BrokenProcessPool:  # it broke since the last look: its tasks are collected later
            self._discard_pool()
            self._start_pool()
            return self.executor.submit(task, argument)

    @signals_deferred()
    def _discard_pool(self) -> Callable[[float], None]:
        """Stop a broken pool without waiting for it; returns its `reap` (see kill_pool)."""
        executor, self.executor = self.executor, None
        self.generation += 1
        self.given = []  # lost with the pool: collect runs their inputs again
        return kill_pool(executor) if executor is not None else lambda seconds: None

    @signals_deferred()
    def _start_pool(self) -> bool:
        if self.executor is None:
            # The lock lets one large image be decoded at a time across the workers; a new
            # pool gets a new one, in case a killed worker held the old.
            self.executor = start_pool(self.workers - 1, _init_worker,
                                       (self.model_content, self.field_reader_content,
                                        self.geometry, self.numbers,
                                        seconds_per_image()))
            if self.executor is None:  # no /dev/shm (AWS Lambda): work in this process
                self.workers = 1
                return False
        return True

    @signals_deferred()
    def close(self) -> None:
        """Stop the pool after its work is done: the workers finish and exit."""
        self.queued.clear()
        self.given.clear()
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None

    @signals_deferred()
    def abandon(self) -> None:
        """Stop the pool now (the run is being stopped): kill the workers and wait for no
        task. Waiting for a pool whose workers a signal to the process group has already
        killed can block for ever (its manager thread waits on a dead worker's pipe)."""
        self.queued.clear()
        reap = self._discard_pool()
        reap(self.REAP_SECONDS)  # no zombies left behind (killed, they end at once; a loaded
        # machine may take a moment)
