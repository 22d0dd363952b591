"""One field, end to end: bytes -> candidates (no model needed) -> reading (with the model's
probabilities for the candidates). Split in two so that a worker classifies the candidates of
many fields in one model invocation."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image

from scorer.images.budget import time_budget
from scorer.images.errors import BlankImageError, ImageError
from scorer.images.geometry import Geometry
from scorer.images.prepare import never_raising
from scorer.numbers.components import TooManyPieces, pieces
from scorer.numbers.decode import Digit, choose, field_confidence
from scorer.numbers.field import Frame, load_field
from scorer.numbers.length import MAX_DIGITS, Length
from scorer.numbers.lines import remove_form_lines
from scorer.numbers.segments import (
    Atom,
    Candidates,
    atoms_of,
    candidates,
    line_pieces,
    text_height,
    tidy,
    without_dust,
)
from scorer.numbers.sequence import Line, line_image, spell, spread

THUMB_HEIGHT = 32  # px of the field picture kept for the report
# Work is bounded by the marks on a field: more than this many separate pieces of ink (dust
# included) is noise, a page or a photo, not one number; the field is an error row, read no
# further.
MAX_MARKS = 1000
# Where the cut reader and the field reader differ, the field's confidence is the winner's
# times this (chosen on the dev fields only, see docs/benchmarks.md): right on 96 % of the fields
# the two agree on, and on about half of the others (MLP).
DISAGREE = 0.5


class FieldCut(NamedTuple):
    """A field cut into candidate digits, ready for the model; `thumb` is uint8 light-on-dark,
    the field as the reader saw it (straightened, upright), `thumb_scale` of its size."""

    found: Candidates
    image_x: np.ndarray  # int (atoms, 2): each atom's columns in the image's own pixels
    thumb: np.ndarray
    thumb_scale: float
    line: Line  # the digits' ink as one line, for the sequence reader
    frame: Frame
    middle: float  # the field row at the middle of the digits


class Reading(NamedTuple):
    """A field read: its digits (class indices, confidences, columns x0:x1 in the image's
    pixels), the field's confidence, a reason for review ('' if none), the thumbnail for the
    report and each digit's columns in it (`cuts`)."""

    digits: list[Digit]
    confidence: float
    problem: str
    thumb: np.ndarray
    cuts: tuple[tuple[int, int], ...]


@time_budget()
def cut_field(data: bytes, geometry: Geometry) -> FieldCut:
    """Bytes -> FieldCut. Raises ImageError for unreadable images or when the time per image
    runs out, BlankImageError for fields with no ink once form lines are gone."""
    field = load_field(data)
    ink = remove_form_lines(field.ink)
    try:
        found = pieces(ink, MAX_MARKS)
    except TooManyPieces as err:
        raise ImageError(f"not one number: {err} (at most {MAX_MARKS})") from None
    if not found:
        raise BlankImageError()
    height = text_height(found, ink.shape[0])
    found = without_dust(found, height)
    if len(found) > 2 * MAX_DIGITS:  # before joining parts, which costs n^2 per join
        raise ImageError(f"not one number: {len(found)} marks the size of digits (at most "
                         f"{2 * MAX_DIGITS})")
    found = tidy(found, height)
    if not found:
        raise BlankImageError()
    atoms = atoms_of(found, height)
    thumb, thumb_scale = thumbnail(field.grey)
    lined = bool(np.count_nonzero(field.ink & ~ink))  # form lines were removed: slivers remain
    keep = np.zeros(ink.shape, bool)
    for piece in line_pieces(found, height, ink.shape[0], lined):
        keep[piece.y0:piece.y1, piece.x0:piece.x1] |= piece.mask
    middle = float(np.median([(piece.y0 + piece.y1) / 2 for piece in found]))
    return FieldCut(candidates(field.grey, atoms, found, height, geometry, lined),
                    image_columns(atoms, field.frame), thumb, thumb_scale,
                    line_image(field.grey, keep), field.frame, middle)


