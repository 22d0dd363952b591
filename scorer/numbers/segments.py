"""A field's ink -> atoms (whole pieces, or slices of wide pieces at candidate cuts) and the
candidate digits (runs of consecutive atoms) the classifier will score.

Over-segment, then let recognition choose: a wide piece (touching digits) is sliced at the
thinnest columns of its ink, broken digits are separate pieces, and every run of up to
MAX_ATOMS neighbouring atoms that could be one digit becomes a candidate. Each candidate is
normalized exactly as a single-digit image is (crop, thicken, 20 px box, centre of mass), so
the bundle sees what it was trained on.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from scorer.images.errors import BlankImageError
from scorer.images.geometry import Geometry
from scorer.images.normalization import fit_digit
from scorer.images.steps import place
from scorer.numbers.components import Piece, merge

MAX_ATOMS = 4  # most atoms in one candidate digit
MIN_TEXT = 0.2  # digits are at least this many field heights tall
SPECK = 0.2  # pieces smaller than this many text heights both ways are dust, dots, commas
SMALL = 0.5  # pieces shorter than this many text heights are marks or parts of a digit
WIDE = 1.0  # pieces wider than this many text heights may hold several digits: cut them
MAX_WIDTH = 1.6  # no candidate digit is wider than this many text heights
MAX_GAP = 0.35  # pieces further apart than this many text heights are not one digit
# Shape costs, in the units of -log(probability), measured on the dev set of fields
CUT_BASE, CUT_PER_STROKE, CUT_INK = 1.0, 1.5, 2.0  # a cut; each stroke beyond one; ink crossed
NARROW_CUT = 3.0  # extra for cutting a piece of about one digit's width (x (1.6 - widths))
WIDE_FROM, WIDE_COST = 1.6, 2.0  # a candidate wider than this many digit widths, per width
SHORT_FROM, SHORT_COST = 0.6, 4.0  # a candidate shorter than this many text heights, per height
JOIN_COSTS = (0.3, 1.2, 3.0)  # joining a small piece, a part, two tall pieces
SLICE_COST = 1.5  # a narrow slice beside a cut (likely part of a digit, read as a 1)
SIGN_REACH = 0.1  # a piece reaching this many text heights above and below the digits...
SLIVER = 0.035  # with form lines, pieces this many field heights wide are taken for their rest
SIGN_COST = 2.5  # ...is more likely a currency sign than a digit: reading it as one costs this
MAX_PENALTY = 3.0  # candidates whose shape alone costs more are never worth scoring
DRIFT = 0.2  # a cut's path strays at most this many text heights from its column
PATH_STEP, PATH_PULL = 0.1, 0.02  # a path's cost of a sideways step, and per px from its column
CUT_MARGIN = 0.1  # cuts stay this many text heights from a piece's sides, twice from another


class Atom(NamedTuple):
    """A whole piece (cut=False) or a slice of one between two cuts."""

    piece: int
    x0: int  # field columns, stop exclusive
    x1: int
    y0: int
    y1: int
    mask: np.ndarray  # bool (y1 - y0, x1 - x0)
    cut_before: float  # cost of the cut at x0 (0 when x0 is the piece's own edge)


class Candidates(NamedTuple):
    """What the classifier scores and the decoder chooses from.

    spans: (n, 2) int atom ranges [i, j) of the candidates; images: uint8 (n, h, w) model
    inputs; penalties: float (n,) shape costs; skip: float (atoms,) cost of reading an atom
    as no digit (inf for ink that must belong to a digit); atoms' x ranges: int (atoms, 2)."""

    spans: np.ndarray
    images: np.ndarray
    penalties: np.ndarray
    skip: np.ndarray
    atom_x: np.ndarray


def text_height(found: list[Piece], field_height: int) -> float:
    """The height of the digits: the median height of the pieces at least half as tall as the
    tallest, and at least MIN_TEXT of the field's height (so that the dust left of an empty
    form is dust, not tiny digits)."""
    tallest = max(p.height for p in found)
    typical = float(np.median([p.height for p in found if p.height >= 0.5 * tallest]))
    return max(typical, MIN_TEXT * field_height)


