"""One field, end to end: bytes -> candidates (no model needed) -> reading (with the model's
probabilities for the candidates). Split in two so that a worker classifies the candidates of
many fields in one model invocation."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image

from scorer.images.errors import BlankImageError
from scorer.images.geometry import Geometry
from scorer.numbers.components import pieces
from scorer.numbers.decode import Digit, choose, field_confidence
from scorer.numbers.field import load_field
from scorer.numbers.length import Length
from scorer.numbers.lines import remove_form_lines
from scorer.numbers.segments import Candidates, atoms_of, candidates, text_height, tidy

THUMB_HEIGHT = 32  # px of the field picture kept for the report


class FieldCut(NamedTuple):
    """A field cut into candidate digits, ready for the model; `thumb` is uint8 light-on-dark."""

    found: Candidates
    scale: float  # work px per image px
    thumb: np.ndarray
    thumb_scale: float  # thumbnail px per image px


class Reading(NamedTuple):
    """A field read: its digits (class indices, confidences, x ranges in image px), the field's
    confidence, a reason for review ('' if none), and the thumbnail for the report."""

    digits: list[Digit]
    confidence: float
    problem: str
    thumb: np.ndarray
    thumb_scale: float


def cut_field(data: bytes, geometry: Geometry) -> FieldCut:
    """Bytes -> FieldCut. Raises ImageError for unreadable images, BlankImageError for fields
    with no ink once form lines are gone."""
    field = load_field(data)
    ink = remove_form_lines(field.ink)
    found = pieces(ink)
    if not found:
        raise BlankImageError()
    height = text_height(found)
    found = tidy(found, height)
    if not found:
        raise BlankImageError()
    atoms = atoms_of(found, height)
    thumb, thumb_scale = thumbnail(field.grey, field.scale)
    lined = bool(np.count_nonzero(field.ink & ~ink))  # form lines were removed: slivers remain
    return FieldCut(candidates(field.grey, atoms, found, height, geometry, lined), field.scale,
                    thumb, thumb_scale)


def read_cut(cut: FieldCut, probabilities: np.ndarray, length: Length | None) -> Reading:
    """A FieldCut and the model's probabilities for its candidates -> Reading."""
    choice = choose(cut.found, probabilities, length, cut.scale)
    return Reading(choice.digits, field_confidence(choice.digits), choice.problem, cut.thumb,
                   cut.thumb_scale)


def thumbnail(grey: np.ndarray, scale: float) -> tuple[np.ndarray, float]:
    """The straightened field at THUMB_HEIGHT px high (at most 16 times as wide)."""
    h, w = grey.shape
    factor = min(THUMB_HEIGHT / h, 16 * THUMB_HEIGHT / w)
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    small = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).resize(
        size, Image.Resampling.BOX)
    return np.asarray(small), factor * scale
