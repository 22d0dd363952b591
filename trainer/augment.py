"""Training-time augmentation: how uploads differ from MNIST *after* the scorer's normalizer.

The scorer turns every upload into an MNIST-like image (light ink on dark, cropped, longest side
scaled to the digit box, centred by centre of mass). What it cannot undo is how the digit was
written: pen width (fine pen to thick marker), slant, a slight tilt, wobbly strokes, and the small
offsets its centring leaves. `augment` draws those on uint8 (n, h, w) images:

- stroke width: grey dilation (thicker, a marker) or erosion (thinner, a fine pen), partly
  blended so widths vary continuously;
- slant (horizontal shear), small rotation and scale, applied about the centre of mass and
  re-fitted to the digit's original longest side, as the normalizer would re-fit it;
- elastic distortion: a smooth random displacement field of a pixel or two;
- position jitter of at most ~1.5 px (the normalizer centres digits, so large shifts never occur);
- writing conventions MNIST (American writers) rarely shows, when the labels are given: a
  continental 1 (a flag at the top, sometimes a foot) and a crossed 7 (a bar through the stem).

A fraction of every batch stays clean, so MNIST accuracy does not pay for robustness. Everything
is pure numpy, vectorised over the batch, and seeded: the same generator state gives bit-identical
output. None of it is part of the exported model; `trainer.epochs` feeds it to training.
"""

from __future__ import annotations

import numpy as np

REFERENCE_SIDE = 28  # pixel amounts below are for 28x28 images and scale with the image side
CLEAN_FRACTION = 0.3  # share of each batch left as it is
STROKE_RANGE = (-0.6, 1.6)  # dilation steps (negative: erosion); fractions blend partially
SHEAR_RANGE = 0.45  # |horizontal shift per unit of height|: up to ~24 degrees of slant
ROTATION_DEGREES = 12.0
SCALE_RANGE = (0.85, 1.05)  # of the digit's longest side after re-fitting
ELASTIC_PX = 1.6  # largest typical displacement of the elastic field, in px
ELASTIC_KNOTS = 4  # the random field is drawn on a 4x4 grid and smoothly interpolated
JITTER_PX = 1.5
STRETCH_RANK = 12  # MNIST digits have ~50+ pixels at full ink; thin strokes get there too
FLAG_CHANCE = 0.5  # augmented 1s given a flag (a third of those also a foot)
CROSS_CHANCE = 0.5  # augmented 7s given a crossbar


def recipe() -> dict:
    """The augmentation's settings, for the bundle's manifest."""
    return {"clean_fraction": CLEAN_FRACTION, "stroke_steps": list(STROKE_RANGE),
            "shear": SHEAR_RANGE, "rotation_degrees": ROTATION_DEGREES,
            "scale": list(SCALE_RANGE), "elastic_px": ELASTIC_PX, "jitter_px": JITTER_PX,
            "continental_1_chance": FLAG_CHANCE, "crossed_7_chance": CROSS_CHANCE,
            "reference_side": REFERENCE_SIDE}


def augment(images: np.ndarray, rng: np.random.Generator,
            clean_fraction: float = CLEAN_FRACTION, labels: np.ndarray | None = None) -> np.ndarray:
    """uint8 (n, h, w) light-on-dark digits -> uint8 (n, h, w) augmented copies.

    Each image independently stays clean with probability `clean_fraction`, otherwise gets a
    random stroke width, slant, rotation, scale, elastic distortion and jitter; with `labels`,
    some 1s get a continental flag and some 7s a crossbar (the labels stay as they are). All
    random numbers are drawn from `rng` in a fixed order, whatever the images hold."""
    images = np.asarray(images)
    n, h, w = images.shape
    unit = min(h, w) / REFERENCE_SIDE
    clean = rng.random(n) < clean_fraction
    stroke = rng.uniform(*STROKE_RANGE, n) * unit
    shear = rng.uniform(-SHEAR_RANGE, SHEAR_RANGE, n)
    rotation = np.deg2rad(rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES, n))
    scale = rng.uniform(*SCALE_RANGE, n)
    shift = rng.uniform(-JITTER_PX, JITTER_PX, (n, 2)) * unit
    knots = rng.standard_normal((n, 2, ELASTIC_KNOTS, ELASTIC_KNOTS)).astype(np.float32)
    elastic = rng.uniform(0, ELASTIC_PX, n) * unit
    extra = rng.random((n, 6))  # continental 1s and crossed 7s
    out = images.copy()
    todo = ~clean
    if not todo.any():
        return out
    field = elastic_field(knots[todo], h, w, elastic[todo])
    written = images[todo]
    if labels is not None:
        written = continental_strokes(written, np.asarray(labels)[todo], extra[todo], unit)
    out[todo] = stretch(warp(change_stroke(written, stroke[todo]), shear=shear[todo],
                             rotation=rotation[todo], scale=scale[todo], shift=shift[todo],
                             displacement=field))
    return out