def without_dust(found: list[Piece], height: float) -> list[Piece]:
    """The pieces bigger than dust, dots and commas."""
    return [p for p in found if max(p.height, p.width) >= SPECK * height]


def tidy(found: list[Piece], height: float) -> list[Piece]:
    """Join a small piece to the piece it sits on or under (the detached bar of a 5, a broken
    stroke) and pieces that overlap mostly (one digit broken in two)."""
    found = list(found)
    joined = True
    while joined:
        joined = False
        for i, a in enumerate(found):
            j = _partner(found, i, height)
            if j is not None:
                found[min(i, j)] = merge(a, found[j])
                del found[max(i, j)]
                joined = True
                break
    return sorted(found, key=lambda p: p.centre_x)


def _partner(found: list[Piece], i: int, height: float) -> int | None:
    a = found[i]
    best, best_overlap = None, 0.0
    for j, b in enumerate(found):
        if j == i:
            continue
        overlap = min(a.x1, b.x1) - max(a.x0, b.x0)
        if overlap <= 0 or max(a.x1, b.x1) - min(a.x0, b.x0) > 1.5 * height:
            continue
        narrow = min(a.width, b.width)
        gap = max(a.y0, b.y0) - min(a.y1, b.y1)
        small = a.height < SMALL * height and gap <= MAX_GAP * height
        part = min(a.height, b.height) < 0.8 * height and overlap >= 0.8 * narrow
        share = overlap / max(narrow, 1)
        if ((small and overlap >= 0.5 * a.width) or part) and share > best_overlap:
            best, best_overlap = j, share
    return best


def line_pieces(found: list[Piece], height: float, field_height: int,
                lined: bool) -> list[Piece]:
    """The pieces the field reader reads: all but the marks at either end that are not digits
    by their shape (a currency sign, a dot or dash, the edge of a box), which would otherwise
    widen its line and be read as digits. A mark that overlaps its neighbour's columns stays:
    it is more likely a digit's detached stroke (the bar of a 5 or a 7)."""
    band = _text_band(found, height)

    def mark(piece: Piece) -> bool:
        return piece.height < SMALL * height or _sign_or_sliver(piece, height, band, lined,
                                                                field_height)

    start, stop = 0, len(found)
    while stop - start > 1 and mark(found[start]) and found[start].x1 <= found[start + 1].x0:
        start += 1
    while stop - start > 1 and mark(found[stop - 1]) and found[stop - 1].x0 >= found[stop - 2].x1:
        stop -= 1
    return found[start:stop]


def digit_width(found: list[Piece], height: float) -> float:
    """A typical digit's width in this field: the median width of the pieces that look like one
    digit (tall, not too wide, not a 1), else 0.6 text heights."""
    widths = [p.width for p in found
              if p.height >= 0.6 * height and 0.35 * height <= p.width <= 1.0 * height]
    return float(np.median(widths)) if widths else 0.6 * height


def atoms_of(found: list[Piece], height: float) -> list[Atom]:
    """Pieces -> atoms, left to right: wide pieces sliced along their candidate cuts. Cutting a
    piece no wider than about one digit costs extra (it is more likely one wide digit)."""
    atoms: list[Atom] = []
    width = digit_width(found, height)
    for index, piece in enumerate(found):
        paths = cut_paths(piece.mask, cuts(piece, height), round(DRIFT * height))
        narrow = NARROW_CUT * max(0.0, 1.6 - piece.width / width)
        h, w = piece.mask.shape
        bounds = [np.zeros(h, int), *paths, np.full(h, w)]
        columns = np.arange(w)[None, :]
        for k, (left, right) in enumerate(zip(bounds, bounds[1:], strict=False)):
            mine = piece.mask & (columns >= left[:, None]) & (columns < right[:, None])
            rows, cols = np.flatnonzero(mine.any(1)), np.flatnonzero(mine.any(0))
            if rows.size == 0:
                continue
            cost = 0.0 if k == 0 else path_cost(piece.mask, left, height) + narrow
            y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
            atoms.append(Atom(index, piece.x0 + int(x0), piece.x0 + int(x1),
                              piece.y0 + int(y0), piece.y0 + int(y1), mine[y0:y1, x0:x1], cost))
    return atoms


