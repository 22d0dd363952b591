"""Turn MNIST digits into realistic uploads: scans, photos, chalkboards, drawing-app PNGs.

Every style takes a 28x28 uint8 MNIST digit (light ink on dark) and a numpy Generator
and returns encoded image bytes, so tests exercise decoding and normalization together.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter


def zip_of(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip archive of `members` (name -> bytes), as users upload folders of scans."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _encode(im: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def mnist_png(digit: np.ndarray) -> bytes:
    """The digit unchanged, as a plain 28x28 greyscale PNG."""
    return _encode(Image.fromarray(np.asarray(digit, np.uint8)), "PNG")


def ink_mask(digit: np.ndarray, rng: np.random.Generator, height: int | None = None) -> np.ndarray:
    """float32 (h, w) ink coverage in [0, 1]: the digit cropped and smoothly upscaled.

    ``height`` is the digit's height in px; by default 3-6x MNIST's 20 px.
    """
    rows, cols = np.flatnonzero(digit.any(1)), np.flatnonzero(digit.any(0))
    crop = digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height = height or int(rng.integers(60, 121))
    width = max(1, round(crop.shape[1] * height / crop.shape[0]))
    big = Image.fromarray(crop).resize((width, height), Image.Resampling.BICUBIC)
    big = big.filter(ImageFilter.GaussianBlur(height / 60))  # soften the 28-px staircase
    return np.clip(np.asarray(big, np.float32) / 255.0, 0.0, 1.0)


def _paste(canvas_shape, mask, rng, corner: bool = False) -> np.ndarray:
    """Put the mask on a zero canvas at a random (off-centre) position; returns coverage."""
    out = np.zeros(canvas_shape, np.float32)
    h, w = mask.shape
    room_y, room_x = canvas_shape[0] - h, canvas_shape[1] - w
    if corner:
        y = int(rng.integers(0, room_y // 6 + 1)) + (room_y * 5 // 6 if rng.random() < 0.5 else 0)
        x = int(rng.integers(0, room_x // 6 + 1)) + (room_x * 5 // 6 if rng.random() < 0.5 else 0)
    else:
        y, x = int(rng.integers(0, room_y + 1)), int(rng.integers(0, room_x + 1))
    out[y : y + h, x : x + w] = mask
    return out


def _canvas_for(mask, rng, scale=(1.5, 3.0)) -> tuple[int, int]:
    side = int(max(mask.shape) * rng.uniform(*scale))
    # never narrower or shorter than the digit itself, whatever the aspect drawn
    return max(side, mask.shape[0]), max(int(side * rng.uniform(0.75, 1.35)), mask.shape[1])


def _to_u8(a: np.ndarray) -> np.ndarray:
    return np.clip(a + 0.5, 0, 255).astype(np.uint8)


def paper_rgb(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 (H, W, 3): dark pen (black to blue) on tinted, noisy paper, digit off-centre."""
    cover = _paste(_canvas_for(mask := ink_mask(digit, rng), rng), mask, rng)
    paper = rng.uniform(215, 250) - rng.uniform(0, 12, size=3)  # white to cream
    ink = rng.uniform(10, 70) + np.array([0, 0, rng.uniform(0, 80)])  # black to blue
    rgb = paper * (1 - cover[..., None]) + ink * cover[..., None]
    return _to_u8(rgb + rng.normal(0, rng.uniform(2, 6), rgb.shape))