PreparedField = tuple[FieldCut | None, str]  # a field's candidates, or None and a reason


def prepare_field(data: bytes, geometry: Geometry) -> PreparedField:
    """`cut_field` that never raises: (its candidates, "") or (None, one-line reason)."""
    return never_raising(cut_field, data, geometry)


def read_cut(cut: FieldCut, probabilities: np.ndarray, length: Length | None,
             line_probabilities: np.ndarray | None = None) -> Reading:
    """A FieldCut, the model's probabilities for its candidates and, with a field reader, its
    (steps, 11) probabilities for the field's line -> Reading."""
    choice = choose(cut.found, probabilities, length)
    digits = [d._replace(x0=int(cut.image_x[a:b, 0].min()), x1=int(cut.image_x[a:b, 1].max()))
              for d in choice.digits for a, b in [d.atoms]]
    confidence, problem = field_confidence(digits), choice.problem
    if line_probabilities is not None:
        digits, confidence, problem = agree(digits, problem,
                                            sequence_digits(cut, line_probabilities), length)
    cuts = tuple((round(d.x0 * cut.thumb_scale), round(d.x1 * cut.thumb_scale))
                 for d in digits)
    return Reading(digits, confidence, problem, cut.thumb, cuts)


def sequence_digits(cut: FieldCut, line_probabilities: np.ndarray) -> list[Digit]:
    """The field reader's digits, with their columns mapped back to the image's pixels."""
    digits = []
    for d in spread(spell(line_probabilities), cut.line.pixels):
        field_x = cut.line.x0 + np.array([d.x0, d.x1], float) / cut.line.scale
        x, _ = cut.frame.to_image(field_x, np.full(2, cut.middle))
        digits.append(Digit(d.value, d.confidence, max(0, int(np.floor(x.min()))),
                            int(np.ceil(x.max()))))
    return digits


def agree(cut_digits: list[Digit], problem: str, line_digits: list[Digit],
          length: Length | None) -> tuple[list[Digit], float, str]:
    """The two readers' answers -> (digits, field confidence, review reason). A reading's
    confidence is the product of its digits'. When they agree, the cut reading (its columns
    are the digits' own ink) with the surer confidence; when they differ, the one the length
    admits, else the surer, with its confidence times DISAGREE."""
    cut_confidence = field_confidence(cut_digits)
    line_confidence = field_confidence(line_digits)
    if [d.value for d in cut_digits] == [d.value for d in line_digits]:
        return cut_digits, max(cut_confidence, line_confidence), problem
    fits = [length is None or length.admits(len(cut_digits)),
            length is None or length.admits(len(line_digits))]
    line_wins = fits[1] if fits[0] != fits[1] else line_confidence > cut_confidence
    if not line_wins:
        return cut_digits, DISAGREE * cut_confidence, problem
    problem = "" if fits[1] else f"read {len(line_digits)} digits, expected {length}"
    return line_digits, DISAGREE * line_confidence, problem


def image_columns(atoms: list[Atom], frame: Frame) -> np.ndarray:
    """Each atom's columns x0:x1 in the image's own pixels, from its ink (a slanted or turned
    digit's box corners would reach past it)."""
    spans = np.zeros((len(atoms), 2), int)
    for k, atom in enumerate(atoms):
        ys, xs = np.nonzero(atom.mask)
        x, _ = frame.to_image(xs + atom.x0 + 0.5, ys + atom.y0 + 0.5)
        spans[k] = max(0, int(np.floor(x.min()))), int(np.ceil(x.max()))
    return spans


def thumbnail(grey: np.ndarray) -> tuple[np.ndarray, float]:
    """The field as read at THUMB_HEIGHT px high (at most 16 times as wide), and its scale."""
    h, w = grey.shape
    factor = min(THUMB_HEIGHT / h, 16 * THUMB_HEIGHT / w)
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    small = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).resize(
        size, Image.Resampling.BOX)
    return np.asarray(small), factor
