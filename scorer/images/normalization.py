"""Bytes -> model input: decode, then the steps of ``scorer.images.steps`` in order."""

from __future__ import annotations

import numpy as np
from PIL import Image

from scorer.images.budget import time_budget
from scorer.images.decoding import open_image, to_grey
from scorer.images.geometry import MNIST_GEOMETRY, Geometry
from scorer.images.steps import (
    border_level,
    crop_with_extent,
    fit_box,
    flatten_background,
    ink_is_dark,
    place,
    stretch_contrast,
    thicken_strokes,
)

WORK_SIDE = 512  # larger photos are reduced first: the digit ends up ~20 px anyway


@time_budget()
def normalize(data: bytes, geometry: Geometry = MNIST_GEOMETRY) -> np.ndarray:
    """Bytes -> uint8 (geometry.height, geometry.width), light ink on dark, ready for the model.

    Raises ImageError for unreadable or oversized images, or when the time per image runs out
    (``budget``), BlankImageError for blank ones.
    """
    return normalize_grey(to_grey(open_image(data, WORK_SIDE)), geometry)


def normalize_grey(grey: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Decoded float32 (H, W) as stored -> model input (normalize() after decoding)."""
    if max(grey.shape) > WORK_SIDE:  # cheap antialiased reduction for big photos
        factor = -(-max(grey.shape) // WORK_SIDE)
        grey = np.asarray(Image.fromarray(grey).reduce(factor), dtype=np.float32)
    bg = border_level(grey)
    dark = ink_is_dark(grey, bg)
    if dark:
        grey, bg = 255.0 - grey, 255.0 - bg
    grey = flatten_background(grey, paper=dark, background=bg)
    crop, extent = crop_with_extent(stretch_contrast(grey))
    return place(fit_digit(crop, extent, geometry), geometry)


def fit_digit(grey: np.ndarray, extent: int, geometry: Geometry) -> np.ndarray:
    """Ink crop float32 (h, w) and its extent -> float32 digit thickened and resized."""
    box = geometry.digit_box
    if extent > 4 * box:  # reduce in two stages so thin lines survive thickening
        grey = fit_box(grey, 4 * box)
        grey, extent = grey * (255.0 / max(float(grey.max()), 1e-6)), max(grey.shape)
    if extent > box:
        thick = thicken_strokes(grey)
        grey, extent = thick, extent + thick.shape[0] - grey.shape[0]
    return fit_box(grey, box, extent)
