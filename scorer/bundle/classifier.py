"""Batched TFLite inference with LiteRT (or the end-of-life tflite_runtime where installed)."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

import numpy as np

from scorer.bundle.manifest import BundleError


def load_interpreter_class():
    """LiteRT's Interpreter, or the end-of-life tflite_runtime's where that is what is installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as err:
            raise BundleError("no TFLite runtime: pip install ai-edge-litert") from err
    return Interpreter


VERBOSE = "DIGITS_VERBOSE"  # set (to anything but "" or "0"): the runtime's INFO lines are shown


@contextlib.contextmanager
def runtime_info_hidden() -> Iterator[None]:
    """Hide the INFO lines LiteRT's C++ runtime writes straight to stderr ("Created TensorFlow
    Lite XNNPACK delegate for CPU.", once per interpreter and worker) unless DIGITS_VERBOSE is
    set: the summary line is what a user should see. Anything else it writes (warnings,
    errors) is passed on. Native code writes to file descriptor 2, so that is what is caught."""
    if os.environ.get(VERBOSE, "") not in ("", "0"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            shown = [line for line in caught.read().splitlines(keepends=True)
                     if not line.startswith(b"INFO: ")]
            if shown:
                os.write(2, b"".join(shown))


class Classifier:
    """Batched TFLite inference. `predict` takes uint8 (n, h, w) raw pixels and returns float32
    (n, n_classes) probabilities; input quantisation is read from the model itself."""

    def __init__(self, model_content: bytes, num_threads: int | None = None):
        interpreter_class = load_interpreter_class()
        try:
            self.interpreter = interpreter_class(model_content=model_content,
                                                 num_threads=num_threads)
        except (ValueError, RuntimeError) as err:
            raise BundleError(f"not a valid TFLite model: {err}") from err
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.batch_size = 0

    @property
    def classes(self) -> int:
        """How many classes the model tells apart (its output's last dimension)."""
        return int(self.output["shape"][-1])

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        if len(pixels) == 0:
            return np.zeros((0, self.classes), np.float32)
        self._resize(len(pixels))
        self.interpreter.set_tensor(self.input["index"], self._quantize(pixels))
        self.interpreter.invoke()
        return self._dequantize(self.interpreter.get_tensor(self.output["index"]))

    def _resize(self, n: int) -> None:
        # Reallocating is cheap but not free: only when the batch size changes.
        if n != self.batch_size:
            shape = [n, *self.input["shape"][1:]]
            self.interpreter.resize_tensor_input(self.input["index"], shape)
            # The first allocation applies the default delegate, which announces itself.
            with runtime_info_hidden() if self.batch_size == 0 else contextlib.nullcontext():
                self.interpreter.allocate_tensors()
            self.input = self.interpreter.get_input_details()[0]
            self.output = self.interpreter.get_output_details()[0]
            self.batch_size = n

    def _quantize(self, pixels: np.ndarray) -> np.ndarray:
        dtype = self.input["dtype"]
        scale, zero_point = self.input["quantization"]
        if pixels.dtype == dtype == np.uint8 and zero_point == 0 and scale and \
                abs(255.0 / scale - 255.0) < 0.5:
            return pixels  # calibrated on 0-255 pixels: quantising them is the identity
        values = pixels.astype(np.float32)
        if scale:  # a quantised input: real = scale * (q - zero_point)
            info = np.iinfo(dtype)
            values = np.clip(np.round(values / scale + zero_point), info.min, info.max)
        return values.astype(dtype)

    def _dequantize(self, raw: np.ndarray) -> np.ndarray:
        scale, zero_point = self.output["quantization"]
        if scale:
            return ((raw.astype(np.float32) - zero_point) * scale).astype(np.float32)
        return raw.astype(np.float32)
