"""Connected pieces of ink (8-connected), labelled run by run with a union-find."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from scorer.numbers.runs import paint_runs, row_runs


class Piece(NamedTuple):
    """A connected piece of ink: its bounding box (stops exclusive), pixel count and mask
    (bool (y1 - y0, x1 - x0), the piece's own pixels only)."""

    y0: int
    x0: int
    y1: int
    x1: int
    area: int
    mask: np.ndarray

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def centre_x(self) -> float:
        return (self.x0 + self.x1) / 2


class TooManyPieces(ValueError):
    """More separate pieces of ink than a field of digits can hold (noise, a page, a photo)."""


def pieces(ink: np.ndarray, most: int | None = None) -> list[Piece]:
    """bool (H, W) -> its 8-connected pieces, left to right by centre. Raises TooManyPieces if
    there are more than `most` (before any is built: the check bounds the work)."""
    rows, starts, stops = row_runs(ink)
    if rows.size == 0:
        return []
    labels = _run_labels(rows, starts, stops, ink.shape[0])
    order = np.argsort(labels, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(labels[order])) + 1)
    if most is not None and len(groups) > most:
        raise TooManyPieces(f"{len(groups)} separate marks")
    return sorted((_piece(rows[g], starts[g], stops[g]) for g in groups),
                  key=lambda p: p.centre_x)


def _run_labels(rows: np.ndarray, starts: np.ndarray, stops: np.ndarray, height: int
                ) -> np.ndarray:
    """One label per run, equal for runs that touch (8-connected), without a Python loop per
    run: the touching pairs of consecutive rows, then union-find on arrays (hooking and pointer
    jumping) until every pair has one label."""
    first = np.searchsorted(rows, np.arange(height + 1))
    above_first = np.where(rows > 0, first[np.maximum(rows - 1, 0)], first[rows])
    above_stop = first[rows]
    # Runs j of the row above touch run i when start_j <= stop_i and stop_j >= start_i
    # (diagonals included). Runs are sorted by (row, start) and so by (row, stop): one search
    # over keys row * wide + value finds the range [lo, hi) of each run's neighbours above.
    wide = int(stops.max()) + 2
    lo = np.searchsorted(rows * wide + stops, (rows - 1) * wide + starts, "left")
    hi = np.searchsorted(rows * wide + starts, (rows - 1) * wide + stops, "right")
    lo, hi = np.maximum(lo, above_first), np.minimum(hi, above_stop)
    counts = np.maximum(hi - lo, 0)
    i = np.repeat(np.arange(rows.size), counts)
    j = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
    # Every label is a root (labels[r] == r, the smallest index of its tree) at the top of the
    # loop: the larger root of each touching pair is hooked under the smaller, then paths are
    # flattened. Far fewer rounds than spreading labels one step a round, and the same
    # answer: the smallest run index of each piece.
    labels = np.arange(rows.size)
    while True:
        a, b = labels[i], labels[j]
        if np.array_equal(a, b):
            return labels
        np.minimum.at(labels, np.maximum(a, b), np.minimum(a, b))
        while not np.array_equal(labels, flat := labels[labels]):
            labels = flat


def _piece(rows: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> Piece:
    y0, y1, x0, x1 = int(rows.min()), int(rows.max()) + 1, int(starts.min()), int(stops.max())
    mask = paint_runs((y1 - y0, x1 - x0), rows - y0, starts - x0, stops - x0)
    return Piece(y0, x0, y1, x1, int((stops - starts).sum()), mask)


def merge(a: Piece, b: Piece) -> Piece:
    """One piece holding the pixels of both."""
    y0, x0, y1, x1 = min(a.y0, b.y0), min(a.x0, b.x0), max(a.y1, b.y1), max(a.x1, b.x1)
    mask = np.zeros((y1 - y0, x1 - x0), bool)
    for p in (a, b):
        mask[p.y0 - y0 : p.y1 - y0, p.x0 - x0 : p.x1 - x0] |= p.mask
    return Piece(y0, x0, y1, x1, a.area + b.area, mask)
