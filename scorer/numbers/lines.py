"""Remove printed form lines from a field's ink: box and comb edges, underlines, ruled and
squared paper (solid, dashed or dotted), comb separators and the ticks of a comb's baseline.

A form line is printed straight (the field has been straightened), thin, and long or regular;
handwriting is none of these together. Ink of a digit that crosses a line is kept where the
stroke continues on both sides of it.
"""

from __future__ import annotations

import numpy as np

from scorer.numbers.runs import bands, bridged_runs, close_gaps, paint_long

LINE_LENGTH = 0.45  # a horizontal line runs at least this many field heights...
# ...and its rows have such runs over this share of the ink's width. A printed line spans the
# field; the bottoms (or tops) of touching digits, bridged as if they were dashes, reach about
# half of it (0.35 here took ink from 22 of 34 touching dev fields; 0.6 to 0.8 read within two
# dev fields of each other, docs/benchmarks.md).
LINE_COVER = 0.65
BOX_COVER = 0.35  # the tops and bottoms of separate boxes: segments over this share
SEGMENT_LENGTH = 0.2  # or: a row of at least MIN_BOXES segments this many field heights long
MIN_BOXES = 3
MAX_THICKNESS = 0.1  # lines are at most this many field heights thick (at least 4 px)
DASH_GAP = 0.1  # gaps up to this many field heights in a dashed or dotted line are bridged
FULL_HEIGHT = 0.85  # a vertical line this many field heights long is printed, whatever it joins
MIN_TICKS = 3  # a comb's ticks come in numbers, evenly spaced


def remove_form_lines(ink: np.ndarray) -> np.ndarray:
    """bool (H, W) ink -> a copy without form lines."""
    h, w = ink.shape
    thick = max(4, round(MAX_THICKNESS * h))
    gap = max(3, round(DASH_GAP * h))
    rows = horizontal_lines(ink, thick, gap)
    out = ink.copy()
    for y0, y1, columns in rows:
        erase_band(out, y0, y1, columns)
    columns = np.ascontiguousarray(ink.T)  # (W, H): a column's runs are its rows'
    verticals = full_height_lines(columns, thick, gap)
    if rows:  # dashed verticals bridged: only lines joining rows need them painted
        verticals += vertical_lines(close_gaps(columns, gap).T, rows, thick)
    for x0, x1, y0, y1 in verticals:
        erase_band(out.T, x0, x1, _span_flags(h, y0, y1))
    return out


def full_height_lines(columns: np.ndarray, thick: int, gap: int
                      ) -> list[tuple[int, int, int, int]]:
    """Thin vertical lines across (nearly) the whole field: a margin line, a box's sides.
    Handwriting leaves a margin above and below; these do not. `columns`: the ink transposed,
    (W, H); gaps up to `gap` px are bridged (dashed lines)."""
    w, h = columns.shape
    xs, starts, stops = bridged_runs(columns, gap)
    long = np.zeros(w, bool)
    long[xs[stops - starts >= round(FULL_HEIGHT * h)]] = True
    return [(x0, x1, 0, h) for x0, x1 in bands(long) if x1 - x0 <= thick]


def horizontal_lines(ink: np.ndarray, thick: int, gap: int
                     ) -> list[tuple[int, int, np.ndarray]]:
    """Thin bands of rows that hold long (gap-bridged) runs over much of the ink's width, or
    a row of shorter segments standing out from the rows beside them (the tops and bottoms
    of separate boxes): [(y0, y1, bool (W,) columns the line covers)]."""
    h, w = ink.shape
    used = np.flatnonzero(ink.any(0))
    if used.size == 0:
        return []
    span = used[-1] - used[0] + 1
    runs = bridged_runs(ink, gap)
    long = paint_long(ink.shape, runs, max(round(LINE_LENGTH * h), 8))
    parts = paint_long(ink.shape, runs, max(round(SEGMENT_LENGTH * h), 6))
    lines = []
    for y0, y1 in bands(np.count_nonzero(long, axis=1) >= LINE_COVER * span):
        if y1 - y0 <= thick:
            lines.append((max(0, y0 - 1), min(h, y1 + 1), long[y0:y1].any(0)))
    for y0, y1 in bands(_box_edge_rows(parts, span, thick)):
        if y1 - y0 <= thick and not any(a <= y0 and y1 <= b for a, b, _ in lines):
            lines.append((max(0, y0 - 1), min(h, y1 + 1), parts[y0:y1].any(0)))
    return sorted(lines, key=lambda line: line[0])


