"""The normalization steps, each a pure function over float32 (H, W) arrays.

They mirror how MNIST was made: find the ink, scale it so its longest side is ``digit_box`` px,
and place it on the canvas by its centre of mass (or bounding box). "Light ink" means ink >
background. ``scorer.images.normalization`` calls them in order; ``scorer.images.batch`` runs the
small-image ones over whole stacks, bit for bit the same.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image

from scorer.images.errors import BlankImageError
from scorer.images.geometry import MNIST_GEOMETRY, Geometry

SMALL_SIDE = 64  # images up to this size skip denoising and lighting correction (speed)
INK_THRESHOLD = 64.0  # after stretching ink to 255, blurred pixels above this count as ink
MIN_CONTRAST = 10.0  # ink must stand this many grey levels above the noise floor
FAINT_INK = 8.0  # faint antialiased rim kept around the ink of small images
MIN_STROKE = 0.09  # thinnest stroke kept, as a fraction of the digit's longest side (MNIST ~0.13)
_RESIZE = Image.Resampling

def _blur(grey: np.ndarray) -> np.ndarray:
    """float32 (H, W) -> same; binomial [1,4,6,4,1]/16 blur (sigma ~1) to tame speckle."""
    k = np.array([1, 4, 6, 4, 1], np.float32) / 16
    out = np.pad(grey, 2, mode="edge")
    out = sum(k[i] * out[i : i + grey.shape[0], :] for i in range(5))
    return sum(k[i] * out[:, i : i + grey.shape[1]] for i in range(5))


@functools.lru_cache(maxsize=16)
def ring_index(h: int, w: int) -> np.ndarray:
    """Flat indices of the outermost ring of an (h, w) image (cached: shapes repeat)."""
    idx = np.arange(h * w).reshape(h, w)
    return np.concatenate([idx[0], idx[-1], idx[1:-1, 0], idx[1:-1, -1]]) if h > 1 else idx[0]


def _ring(grey: np.ndarray) -> np.ndarray:
    """float (H, W) -> 1-D array of the outermost ring of pixels."""
    return grey.take(ring_index(*grey.shape))


def _median(values: np.ndarray) -> float:
    """Upper median of a 1-D array (np.median is ~10x slower on tiny arrays)."""
    return float(np.partition(values, values.size // 2)[values.size // 2])


def border_level(grey: np.ndarray) -> float:
    """Background estimate of float (H, W): median of the outermost ring of pixels."""
    return _median(_ring(grey))


def ink_is_dark(grey: np.ndarray, background: float | None = None) -> bool:
    """True if float (H, W) has dark ink: its darkest extreme lies further from the background
    than its lightest. The background is the border level (or `background`) for digital
    images, and the lighting plane of the paper for photos, whose light can vary across the
    page by more than faint ink stands out from it."""
    small = max(grey.shape) <= SMALL_SIDE
    # Extremes after a light blur: a lone hot pixel fades to ~14%, a 1-px line keeps ~37%.
    if digital_border(grey):
        bg = border_level(grey) if background is None else background
        probe = grey if small else _blur(grey)
        return bg - float(probe.min()) > float(probe.max()) - bg
    residual = grey - border_plane(grey)
    probe = residual if small else _blur(residual)
    return -float(probe.min()) > float(probe.max())


def border_plane(grey: np.ndarray) -> np.ndarray:
    """float32 (H, W): the plane a + b x + c y fitted to the outermost ring, which is mostly
    paper whatever the ink's polarity; ring pixels far from a first fit (ink touching the
    border) are left out of the second."""
    h, w = grey.shape
    index = ring_index(h, w)
    ys, xs = np.divmod(index, w)
    terms = np.stack([np.ones(index.size), xs / max(w - 1, 1), ys / max(h - 1, 1)], 1)
    values = grey.take(index).astype(np.float64)
    keep = np.ones(index.size, bool)
    for _ in range(2):
        coef = np.linalg.lstsq(terms[keep], values[keep], rcond=None)[0]
        resid = np.abs(values - terms @ coef)
        keep = resid <= max(3 * 1.4826 * _median(resid), 1.0)
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :]
    c = coef.astype(np.float32)
    return c[0] + c[1] * x + c[2] * y


def digital_border(grey: np.ndarray) -> bool:
    """True when most of the outermost ring is one exact value, as in drawings, renders and
    MNIST itself; False for photos and scans, whose paper varies (noise, light, tint)."""
    ring = _ring(grey)
    return 2 * int(np.count_nonzero(ring == _median(ring))) >= ring.size


def to_light_ink(grey: np.ndarray) -> np.ndarray:
    """float32 (H, W) -> float32 (H, W) with light ink on a dark background (inverted if needed)."""
    return (255.0 - grey).astype(np.float32) if ink_is_dark(grey) else grey


def flatten_background(
    grey: np.ndarray, paper: bool = False, background: float | None = None
) -> np.ndarray:
    """Light-ink float32 (H, W) -> float32 (H, W) ink above background (noise may go < 0).

    Small images with a digital border use the border level; photos and larger images subtract
    a quadratic surface fitted to the background, which removes the smooth lighting gradients of
    photos (in a 50 px photo of a pencil digit, the light can vary more than the ink). ``paper``:
    the
    input is inverted dark-on-paper, where ink contrast is proportional to the light falling
    on the paper, so the ink is also divided by the local paper brightness (255 - surface).
    ``background`` (small images only) saves recomputing the border level.
    """
    h, w = grey.shape
    if max(h, w) <= SMALL_SIDE and digital_border(grey):
        bg = border_level(grey) if background is None else background
        return grey - np.float32(bg) if bg != 0 else grey
    gh, gw = min(h, 24), min(w, 24)
    coarse = np.asarray(Image.fromarray(grey).resize((gw, gh), _RESIZE.BOX), np.float64)
    yy, xx = np.mgrid[0:1 : gh * 1j, 0:1 : gw * 1j]
    terms = np.stack([np.ones_like(xx), xx, yy, xx * xx, xx * yy, yy * yy], -1).reshape(-1, 6)
    values = coarse.ravel()
    keep = values <= np.median(values)  # ink is light, so the darker half is background
    for _ in range(3):  # refit on the cells closest to (or below) the current surface
        coef = np.linalg.lstsq(terms[keep], values[keep], rcond=None)[0]
        resid = values - terms @ coef
        keep = resid <= np.quantile(resid, 0.5)
    y = np.linspace(0, 1, h)[:, None]
    x = np.linspace(0, 1, w)[None, :]
    c = coef.astype(np.float32)
    surface = c[0] + c[1] * x + c[2] * y + c[3] * x * x + c[4] * x * y + c[5] * y * y
    ink = grey - surface  # unclipped, so the noise statistics downstream stay honest
    if paper:  # rescale so fully dark ink reads 255 wherever the paper is
        ink *= 255.0 / np.maximum(255.0 - surface, 16.0)
    return ink.astype(np.float32)


def stretch_contrast(grey: np.ndarray) -> np.ndarray:
    """Background-free float32 (H, W) -> float32 (H, W) in [0, 255]: noise to 0, ink to 255.

    The noise floor is 3 robust sigmas of the border; the ink level is the (blurred) maximum.
    """
    ring = _ring(grey)
    floor = 0.0
    if ring.max() != ring.min():  # digital drawings have a flat border: skip the statistics
        mid = _median(ring)
        floor = mid + 3 * 1.4826 * _median(np.abs(ring - mid))
    small = max(grey.shape) <= SMALL_SIDE
    top = float(grey.max() if small else _blur(grey).max())
    if top - floor < MIN_CONTRAST:
        raise BlankImageError()
    if floor == 0.0 and top == 255.0:
        return np.maximum(grey, 0.0)
    out = (grey - floor) * np.float32(255.0 / (top - floor))
    return np.minimum(np.maximum(out, 0.0, out=out), 255.0, out=out)


def _span(profile: np.ndarray, threshold: float) -> tuple[int, int]:
    """1-D profile -> half-open (start, stop) of the entries above threshold."""
    on = (profile > threshold).nonzero()[0]
    if on.size == 0:
        raise BlankImageError()
    return int(on[0]), int(on[-1]) + 1


def crop_with_extent(grey: np.ndarray, threshold: float = INK_THRESHOLD):
    """Stretched float32 (H, W) -> (float32 crop around the ink, ink's longest side in px).

    Large images are thresholded after a light blur, so isolated specks do not count.
    Small ones are not blurred; their crop grows by up to 1 px to take in a faint
    antialiased rim (> FAINT_INK) that is not counted in the extent, so an already
    normalized digit keeps its size and centre of mass. Raises BlankImageError if there is no ink.
    """
    small = max(grey.shape) <= SMALL_SIDE
    probe = grey if small else _blur(grey)
    rows, cols = probe.max(1), probe.max(0)
    (r0, r1), (c0, c1) = _span(rows, threshold), _span(cols, threshold)
    extent = max(r1 - r0, c1 - c0)
    if small:  # scalar look-ups: cheaper than two more numpy passes on a 28x28 image
        r0 -= r0 > 0 and rows[r0 - 1] > FAINT_INK
        r1 += r1 < rows.size and rows[r1] > FAINT_INK
        c0 -= c0 > 0 and cols[c0 - 1] > FAINT_INK
        c1 += c1 < cols.size and cols[c1] > FAINT_INK
    return grey[r0:r1, c0:c1], extent


def crop_to_ink(grey: np.ndarray, threshold: float = INK_THRESHOLD) -> np.ndarray:
    """Stretched float32 (H, W) -> float32 crop to the ink's bounding box (see crop_with_extent)."""
    return crop_with_extent(grey, threshold)[0]


def dilate(grey: np.ndarray, steps: int) -> np.ndarray:
    """float32 (H, W) -> (H + 2 steps, W + 2 steps), grey-level dilation by ``steps`` px."""
    out = np.pad(grey, steps)
    for i in range(steps):
        p = np.pad(out, 1)
        shifts = [p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]]
        if i % 2 == 0:  # alternate square and cross: an octagon, closer to a round pen
            shifts += [p[:-2, :-2], p[:-2, 2:], p[2:, :-2], p[2:, 2:]]
        out = np.maximum.reduce([out, *shifts])
    return out


