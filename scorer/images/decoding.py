"""Decoding: bytes of any supported image -> float32 greyscale, upright, alpha on white.

Pillow does the decoding; the header's pixel count is checked before any pixel is decoded.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from scorer.images.errors import ImageError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
MAX_IMAGE_PIXELS = 40_000_000  # checked from the header, before any pixel is decoded

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


def _load(im: Image.Image, max_side: int | None) -> Image.Image:
    """Opened image -> loaded, after the pixel limit (from the header) and the JPEG draft."""
    w, h = im.size
    if w * h > MAX_IMAGE_PIXELS:
        raise ImageError(f"image too large: {w}x{h} pixels (limit {MAX_IMAGE_PIXELS})")
    if max_side and im.format == "JPEG" and max(w, h) > 2 * max_side:
        im.draft(None, (w * max_side // max(w, h), h * max_side // max(w, h)))
    im.load()
    return im


def open_image(data: bytes, max_side: int | None = None) -> Image.Image:
    """Bytes -> loaded, upright first frame; JPEGs may be decoded at reduced size (draft)."""
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) == 0:
        raise ImageError("empty input: no image data")
    try:
        im = _open_png(data) if data[:8] == PNG_SIGNATURE else None
        if im is not None:
            im = _load(im, max_side)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = _load(Image.open(io.BytesIO(data)), max_side)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image too large (decompression bomb): {_reason(exc)}") from exc
    except Exception as exc:  # Pillow's plugins raise many types for malformed input
        raise ImageError(f"not a readable image: {_reason(exc)}") from exc
    if im.format in ("JPEG", "MPO", "TIFF", "WEBP") or "exif" in im.info:
        im = ImageOps.exif_transpose(im)  # phones store rotated pixels plus a tag
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
