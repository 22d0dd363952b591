"""Run a bundle's int8 model with the real TensorFlow Lite Micro interpreter (not in the tests).

    python -m venv /tmp/tflm && /tmp/tflm/bin/pip install tflite-micro numpy
    /tmp/tflm/bin/python tools/check_tflm.py artifacts-cnn --images 1000

Loading fails if the model needs an operator TFLite Micro lacks; otherwise it classifies the first
MNIST test images one by one (TFLM has no dynamic batch) from the trainer's cache and prints the
accuracy next to the bundle's own int8 figure. Needs only numpy and tflite-micro (no TensorFlow).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np


def mnist_test(limit: int) -> tuple[np.ndarray, np.ndarray]:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    with np.load(cache / "handwritten-digits" / "mnist.npz") as npz:
        return npz["x_test"][:limit], npz["y_test"][:limit]


def main() -> None:
    from tflite_micro.python.tflite_micro import runtime

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    interpreter = runtime.Interpreter.from_bytes((args.bundle / "model.tflite").read_bytes())
    x, y = mnist_test(args.images)
    predictions = []
    for image in x:
        interpreter.set_input(image[None].astype(np.uint8), 0)
        interpreter.invoke()
        predictions.append(int(np.argmax(interpreter.get_output(0))))
    accuracy = float(np.mean(np.array(predictions) == y))
    metrics = json.loads((args.bundle / "metrics.json").read_text())
    print(f"{args.bundle}: TFLite Micro ran {len(x)} MNIST test images, accuracy {accuracy:.2%} "
          f"(the bundle's int8 on all 10,000: "
          f"{metrics['models']['tflite_int8']['accuracy']:.2%})")


if __name__ == "__main__":
    main()