def stroke_width(grey: np.ndarray, threshold: float = 127.0) -> float:
    """Mean stroke width in px of float (H, W): area / (half the area lost to a 1-px erosion)."""
    mask = grey > threshold
    inner = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    area = np.count_nonzero(mask)  # count_nonzero: exact, and 4x cheaper than sum on bools
    lost = area - np.count_nonzero(inner)
    return 2.0 * area / lost if lost else float(min(grey.shape))


def thicken_strokes(grey: np.ndarray, min_fraction: float = MIN_STROKE) -> np.ndarray:
    """Cropped float32 (H, W) -> float32, strokes dilated to >= min_fraction of the longest side.

    Thin pen lines would otherwise shrink to faint sub-pixel traces at 20 px.
    """
    need = min_fraction * max(grey.shape) - stroke_width(grey)
    if need < 1.0:
        return grey
    steps = int(round(need / 2))
    return dilate(grey, steps) if steps else grey


def fit_box(grey: np.ndarray, box: int, extent: int | None = None) -> np.ndarray:
    """float32 (H, W) -> float32 resized (antialiased, aspect kept) by box / extent.

    ``extent`` is the digit's longest side, by default max(H, W), which then becomes ``box``.
    """
    h, w = grey.shape
    extent = extent or max(h, w)
    if extent == box:
        return grey
    scale = box / extent
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    method = _RESIZE.LANCZOS if scale < 1 else _RESIZE.BICUBIC
    out = np.asarray(Image.fromarray(grey).resize(size, method), dtype=np.float32)
    return np.maximum(out, 0.0)  # Lanczos/bicubic ring below zero next to strokes