def cut_paths(mask: np.ndarray, starts: list[int], drift: int) -> list[np.ndarray]:
    """A top-to-bottom path near each candidate column that crosses as little ink as it can,
    moving at most a pixel sideways a row and `drift` px from its column: int (h,) per cut,
    the first column of the right part in each row. Two digits that overlap slantwise are
    separated where a straight cut would slice both. Paths never cross (each stays right of
    the one before)."""
    if not starts:
        return []
    h, w = mask.shape
    offsets = np.arange(-drift, drift + 1)
    columns = np.clip(np.array(starts)[:, None] + offsets[None, :], 0, w - 1)  # (cuts, window)
    ink = mask[:, columns].astype(np.float32)  # (h, cuts, window)
    ink += PATH_PULL * np.abs(offsets)[None, None, :]  # keep near the chosen column
    # totals[y]: the cheapest path down to each column of row y, inf either side (no way out
    # of the window). Only the sums run row by row; where each step came from is worked out
    # for all rows at once afterwards.
    totals = np.full((h, len(starts), offsets.size + 2), np.inf, np.float32)
    totals[0, :, 1:-1] = ink[0]
    for y in range(1, h):
        above = totals[y - 1]
        # rounding is monotonic: min(a, b) + step == min(a + step, b + step), bit for bit
        side = np.minimum(above[:, :-2], above[:, 2:])
        side += PATH_STEP
        np.add(np.minimum(side, above[:, 1:-1], out=side), ink[y], out=totals[y, :, 1:-1])
    above = totals[:-1]
    left, right, straight = above[..., :-2] + PATH_STEP, above[..., 2:] + PATH_STEP, \
        above[..., 1:-1]
    steps = np.zeros((h, *ink.shape[1:]), np.int8)  # ties: straight down, then the left
    steps[1:] = np.where(right < np.minimum(left, straight), 1, np.where(left < straight, -1, 0))
    position = totals[-1, :, 1:-1].argmin(1).tolist()
    came = steps.tolist()  # walked back up in Python: a few cuts a row, numpy costs more
    trail = []
    for y in range(h - 1, -1, -1):
        trail.append(position)
        position = [p + came[y][k][p] for k, p in enumerate(position)]
    path = columns[np.arange(len(starts)), np.array(trail[::-1])]  # (h, cuts)
    paths = [path[:, k] for k in range(len(starts))]
    for k in range(1, len(paths)):
        paths[k] = np.maximum(paths[k], paths[k - 1])
    return paths


def path_cost(mask: np.ndarray, path: np.ndarray, height: float) -> float:
    """Cutting where two digits touch is cheap (one stroke crossed, thinly); cutting through a
    loop (a 0, the bowl of a 6) crosses two strokes or more, and costs more for each."""
    on = mask[np.arange(mask.shape[0]), np.minimum(path, mask.shape[1] - 1)]
    strokes = int(np.count_nonzero(on[1:] & ~on[:-1])) + int(on[0])
    return CUT_BASE + CUT_PER_STROKE * max(0, strokes - 1) + \
        CUT_INK * float(np.count_nonzero(on)) / height


