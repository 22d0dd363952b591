"""Runs of ink along rows (or columns) of a bool image, vectorised: the building block of line
finding and of connected components (numpy only: SciPy is too heavy for the scorer)."""

from __future__ import annotations

import numpy as np


def row_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """bool (H, W) -> (row, start, stop) int arrays of every horizontal run, row-major order;
    stop is exclusive."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), bool)
    padded[:, 1:-1] = mask
    # Every run has one start and one stop edge, so in row-major order the edges alternate
    # start, stop: one pass over the flat image finds both.
    rows, columns = np.divmod(np.flatnonzero(padded[:, 1:] != padded[:, :-1]), w + 1)
    return rows[::2], columns[::2], columns[1::2]


def paint_runs(shape: tuple[int, int], rows: np.ndarray, starts: np.ndarray,
               stops: np.ndarray) -> np.ndarray:
    """The inverse of row_runs: bool (H, W) with the given runs set."""
    h, w = shape
    out = np.zeros(h * w, bool)
    lengths = stops - starts
    total = int(lengths.sum())
    if total:  # the flat index of every painted pixel: cheaper than np.add.at and a cumsum
        offsets = np.repeat(rows * w + starts - (np.cumsum(lengths) - lengths), lengths)
        out[offsets + np.arange(total)] = True
    return out.reshape(h, w)


def paint_long(shape: tuple[int, int], runs: tuple, least: int) -> np.ndarray:
    """bool `shape` with the runs (row_runs' answer) at least `least` long."""
    rows, starts, stops = runs
    keep = stops - starts >= least
    return paint_runs(shape, rows[keep], starts[keep], stops[keep])


def bridged_runs(mask: np.ndarray, gap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """row_runs of `mask` with gaps of at most `gap` px between runs of a row bridged: what
    row_runs(close_gaps(mask, gap)) gives, without painting the image in between."""
    rows, starts, stops = row_runs(mask)
    if rows.size == 0:
        return rows, starts, stops
    joins = (rows[1:] == rows[:-1]) & (starts[1:] - stops[:-1] <= gap)
    first = np.concatenate([[True], ~joins])  # a run that starts a bridged run
    last = np.concatenate([~joins, [True]])
    return rows[first], starts[first], stops[last]


def close_gaps(mask: np.ndarray, gap: int) -> np.ndarray:
    """bool (H, W) -> bool with horizontal gaps of at most `gap` px between ink filled in (so a
    dashed or dotted line becomes one run)."""
    h, w = mask.shape
    x = np.arange(w, dtype=np.int32)  # int32: half the memory traffic of numpy's default
    last = np.maximum.accumulate(np.where(mask, x, np.int32(-(w + gap + 2))), axis=1)
    after = np.where(mask, x, np.int32(2 * w + gap + 2))[:, ::-1]
    after = np.minimum.accumulate(after, axis=1)[:, ::-1]
    return mask | (after - last <= gap + 1)


def bands(flags: np.ndarray) -> list[tuple[int, int]]:
    """bool (n,) -> [(start, stop)] of its runs of True."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(),
                    strict=True))
