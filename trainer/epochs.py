"""Augmented training epochs: seeded by (seed, epoch), made one epoch ahead by a worker process.

`augmented_epoch(x, seed, epoch, y)` is a pure function: the same arguments give bit-identical
images in the same order. `EpochStream` feeds those epochs to `tf.data.Dataset.from_generator`
while a spawned worker (numpy only, no TensorFlow) makes the next one, so augmentation costs the
training loop little time.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from trainer.augment import augment

CHUNK = 256  # images augmented per vectorised call (small arrays stay in cache: fastest)


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator for one epoch's order and augmentation: a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch])


def augmented_epoch(x: np.ndarray, seed: int, epoch: int,
                    y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(order, images): one epoch's shuffled indices into `x` and the augmented uint8 images in
    that order (labels `y` enable the continental 1s and 7s); bit-identical for the same
    (seed, epoch)."""
    rng = epoch_rng(seed, epoch)
    order = rng.permutation(len(x))
    images = np.empty_like(x)
    for start in range(0, len(order), CHUNK):
        chosen = order[start : start + CHUNK]
        images[start : start + CHUNK] = augment(x[chosen], rng,
                                                labels=None if y is None else y[chosen])
    return order, images


def epoch_batches(x: np.ndarray, y: np.ndarray, seed: int, epoch: int,
                  batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of shuffled, augmented (float32 (b, h, w) raw pixels, labels) batches."""
    order, images = augmented_epoch(x, seed, epoch, y)
    yield from _batches(order, images, y, batch_size)


def _batches(order, images, y, batch_size):
    for i in range(0, len(order), batch_size):
        yield images[i : i + batch_size].astype(np.float32), y[order[i : i + batch_size]]


_worker_data: tuple[np.ndarray, np.ndarray] | None = None


def _worker_init(x: np.ndarray, y: np.ndarray) -> None:
    global _worker_data
    _worker_data = (x, y)


def _worker_epoch(seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = _worker_data
    return augmented_epoch(x, seed, epoch, y)


class EpochStream:
    """Augmented epochs for `tf.data.Dataset.from_generator`: each call yields the next epoch's
    batches. A worker process (numpy only, no TensorFlow) makes epoch e + 1 while the model
    trains on epoch e, so augmentation costs little time; the result is the same as
    `epoch_batches(x, y, seed, e, batch_size)`. Use it as a context manager."""

    def __init__(self, x: np.ndarray, y: np.ndarray, seed: int, batch_size: int):
        self.x, self.y, self.seed, self.batch_size = x, y, seed, batch_size
        self.epoch = 0
        self.pool = None
        self.pending = None

    def __enter__(self) -> EpochStream:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: the parent runs TensorFlow's threads, which a fork would not copy
        self.pool = ProcessPoolExecutor(1, multiprocessing.get_context("spawn"),
                                        initializer=_worker_init, initargs=(self.x, self.y))
        self.pending = self.pool.submit(_worker_epoch, self.seed, 0)
        return self

    def __exit__(self, *_exc) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def __call__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        order, images = self.pending.result()
        self.pending = self.pool.submit(_worker_epoch, self.seed, epoch + 1)
        yield from _batches(order, images, self.y, self.batch_size)