def cuts(piece: Piece, height: float) -> list[int]:
    """Candidate cut columns of a wide piece: the local minima of its column ink counts, the
    thinnest first, kept apart by CUT_MARGIN text heights."""
    if piece.width <= WIDE * height:
        return []
    columns = piece.mask.sum(0).astype(float)
    smooth = np.convolve(np.pad(columns, 1, mode="edge"), [0.25, 0.5, 0.25], "valid")
    margin = max(2, round(CUT_MARGIN * height))
    inner = np.arange(margin, piece.width - margin)
    if inner.size == 0:
        return []
    left, right = smooth[inner - 1], smooth[np.minimum(inner + 1, piece.width - 1)]
    minima = inner[(smooth[inner] <= left) & (smooth[inner] <= right)]
    most = int(np.ceil(piece.width / (0.3 * height)))
    chosen: list[int] = []
    for x in sorted(minima.tolist(), key=lambda x: (smooth[x], x)):
        if all(abs(x - c) >= 2 * margin for c in chosen):
            chosen.append(x)
        if len(chosen) >= most:
            break
    return sorted(chosen)


def candidates(grey: np.ndarray, atoms: list[Atom], found: list[Piece], height: float,
               geometry: Geometry, lined: bool = False) -> Candidates:
    """Every run of neighbouring atoms that could be one digit, normalized for the model.
    `lined`: form lines were removed, so thin straight slivers are likely what is left of them."""
    band = _text_band(found, height)
    width = digit_width(found, height)
    signs = {k for k, piece in enumerate(found)
             if _sign_or_sliver(piece, height, band, lined, grey.shape[0])}
    spans, images, penalties = [], [], []
    for i, j in _runs(atoms):
        penalty = _shape_cost(atoms, i, j, height, width)
        if penalty is None or (penalty >= MAX_PENALTY and j > i + 1
                               and not _whole_piece(atoms, i, j)):
            continue
        if any(a.piece in signs for a in atoms[i:j]):
            penalty += SIGN_COST
        image = _model_input(grey, atoms[i:j], geometry)
        if image is None:  # too faint to show the model anything
            continue
        spans.append((i, j))
        images.append(image)
        penalties.append(penalty)
    skip = np.array([_skip_cost(a, atoms, found, height, signs) for a in atoms])
    readable = {i for i, j in spans if j == i + 1}
    skip[[i for i in range(len(atoms)) if i not in readable]] = 0.0  # faint dust, left out
    return Candidates(np.array(spans, int).reshape(-1, 2),
                      np.stack(images) if images else
                      np.zeros((0, geometry.height, geometry.width), np.uint8),
                      np.array(penalties, float), skip,
                      np.array([(a.x0, a.x1) for a in atoms], int).reshape(-1, 2))


def _runs(atoms: list[Atom]) -> list[tuple[int, int]]:
    """The atom ranges [i, j) worth scoring: up to MAX_ATOMS neighbours, and every whole piece
    however many atoms its cuts made."""
    runs = {(i, j) for i in range(len(atoms))
            for j in range(i + 1, min(i + MAX_ATOMS, len(atoms)) + 1)}
    start = 0
    for k in range(1, len(atoms) + 1):
        if k == len(atoms) or atoms[k].piece != atoms[start].piece:
            runs.add((start, k))
            start = k
    return sorted(runs)


def _whole_piece(atoms: list[Atom], i: int, j: int) -> bool:
    """atoms[i:j] are exactly the atoms of one piece."""
    piece = atoms[i].piece
    return all(a.piece == piece for a in atoms[i:j]) and (i == 0 or atoms[i - 1].piece != piece) \
        and (j == len(atoms) or atoms[j].piece != piece)


