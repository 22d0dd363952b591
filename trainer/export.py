"""Export: float32 and full-integer int8 TFLite, checked with the scorer's own runtime, and the
int8 model as a C array for TensorFlow Lite Micro. The bundle itself is written by the scorer's
``scorer.bundle.write_bundle``, which needs no TensorFlow."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from scorer.bundle import Classifier
from trainer import edge

REPRESENTATIVE_SAMPLES = 1000
EVAL_BATCH = 1024


def convert(converter) -> bytes:
    # The converter exports a SavedModel first and prints its signature: keep stdout for results.
    with contextlib.redirect_stdout(io.StringIO()):
        return converter.convert()


def to_tflite_float32(model) -> bytes:
    """float32 (batch, h, w) raw pixels in, probabilities out; the batch size stays dynamic."""
    return convert(tf.lite.TFLiteConverter.from_keras_model(model))


def to_tflite_int8(model, x_calibration: np.ndarray, seed: int) -> bytes:
    """Full-integer model: uint8 input of raw 0-255 pixels and uint8 output probabilities.

    The calibration images come from the training data, so the input range is 0-255 and the
    input quantisation is (close to) the identity."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(x_calibration), min(REPRESENTATIVE_SAMPLES, len(x_calibration)),
                        replace=False)

    def representative() -> Iterator[list[np.ndarray]]:
        for i in chosen:
            yield [x_calibration[i : i + 1].astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    return convert(converter)


def tflite_predict(model_content: bytes, x: np.ndarray) -> np.ndarray:
    """Class probabilities (n, 10) from a TFLite model run by the scorer's runtime."""
    classifier = Classifier(model_content)
    return np.concatenate([classifier.predict(x[i : i + EVAL_BATCH])
                           for i in range(0, len(x), EVAL_BATCH)])


def builtin_ops(model_content: bytes) -> set[str]:
    """Names of the builtin operators a .tflite flatbuffer uses (e.g. 'FULLY_CONNECTED'), read
    from its operator codes with the schema bindings TensorFlow ships; custom ops appear as
    'CUSTOM:<name>'."""
    from tensorflow.lite.python import schema_py_generated as schema

    names = {code: name for name, code in vars(schema.BuiltinOperator).items()
             if not name.startswith("_")}
    model = schema.ModelT.InitFromPackedBuf(bytearray(model_content), 0)
    found = set()
    for op in model.operatorCodes:
        # the int8 field holds codes below 127; larger ones live in builtinCode only
        code = max(op.builtinCode, op.deprecatedBuiltinCode)
        name = names[code]
        if name == "CUSTOM":
            custom = op.customCode
            name = f"CUSTOM:{custom.decode() if isinstance(custom, bytes) else custom}"
        found.add(name)
    return found


def c_array(data: bytes, name: str = "model_tflite") -> str:
    """The bytes as a C header for TensorFlow Lite Micro, in the layout of `xxd -i` (valid C11
    and C++11, 16-byte aligned, defined where ``MODEL_DATA_DEFINE`` is): `model_data.h`
    without the edge constants, written by `trainer.edge.model_header`."""
    return edge.model_header(data, None, name)
