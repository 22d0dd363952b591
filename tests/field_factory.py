"""Whole-number fields for the number reader: one line of handwritten digits per image.

Every style takes the field's digits (28x28 uint8 MNIST-style images, light ink on dark, in
reading order) and a numpy Generator and returns the encoded bytes (PNG or JPEG) of one field:
an amount, a ZIP code, a meter reading, a comb field with one digit per printed cell. Each style
is one way reading a whole number goes wrong (wide and tight gaps, broken strokes, printed boxes,
combs and lines, marks that are not digits, rotation, size, polarity, lighting). The field's true
reading is the string of its digits' labels, which the caller knows: nothing a style adds is a
digit. The same Generator state always gives the same bytes.

Strokes: each digit is cropped and upscaled to the field's digit height (which varies +-8 % from
digit to digit, the baseline +-5 %): for most writers its centre line (digit_factory._skeleton of
digit_factory.ink_mask) is drawn again with a round pen (a fine pen to a marker; a thin grainy
pencil), for the others MNIST's own stroke is kept, as a marker; one slant per writer. Printed
lines (boxes, combs, ticks, underlines, ruled and squared paper) are straight, in print colours
under the ink. Most styles choose PNG or JPEG at random (`fmt` forces one).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter
from scipy.ndimage import binary_dilation, distance_transform_edt

from digit_factory import _encode, _pencil_texture, _skeleton, _to_u8, ink_mask

DIGIT_HEIGHT = (40.0, 120.0)  # px, the default range of a field's digit height
SKELETON_HEIGHT = 48  # the centre line is found at this height, then scaled up (fast, smooth)
MARGIN = (0.05, 0.2)  # paper around everything, as a fraction of the content's height

# Printed form colours: black, and the drop-out colours scanners remove (the ink is dark).
PRINT_COLOURS = {
    "black": (35, 35, 40),
    "red": (232, 105, 105),
    "blue": (125, 160, 228),
    "green": (105, 188, 128),
}
LINE_STYLES = ("solid", "dashed", "dotted")

# A line of a printed form: ("h", y, x0, x1, width, dash) or ("v", x, y0, y1, width, dash),
# in the field's own coordinates (any origin); dash is (on, off) in px or None (solid).
Line = tuple[str, float, float, float, int, tuple | None]
# A digit or mark placed in the field: (coverage, x, y) with (x, y) its top-left corner.
Placed = tuple[np.ndarray, int, int]


# ---- writers, pens and glyphs -------------------------------------------------------------------


class Writer:
    """One person's hand for a whole field: digit height, pen width and slant."""

    def __init__(self, height: float, pen: float | None, slant: float):
        self.height = height  # nominal digit height, px
        self.pen = pen  # round pen width in px; None: MNIST's own stroke, upscaled
        self.slant = slant  # horizontal shear; > 0 leans to the right

    @property
    def stroke(self) -> float:
        """The stroke width in px (MNIST's own is about a tenth of the digit's height)."""
        return self.pen if self.pen is not None else 0.11 * self.height


def writer(
    rng: np.random.Generator,
    height: float | None = None,
    heights: tuple[float, float] = DIGIT_HEIGHT,
    pen: tuple[float, float] | None = (0.04, 0.11),
    own_stroke: float = 0.3,
) -> Writer:
    """A random writer: `pen` is the pen width's range as a fraction of the digit height (at
    least 1.6 px); with probability `own_stroke` MNIST's upscaled stroke is kept instead."""
    height = float(height or rng.uniform(*heights))
    width = None
    if pen is not None and rng.random() >= own_stroke:
        width = max(1.6, rng.uniform(*pen) * height)
    slant = rng.uniform(-0.12, 0.25) if rng.random() < 0.5 else 0.0
    return Writer(height, width, slant)


def digit_cover(
    digit: np.ndarray, rng: np.random.Generator, height: float, pen: float | None = None,
    slant: float = 0.0,
) -> np.ndarray:
    """float32 (h, w) ink coverage in [0, 1] of one digit `height` px high, cropped to its ink:
    MNIST's stroke upscaled (pen None), or its centre line drawn with a round pen `pen` px wide."""
    cover = _upscale(digit, height) if pen is None else _redraw(digit, rng, height, pen)
    if slant:
        cover = _slant(cover, slant)
    return _crop(cover)


def _upscale(digit: np.ndarray, height: float) -> np.ndarray:
    """MNIST's own stroke, smoothly upscaled (as digit_factory.ink_mask, but with a border so
    that strokes at the edge of the ink stay round) and given a firmer edge, as a marker's."""
    rows, cols = np.flatnonzero(digit.any(1)), np.flatnonzero(digit.any(0))
    crop = np.pad(digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], 2)
    scale = height / (crop.shape[0] - 4)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    big = Image.fromarray(crop).resize(size, Image.Resampling.BICUBIC)
    big = big.filter(ImageFilter.GaussianBlur(height / 60))
    return np.clip((np.asarray(big, np.float32) / 255.0 - 0.2) / 0.55, 0.0, 1.0)


def _redraw(digit: np.ndarray, rng: np.random.Generator, height: float, pen: float) -> np.ndarray:
    """The digit's centre line (found at SKELETON_HEIGHT, its segments scaled up to `height`)
    drawn with an antialiased round pen."""
    small = max(16, min(round(height), SKELETON_HEIGHT))
    line = _skeleton(np.pad(ink_mask(digit, rng, height=small) > 0.45, 1))
    scale = height / small
    starts, ends = [np.argwhere(line)], [np.argwhere(line)]  # lone pixels: dots
    rows, cols = line.shape
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):  # 8-neighbours, each pair once
        a = line[: rows - dy, max(0, -dx) : cols - max(0, dx)]
        b = line[dy:, max(0, dx) : cols - max(0, -dx)]
        found = np.argwhere(a & b) + (0, max(0, -dx))
        starts.append(found)
        ends.append(found + (dy, dx))
    p, q = np.concatenate(starts).astype(np.float32), np.concatenate(ends).astype(np.float32)
    t = np.linspace(0.0, 1.0, int(np.ceil(scale * 1.5)) + 2, dtype=np.float32)[:, None, None]
    pad = int(np.ceil(pen / 2)) + 2
    points = np.rint((p + t * (q - p) - 0.5) * scale - 0.5 + pad).astype(np.intp)
    canvas = np.zeros((int(np.ceil((rows - 2) * scale)) + 2 * pad + 1,
                       int(np.ceil((cols - 2) * scale)) + 2 * pad + 1), bool)
    canvas[points[..., 0], points[..., 1]] = True
    return _pen_from_line(canvas, pen)