def _shape_cost(atoms: list[Atom], i: int, j: int, height: float,
                digit: float) -> float | None:
    """The cost of atoms[i:j] as one digit, or None if they cannot be one (nor can any longer
    run from the same start). Joining separate pieces costs more the taller they are; a wide
    candidate likely holds two digits; a narrow slice next to a cut is likely a digit's part."""
    group = atoms[i:j]
    x0, x1 = min(a.x0 for a in group), max(a.x1 for a in group)
    y0, y1 = min(a.y0 for a in group), max(a.y1 for a in group)
    if len(group) > 1 and x1 - x0 > MAX_WIDTH * height:
        return None
    cost = group[0].cut_before
    for a, b in zip(group, group[1:], strict=False):
        if a.piece != b.piece:  # joining two pieces: a broken digit, if close enough
            if b.x0 - max(g.x1 for g in group if g.x0 <= a.x0) > MAX_GAP * height:
                return None
            shorter = min(_tall(a), _tall(b)) / height
            cost += JOIN_COSTS[0] if shorter < SMALL else JOIN_COSTS[1] if shorter < 0.8 \
                else JOIN_COSTS[2]
    sliced = group[0].cut_before > 0 or (j < len(atoms) and atoms[j].piece == group[-1].piece)
    wide, tall = (x1 - x0) / digit, (y1 - y0) / height
    cost += WIDE_COST * max(0.0, wide - WIDE_FROM) \
        + SHORT_COST * max(0.0, SHORT_FROM - tall)
    return cost + (SLICE_COST if sliced and (x1 - x0) < 0.35 * height else 0.0)


def _tall(atom: Atom) -> int:
    return atom.y1 - atom.y0


def _text_band(found: list[Piece], height: float) -> tuple[float, float] | None:
    """The rows the digits span (medians of the tall pieces), None if no piece is tall."""
    tall = [p for p in found if p.height >= 0.5 * height]
    if not tall:
        return None
    return float(np.median([p.y0 for p in tall])), float(np.median([p.y1 for p in tall]))


def _sign_or_sliver(piece: Piece, height: float, band: tuple[float, float] | None,
                    lined: bool, field_height: int) -> bool:
    """A piece more likely a sign ($) or what is left of a form line (when the field had lines)
    than a digit."""
    return _sign_like(piece, height, band) or (lined and _sliver(piece, field_height))


def _sliver(piece: Piece, field_height: int) -> bool:
    """A thin vertical piece, straight to the pixel: the rest of a printed line."""
    return piece.width <= max(3, round(SLIVER * field_height)) and piece.height > piece.width


def _sign_like(piece: Piece, height: float, band: tuple[float, float] | None) -> bool:
    """A piece reaching well above and below the digits, as the bar of a $ does."""
    if band is None:  # no digit-sized ink to reach beyond
        return False
    top, bottom = band
    return piece.y0 < top - SIGN_REACH * height and piece.y1 > bottom + SIGN_REACH * height


def _skip_cost(atom: Atom, atoms: list[Atom], found: list[Piece], height: float,
               signs: set[int]) -> float:
    """Reading an atom as no digit: cheap for a small mark (comma, dash, dot) and for a sign
    reaching above and below the digits ($), impossible for a slice or a digit."""
    piece = found[atom.piece]
    if sum(a.piece == atom.piece for a in atoms) > 1:
        return np.inf
    if piece.height < SMALL * height or atom.piece in signs:
        return 0.1
    return np.inf


def _model_input(grey: np.ndarray, group: list[Atom], geometry: Geometry) -> np.ndarray | None:
    """The group's own ink (not its neighbours'), normalized as a single digit is; None if
    that leaves nothing to see."""
    x0, x1 = min(a.x0 for a in group), max(a.x1 for a in group)
    y0, y1 = min(a.y0 for a in group), max(a.y1 for a in group)
    mask = np.zeros((y1 - y0, x1 - x0), bool)
    for a in group:
        mask[a.y0 - y0 : a.y1 - y0, a.x0 - x0 : a.x1 - x0] |= a.mask
    crop = grey[y0:y1, x0:x1] * _grow(mask)
    try:
        return place(fit_digit(crop, max(crop.shape), geometry), geometry)
    except BlankImageError:
        return None


def _grow(mask: np.ndarray) -> np.ndarray:
    """bool (h, w) grown by a pixel each way: keeps the antialiased rim of the strokes."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= out[:, :-1].copy()
    out[:, :-1] |= out[:, 1:].copy()
    return out
