"""The field reader's training lines, made the way serving makes them.

A composed field is drawn as a scan would show it (dark ink on white paper) and read by the
scorer's own `cut_field`: decoding, lighting, straightening, deslanting, form-line removal and
the line image. The model then trains on what it will be given, not on an idealized line
(trained on the composed field's ink directly, the reader read fewer of the dev fields).

Cutting costs about 15 ms a field, so it runs in worker processes, one per core: spawned, not
forked (the trainer runs TensorFlow's threads). Spawning re-imports the parent's main module, so
a script that makes lines must guard its work with `if __name__ == "__main__":`.
"""

from __future__ import annotations

import io
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image

from scorer.images.errors import ImageError
from scorer.images.geometry import MNIST_GEOMETRY
from scorer.numbers import cut_field
from scorer.numbers.field import INK_LEVEL
from scorer.numbers.sequence import line_image
from scorer.workers import default_workers

CHUNK = 2048  # fields drawn and cut at a time: bounds the images held in memory


def field_image(grey: np.ndarray) -> bytes:
    """A composed field (float32, light ink on dark) -> BMP bytes, dark ink on white paper."""
    paper = Image.fromarray(np.clip(255.0 - grey, 0, 255).astype(np.uint8))
    out = io.BytesIO()
    paper.save(out, "BMP")  # lossless and quick to write and read
    return out.getvalue()


def served_line(data: bytes) -> np.ndarray | None:
    """The line image serving makes of a field, or None if serving reads no number in it (a
    field of marks only can be blank once the marks are left out)."""
    try:
        return cut_field(data, MNIST_GEOMETRY).line.pixels
    except ImageError:  # blank, or not one number
        return None


class ServedLines:
    """`lines(greys)`: the served line of each composed field, in order, cut by a pool of worker
    processes. Use it as a context manager."""

    def __init__(self):
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> ServedLines:
        self.pool = ProcessPoolExecutor(default_workers(), multiprocessing.get_context("spawn"))
        return self

    def __exit__(self, *_exc) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def lines(self, greys: Sequence[np.ndarray]) -> np.ndarray:
        images = [field_image(grey) for grey in greys]
        served = self.pool.map(served_line, images, chunksize=64)
        return np.stack([line if line is not None else line_image(grey, grey > INK_LEVEL).pixels
                         for line, grey in zip(served, greys, strict=True)])
