"""Turn arbitrary user images of one handwritten digit into model-ready arrays.

Pure functions over numpy + Pillow (no TensorFlow/SciPy: this runs in the light scorer).

- ``decoding``: bytes -> float32 greyscale (Pillow, pixel-count guard, EXIF orientation);
- ``steps``: the normalisation steps (polarity, background, contrast, crop, thicken, fit, place);
- ``normalization``: one image through the steps; ``batch``: many at once, bit for bit the same;
- ``geometry``: the model's input canvas, as the bundle's manifest describes it.
"""

from scorer.images.batch import normalize_many
from scorer.images.decoding import (
    IMAGE_EXTENSIONS,
    MAX_DECODED_BYTES,
    MAX_IMAGE_PIXELS,
    decode,
    estimated_decoded_bytes,
)
from scorer.images.errors import BLANK_REASON, BlankImageError, ImageError
from scorer.images.geometry import DIGITS_8X8_GEOMETRY, MNIST_GEOMETRY, Geometry
from scorer.images.normalization import normalize

__all__ = [
    "BLANK_REASON",
    "DIGITS_8X8_GEOMETRY",
    "IMAGE_EXTENSIONS",
    "MAX_DECODED_BYTES",
    "MAX_IMAGE_PIXELS",
    "MNIST_GEOMETRY",
    "BlankImageError",
    "Geometry",
    "ImageError",
    "decode",
    "estimated_decoded_bytes",
    "normalize",
    "normalize_many",
]
