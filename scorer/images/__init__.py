"""Turn arbitrary user images of one handwritten digit into model-ready arrays.

Pure functions over numpy + Pillow (no TensorFlow/SciPy: this runs in the light scorer).

- ``decoding``: bytes -> float32 greyscale (Pillow, pixel-count guard, EXIF orientation);
- ``steps``: the normalization steps (polarity, background, contrast, crop, thicken, fit, place);
- ``normalization``: one image through the steps; ``batch``: many at once, bit for bit the same;
- ``prepare``: either, never raising: a model input or a one-line reason;
- ``geometry``: the model's input canvas, as the bundle's manifest describes it.
"""

from scorer.images.batch import Prepared, normalize_many
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
from scorer.images.prepare import never_raising, no_images, prepare, prepare_many

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
    "Prepared",
    "decode",
    "estimated_decoded_bytes",
    "never_raising",
    "no_images",
    "normalize",
    "normalize_many",
    "prepare",
    "prepare_many",
]