@functools.lru_cache(maxsize=64)
def _arange32(n: int) -> np.ndarray:
    """Read-only float32 0 .. n - 1 (cached: place() needs one per digit size)."""
    out = np.arange(n, dtype=np.float32)
    out.flags.writeable = False
    return out


def place(grey: np.ndarray, geometry: Geometry = MNIST_GEOMETRY) -> np.ndarray:
    """float (h, w) digit -> uint8 (geometry.height, geometry.width), light ink, max 255.

    The digit is pasted (clipped) so its centre of mass, or its box, sits at the canvas
    centre; with supersample s it is placed on an s-times canvas, then s x s blocks averaged.
    """
    canvas = np.zeros((geometry.height, geometry.width), np.float32)
    paste(grey, geometry, canvas)
    peak = float(canvas.max())
    if peak <= 0:
        raise BlankImageError()
    if peak != 255.0:  # resizing and averaging dim the peak; MNIST's is 255
        canvas *= np.float32(255.0 / peak)
    canvas += np.float32(0.5)  # round half up
    out = canvas.astype(np.uint8)
    return 255 - out if geometry.ink == "dark" else out


def paste(grey: np.ndarray, geometry: Geometry, out: np.ndarray) -> None:
    """Paste float (h, w) digit into zeroed float32 ``out`` (geometry.height, geometry.width)
    as place() positions it (first half of place)."""
    s = geometry.supersample
    ch, cw, (h, w) = geometry.height * s, geometry.width * s, grey.shape
    if geometry.centering == "mass":
        rows = grey.sum(1)
        total = max(float(rows.sum()), 1e-6)
        cy = float(rows @ _arange32(h)) / total
        cx = float(grey.sum(0) @ _arange32(w)) / total
        # centre index 14 for 28 px: MNIST's measured mean centre of mass is 14.0 +- 0.29
        top, left = math.floor(ch / 2 - cy + 0.5), math.floor(cw / 2 - cx + 0.5)
    else:
        top, left = math.floor((ch - h) / 2 + 0.5), math.floor((cw - w) / 2 + 0.5)
    canvas = out if s == 1 else np.zeros((ch, cw), np.float32)
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + h, ch), min(left + w, cw)
    if y1 > y0 and x1 > x0:
        canvas[y0:y1, x0:x1] = grey[y0 - top : y1 - top, x0 - left : x1 - left]
    if s > 1:
        out[...] = canvas.reshape(geometry.height, s, geometry.width, s).mean((1, 3))


def to_uint8(canvases: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """The end of place() for a stack: pasted float32 (n, height, width), overwritten ->
    (uint8 (n, height, width), bool (n,) blank: place() would raise). The same arithmetic
    (a scale of exactly 1 where the peak is already 255 changes nothing)."""
    peak = canvases.max((1, 2)).astype(np.float64)
    blank = peak <= 0
    canvases *= (255.0 / np.where(blank, 255.0, peak)).astype(np.float32)[:, None, None]
    canvases += np.float32(0.5)  # round half up
    out = canvases.astype(np.uint8)
    return (255 - out if geometry.ink == "dark" else out), blank

