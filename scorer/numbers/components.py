"""Connected pieces of ink (8-connected), labelled run by run with a union-find."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from scorer.numbers.runs import row_runs


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


def pieces(ink: np.ndarray) -> list[Piece]:
    """bool (H, W) -> its 8-connected pieces, left to right by centre."""
    rows, starts, stops = row_runs(ink)
    if rows.size == 0:
        return []
    parent = list(range(rows.size))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first = np.searchsorted(rows, np.arange(ink.shape[0] + 1))  # runs of row y: first[y]..
    for y in range(1, ink.shape[0]):
        above = range(first[y - 1], first[y])
        if not above:
            continue
        for i in range(first[y], first[y + 1]):
            # runs above that touch run i, diagonals included: start <= stop_i, stop >= start_i
            lo = first[y - 1] + int(np.searchsorted(stops[above.start:above.stop], starts[i]))
            for j in range(lo, above.stop):
                if starts[j] > stops[i]:
                    break
                a, b = root(i), root(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    labels = np.array([root(i) for i in range(rows.size)])
    order = np.argsort(labels, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(labels[order])) + 1)
    return sorted((_piece(rows[g], starts[g], stops[g]) for g in groups),
                  key=lambda p: p.centre_x)


def _piece(rows: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> Piece:
    y0, y1, x0, x1 = int(rows.min()), int(rows.max()) + 1, int(starts.min()), int(stops.max())
    mask = np.zeros((y1 - y0, x1 - x0 + 1), np.int8)
    np.add.at(mask, (rows - y0, starts - x0), 1)
    np.add.at(mask, (rows - y0, stops - x0), -1)
    return Piece(y0, x0, y1, x1, int((stops - starts).sum()), np.cumsum(mask, 1)[:, :-1] > 0)


def merge(a: Piece, b: Piece) -> Piece:
    """One piece holding the pixels of both."""
    y0, x0, y1, x1 = min(a.y0, b.y0), min(a.x0, b.x0), max(a.y1, b.y1), max(a.x1, b.x1)
    mask = np.zeros((y1 - y0, x1 - x0), bool)
    for p in (a, b):
        mask[p.y0 - y0 : p.y1 - y0, p.x0 - x0 : p.x1 - x0] |= p.mask
    return Piece(y0, x0, y1, x1, a.area + b.area, mask)