def continental_strokes(images: np.ndarray, labels: np.ndarray, u: np.ndarray,
                        unit: float = 1.0) -> np.ndarray:
    """Add a flag (and sometimes a foot) to some 1s and a crossbar to some 7s. `u` is (n, 6)
    uniform [0, 1) numbers: chance, length, angle, width, foot, position."""
    out = images.copy()
    flag = (labels == 1) & (u[:, 0] < FLAG_CHANCE)
    cross = (labels == 7) & (u[:, 0] < CROSS_CHANCE)
    width = (1.8 + 1.0 * u[:, 3]) * unit
    for chosen, draw in ((flag, _flag_segments), (cross, _crossbar_segments)):
        index = np.flatnonzero(chosen)
        if len(index) == 0:
            continue
        for start, end, keep in draw(images[index], u[index]):
            lines = segments(images.shape[1:], start, end, width[index])
            out[index] = np.where(keep[:, None, None], np.maximum(out[index], lines),
                                  out[index])
    return out


def _ink_box(images: np.ndarray):
    """Per image: top and bottom ink rows and the digit's height (ink > 127)."""
    ink = images > 127
    rows = ink.any(axis=2)
    top = np.argmax(rows, axis=1)
    bottom = images.shape[1] - 1 - np.argmax(rows[:, ::-1], axis=1)
    return ink, top, bottom, (bottom - top + 1).astype(np.float32)


def _mean_column(ink: np.ndarray, row: np.ndarray) -> np.ndarray:
    line = ink[np.arange(len(ink)), row].astype(np.float32)
    count = line.sum(axis=1)
    centre = (ink.shape[2] - 1) / 2
    return np.where(count > 0, line @ np.arange(ink.shape[2]) / np.maximum(count, 1), centre)


def _flag_segments(images: np.ndarray, u: np.ndarray):
    """The flag runs from the top of the 1 down to the left, 25-55 degrees below horizontal,
    a quarter to nearly half the digit's height long; a third of the flagged 1s get a foot."""
    ink, top, bottom, height = _ink_box(images)
    x_top = _mean_column(ink, top)
    start = np.stack([top, x_top], 1).astype(np.float32)
    length = (0.25 + 0.2 * u[:, 1]) * height
    angle = np.deg2rad(25 + 30 * u[:, 2])
    end = start + np.stack([np.sin(angle), -np.cos(angle)], 1) * length[:, None]
    yield start, end, np.ones(len(images), bool)
    x_bottom = _mean_column(ink, bottom)
    half = (0.15 + 0.12 * u[:, 5]) * height
    foot_start = np.stack([bottom, x_bottom - half], 1).astype(np.float32)
    foot_end = np.stack([bottom, x_bottom + half], 1).astype(np.float32)
    yield foot_start, foot_end, u[:, 4] < 1 / 3


def _crossbar_segments(images: np.ndarray, u: np.ndarray):
    """A short bar through the 7's stem, 45-60 % of the way down, slightly tilted."""
    ink, top, _, height = _ink_box(images)
    row = np.clip(np.round(top + (0.45 + 0.15 * u[:, 5]) * height), 0,
                  images.shape[1] - 1).astype(int)
    x = _mean_column(ink, row)
    half = (0.18 + 0.12 * u[:, 1]) * height
    tilt = (u[:, 2] - 0.5) * 0.3 * half
    start = np.stack([row + tilt, x - half], 1).astype(np.float32)
    end = np.stack([row - tilt, x + half], 1).astype(np.float32)
    yield start, end, np.ones(len(images), bool)


