"""Bytes -> model input or a one-line reason, never an exception: how the scoring processes
call the normalization, so that a hostile or odd file becomes its row and never ends a job."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np

from scorer.images.batch import Prepared, normalize_many
from scorer.images.errors import ImageError
from scorer.images.geometry import Geometry
from scorer.images.normalization import normalize


def never_raising(step: Callable, data: bytes, geometry: Geometry) -> tuple[object | None, str]:
    """(step(data, geometry), "") or (None, one-line reason)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. Pillow's "Corrupt EXIF data": the row says it
            return step(data, geometry), ""
    except ImageError as err:
        return None, str(err)
    except Exception as err:  # noqa: BLE001 (a hostile or odd file must not end the job)
        return None, f"cannot decode image: {type(err).__name__}: {' '.join(str(err).split())}"


def prepare(data: bytes, geometry: Geometry) -> Prepared:
    """One image -> (uint8 model input, "") or (None, one-line reason)."""
    return never_raising(normalize, data, geometry)


def prepare_many(blobs: Sequence[bytes], geometry: Geometry) -> list[Prepared]:
    """`prepare` for each blob, in order: small images of one size are normalized together
    (several times faster); if anything goes wrong there, one by one, so that the culprit
    becomes its own row."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return normalize_many(blobs, geometry)
        except Exception:  # noqa: BLE001 (found one by one below)
            return [prepare(blob, geometry) for blob in blobs]


def no_images(geometry: Geometry) -> np.ndarray:
    """An empty stack of model inputs: uint8 (0, height, width)."""
    return np.zeros((0, geometry.height, geometry.width), np.uint8)
