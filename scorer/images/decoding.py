"""Decoding: bytes of any supported image -> float32 greyscale, upright, alpha on white.

Pillow does the decoding. Before any pixel is decoded, the header's pixel count and the bytes
the decoded pixels will take are checked; large images are reduced right after decoding, so
the steps that follow never work on more than a few megapixels.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import ExifTags, Image, PngImagePlugin, UnidentifiedImageError

from scorer.images.errors import ImageError

# The only Pillow decoders that may run, whatever a file's name says: Pillow would otherwise
# identify the bytes by content and hand, e.g., a PostScript file named digit.png to Ghostscript.
# (Multi-picture JPEGs come through "JPEG": Pillow's JPEG reader returns them as MPO images.)
ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "DIB", "GIF", "TIFF", "WEBP")
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
# Checked from the header, before any pixel is decoded. A digit never needs this many pixels:
# 24 MP is a 6000x4000 camera photo (JPEGs are decoded at reduced size, see _plan).
MAX_IMAGE_PIXELS = 24_000_000
# width * height * bytes per pixel as Pillow holds them (after the JPEG draft): what decoding
# one image may allocate. 48 MB is a 12 MP RGB or 4K RGBA screenshot, or 24 MP greyscale.
MAX_DECODED_BYTES = 48 * 2**20
# A progressive JPEG is decoded in one pass over the whole image per scan: encoders write about
# 10 (mozjpeg's scripts up to ~30); thousands of near-empty scans cost minutes for one image.
MAX_JPEG_SCANS = 100
JPEG_START, JPEG_SCAN = b"\xff\xd8", b"\xff\xda"
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
# Orientation tag -> the transposition that makes the pixels upright (as ImageOps.exif_transpose)
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")  # "<_io.BytesIO object at 0x7f..>"


def _reason(exc: Exception) -> str:
    """One-line reason for a Pillow failure, without memory addresses of Python objects."""
    if isinstance(exc, UnidentifiedImageError):
        return "unknown or unsupported image format"
    text = _OBJECT_REPR.sub("", " ".join(str(exc).split())).strip()
    return text or type(exc).__name__


def _open_png(data: bytes) -> Image.Image | None:
    """PNG bytes -> lazily opened image, or None if the PNG reader rejects them.

    Only the PNG reader accepts this signature before Image.open would try it, so this accepts
    the same files while skipping Image.open's format loop and warnings set-up (~15 us per
    28x28 PNG). Pillow's own pixel limit is not checked here: ours is lower and follows.
    """
    try:
        return PngImagePlugin.PngImageFile(io.BytesIO(data))
    except Exception:  # Image.open tries every format and words the error
        return None


def decoded_bytes(size: tuple[int, int], mode: str) -> int:
    """Bytes Pillow allocates for an image of this size and mode (most modes take 4 per pixel)."""
    return size[0] * size[1] * _BYTES_PER_PIXEL.get(mode, 4)


def _plan(im: Image.Image, max_side: int | None) -> int:
    """Check an opened (not yet decoded) image against the limits and set up the JPEG draft;
    returns the bytes its decoding will allocate. Raises ImageError for oversized images."""
    w, h = im.size
    if w * h > MAX_IMAGE_PIXELS:
        raise ImageError(f"image too large: {w}x{h} pixels (limit {MAX_IMAGE_PIXELS})")
    if max_side and im.format == "JPEG" and max(w, h) > 2 * max_side:
        im.draft(None, (w * max_side // max(w, h), h * max_side // max(w, h)))
    need = decoded_bytes(im.size, im.mode)
    if need > MAX_DECODED_BYTES:
        raise ImageError(f"image too large: {w}x{h} {im.mode} pixels take {need / 2**20:.0f} MB "
                         f"to decode (limit {MAX_DECODED_BYTES / 2**20:.0f} MB)")
    return need


def _load(im: Image.Image, max_side: int | None) -> Image.Image:
    """Opened image -> loaded, after the limits (from the header) and the JPEG draft."""
    _plan(im, max_side)
    im.load()
    return im


def _reduce(im: Image.Image, max_side: int | None) -> Image.Image:
    """A decoded image much larger than `max_side` -> reduced by an integer factor (box average),
    still at least 2 * max_side: the later float steps then never hold a full-size copy."""
    if not max_side or max(im.size) <= 4 * max_side:
        return im
    if im.mode == "1" or im.mode.startswith("I;16"):
        im = im.convert("L" if im.mode == "1" else "I")
    elif im.mode in ("P", "PA"):  # averaging palette indices would mix unrelated colours
        im = im.convert("RGBA")
    return im.reduce(max(im.size) // (2 * max_side))


def _orientation(im: Image.Image, fmt: str | None) -> int:
    """The EXIF orientation tag (1 = upright). Corrupt EXIF is ignored: the pixels are fine."""
    if fmt not in ("JPEG", "MPO", "TIFF", "WEBP") and "exif" not in im.info:
        return 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns "Corrupt EXIF data" and goes on
            return int(im.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # noqa: BLE001 (any malformed EXIF: score the image as stored)
        return 1


def estimated_decoded_bytes(data: bytes, max_side: int | None = None) -> int:
    """What decoding `data` will allocate, from its header alone (cheap; no pixel decoded);
    0 for data that will be refused before decoding (unreadable, or over the limits)."""
    head = png_header(data)
    if head is not None:
        width, height, depth, colour = head
        mode = "I;16" if colour == 0 and depth == 16 else "L" if colour in (0, 3) else "RGBA"
        need = decoded_bytes((width, height), mode)
        return 0 if width * height > MAX_IMAGE_PIXELS or need > MAX_DECODED_BYTES else need
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _plan(Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS), max_side)
    except Exception:  # noqa: BLE001 (refused or unreadable: decoding it costs nothing)
        return 0


def png_header(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, bit depth, colour type) from a PNG's IHDR, or None if not a PNG."""
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR" or len(data) < 26:
        return None
    return (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"),
            data[24], data[25])


