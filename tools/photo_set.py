"""A benchmark set of what users upload: phone photos and page scans of one digit each.

    python tools/photo_set.py .bench/photos-200

writes (once; seeded, so the same files every time) COUNT images into class folders 0-9:
- phone photos: colour JPEGs of 2-12 megapixels (the sizes phones take), landscape or portrait,
  some stored rotated with an EXIF orientation tag, paper tinted white to cream, the light
  falling off to one side and into the corners, sensor noise, the digit drawn large anywhere;
- page scans (one in SCAN_EVERY): A4 greyscale PNGs at 300 dpi (2480x3508) or 150 dpi, a dark
  digit somewhere on a slightly grey, slightly noisy page.

The digits are MNIST TEST images (from the end of the test set), drawn large by
`tests/digit_factory.py`: benchmark inputs only, never training data.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the project and its test image factory

from digit_factory import _STORE_FOR_ORIENTATION, _encode, _to_u8, ink_mask  # noqa: E402

COUNT = 200
SEED = 17
VERSION = 1  # bump when the rendering changes: a cached set of another version is rebuilt
SCAN_EVERY = 8  # one image in 8 is a page scan
# (width, height) of the photos phones take, 2 to 12 megapixels, landscape as stored
PHOTO_SIZES = [(1600, 1200), (2048, 1536), (2592, 1944), (3264, 2448), (4000, 3000),
               (4032, 3024)]
A4_SIZES = [(2480, 3508), (1240, 1754)]  # portrait, 300 and 150 dpi
DONE = "done"


def phone_photo(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A colour JPEG of paper with the digit on it, as a phone takes it (see the module doc)."""
    w, h = PHOTO_SIZES[int(rng.integers(len(PHOTO_SIZES)))]
    if rng.random() < 0.5:
        w, h = h, w  # held upright
    mask = ink_mask(digit, rng, height=int(min(w, h) * rng.uniform(0.2, 0.5)))
    cover = _placed(mask, (h, w), rng)
    light = _uneven_light((h, w), rng)
    paper = (rng.uniform(200, 245) - rng.uniform(0, 25, 3)).astype(np.float32)
    ink = (rng.uniform(15, 60) + np.array([0, 0, rng.uniform(0, 70)])).astype(np.float32)
    rgb = np.empty((h, w, 3), np.uint8)
    for c in range(3):  # one channel at a time: a 12 MP float image is 48 MB a channel
        channel = (paper[c] + (ink[c] - paper[c]) * cover) * light
        channel += rng.standard_normal((h, w), np.float32) * np.float32(rng.uniform(3, 7))
        rgb[..., c] = _to_u8(channel)
    image = Image.fromarray(rgb)
    if rng.random() < 0.4:  # stored rotated, with the tag that tells a viewer to turn it
        orientation = int(rng.choice(list(_STORE_FOR_ORIENTATION)))
        exif = Image.Exif()
        exif[0x0112] = orientation
        stored = image.transpose(_STORE_FOR_ORIENTATION[orientation])
        return _encode(stored, "JPEG", quality=int(rng.integers(85, 96)), exif=exif.tobytes())
    return _encode(image, "JPEG", quality=int(rng.integers(85, 96)))


def page_scan(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """An A4 greyscale PNG: a dark digit on a light, lightly noisy page."""
    w, h = A4_SIZES[int(rng.integers(len(A4_SIZES)))]
    mask = ink_mask(digit, rng, height=int(w * rng.uniform(0.06, 0.16)))
    cover = _placed(mask, (h, w), rng)
    page = np.float32(rng.uniform(225, 250))
    grey = page + (np.float32(rng.uniform(20, 70)) - page) * cover
    grey += rng.standard_normal((h, w), np.float32) * np.float32(rng.uniform(1, 3))
    return _encode(Image.fromarray(_to_u8(grey)), "PNG")


def _placed(mask: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """float32 coverage of `shape` with the mask somewhere inside it."""
    cover = np.zeros(shape, np.float32)
    y = int(rng.integers(0, shape[0] - mask.shape[0] + 1))
    x = int(rng.integers(0, shape[1] - mask.shape[1] + 1))
    cover[y : y + mask.shape[0], x : x + mask.shape[1]] = mask
    return cover


def _uneven_light(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """float32 light, 0.6-1.1: brighter to one side, darker in the corners (made small and
    scaled up: light varies slowly)."""
    yy, xx = np.mgrid[0:1:64j, 0:1:64j]
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)
    light = 0.85 + rng.uniform(0.1, 0.3) * ramp - 0.3 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
    small = Image.fromarray(light.astype(np.float32), "F")
    return np.asarray(small.resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def build_set(folder: Path, count: int = COUNT) -> Path:
    """Write the set into folder/<label>/ (made once: kept while its stamp matches)."""
    folder = Path(folder)
    stamp = f"{count} images, seed {SEED}, version {VERSION}\n"
    if (folder / DONE).exists() and (folder / DONE).read_text() == stamp:
        return folder
    from trainer.data import load_mnist

    mnist = load_mnist()
    digits, labels = mnist.x_test[-count:], mnist.y_test[-count:]  # test digits only
    rng = np.random.default_rng(SEED)
    for old in folder.glob("*/*.*"):
        old.unlink()
    for i, (digit, label) in enumerate(zip(digits, labels, strict=True)):
        scan = i % SCAN_EVERY == SCAN_EVERY - 1
        data = page_scan(digit, rng) if scan else phone_photo(digit, rng)
        name = f"{i:04d}-scan.png" if scan else f"{i:04d}-photo.jpg"
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        (folder / str(label) / name).write_bytes(data)
    (folder / DONE).write_text(stamp)
    return folder


if __name__ == "__main__":
    built = build_set(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / ".bench" / "photos")
    print(built)