def _pen_from_line(line: np.ndarray, pen: float) -> np.ndarray:
    """Antialiased coverage of a round pen `pen` px wide moved along the True pixels."""
    distance = distance_transform_edt(~line)
    return np.clip(pen / 2 + 0.5 - distance, 0.0, 1.0).astype(np.float32)


def _slant(cover: np.ndarray, shear: float) -> np.ndarray:
    """Shear horizontally about the bottom row (the top moves right for shear > 0)."""
    h, w = cover.shape
    extra = int(np.ceil(abs(shear) * h)) + 1
    im = Image.fromarray(cover.astype(np.float32), "F").crop((-extra, 0, w + extra, h))
    im = im.transform(im.size, Image.Transform.AFFINE, (1, shear, -shear * h, 0, 1, 0),
                      Image.Resampling.BILINEAR)
    return np.asarray(im, np.float32)


def _crop(cover: np.ndarray, threshold: float = 0.03) -> np.ndarray:
    rows, cols = np.flatnonzero((cover > threshold).any(1)), np.flatnonzero(
        (cover > threshold).any(0))
    return cover[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def glyphs(digits: list[np.ndarray], rng: np.random.Generator, hand: Writer) -> list[np.ndarray]:
    """Each digit's coverage, its height varying +-8 % around the writer's."""
    return [digit_cover(d, rng, hand.height * rng.uniform(0.92, 1.08), hand.pen, hand.slant)
            for d in digits]


def strokes(paths: list[np.ndarray], pen: float) -> np.ndarray:
    """float32 coverage, cropped, of hand strokes: each path an (n, 2) array of (x, y) px drawn
    with a round pen `pen` px wide."""
    pad = int(np.ceil(pen / 2)) + 2
    dense = []
    for path in paths:
        path = np.asarray(path, np.float32).reshape(-1, 2)
        dense.append(path[:1])
        for a, b in zip(path[:-1], path[1:], strict=True):
            t = np.linspace(0, 1, int(np.hypot(*(b - a)) * 2) + 2, dtype=np.float32)[:, None]
            dense.append(a + t * (b - a))
    points = np.concatenate(dense)
    points = np.rint(points - points.min(0) + pad).astype(np.intp)
    canvas = np.zeros((points[:, 1].max() + pad + 1, points[:, 0].max() + pad + 1), bool)
    canvas[points[:, 1], points[:, 0]] = True
    return _crop(_pen_from_line(canvas, pen))


def detach_bar(cover: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 5 whose top bar is lifted off its body, leaving a gap of 8-15 % of its height.

    The bar is found on the digit's centre line: from its top-right free end, followed until the
    line turns down into the downstroke; the ink nearest to that part is moved up. A 5 without
    such an end has its topmost rows moved up instead."""
    h, w = cover.shape
    gap = max(2, round(rng.uniform(0.08, 0.15) * h))
    out = np.zeros((h + gap, w), np.float32)
    line = _skeleton(np.pad(cover > 0.5, 1))[1:-1, 1:-1]
    path = _bar_path(line, h)
    if path is None:  # lift the topmost rows
        cut = int(np.flatnonzero((cover > 0.5).any(1))[0]) + max(2, round(0.12 * h))
        out[:cut] = cover[:cut]
        out[cut + gap :] = cover[cut:]
        return out
    on_path = np.zeros_like(line)
    on_path[tuple(np.array(path).T)] = True
    on_path = binary_dilation(on_path, np.ones((3, 3), bool)) & line  # the staircases' corners
    nearest = distance_transform_edt(~line, return_indices=True)[1]
    bar = on_path[nearest[0], nearest[1]]
    body = np.where(bar, 0.0, cover)
    # the downstroke's top ends below the bar's lowest ink: the visible gap is all of `gap`
    bottom = int(np.flatnonzero((bar & (cover > 0.3)).any(1))[-1])
    body[: bottom + 1, : path[-1][1] + max(3, round(0.1 * h))] = 0.0
    out[gap:] = body
    np.maximum(out[:h], np.where(bar, cover, 0.0), out=out[:h])
    return out


_STEPS = ((0, -1), (0, 1), (-1, 0), (1, 0), (-1, -1), (-1, 1), (1, -1), (1, 1))


def _bar_path(line: np.ndarray, h: int) -> list[tuple[int, int]] | None:
    """The skeleton pixels of a 5's top bar, from its free right end to the corner where the
    line turns to vertical; None if there is no free end near the top right."""
    p = np.pad(line, 1)
    count = sum(np.roll(np.roll(p, dy, 0), dx, 1) for dy, dx in _STEPS)[1:-1, 1:-1]
    ends = np.argwhere(line & (count == 1))
    ends = ends[ends[:, 0] < 0.4 * h]
    if not len(ends):
        return None
    y, x = ends[np.argmax(ends[:, 1] - 0.5 * ends[:, 0])]
    path, seen = [(int(y), int(x))], {(int(y), int(x))}
    while True:
        y, x = path[-1]
        step = next(((y + dy, x + dx) for dy, dx in _STEPS
                     if 0 <= y + dy < line.shape[0] and 0 <= x + dx < line.shape[1]
                     and line[y + dy, x + dx] and (y + dy, x + dx) not in seen), None)
        if step is None:
            break
        seen.update((y + dy, x + dx) for dy, dx in _STEPS)  # never step back along a staircase
        path.append(step)
    ahead = max(3, round(0.12 * h))
    for i in range(ahead, len(path) - ahead):  # (the first steps may be a hook at the end)
        dy, dx = path[i + ahead][0] - path[i][0], path[i + ahead][1] - path[i][1]
        if abs(dy) > 1.2 * abs(dx):
            return path[:i]
    return path if len(path) > 2 * ahead else None  # a bar drawn apart already


# ---- layouts: where the digits, marks and printed lines go --------------------------------------


def _digit_width(covers: list[np.ndarray], height: float) -> float:
    """A typical digit's width (a 1 is narrow: never less than half the height)."""
    return max(float(np.median([g.shape[1] for g in covers])), 0.5 * height)


def in_row(covers: list[np.ndarray], rng: np.random.Generator, height: float,
           gap: tuple[float, float] = (0.1, 0.4)) -> list[Placed]:
    """Left to right on a baseline at y = 0 (+-5 % of the height), gaps of `gap` x a digit's
    width."""
    width = _digit_width(covers, height)
    x, placed = 0.0, []
    for g in covers:
        y = -g.shape[0] + rng.uniform(-0.05, 0.05) * height
        placed.append((g, round(x), round(y)))
        x += g.shape[1] + rng.uniform(*gap) * width
    return placed


def touching_row(covers: list[np.ndarray], rng: np.random.Generator,
                 height: float) -> list[Placed]:
    """Tight handwriting: each digit moved left until its ink meets its neighbour's (and a
    pixel or two further; the baseline moved within +-5 % to meet soonest), as long as the
    boxes overlap by at most 20 % of a digit's width; otherwise (and for one pair in ten) boxes
    touching or overlapping by 0-20 %."""
    width = _digit_width(covers, height)
    placed: list[Placed] = []
    for g in covers:
        y = round(-g.shape[0] + rng.uniform(-0.05, 0.05) * height)
        if not placed:
            placed.append((g, 0, y))
            continue
        prev, px, py = placed[-1]
        right = px + prev.shape[1]
        lowest = right - 0.2 * width
        x = right - rng.uniform(0, 0.2) * width
        if rng.random() < 0.9:  # the baseline (within +-5 %) where the ink meets soonest
            tries = [(_contact(prev, px, py, g, round(top)), round(top)) for top in
                     (-g.shape[0] + dy * height for dy in (-0.05, -0.025, 0.0, 0.025, 0.05))]
            contact, y = max(tries, key=lambda t: -np.inf if t[0] is None else t[0])
            if contact is not None:
                x = max(contact - rng.uniform(0.5, 2.5), lowest)
        placed.append((g, round(x), y))
    return placed


def _contact(prev: np.ndarray, px: int, py: int, g: np.ndarray, y: int) -> float | None:
    """The x at which `g` (top at y) first touches `prev` (at px, py), coming from the right."""
    top, bottom = max(py, y), min(py + prev.shape[0], y + g.shape[0])
    if bottom <= top:
        return None
    a, b = prev[top - py : bottom - py] > 0.5, g[top - y : bottom - y] > 0.5
    both = a.any(1) & b.any(1)
    if not both.any():
        return None
    last = a.shape[1] - 1 - np.argmax(a[:, ::-1], 1)  # rightmost ink of prev, per row
    first = np.argmax(b, 1)  # leftmost ink of g, per row
    return float(px + (last - first)[both].max())


def in_cells(covers: list[np.ndarray], rng: np.random.Generator, cell_w: float, cell_h: float,
             lw: int, pitch: float | None = None) -> list[Placed]:
    """One digit per cell (cells `pitch` apart, the first's top-left corner at 0, 0; `lw` its
    line width), centred with some play."""
    pitch = pitch or cell_w
    placed = []
    for i, g in enumerate(covers):
        room_x = max(0.0, cell_w - g.shape[1] - 2 * lw)
        room_y = max(0.0, cell_h - g.shape[0] - 2 * lw)
        x = i * pitch + lw + room_x * (0.5 + rng.uniform(-0.3, 0.3))
        y = lw + room_y * (0.5 + rng.uniform(-0.3, 0.3))
        placed.append((g, round(x), round(y)))
    return placed


def _dash(kind: str, rng: np.random.Generator, width: int, height: float) -> tuple | None:
    if kind == "dashed":
        return max(3, round(rng.uniform(0.06, 0.12) * height)), max(2, round(
            rng.uniform(0.04, 0.07) * height))
    if kind == "dotted":
        return width, max(2, width * 2 + int(rng.integers(0, 3)))
    return None


def box(x0: float, y0: float, x1: float, y1: float, width: int, dash=None) -> list[Line]:
    """The four sides of a printed rectangle (the outer edge at x0..x1, y0..y1)."""
    return [("h", y0, x0, x1, width, dash), ("h", y1 - width, x0, x1, width, dash),
            ("v", x0, y0, y1, width, dash), ("v", x1 - width, y0, y1, width, dash)]


# ---- the sheet: rasterise, colour, finish -------------------------------------------------------


class Sheet:
    """A field being drawn: ink and print coverage on one canvas, and where the origin went."""

    def __init__(self, ink: np.ndarray, prints: np.ndarray, origin: tuple[int, int]):
        self.ink, self.prints, self.origin = ink, prints, origin

    @property
    def shape(self) -> tuple[int, int]:
        return self.ink.shape


def rasterise(placed: list[Placed], lines: list[Line], rng: np.random.Generator,
              margin: tuple[float, float] = MARGIN, height: int | None = None,
              width: int | None = None, extra_left: int = 0) -> Sheet:
    """Paint the placed ink and the printed lines on a canvas fitting them with margins of
    `margin` x the content's height above and below, twice that left and right (a fixed
    `height` or `width` instead spreads what is left over the two sides at random)."""
    xs0 = [x for _, x, _ in placed] + [_line_box(ln)[0] for ln in lines]
    ys0 = [y for _, _, y in placed] + [_line_box(ln)[1] for ln in lines]
    xs1 = [x + g.shape[1] for g, x, _ in placed] + [_line_box(ln)[2] for ln in lines]
    ys1 = [y + g.shape[0] for g, _, y in placed] + [_line_box(ln)[3] for ln in lines]
    x0, y0, x1, y1 = int(min(xs0)), int(min(ys0)), int(np.ceil(max(xs1))), int(np.ceil(max(ys1)))
    content_h, content_w = y1 - y0, x1 - x0
    if (height or content_h) < content_h or (width or content_w) < content_w:
        raise ValueError(f"{content_w}x{content_h} px of content do not fit {width}x{height}")
    m = [max(2, round(rng.uniform(*margin) * content_h * (1 if i < 2 else 2))) for i in range(4)]
    if height is not None:
        m[0] = int((height - content_h) * rng.uniform(0.3, 0.7))
        m[1] = height - content_h - m[0]
    if width is not None:
        m[2] = int((width - content_w) * rng.uniform(0.02, 0.98))
        m[3] = width - content_w - m[2]
    m[2] += extra_left
    shape = (content_h + m[0] + m[1], content_w + m[2] + m[3])
    ox, oy = m[2] - x0, m[0] - y0
    ink = np.zeros(shape, np.float32)
    for g, x, y in placed:
        view = ink[y + oy : y + oy + g.shape[0], x + ox : x + ox + g.shape[1]]
        np.maximum(view, g, out=view)
    prints = np.zeros(shape, np.float32)
    draw_lines(prints, lines, (ox, oy))
    return Sheet(ink, prints, (ox, oy))


def draw_lines(prints: np.ndarray, lines: list[Line], origin: tuple[int, int] = (0, 0)) -> None:
    """Paint printed lines (field coordinates; `origin` is where 0, 0 is) into `prints`."""
    ox, oy = origin
    for kind, at, start, end, lw, dash in lines:
        at, start, end = round(at), round(start), round(end)
        on = np.ones(end - start, np.float32)
        if dash is not None:
            on = (np.arange(end - start) % sum(dash) < dash[0]).astype(np.float32)
        if kind == "h":
            view = prints[at + oy : at + oy + lw, start + ox : end + ox]
            np.maximum(view, on[None, : view.shape[1]], out=view)
        else:
            view = prints[start + oy : end + oy, at + ox : at + ox + lw]
            np.maximum(view, on[: view.shape[0], None], out=view)


def _line_box(line: Line) -> tuple[float, float, float, float]:
    kind, at, start, end, lw, _ = line
    return (start, at, end, at + lw) if kind == "h" else (at, start, at + lw, end)


def paper_colour(rng: np.random.Generator) -> np.ndarray:
    """White to cream."""
    return rng.uniform(228, 250) - rng.uniform(0, 12, 3)


def pen_colour(rng: np.random.Generator) -> np.ndarray:
    """Black to dark blue."""
    grey = rng.uniform(10, 60)
    return np.array([grey, grey, grey + rng.uniform(0, 90)])


def compose(sheet: Sheet, paper, ink_rgb, print_rgb=(35, 35, 40)) -> np.ndarray:
    """float32 (h, w, 3): paper (a colour or an (h, w, 3) array), the print, the ink on top."""
    rgb = np.empty((*sheet.shape, 3), np.float32)
    rgb[:] = paper
    if sheet.prints.any():
        rgb += (np.asarray(print_rgb, np.float32) - rgb) * sheet.prints[..., None]
    rgb += (np.asarray(ink_rgb, np.float32) - rgb) * sheet.ink[..., None]
    return rgb


def finish(rgb: np.ndarray, rng: np.random.Generator, fmt: str | None = None,
           noise: tuple[float, float] = (1.0, 3.0), blur: float = 0.0,
           quality: tuple[int, int] = (70, 93), grey: bool = False) -> bytes:
    """Scanner blur and noise, then PNG or JPEG (random when `fmt` is None)."""
    fmt = fmt or ("PNG" if rng.random() < 0.5 else "JPEG")
    if grey:
        rgb = rgb.mean(-1)
    if blur:
        im = Image.fromarray(_to_u8(rgb)).filter(ImageFilter.GaussianBlur(blur))
        rgb = np.asarray(im, np.float32)
    sigma = rng.uniform(*noise)
    grain = sigma * rng.standard_normal(rgb.shape[:2], np.float32)  # the same in every channel
    rgb = rgb + (grain if grey else grain[..., None])
    im = Image.fromarray(_to_u8(rgb))
    if fmt.upper() in ("JPEG", "JPG"):
        return _encode(im, "JPEG", quality=int(rng.integers(*quality)))
    return _encode(im, "PNG", compress_level=1)  # fast; noise compresses badly anyway


def _choose(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


# ---- the styles ---------------------------------------------------------------------------------


def _spaced_rgb(digits, rng, height=None, gap=(0.1, 0.4), labels=None):
    hand = writer(rng, height)
    covers = glyphs(digits, rng, hand)
    for i, label in enumerate(labels or ""):
        if label == "5":
            covers[i] = detach_bar(covers[i], rng)
    sheet = rasterise(in_row(covers, rng, hand.height, gap), [], rng)
    paper = paper_colour(rng)
    return compose(sheet, paper, pen_colour(rng)), paper


def spaced(digits: list[np.ndarray], rng: np.random.Generator, *, height: float | None = None,
           fmt: str | None = None) -> bytes:
    """Dark pen on off-white paper; clear gaps of 10-40 % of a digit's width between digits."""
    rgb, _ = _spaced_rgb(digits, rng, height)
    return finish(rgb, rng, fmt)


def touching(digits: list[np.ndarray], rng: np.random.Generator, *, height: float | None = None,
             fmt: str | None = None) -> bytes:
    """Tight handwriting: neighbours touch or overlap by up to 20 % of a digit's width, their
    ink connected in most pairs."""
    hand = writer(rng, height)
    sheet = rasterise(touching_row(glyphs(digits, rng, hand), rng, hand.height), [], rng)
    return finish(compose(sheet, paper_colour(rng), pen_colour(rng)), rng, fmt)


def pencil(digits: list[np.ndarray], rng: np.random.Generator, *, height: float | None = None,
           fmt: str | None = None) -> bytes:
    """A thin, faint, grainy pencil line that breaks apart when thresholded: graphite catches on
    the paper's tooth, so its coverage varies from 35 to 100 % in specks of 2-4 px; clear gaps."""
    hand = writer(rng, height, pen=(0.015, 0.03), own_stroke=0.0)
    hand.pen = max(1.2, hand.pen)
    sheet = rasterise(in_row(glyphs(digits, rng, hand), rng, hand.height), [], rng)
    h, w = sheet.shape
    speck = rng.uniform(2, 4)
    tooth = _pencil_texture(np.ones((int(h / speck) + 2, int(w / speck) + 2), np.float32), rng)
    tooth = Image.fromarray(tooth.astype(np.float32), "F").resize((w, h), Image.Resampling.BILINEAR)
    sheet.ink = sheet.ink * np.asarray(tooth, np.float32) * rng.uniform(0.8, 1.0)
    graphite = np.array([1.0, 1.0, 0.97]) * rng.uniform(95, 150)
    return finish(compose(sheet, paper_colour(rng), graphite), rng, fmt, blur=0.3)


def broken_five(digits: list[np.ndarray], rng: np.random.Generator, *,
                labels: str | None = None, height: float | None = None,
                fmt: str | None = None) -> bytes:
    """As spaced, but every 5 (known from `labels`, the field's reading) has its top bar lifted
    off its body by 8-15 % of its height. Without labels: spaced."""
    rgb, _ = _spaced_rgb(digits, rng, height, labels=labels)
    return finish(rgb, rng, fmt)


def boxes(digits: list[np.ndarray], rng: np.random.Generator, *, height: float | None = None,
          fmt: str | None = None) -> bytes:
    """One printed rectangle per digit (1-3 px, dark grey to black), separate boxes with a gap
    between them."""
    hand = writer(rng, height, heights=(40, 110))
    covers = glyphs(digits, rng, hand)
    lw = int(rng.integers(1, 4))
    cell_w = max(max(g.shape[1] for g in covers) + 2 * lw + 4, rng.uniform(0.8, 1.1) * hand.height)
    cell_h = max(max(g.shape[0] for g in covers) + 2 * lw + 4, rng.uniform(1.25, 1.55)
                 * hand.height)
    pitch = cell_w * (1 + rng.uniform(0.12, 0.5))
    lines = [ln for i in range(len(covers)) for ln in box(i * pitch, 0, i * pitch + cell_w,
                                                          cell_h, lw)]
    sheet = rasterise(in_cells(covers, rng, cell_w, cell_h, lw, pitch), lines, rng)
    grey = rng.uniform(15, 90)
    return finish(compose(sheet, paper_colour(rng), pen_colour(rng), (grey, grey, grey)), rng, fmt)


def _comb_parts(covers, rng, hand, line, colour, empty_cells):
    """Cells, grid lines and the digits in their cells, for comb and crossing."""
    line = line or _choose(rng, LINE_STYLES)
    colour = colour or _choose(rng, list(PRINT_COLOURS))
    empty = int(rng.integers(0, 4)) if empty_cells is None else int(empty_cells)
    lw = int(rng.integers(1, 4))
    cell_w = max(max(g.shape[1] for g in covers) + 2 * lw + 0.12 * hand.height,
                 rng.uniform(0.85, 1.15) * hand.height)
    cell_h = max(max(g.shape[0] for g in covers) + 2 * lw + 0.1 * hand.height,
                 rng.uniform(1.2, 1.5) * hand.height)
    cells = len(covers) + empty
    dash = _dash(line, rng, lw, hand.height)
    right = cells * cell_w + lw
    lines: list[Line] = [("h", 0, 0, right, lw, dash), ("h", cell_h, 0, right, lw, dash)]
    lines += [("v", i * cell_w, 0, cell_h + lw, lw, dash) for i in range(cells + 1)]
    placed = in_cells(covers, rng, cell_w, cell_h, lw)
    tint = np.asarray(PRINT_COLOURS[colour], np.float32) + rng.uniform(-12, 12, 3)
    return placed, lines, (cell_w, cell_h), tint


def _comb_rgb(digits, rng, height, line=None, colour=None, empty_cells=None, crossing=False):
    hand = writer(rng, height, heights=(40, 110))
    covers = glyphs(digits, rng, hand)
    placed, lines, (cell_w, cell_h), tint = _comb_parts(covers, rng, hand, line, colour,
                                                        empty_cells)
    if crossing:
        count = int(rng.integers(1, max(1, len(covers) // 3) + 1))
        for i in rng.choice(len(covers), count, replace=False):
            g, x, y = placed[i]
            frac = rng.uniform(0.1, 0.25)
            way = _choose(rng, ("left", "right", "tail"))
            if way == "left":
                x = round(i * cell_w - frac * g.shape[1])
            elif way == "right":
                x = round((i + 1) * cell_w - (1 - frac) * g.shape[1])
            else:
                y = round(cell_h - (1 - frac) * g.shape[0])
            placed[i] = (g, x, y)
    sheet = rasterise(placed, lines, rng)
    paper = paper_colour(rng)
    return compose(sheet, paper, pen_colour(rng), tint), paper


def comb(digits: list[np.ndarray], rng: np.random.Generator, *, line: str | None = None,
         colour: str | None = None, empty_cells: int | None = None, height: float | None = None,
         fmt: str | None = None) -> bytes:
    """A comb field: top and bottom lines and separators, one digit per cell. `line`: solid,
    dashed or dotted; `colour`: black or a drop-out red, blue or green; `empty_cells`: 0-3
    empty cells at the end (each random when not given)."""
    rgb, _ = _comb_rgb(digits, rng, height, line, colour, empty_cells)
    return finish(rgb, rng, fmt)


def comb_ticks(digits: list[np.ndarray], rng: np.random.Generator, *,
               colour: str | None = None, empty_cells: int | None = None,
               height: float | None = None, fmt: str | None = None) -> bytes:
    """Cells shown only by a baseline with short ticks (30-50 % of the digit height) standing on
    it between the cells; the digits written just above the baseline."""
    hand = writer(rng, height, heights=(40, 110))
    covers = glyphs(digits, rng, hand)
    colour = colour or _choose(rng, list(PRINT_COLOURS))
    empty = int(rng.integers(0, 3)) if empty_cells is None else int(empty_cells)
    lw = int(rng.integers(1, 4))
    cell_w = max(max(g.shape[1] for g in covers) + 2 * lw + 4, rng.uniform(0.85, 1.15)
                 * hand.height)
    tick = rng.uniform(0.3, 0.5) * hand.height
    cells = len(covers) + empty
    lines: list[Line] = [("h", 0, 0, cells * cell_w + lw, lw, None)]
    lines += [("v", i * cell_w, -tick, 0, lw, None) for i in range(cells + 1)]
    placed = []
    for i, g in enumerate(covers):
        room = max(0.0, cell_w - g.shape[1] - 2 * lw)
        x = i * cell_w + lw + room * (0.5 + rng.uniform(-0.3, 0.3))
        y = -g.shape[0] - rng.uniform(0.03, 0.14) * hand.height
        placed.append((g, round(x), round(y)))
    sheet = rasterise(placed, lines, rng)
    tint = np.asarray(PRINT_COLOURS[colour], np.float32) + rng.uniform(-12, 12, 3)
    return finish(compose(sheet, paper_colour(rng), pen_colour(rng), tint), rng, fmt)


def crossing(digits: list[np.ndarray], rng: np.random.Generator, *, line: str | None = None,
             colour: str | None = None, height: float | None = None,
             fmt: str | None = None) -> bytes:
    """A comb where some digits cross a cell line: 10-25 % of the digit beyond a separator, or
    its tail below the bottom line."""
    rgb, _ = _comb_rgb(digits, rng, height, line, colour, 0, crossing=True)
    return finish(rgb, rng, fmt)


def underline(digits: list[np.ndarray], rng: np.random.Generator, *,
              height: float | None = None, fmt: str | None = None) -> bytes:
    """The number written on a printed line longer than it, sometimes touching it."""
    hand = writer(rng, height)
    covers = glyphs(digits, rng, hand)
    placed = in_row(covers, rng, hand.height)
    width = _digit_width(covers, hand.height)
    start = -rng.uniform(0.2, 1.5) * width
    end = placed[-1][1] + covers[-1].shape[1] + rng.uniform(0.2, 1.5) * width
    lw = int(rng.integers(1, 4))
    line: Line = ("h", rng.uniform(-0.04, 0.12) * hand.height, start, end, lw, None)
    sheet = rasterise(placed, [line], rng)
    grey = rng.uniform(20, 80)
    print_rgb = _choose(rng, [(grey, grey, grey), PRINT_COLOURS["blue"]])
    return finish(compose(sheet, paper_colour(rng), pen_colour(rng), print_rgb), rng, fmt)


def ruled(digits: list[np.ndarray], rng: np.random.Generator, *, height: float | None = None,
          fmt: str | None = None) -> bytes:
    """Notebook paper: thin blue lines every 0.4-0.6 digit height across the whole image (often
    one under the digits), sometimes a red margin line left of the number."""
    hand = writer(rng, height)
    margin_line = rng.random() < 0.35
    extra = round(rng.uniform(0.3, 0.8) * hand.height) if margin_line else 0
    sheet = rasterise(in_row(glyphs(digits, rng, hand), rng, hand.height), [], rng,
                      extra_left=extra)
    h, w = sheet.shape
    paper = np.empty((h, w, 3), np.float32)
    paper[:] = paper_colour(rng)
    spacing = rng.uniform(0.4, 0.6) * hand.height
    phase = sheet.origin[1] + rng.uniform(-0.05, 0.1) * hand.height  # under the digits
    if rng.random() < 0.4:
        phase = rng.uniform(0, spacing)
    blue = np.array([120, 160, 215]) + rng.uniform(-15, 15, 3)
    alpha = rng.uniform(0.5, 0.85)
    for y in np.arange(phase % spacing, h, spacing).astype(int):
        paper[y] += (blue - paper[y]) * alpha
    if margin_line:
        x = sheet.origin[0] - round(rng.uniform(0.2, 0.6) * extra) - 1
        paper[:, x : x + int(rng.integers(1, 3))] = np.array([215, 90, 100]) + rng.uniform(
            -10, 10, 3)
    return finish(compose(sheet, paper, pen_colour(rng)), rng, fmt)


def squared(digits: list[np.ndarray], rng: np.random.Generator, *, height: float | None = None,
            fmt: str | None = None) -> bytes:
    """Squared (graph) paper: a light blue or grey grid of 0.4-0.6 digit height."""
    hand = writer(rng, height)
    sheet = rasterise(in_row(glyphs(digits, rng, hand), rng, hand.height), [], rng)
    h, w = sheet.shape
    paper = np.empty((h, w, 3), np.float32)
    paper[:] = paper_colour(rng)
    spacing = rng.uniform(0.4, 0.6) * hand.height
    grid = _choose(rng, [np.array([150, 180, 225]), np.array([170, 172, 178])])
    alpha = rng.uniform(0.45, 0.8)
    rows = np.arange(rng.uniform(0, spacing), h, spacing).astype(int)
    cols = np.arange(rng.uniform(0, spacing), w, spacing).astype(int)
    paper[rows] += (grid - paper[rows]) * alpha
    paper[:, cols] += (grid - paper[:, cols]) * alpha
    return finish(compose(sheet, paper, pen_colour(rng)), rng, fmt)


def specks(digits: list[np.ndarray], rng: np.random.Generator, *, height: float | None = None,
           fmt: str = "JPEG") -> bytes:
    """Spaced digits with 5-30 specks of dust (dots 1-3 px) and strong JPEG noise."""
    hand = writer(rng, height)
    sheet = rasterise(in_row(glyphs(digits, rng, hand), rng, hand.height), [], rng)
    h, w = sheet.shape
    dust = np.zeros((h, w), np.float32)
    dot3 = np.array([[0.5, 1, 0.5], [1, 1, 1], [0.5, 1, 0.5]], np.float32)
    for _ in range(int(rng.integers(5, 31))):
        size = int(rng.integers(1, 4))
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        shape = dot3 if size == 3 else np.ones((size, size), np.float32)
        view = dust[y : y + size, x : x + size]
        np.maximum(view, shape * rng.uniform(0.4, 1.0), out=view)
    sheet.prints = dust
    grey = rng.uniform(20, 70)
    rgb = compose(sheet, paper_colour(rng), pen_colour(rng), (grey, grey, grey))
    return finish(rgb, rng, fmt, noise=(2.0, 5.0), quality=(35, 70))


def _mark(kind: str, rng: np.random.Generator, hand: Writer) -> np.ndarray:
    """Hand-drawn coverage of a mark that is not a digit (sizes relative to the digit height)."""
    h, pen = hand.height, hand.stroke
    if kind in ("point", "stray"):
        return strokes([np.zeros((1, 2))], max(pen * rng.uniform(1.1, 1.5), 2.5))
    if kind == "comma":  # a blob, then a tail curving down to the left
        turn = np.radians(np.arange(0, 361, 30))
        head = np.stack([np.cos(turn), np.sin(turn)], 1) * max(0.4, 0.3 * pen)
        tail = np.array([[0.0, 0.0], [0.02, 0.06], [0.0, 0.13], [-0.05, 0.2]]) * h
        return strokes([head, tail * rng.uniform(0.8, 1.2)], pen)
    if kind == "dash":
        length = rng.uniform(0.25, 0.45) * h
        tilt = rng.uniform(-0.08, 0.08) * length
        return strokes([np.array([[0, 0], [length / 2, tilt / 2 + 0.02 * h], [length, tilt]])],
                       pen)
    a = np.linspace(0, 1, 40)
    if kind == "dollar":
        upper = np.radians(25 + 245 * a)  # from the right, over the top, round to the middle
        lower = np.radians(90 - 250 * a)  # from the middle, round the right, to the lower left
        s = np.concatenate([np.stack([0.5 * np.cos(upper), -0.5 - 0.5 * np.sin(upper)], 1),
                            np.stack([0.5 * np.cos(lower), 0.5 - 0.5 * np.sin(lower)], 1)])
        bar = np.array([[0.02, -1.3], [0.0, 1.3]])
        paths = [s, bar]
    else:  # euro: a C with two bars
        arc = np.radians(50 + 260 * a)
        c = np.stack([0.1 + 0.65 * np.cos(arc), -0.95 * np.sin(arc)], 1)
        paths = [c, np.array([[-0.95, -0.2], [0.25, -0.2]]), np.array([[-0.95, 0.2], [0.2, 0.2]])]
    size = h * rng.uniform(0.42, 0.55)
    angle = np.radians(rng.uniform(-8, 8))
    turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    stretch = np.array([rng.uniform(0.85, 1.15), 1.0])
    return strokes([(p * stretch) @ turn.T * size for p in paths], pen)


def punctuation(digits: list[np.ndarray], rng: np.random.Generator, *,
                height: float | None = None, fmt: str | None = None) -> bytes:
    """Marks that are not digits between or before them: thousands separators ("12,345"), a
    decimal point or comma, a dash ("123-45"), a hand-drawn "$" or "€" before the number, a
    stray dot. The reading stays the digits alone."""
    hand = writer(rng, height)
    covers = glyphs(digits, rng, hand)
    n = len(covers)
    primary = _choose(rng, ("group", "decimal", "dash", "currency", "stray"))
    if primary == "group" and n < 4:
        primary = "decimal"
    if n == 1:  # nothing between digits
        primary = "currency"
    kinds = {primary}
    if rng.random() < 0.35:
        kinds.add(_choose(rng, ("currency", "stray")))
    after: dict[int, str] = {}  # digit index -> the mark written after it
    if "group" in kinds:
        sep = "comma" if rng.random() < 0.6 else "point"
        after.update({i: sep for i in range(n - 1) if (n - 1 - i) % 3 == 0})
    if "decimal" in kinds:
        after[n - 3 if n >= 3 else 0] = "point" if rng.random() < 0.6 else "comma"
    if "dash" in kinds:
        after[int(rng.integers(0, n - 1))] = "dash"
    if "stray" in kinds:
        after.setdefault(int(rng.integers(0, max(1, n - 1))), "stray")
    items = []  # (coverage, kind)
    if "currency" in kinds:
        items.append((_mark(_choose(rng, ("dollar", "euro")), rng, hand), "currency"))
    for i, g in enumerate(covers):
        items.append((g, "digit"))
        if i in after:
            items.append((_mark(after[i], rng, hand), after[i]))
    width, h = _digit_width(covers, hand.height), hand.height
    x, placed = 0.0, []
    for index, (g, kind) in enumerate(items):
        if index:
            tight = kind != "digit" or items[index - 1][1] != "digit"
            x += rng.uniform(*((0.06, 0.25) if tight else (0.1, 0.35))) * width
        bottom = {
            "digit": rng.uniform(-0.05, 0.05) * h,
            "point": rng.uniform(-0.03, 0.02) * h,
            "comma": g.shape[0] - rng.uniform(0.03, 0.1) * h,
            "dash": -rng.uniform(0.35, 0.5) * h + g.shape[0] / 2,
            "currency": g.shape[0] / 2 - rng.uniform(0.45, 0.55) * h,
            "stray": -rng.uniform(0.15, 1.0) * h,
        }[kind]
        placed.append((g, round(x), round(bottom - g.shape[0])))
        x += g.shape[1]
    sheet = rasterise(placed, [], rng)
    return finish(compose(sheet, paper_colour(rng), pen_colour(rng)), rng, fmt)


def rotated(digits: list[np.ndarray], rng: np.random.Generator, *, height: float | None = None,
            fmt: str | None = None) -> bytes:
    """A spaced or comb field turned by 1-4 degrees either way; the corners filled with paper."""
    height = height or rng.uniform(40, 80)  # smaller: turning a long field makes it taller
    if rng.random() < 0.5:
        rgb, paper = _spaced_rgb(digits, rng, height)
    else:
        rgb, paper = _comb_rgb(digits, rng, height)
    angle = rng.uniform(1, 4) * _choose(rng, (-1, 1))
    fill = tuple(int(v) for v in np.clip(paper, 0, 255))
    im = Image.fromarray(_to_u8(rgb)).rotate(angle, Image.Resampling.BICUBIC, expand=True,
                                              fillcolor=fill)
    return finish(np.asarray(im, np.float32), rng, fmt)


def small(digits: list[np.ndarray], rng: np.random.Generator, *, fmt: str = "PNG") -> bytes:
    """The whole field 40 px high, digits about 24-32 px high."""
    hand = writer(rng, rng.uniform(24, 29.5), pen=(0.07, 0.12))
    sheet = rasterise(in_row(glyphs(digits, rng, hand), rng, hand.height), [], rng, height=40)
    return finish(compose(sheet, paper_colour(rng), pen_colour(rng)), rng, fmt)


def long(digits: list[np.ndarray], rng: np.random.Generator, *, fmt: str | None = None) -> bytes:
    """A 2,000 px wide field, 100-200 px high: big digits spread out along it, sometimes in a
    printed frame (a greyscale PNG or a JPEG)."""
    field_h = int(rng.integers(100, 201))
    hand = writer(rng, field_h * rng.uniform(0.5, 0.72))
    covers = glyphs(digits, rng, hand)
    while sum(g.shape[1] for g in covers) > 1800:  # many digits: smaller ones
        hand.height *= 0.8
        covers = glyphs(digits, rng, hand)
    width = _digit_width(covers, hand.height)
    room = 2000 - 0.12 * field_h - sum(g.shape[1] for g in covers)
    most = max(0.02, min(1.6, room / (width * max(1, len(covers) - 1))))
    placed = in_row(covers, rng, hand.height, (min(0.3, most), most))
    sheet = rasterise(placed, [], rng, height=field_h, width=2000)
    if rng.random() < 0.5:
        inset, lw = int(rng.integers(2, 6)), int(rng.integers(1, 3))
        draw_lines(sheet.prints, box(inset, inset, 2000 - inset, field_h - inset, lw))
    rgb = compose(sheet, paper_colour(rng), pen_colour(rng))
    fmt = fmt or ("PNG" if rng.random() < 0.5 else "JPEG")
    return finish(rgb, rng, fmt, grey=fmt == "PNG")


def light_on_dark(digits: list[np.ndarray], rng: np.random.Generator, *,
                  height: float | None = None, fmt: str = "JPEG") -> bytes:
    """Chalk on a smudged dark board (thick, grainy), or white ink on black."""
    chalk = rng.random() < 0.5
    hand = writer(rng, height, pen=(0.08, 0.14) if chalk else (0.04, 0.1))
    sheet = rasterise(in_row(glyphs(digits, rng, hand), rng, hand.height, (0.15, 0.5)), [], rng)
    h, w = sheet.shape
    if chalk:
        sheet.ink = sheet.ink * rng.uniform(0.55, 1.0, (h, w)).astype(np.float32)
        smudge = Image.fromarray(_to_u8(rng.uniform(0, 255, (h // 16 + 2, w // 16 + 2))))
        smudge = np.asarray(smudge.resize((w, h), Image.Resampling.BICUBIC), np.float32) / 255
        board = _choose(rng, [np.array([35, 60, 45]), np.array([30, 32, 35])])
        ground = board + 25 * smudge[..., None]
        ink = np.array([230, 235, 225]) * rng.uniform(0.8, 1.0)
    else:
        ground = np.full(3, rng.uniform(0, 30))
        ink = np.full(3, rng.uniform(215, 255))
    rgb = compose(sheet, ground, ink)
    return finish(rgb, rng, fmt, noise=(3.0, 7.0) if chalk else (1.0, 3.0), quality=(60, 90))


def photo(digits: list[np.ndarray], rng: np.random.Generator, *, height: float | None = None,
          fmt: str = "JPEG") -> bytes:
    """A phone photo of a spaced or comb field: light from one side and vignetting (the paper
    spans ~2x in brightness), blur, sensor noise, JPEG."""
    if rng.random() < 0.6:
        rgb, _ = _spaced_rgb(digits, rng, height)
    else:
        rgb, _ = _comb_rgb(digits, rng, height, colour="black")
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0 : 1 : h * 1j, 0 : 1 : w * 1j].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)
    light = 0.75 + 0.35 * ramp - 0.35 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
    rgb = rgb * light[..., None]
    return finish(rgb, rng, fmt, noise=(3.0, 6.0), blur=rng.uniform(0.7, 1.6), quality=(60, 88))


FIELD_STYLES: dict[str, Callable[[list[np.ndarray], np.random.Generator], bytes]] = {
    "spaced": spaced,
    "touching": touching,
    "pencil": pencil,
    "broken_five": broken_five,
    "boxes": boxes,
    "comb": comb,
    "comb_ticks": comb_ticks,
    "crossing": crossing,
    "underline": underline,
    "ruled": ruled,
    "squared": squared,
    "specks": specks,
    "punctuation": punctuation,
    "rotated": rotated,
    "small": small,
    "long": long,
    "light_on_dark": light_on_dark,
    "photo": photo,
}
TAKES_LABELS = frozenset({"broken_five"})  # styles that need the field's reading


def render_field(digits: list[np.ndarray], rng: np.random.Generator, style: str,
                 labels: str | None = None, **options) -> bytes:
    """Encoded PNG or JPEG of one field: `digits` (28x28 uint8, light on dark) written on one
    line in the given style. `labels`, the field's reading, is passed to the styles that need
    it (broken_five) and ignored by the others; `options` go to the style's function."""
    if style in TAKES_LABELS:
        options["labels"] = labels
    return FIELD_STYLES[style](digits, rng, **options)


def field_digits(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                 n: int) -> tuple[list[np.ndarray], str]:
    """n different random digits from `images` and their reading (leading zeros possible)."""
    chosen = rng.choice(len(images), n, replace=False)
    return [images[i] for i in chosen], "".join(str(int(labels[i])) for i in chosen)
