"""Choose the reading: the path through the candidate digits that costs least, by dynamic
programming over (atoms read, digits read), so that `--length` can choose between cuts.

A candidate's cost is its shape cost plus -log of the model's probability for its best class;
an atom left out (a comma, a dash, a currency sign) costs its skip cost. The field's confidence
is the product of its digits' confidences: the chance that every digit is right, if the model's
probabilities are calibrated and its errors independent.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from scorer.numbers.length import MAX_DIGITS, Length
from scorer.numbers.segments import Candidates

FLOOR = 1e-4  # probabilities below this count as this (a -log cost of at most 9.2)


LENGTH_SLACK = 1.5  # a reading of the expected length may cost this much more than the best


class Digit(NamedTuple):
    """One digit of a reading: class index, confidence, its columns x0:x1 (in the field's
    pixels here; the reader maps them to the image's) and the atoms it was read from."""

    value: int
    confidence: float
    x0: int
    x1: int
    atoms: tuple[int, int] = (0, 0)


class Choice(NamedTuple):
    """The decoder's answer: the digits, and a reason for review ('' if none)."""

    digits: list[Digit]
    problem: str


def choose(found: Candidates, probabilities: np.ndarray, length: Length | None) -> Choice:
    """Candidates and their float (n, classes) probabilities -> the cheapest reading. With
    `length`, the cheapest of that length, unless it costs LENGTH_SLACK more than the best of
    any length: a field of 2 clear digits is not cut into 5 to fit; it is read as 2, for
    review."""
    n_atoms = len(found.skip)
    best = probabilities.argmax(1) if len(probabilities) else np.zeros(0, int)
    confidence = probabilities[np.arange(len(best)), best] if len(best) else np.zeros(0)
    cost = found.penalties - np.log(np.maximum(confidence, FLOOR))
    most = min(MAX_DIGITS, n_atoms)
    table, back = _paths(found, cost, n_atoms, most)
    counts = [k for k in range(most + 1) if math.isfinite(table[n_atoms][k])]
    if not counts:
        return Choice([], "")
    k = min(counts, key=lambda k: table[n_atoms][k])
    allowed = [c for c in counts if length is not None and length.admits(c)]
    if allowed:
        fit = min(allowed, key=lambda c: table[n_atoms][c])
        if table[n_atoms][fit] <= table[n_atoms][k] + LENGTH_SLACK:
            k = fit
    digits = _trace(back, found, best, confidence, n_atoms, k)
    problem = ""
    if length is not None and not length.admits(len(digits)):
        problem = f"read {len(digits)} digits, expected {length}"
    return Choice(digits, problem)


def _paths(found: Candidates, cost: np.ndarray, n_atoms: int, most: int):
    """table[i][k]: least cost of reading atoms [0, i) as k digits; back[i][k]: the step."""
    table = np.full((n_atoms + 1, most + 1), np.inf)
    table[0][0] = 0.0
    back: dict[tuple[int, int], tuple[int, int]] = {}  # (i, k) -> (candidate or -1, from i)
    by_start: dict[int, list[int]] = {}
    for c, (i, _) in enumerate(found.spans.tolist()):
        by_start.setdefault(i, []).append(c)
    for i in range(n_atoms):
        for k in np.flatnonzero(np.isfinite(table[i])).tolist():
            here = table[i][k]
            skip = here + found.skip[i]
            if skip < table[i + 1][k]:
                table[i + 1][k], back[(i + 1, k)] = skip, (-1, i)
            if k == most:
                continue
            for c in by_start.get(i, ()):
                j = int(found.spans[c][1])
                total = here + cost[c]
                if total < table[j][k + 1]:
                    table[j][k + 1], back[(j, k + 1)] = total, (c, i)
    return table, back


def _trace(back, found: Candidates, best, confidence, i: int, k: int):
    digits = []
    while i > 0:
        c, start = back[(i, k)]
        if c >= 0:
            a, b = found.spans[c]
            digits.append(Digit(int(best[c]), float(confidence[c]),
                                int(found.atom_x[a:b, 0].min()), int(found.atom_x[a:b, 1].max()),
                                (int(a), int(b))))
            k -= 1
        i = start
    return digits[::-1]


def field_confidence(digits: list[Digit]) -> float:
    """The product of the digits' confidences (1.0 for no digit)."""
    return float(np.prod([d.confidence for d in digits])) if digits else 0.0
