"""Light-weight batch scorer for handwritten-digit images (numpy, Pillow, LiteRT; no TensorFlow)."""

__version__ = "0.1.0"
