"""The sequence reader: a whole field's ink, as one line image, read by a small CTC model.

The cut-based reader (``segments``, ``decode``) fails where digits touch: no cut it tries
separates them. The sequence reader never cuts: a convolutional model reads the line left to
right, giving per column step the probabilities of the ten digits and a "blank", and the
reading is the best path with repeats and blanks removed (CTC greedy decoding). The trainer
(``trainer/field_reader.py``) builds its training lines with `line_image` below, so that
training sees what serving sees.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image

from scorer.images.geometry import LINE_HEIGHT, LINE_WIDTH  # the model's input; aspect kept

BLANK = 10  # the field reader's "no digit here" class (CTC's blank), after the ten digits

PAD_FRACTION = 8  # ink is padded by a 1/8 of its height (at least 2 px) on every side


class Line(NamedTuple):
    """uint8 (LINE_HEIGHT, LINE_WIDTH) light ink on dark, and how its columns map back:
    field x = x0 + line x / scale."""

    pixels: np.ndarray
    x0: float
    scale: float


class Spelled(NamedTuple):
    """One digit of a sequence reading: value, confidence (its best step's probability) and
    its columns x0:x1 in the line image."""

    value: int
    confidence: float
    x0: int
    x1: int


def line_image(grey: np.ndarray, keep: np.ndarray) -> Line:
    """float (h, w) light-on-dark grey and a bool mask of the ink to read -> Line: the kept ink
    (everything else dark), cropped to it, padded, scaled to LINE_HEIGHT (at most LINE_WIDTH
    wide: a longer field is squeezed), stretched so that its brightest pixel is 255."""
    ys, xs = np.nonzero(keep)
    if ys.size == 0:
        return Line(np.zeros((LINE_HEIGHT, LINE_WIDTH), np.uint8), 0.0, 1.0)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    ink = np.where(keep[y0:y1, x0:x1], grey[y0:y1, x0:x1], 0.0).astype(np.float32)
    pad = max(2, (y1 - y0) // PAD_FRACTION)
    ink = np.pad(ink, pad)
    h, w = ink.shape
    scale = LINE_HEIGHT / h
    width = min(LINE_WIDTH, max(1, round(w * scale)))
    small = np.asarray(Image.fromarray(ink).resize((width, LINE_HEIGHT),
                                                   Image.Resampling.BILINEAR), np.float32)
    out = np.zeros((LINE_HEIGHT, LINE_WIDTH), np.float32)
    out[:, :width] = small
    out *= 255.0 / max(float(out.max()), 1e-6)
    return Line(np.clip(np.round(out), 0, 255).astype(np.uint8), float(x0 - pad), width / w)


def spell(probabilities: np.ndarray) -> list[Spelled]:
    """float (steps, 11) probabilities (class BLANK is the blank) -> the digits of the best path:
    a run of one class is one digit, blanks separate repeats. A digit's columns are its run's
    steps in the line image."""
    steps = len(probabilities)
    step_width = LINE_WIDTH / max(steps, 1)
    best = probabilities.argmax(1)
    digits: list[Spelled] = []
    start = 0
    for t in range(1, steps + 1):
        if t < steps and best[t] == best[start]:
            continue
        value = int(best[start])
        if value != BLANK:
            confidence = float(probabilities[start:t, value].max())
            digits.append(Spelled(value, confidence, int(start * step_width),
                                  int(np.ceil(t * step_width))))
        start = t
    return digits


def spread(digits: list[Spelled], pixels: np.ndarray) -> list[Spelled]:
    """The digits' columns widened from their steps (a CTC model marks a digit in a step or
    two, near its middle) to the whole line between them: each boundary halfway between
    neighbours' steps, the ends at the line's first and last ink."""
    inked = np.flatnonzero(pixels.max(0))
    if not digits or inked.size == 0:
        return digits
    middles = [(digits[k].x1 + digits[k + 1].x0) // 2 for k in range(len(digits) - 1)]
    edges = [int(inked[0]), *middles, int(inked[-1]) + 1]
    return [d._replace(x0=min(edges[k], d.x0), x1=max(edges[k + 1], d.x1))
            for k, d in enumerate(digits)]
