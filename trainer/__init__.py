"""Train, evaluate and export the handwritten-digit classifier (TensorFlow/Keras)."""

__version__ = "0.1.0"