def check_jpeg_scans(data: bytes) -> None:
    """Refuse a JPEG of more than MAX_JPEG_SCANS scans before decoding it (its cost grows with
    the scans, not the pixels or bytes). A scan starts at an SOS marker, FF DA, which cannot
    occur inside entropy-coded data (an FF there is followed by 00 or a restart marker)."""
    if bytes(data[:2]) == JPEG_START:
        scans = bytes(data).count(JPEG_SCAN)
        if scans > MAX_JPEG_SCANS:
            raise ImageError(f"too many JPEG scans: {scans} (limit {MAX_JPEG_SCANS}), a "
                             "decoding-time bomb")


def open_image(data: bytes, max_side: int | None = None) -> Image.Image:
    """Bytes -> loaded, upright first frame; JPEGs may be decoded at reduced size (draft)."""
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) == 0:
        raise ImageError("empty input: no image data")
    check_jpeg_scans(data)
    try:
        im = _open_png(data) if data[:8] == PNG_SIGNATURE else None
        if im is not None:
            im = _load(im, max_side)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = _load(Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS), max_side)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image too large (decompression bomb): {_reason(exc)}") from exc
    except Exception as exc:  # Pillow's plugins raise many types for malformed input
        raise ImageError(f"not a readable image: {_reason(exc)}") from exc
    orientation = _orientation(im, im.format)  # phones store rotated pixels plus a tag
    im = _reduce(im, max_side)
    if orientation in _UPRIGHT:
        im = im.transpose(_UPRIGHT[orientation])
    return im


def to_grey(im: Image.Image) -> np.ndarray:
    """PIL image of any mode -> float32 (H, W) in [0, 255]; alpha composited on white."""
    mode = im.mode
    if mode == "L":
        return np.asarray(im, dtype=np.float32)
    if mode.startswith("I") or mode == "F":  # 16/32-bit integer or float greyscale
        grey = np.asarray(im, dtype=np.float32)
        if grey.ndim != 2:
            grey = np.asarray(im.convert("F"), dtype=np.float32)
        top = float(grey.max(initial=0.0))
        if mode == "F" and top <= 1.0:
            grey = grey * 255.0  # floats in [0, 1]
        elif top > 255.0:
            grey = grey * (255.0 / (65535.0 if top <= 65535.0 else top))
        return np.clip(grey, 0.0, 255.0)
    if "A" in mode or "a" in mode or "transparency" in im.info:
        la = np.asarray(im.convert("RGBA").convert("LA"), dtype=np.float32)
        alpha = la[..., 1] / 255.0
        return la[..., 0] * alpha + 255.0 * (1.0 - alpha)
    if mode not in ("1", "P", "RGB", "CMYK"):
        im = im.convert("RGB")  # YCbCr, LAB, HSV, ...
    return np.asarray(im.convert("L"), dtype=np.float32)


def decode(data: bytes) -> np.ndarray:
    """Bytes of any supported image -> float32 greyscale (H, W) in [0, 255], polarity as stored.

    First frame of GIF/TIFF, EXIF orientation applied, alpha composited on white.
    Raises ImageError for empty, corrupt, non-image or oversized (bomb) data.
    """
    return to_grey(open_image(data))