def segments(shape: tuple[int, int], start: np.ndarray, end: np.ndarray,
             width: np.ndarray) -> np.ndarray:
    """uint8 (n, h, w): one antialiased straight stroke per image from `start` to `end`
    ((n, 2) (y, x) px), `width` (n,) px wide."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    d = (end - start).astype(np.float32)
    length2 = np.maximum((d**2).sum(axis=1), 1e-6)[:, None, None]
    py = yy[None] - start[:, 0, None, None]
    px = xx[None] - start[:, 1, None, None]
    t = np.clip((py * d[:, 0, None, None] + px * d[:, 1, None, None]) / length2, 0, 1)
    dist = np.hypot(py - t * d[:, 0, None, None], px - t * d[:, 1, None, None])
    return _to_uint8(255 * np.clip(width[:, None, None] / 2 + 0.5 - dist, 0, 1))


def change_stroke(images: np.ndarray, steps: np.ndarray | float) -> np.ndarray:
    """Grey dilation (steps > 0, thicker strokes) or erosion (steps < 0, thinner) by a
    plus-shaped 3x3 footprint, `steps` times per image; a fractional step blends the last one
    in partially. uint8 (n, h, w) in and out."""
    images = np.asarray(images)
    steps = np.broadcast_to(np.asarray(steps, np.float32), (len(images),))
    out = images.astype(np.float32)
    for op, signed in ((np.maximum, steps), (np.minimum, -steps)):
        remaining = np.clip(signed, 0, None)
        while (remaining > 0).any():
            some = np.flatnonzero(remaining > 0)
            grown = _plus_filter(out[some], op)
            weight = np.clip(remaining[some], 0, 1)[:, None, None]
            out[some] += weight * (grown - out[some])
            remaining = remaining - 1
    return _to_uint8(out)


def stretch(images: np.ndarray) -> np.ndarray:
    """Scale each uint8 image so its `STRETCH_RANK`-th brightest pixel is 255, as the
    normalizer's contrast stretch would (erosion and resampling dim thin strokes)."""
    flat = images.reshape(len(images), -1)
    rank = min(STRETCH_RANK, flat.shape[1])
    peak = np.partition(flat, -rank, axis=1)[:, -rank].astype(np.float32)
    peak = np.where(peak > 0, peak, flat.max(axis=1))
    gain = np.where(peak > 0, 255.0 / np.maximum(peak, 1), 1.0)[:, None, None]
    return _to_uint8(images * gain)


def _plus_filter(images: np.ndarray, op) -> np.ndarray:
    p = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    h, w = images.shape[1:]
    out = op(p[:, 1:-1, 1:-1], p[:, :-2, 1:-1])
    for view in (p[:, 2:, 1:-1], p[:, 1:-1, :-2], p[:, 1:-1, 2:]):
        out = op(out, view)
    return out[:, :h, :w]


def elastic_field(knots: np.ndarray, h: int, w: int, amplitude: np.ndarray) -> np.ndarray:
    """float32 (n, 2, h, w) smooth displacements (dy, dx) from (n, 2, k, k) random knots,
    smoothly interpolated; each image's largest displacement is its `amplitude` px."""
    field = _smooth_basis(h) @ knots @ _smooth_basis(w).T
    peak = np.abs(field).reshape(len(field), -1).max(axis=1) + 1e-6
    return field * (np.asarray(amplitude, np.float32) / peak)[:, None, None, None]


