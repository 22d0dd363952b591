"""Bytes of one field -> a straightened greyscale field with light ink on dark, and its ink.

The field is brought to a working height first (small fields are enlarged, so that thin strokes
survive line removal; tall ones reduced, so that work stays bounded), then the single-digit
normalizer's own steps set polarity, flatten the lighting and stretch the contrast. A field
written or scanned at a slight angle is straightened (form lines and baselines then run along
pixel rows, which line removal needs).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image

from scorer.images.decoding import open_image, to_grey
from scorer.images.steps import (
    border_level,
    flatten_background,
    ink_is_dark,
    stretch_contrast,
)

WORK_HEIGHT = (64, 100)  # fields are scaled into this height range (px) before any other step
MAX_WORK_WIDTH = 2400  # and never wider than this: a 2,000 px field is read at full size
DECODE_SIDE = 2 * MAX_WORK_WIDTH  # JPEG draft / integer reduction target while decoding
MAX_SKEW_DEGREES = 6.0
SKEW_STEP = 0.25
SKEW_SAMPLE = 1500  # ink pixels the angle is measured on
MIN_SKEW_DEGREES = 0.5
MAX_SLANT = 0.6  # shear (x per y) of the most slanted handwriting taken upright
MIN_SLANT = 0.08  # smaller angles are left alone: resampling would cost more than it gains
INK_LEVEL = 64.0  # a blurred, stretched pixel above this is ink


class Frame(NamedTuple):
    """How the field's pixels came from the image's: scaled by `scale`, turned by `angle`
    degrees (a `before` (h, w) image became an `after` one), then sheared by `slant` (x per y,
    `pad` columns added each side)."""

    scale: float
    angle: float = 0.0
    before: tuple[int, int] = (0, 0)
    after: tuple[int, int] = (0, 0)
    slant: float = 0.0
    pad: int = 0

    def to_image(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Field coordinates (float arrays) -> the image's own pixel coordinates."""
        x = np.asarray(x, float) + self.slant * (np.asarray(y, float) - self.after[0] / 2) \
            - self.pad
        y = np.asarray(y, float)
        if self.angle:
            t = np.radians(-self.angle)
            dx, dy = x - self.after[1] / 2, y - self.after[0] / 2
            x = np.cos(t) * dx - np.sin(t) * dy + self.before[1] / 2
            y = np.sin(t) * dx + np.cos(t) * dy + self.before[0] / 2
        return x / self.scale, y / self.scale


class Field(NamedTuple):
    """grey: float32 (h, w) in [0, 255], light ink on dark, straightened and upright; ink: bool
    (h, w); frame: how its pixels map back to the image's."""

    grey: np.ndarray
    ink: np.ndarray
    frame: Frame


def load_field(data: bytes) -> Field:
    """Bytes -> Field. Raises ImageError (unreadable) or BlankImageError (no ink)."""
    grey = to_grey(open_image(data, DECODE_SIDE))
    grey, scale = to_work_size(grey)
    background = border_level(grey)
    dark = ink_is_dark(grey, background)
    if dark:
        grey, background = 255.0 - grey, 255.0 - background
    grey = stretch_contrast(flatten_background(grey, paper=dark, background=background))
    before, ink = grey.shape, ink_mask(grey)
    grey, ink, angle = straighten(grey, ink)
    after = grey.shape
    sheared, ink, slant = upright(grey, ink)
    pad = (sheared.shape[1] - after[1]) // 2
    return Field(sheared, ink, Frame(scale, angle, before, after, slant, pad))


def to_work_size(grey: np.ndarray) -> tuple[np.ndarray, float]:
    """float32 (H, W) -> (resized float32, scale): height within WORK_HEIGHT, width capped."""
    h, w = grey.shape
    low, high = WORK_HEIGHT
    scale = low / h if h < low else high / h if h > high else 1.0
    scale = min(scale, MAX_WORK_WIDTH / w)
    if abs(scale - 1.0) < 0.02:
        return grey, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    method = Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.BOX
    return np.asarray(Image.fromarray(grey).resize(size, method), np.float32), scale


def blur(grey: np.ndarray) -> np.ndarray:
    """float32 (H, W) -> same; binomial [1, 2, 1]/4 blur in both directions."""
    p = np.pad(grey, 1, mode="edge")
    rows = 0.25 * p[:-2] + 0.5 * p[1:-1] + 0.25 * p[2:]
    return 0.25 * rows[:, :-2] + 0.5 * rows[:, 1:-1] + 0.25 * rows[:, 2:]