def paper_scan(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """JPEG, dark pen on off-white paper, sensor noise, slight blur, digit off-centre."""
    im = Image.fromarray(paper_rgb(digit, rng)).filter(ImageFilter.GaussianBlur(0.8))
    return _encode(im, "JPEG", quality=int(rng.integers(55, 90)))


def photo_uneven_light(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """JPEG photo of paper lit from one side with vignetting: the paper spans ~2x in brightness."""
    mask = ink_mask(digit, rng)
    h, w = _canvas_for(mask, rng)
    yy, xx = np.mgrid[0:1 : h * 1j, 0:1 : w * 1j]
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)  # in about [-0.7, 0.7]
    light = 0.75 + 0.35 * ramp - 0.35 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
    cover = _paste((h, w), mask, rng)
    paper = rng.uniform(225, 250)
    grey = (paper * (1 - cover) + rng.uniform(15, 60) * cover) * light
    grey = grey + rng.normal(0, 4, grey.shape)
    return _encode(Image.fromarray(_to_u8(grey)), "JPEG", quality=80)


def chalkboard(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """JPEG, grainy chalk on a dark green board with smudges (light ink on a noisy dark ground)."""
    mask = ink_mask(digit, rng)
    h, w = _canvas_for(mask, rng)
    cover = _paste((h, w), mask, rng) * rng.uniform(0.55, 1.0, (h, w))  # chalk grain
    smudge = Image.fromarray(_to_u8(rng.uniform(0, 255, (h // 16 + 2, w // 16 + 2))))
    smudge = np.asarray(smudge.resize((w, h), Image.Resampling.BICUBIC), np.float32) / 255
    board = np.array([35, 60, 45]) + 25 * smudge[..., None]
    chalk = np.array([230, 235, 225]) * rng.uniform(0.8, 1.0)
    rgb = board * (1 - cover[..., None]) + chalk * cover[..., None]
    rgb = rgb + rng.normal(0, 7, rgb.shape)
    return _encode(Image.fromarray(_to_u8(rgb)), "JPEG", quality=int(rng.integers(60, 90)))


def small_off_centre(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """PNG, a ~40 px dark digit near a corner of a 400x300 white canvas."""
    mask = ink_mask(digit, rng, height=int(rng.integers(32, 49)))
    cover = _paste((300, 400), mask, rng, corner=True)
    return _encode(Image.fromarray(_to_u8(255 - 235 * cover)), "PNG")


def drawing_app_rgba(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """RGBA PNG: black or coloured opaque ink, fully transparent (black, alpha 0) background."""
    mask = ink_mask(digit, rng)
    cover = _paste(_canvas_for(mask, rng, (1.2, 2.0)), mask, rng)
    colour = rng.choice([[0, 0, 0], [20, 40, 200], [200, 20, 30], [20, 120, 40]])
    rgba = np.zeros((*cover.shape, 4), np.uint8)
    rgba[..., :3] = colour
    rgba[..., 3] = _to_u8(255 * cover)
    return _encode(Image.fromarray(rgba, "RGBA"), "PNG")


def grey16_png(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """16-bit greyscale PNG of a scan (dark on light), values spanning the 16-bit range."""
    grey = paper_rgb(digit, rng).mean(-1) * 257.0
    return _encode(Image.fromarray(np.clip(grey, 0, 65535).astype(np.uint16)), "PNG")


def palette_gif(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Two-frame palette GIF; the first frame holds the digit, the second is blank paper."""
    first = Image.fromarray(paper_rgb(digit, rng)).quantize(16, Image.Quantize.FASTOCTREE)
    second = Image.new("RGB", first.size, (240, 240, 240)).quantize(4)
    return _encode(first, "GIF", save_all=True, append_images=[second], duration=100)


def cmyk_jpeg(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """CMYK JPEG (as print workflows produce) of a paper scan."""
    im = Image.fromarray(paper_rgb(digit, rng)).convert("CMYK")
    return _encode(im, "JPEG", quality=85)


# Pixels are stored rotated by the inverse of what the EXIF orientation tag asks a viewer to do.
_STORE_FOR_ORIENTATION = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


def exif_rotated_jpeg(
    digit: np.ndarray, rng: np.random.Generator, orientation: int | None = None
) -> bytes:
    """Phone-style JPEG of paper_rgb(digit, rng): rotated pixels plus an EXIF orientation
    tag (3, 6 or 8; random by default) that a correct viewer undoes."""
    upright = Image.fromarray(paper_rgb(digit, rng))
    orientation = orientation or int(rng.choice(list(_STORE_FOR_ORIENTATION)))
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = upright.transpose(_STORE_FOR_ORIENTATION[orientation])
    return _encode(stored, "JPEG", quality=85, exif=exif.tobytes())


def _skeleton(ink: np.ndarray) -> np.ndarray:
    """bool (H, W) -> its 1-px skeleton (Zhang-Suen thinning, vectorised per sub-step)."""
    ink = ink.copy()
    changed = True
    while changed:
        changed = False
        for step in (0, 1):
            p = np.pad(ink, 1)
            # neighbours clockwise from north: P2 .. P9
            nb = [p[:-2, 1:-1], p[:-2, 2:], p[1:-1, 2:], p[2:, 2:],
                  p[2:, 1:-1], p[2:, :-2], p[1:-1, :-2], p[:-2, :-2]]  # fmt: skip
            count = sum(n.astype(np.int8) for n in nb)
            turns = sum((~nb[i] & nb[(i + 1) % 8]).astype(np.int8) for i in range(8))
            (a, b, c), (d, e, f) = ((0, 2, 4), (2, 4, 6)) if step == 0 else ((0, 2, 6), (0, 4, 6))
            keep = (nb[a] & nb[b] & nb[c]) | (nb[d] & nb[e] & nb[f])
            drop = ink & (count >= 2) & (count <= 6) & (turns == 1) & ~keep
            if drop.any():
                ink &= ~drop
                changed = True
    return ink


def thin_pen(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """PNG, a large digit drawn with a fine pen: strokes ~1.5-2.5% of the digit height."""
    rows, cols = np.flatnonzero(digit.any(1)), np.flatnonzero(digit.any(0))
    crop = Image.fromarray(digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
    big = np.asarray(crop.resize((crop.width * 3, crop.height * 3), Image.Resampling.BICUBIC))
    line = Image.fromarray(_to_u8(255.0 * _skeleton(big > 128)))
    height = int(rng.integers(160, 241))
    size = (max(1, line.width * height // line.height), height)
    line = np.asarray(line.resize(size, Image.Resampling.BILINEAR), np.float32) / 255
    cover = _paste(_canvas_for(line, rng, (1.2, 1.6)), np.minimum(line * 2, 1), rng)
    im = Image.fromarray(_to_u8(250 - 220 * cover)).filter(ImageFilter.GaussianBlur(0.6))
    return _encode(im, "PNG")


def _pencil_texture(cover: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Graphite is grainy: the coverage of a pencil stroke varies from 35 to 100 % per pixel."""
    return cover * rng.uniform(0.35, 1.0, cover.shape)


def pencil_on_yellow(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """JPEG photo of a small (~45-55 px) soft-pencil digit on yellow sticky-note paper, barely
    larger than the digit, light falling off by up to a quarter across it: faint grainy grey
    ink on a bright tinted ground whose light varies more than the ink stands out."""
    mask = ink_mask(digit, rng, height=int(rng.integers(45, 56)))
    h, w = _canvas_for(mask, rng, (1.05, 1.4))
    cover = _pencil_texture(_paste((h, w), mask, rng), rng)
    paper = np.array([250, 235, 120]) * rng.uniform(0.9, 1.0)
    graphite = np.array([165, 160, 145]) * rng.uniform(0.85, 1.1)
    yy, xx = np.mgrid[0:1 : h * 1j, 0:1 : w * 1j]
    fall = rng.uniform(0.1, 0.25)
    light = (1.0 - fall * (xx if rng.random() < 0.5 else 1 - xx) * 0.7 - fall * yy * 0.3)
    rgb = (paper * (1 - cover[..., None]) + graphite * cover[..., None]) * light[..., None]
    rgb = rgb + rng.normal(0, 3, rgb.shape)
    return _encode(Image.fromarray(_to_u8(rgb)), "JPEG", quality=int(rng.integers(70, 92)))


def ballpoint_on_grey(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """PNG of a blue ballpoint digit on grey recycled paper: low-contrast coloured ink."""
    mask = ink_mask(digit, rng, height=int(rng.integers(40, 90)))
    cover = _paste(_canvas_for(mask, rng), mask, rng) * rng.uniform(0.6, 1.0)
    paper = np.array([165, 165, 160]) + rng.normal(0, 4, (*cover.shape, 1))
    ink = np.array([40, 60, 150])
    rgb = paper * (1 - cover[..., None]) + ink * cover[..., None]
    return _encode(Image.fromarray(_to_u8(rgb)), "PNG")


def ruled_paper(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """JPEG of a dark pen digit on ruled notebook paper: thin blue lines every ~1/3 digit height
    run across the whole image, through and around the digit."""
    mask = ink_mask(digit, rng, height=int(rng.integers(50, 110)))
    h, w = _canvas_for(mask, rng)
    cover = _paste((h, w), mask, rng)
    rgb = np.ones((h, w, 3)) * np.array([248, 248, 242])
    gap = max(6, mask.shape[0] // 3 + int(rng.integers(-3, 4)))
    for y in range(int(rng.integers(0, gap)), h, gap):
        rgb[y] = rgb[y] * 0.35 + np.array([120, 160, 215]) * 0.65
    ink = np.array([25, 25, 60])
    rgb = rgb * (1 - cover[..., None]) + ink * cover[..., None] + rng.normal(0, 3, (h, w, 3))
    return _encode(Image.fromarray(_to_u8(rgb)), "JPEG", quality=85)


STYLES: dict[str, Callable[[np.ndarray, np.random.Generator], bytes]] = {
    "paper_scan": paper_scan,
    "photo_uneven_light": photo_uneven_light,
    "chalkboard": chalkboard,
    "small_off_centre": small_off_centre,
    "drawing_app_rgba": drawing_app_rgba,
    "grey16_png": grey16_png,
    "palette_gif": palette_gif,
    "cmyk_jpeg": cmyk_jpeg,
    "exif_rotated_jpeg": exif_rotated_jpeg,
    "thin_pen": thin_pen,
    "pencil_on_yellow": pencil_on_yellow,
    "ballpoint_on_grey": ballpoint_on_grey,
    "ruled_paper": ruled_paper,
}