def _smooth_basis(size: int) -> np.ndarray:
    """(size, ELASTIC_KNOTS) Gaussian interpolation weights, rows summing to one."""
    centres = np.linspace(0, size - 1, ELASTIC_KNOTS)
    spacing = (size - 1) / (ELASTIC_KNOTS - 1)
    weights = np.exp(-0.5 * ((np.arange(size)[:, None] - centres) / spacing) ** 2)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def warp(images: np.ndarray, *, shear=0.0, rotation=0.0, scale=1.0, shift=(0.0, 0.0),
         displacement: np.ndarray | None = None) -> np.ndarray:
    """Slant, rotate and scale each uint8 (n, h, w) image about its centre of mass, re-fitted so
    its ink keeps its longest side (times `scale`), then displace and shift it. Bilinear sampling.

    `shear` > 0 moves the top of the digit right (a right-leaning slant); `rotation` is in
    radians, counter-clockwise; `shift` is (dy, dx) px; `displacement` (n, 2, h, w) px."""
    images = np.asarray(images)
    n, h, w = images.shape
    shear, rotation, scale = (np.broadcast_to(np.asarray(v, np.float64), (n,))
                              for v in (shear, rotation, scale))
    shift = np.broadcast_to(np.asarray(shift, np.float64), (n, 2))
    pixels = images.astype(np.float32)
    centre = _centre_of_mass(pixels)
    cos, sin = np.cos(rotation), np.sin(rotation)
    # forward map in (y, x): rotate after shearing x by -shear * y (y grows downwards)
    rotate = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    slant = np.zeros((n, 2, 2))
    slant[:, 0, 0] = slant[:, 1, 1] = 1.0
    slant[:, 1, 0] = -shear
    forward = rotate @ slant
    forward *= (scale * _refit(pixels, centre, forward))[:, None, None]
    inverse = np.linalg.inv(forward).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dy = yy[None] - centre[:, 0, None, None] - shift[:, 0, None, None].astype(np.float32)
    dx = xx[None] - centre[:, 1, None, None] - shift[:, 1, None, None].astype(np.float32)
    if displacement is not None:
        dy, dx = dy + displacement[:, 0], dx + displacement[:, 1]
    src_y = centre[:, 0, None, None] + inverse[:, 0, 0, None, None] * dy \
        + inverse[:, 0, 1, None, None] * dx
    src_x = centre[:, 1, None, None] + inverse[:, 1, 0, None, None] * dy \
        + inverse[:, 1, 1, None, None] * dx
    return _to_uint8(bilinear(pixels, src_y, src_x))


def _centre_of_mass(pixels: np.ndarray) -> np.ndarray:
    """float32 (n, 2) (y, x); the image centre for blank images."""
    n, h, w = pixels.shape
    total = pixels.sum(axis=(1, 2))
    safe = np.where(total > 0, total, 1.0)
    cy = (pixels.sum(axis=2) @ np.arange(h, dtype=np.float32)) / safe
    cx = (pixels.sum(axis=1) @ np.arange(w, dtype=np.float32)) / safe
    blank = total <= 0
    cy[blank], cx[blank] = (h - 1) / 2, (w - 1) / 2
    return np.stack([cy, cx], axis=1).astype(np.float32)


def _refit(pixels: np.ndarray, centre: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """(n,) factor that brings the transformed ink's longest side back to the original's, as the
    normalizer's fit to the digit box would. The ink's outline is each row's first and last ink
    pixel (their hull is the ink's hull, so the extents after a linear map are exact)."""
    n, h, w = pixels.shape
    ink = pixels > 0
    has_row = np.concatenate([ink.any(axis=2)] * 2, axis=1)  # (n, 2h)
    left = np.argmax(ink, axis=2)
    right = w - 1 - np.argmax(ink[:, :, ::-1], axis=2)
    rows = np.broadcast_to(np.arange(h), (n, h))
    outline = np.stack([np.concatenate([rows, rows], 1), np.concatenate([left, right], 1)], -1)
    offsets = outline.astype(np.float32) - centre[:, None, :]
    moved = np.einsum("nij,nkj->nki", forward.astype(np.float32), offsets)

    def longest(points: np.ndarray) -> np.ndarray:
        high = np.where(has_row[..., None], points, -np.inf).max(axis=1)
        low = np.where(has_row[..., None], points, np.inf).min(axis=1)
        return (high - low).max(axis=1) + 1.0

    has_ink = has_row.any(axis=1)
    before, after = longest(offsets), longest(moved)
    return np.where(has_ink, before / np.where(has_ink, after, 1.0), 1.0)


def bilinear(pixels: np.ndarray, src_y: np.ndarray, src_x: np.ndarray) -> np.ndarray:
    """float32 (n, h, w) sampled at float (n, h, w) source coordinates; zero outside."""
    n, h, w = pixels.shape
    pad = 2
    padded = np.pad(pixels, ((0, 0), (pad, pad), (pad, pad)))
    y0 = np.floor(src_y)
    x0 = np.floor(src_x)
    fy, fx = src_y - y0, src_x - x0
    y0 = np.clip(y0, -pad, h).astype(np.intp) + pad
    x0 = np.clip(x0, -pad, w).astype(np.intp) + pad
    stride = w + 2 * pad
    index = (np.arange(n)[:, None, None] * (h + 2 * pad) + y0) * stride + x0
    flat = padded.ravel()
    top = flat[index] * (1 - fx) + flat[index + 1] * fx
    bottom = flat[index + stride] * (1 - fx) + flat[index + stride + 1] * fx
    return top * (1 - fy) + bottom * fy


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)