def ink_mask(grey: np.ndarray) -> np.ndarray:
    """Stretched float32 (H, W) -> bool ink. A light blur first bridges the grain of pencil and
    the breaks of thin strokes."""
    return blur(grey) > INK_LEVEL


def skew_angle(ink: np.ndarray) -> float:
    """The angle (degrees) that makes rows of bool (H, W) ink most uneven: form lines and
    baselines then lie along rows. Searched coarse to fine on the ink's coordinates."""
    ys, xs = _ink_points(ink)
    if ys.size < 50:
        return 0.0
    step = max(1, ys.size // SKEW_SAMPLE)  # a sample of the ink is as sharp, and cheaper
    ys, xs = ys[::step], xs[::step] - xs.mean()

    def sharpness(angles: np.ndarray) -> np.ndarray:
        # tangents one at a time, as before: np.tan of an array may round differently
        return _unevenness(ys, xs, [np.tan(np.radians(angle)) for angle in angles])

    coarse = np.arange(-MAX_SKEW_DEGREES, MAX_SKEW_DEGREES + 1e-9, 1.0)
    best = coarse[np.argmax(sharpness(coarse))]
    fine = np.arange(best - 1.0, best + 1.0 + 1e-9, SKEW_STEP)
    *scores, flat = sharpness([*fine, 0.0])
    k = int(np.argmax(scores))
    return float(fine[k]) if scores[k] > 1.05 * flat else 0.0


def _ink_points(ink: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.nonzero(ink) of bool (H, W), the same arrays at half the cost."""
    return np.divmod(np.flatnonzero(ink), ink.shape[1])


def _unevenness(base: np.ndarray, other: np.ndarray, factors: list) -> np.ndarray:
    """For each factor f, the sum of the squared counts of round(base + other * f): how
    unevenly points at (base, other) fall into lines across f. All factors at once (one
    bincount); int64, so exact whatever the order of the sums."""
    shifted = np.round(base + other * np.array(factors)[:, None]).astype(np.int64)
    shifted -= shifted.min(1, keepdims=True)
    span = int(shifted.max()) + 1
    shifted += span * np.arange(len(factors))[:, None]
    counts = np.bincount(shifted.ravel(), minlength=span * len(factors))
    return (counts * counts).reshape(len(factors), span).sum(1)


def straighten(grey: np.ndarray, ink: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Light-ink float32 (H, W) and its ink -> (straightened copies, angle turned in
    degrees)."""
    angle = skew_angle(ink)
    if abs(angle) < MIN_SKEW_DEGREES:
        return grey, ink, 0.0
    turned = Image.fromarray(grey).rotate(-angle, Image.Resampling.BILINEAR, expand=True,
                                          fillcolor=0.0)
    turned = np.asarray(turned, np.float32)
    return turned, ink_mask(turned), angle


def slant_of(ink: np.ndarray) -> float:
    """The shear (x per y) that makes the columns of bool (H, W) ink most uneven: slanted
    strokes then stand upright, and neighbours that overlap slantwise separate."""
    ys, xs = _ink_points(ink)
    if ys.size < 50:
        return 0.0
    step = max(1, ys.size // SKEW_SAMPLE)
    ys, xs = ys[::step] - ys.mean(), xs[::step]

    def sharpness(shears: np.ndarray) -> np.ndarray:  # xs - shear * ys, exactly
        return _unevenness(xs, ys, [-shear for shear in shears])

    coarse = np.arange(-MAX_SLANT, MAX_SLANT + 1e-9, 0.1)
    best = coarse[np.argmax(sharpness(coarse))]
    fine = np.arange(best - 0.1, best + 0.1 + 1e-9, 0.025)
    *scores, flat = sharpness([*fine, 0.0])
    k = int(np.argmax(scores))
    return float(fine[k]) if scores[k] > 1.02 * flat else 0.0


def upright(grey: np.ndarray, ink: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Light-ink float32 (H, W) and its ink -> (sheared so that the handwriting stands
    upright, its ink, shear)."""
    shear = slant_of(ink)
    if abs(shear) < MIN_SLANT:
        return grey, ink, 0.0
    h, w = grey.shape
    extra = int(np.ceil(abs(shear) * h / 2)) + 1
    # output (x, y) samples input (x + shear * (y - h/2) - extra, y)
    coefficients = (1.0, shear, -shear * h / 2 - extra, 0.0, 1.0, 0.0)
    sheared = Image.fromarray(grey).transform((w + 2 * extra, h), Image.Transform.AFFINE,
                                              coefficients, Image.Resampling.BILINEAR,
                                              fillcolor=0.0)
    sheared = np.asarray(sheared, np.float32)
    return sheared, ink_mask(sheared), shear