def _box_edge_rows(parts: np.ndarray, span: int, thick: int) -> np.ndarray:
    """bool (H,): rows with at least MIN_BOXES segments covering BOX_COVER of the ink's width,
    three times as covered as the rows a line's width above and below (inside a box there is
    only its sides; inside handwriting, more handwriting)."""
    cover = np.count_nonzero(parts, axis=1).astype(float)
    segments = np.count_nonzero(parts[:, 1:] & ~parts[:, :-1], axis=1) + parts[:, 0]
    step = thick + 2
    padded = np.pad(cover, step)
    beside = np.maximum(padded[: -2 * step], padded[2 * step:])
    rows = (segments >= MIN_BOXES) & (cover >= BOX_COVER * span) & (cover >= 3 * beside)
    for y in np.flatnonzero(rows):  # printed boxes are alike; handwriting is not
        lengths = np.diff(bands(parts[y]), axis=1)
        rows[y] = lengths.max() <= 1.3 * lengths.min()
    return rows


def erase_band(ink: np.ndarray, y0: int, y1: int, columns: np.ndarray) -> None:
    """Clear rows y0:y1 of bool (H, W) `ink` in `columns`, except where a stroke crosses the
    band: ink just above and just below it (within a pixel sideways)."""
    h = ink.shape[0]
    above = ink[max(0, y0 - 2) : y0].any(0) if y0 > 0 else np.zeros(ink.shape[1], bool)
    below = ink[y1 : min(h, y1 + 2)].any(0) if y1 < h else np.zeros(ink.shape[1], bool)
    crossing = _widen(above) & _widen(below)
    ink[y0:y1, columns & ~crossing] = False


def _widen(flags: np.ndarray) -> np.ndarray:
    out = flags.copy()
    out[1:] |= flags[:-1]
    out[:-1] |= flags[1:]
    return out


def _span_flags(n: int, start: int, stop: int) -> np.ndarray:
    flags = np.zeros(n, bool)
    flags[start:stop] = True
    return flags


def vertical_lines(bridged: np.ndarray, rows: list, thick: int
                   ) -> list[tuple[int, int, int, int]]:
    """Thin vertical strokes that join two horizontal lines (comb separators, box sides, grid
    paper) or stand evenly spaced on one (a comb's ticks): [(x0, x1, y0, y1)] to erase.
    `bridged`: the ink (H, W) with its vertical gaps bridged."""
    found = []
    for (_, top, _), (bottom, _, _) in zip(rows, rows[1:], strict=False):
        if bottom - top < 4:
            continue
        full = bridged[top:bottom].all(0)
        found += [(x0, x1, top, bottom) for x0, x1 in bands(full) if x1 - x0 <= thick]
    return found + ticks(bridged, rows, thick)


def ticks(bridged: np.ndarray, rows: list, thick: int) -> list[tuple[int, int, int, int]]:
    """Evenly spaced thin strokes of similar height standing on (or hanging from) a line."""
    found = []
    for y0, y1, _ in rows:
        for upward in (True, False):
            stubs = _stubs(bridged, y0 if upward else y1, upward, thick)
            found += _regular(stubs)
    return found


def _stubs(bridged: np.ndarray, edge: int, upward: bool, thick: int) -> list[tuple]:
    """Thin vertical strokes touching row `edge` from above (upward) or below: (x0, x1, y0, y1)."""
    h = bridged.shape[0]
    if (upward and edge < 3) or (not upward and edge > h - 3):
        return []
    side = bridged[:edge][::-1] if upward else bridged[edge:]
    heights = np.argmin(np.vstack([side, np.zeros_like(side[:1])]), 0)  # leading ink rows
    stubs = []
    for x0, x1 in bands(heights >= 3):
        if x1 - x0 > thick:
            continue
        tall = _median_int(heights[x0:x1].tolist())
        y0, y1 = (edge - tall, edge) if upward else (edge, edge + tall)
        stubs.append((x0, x1, y0, y1))
    return stubs


def _median_int(values: list[int]) -> int:
    """int(np.median(values)) of a few non-negative ints, at a tenth of its cost."""
    ordered = sorted(values)
    return (ordered[(len(ordered) - 1) // 2] + ordered[len(ordered) // 2]) // 2


def _regular(stubs: list[tuple]) -> list[tuple]:
    """The stubs that look like a comb's ticks: at least MIN_TICKS of similar height, evenly
    spaced (the spacing varies by under a fifth of its median)."""
    if len(stubs) < MIN_TICKS:
        return []
    tall = np.array([y1 - y0 for _, _, y0, y1 in stubs], float)
    typical = float(np.median(tall))
    similar = [s for s, t in zip(stubs, tall, strict=True) if abs(t - typical) <= 0.25 * typical]
    if len(similar) < MIN_TICKS:
        return []
    centres = np.array([(x0 + x1) / 2 for x0, x1, _, _ in similar])
    spacing = np.diff(centres)
    step = np.median(spacing)
    if step <= 0 or np.any(np.abs(spacing - step) > 0.2 * step) and \
            np.mean(np.abs(spacing - step) <= 0.2 * step) < 0.7:
        return []
    return similar
