"""The model bundle: verify it against its manifest and run its TFLite model in batches.

The bundle is the only contract between trainer and scorer: `manifest.json` lists the SHA-256 of
every file, the input geometry and the class labels. A file whose hash does not match is refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scorer.images import Geometry

SCHEMA_VERSION = 1
MODEL_FILES = {"int8": "model.tflite", "float32": "model_float32.tflite"}


class BundleError(Exception):
    """The model bundle is missing, incomplete, or does not match its manifest."""


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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict
    model_file: str

    @property
    def geometry(self) -> Geometry:
        return Geometry.from_manifest(self.manifest["input"]["geometry"])

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["classes"])

    def model_bytes(self) -> bytes:
        """The model file, checked again: the bytes run are the bytes checked, even if the file
        changed since load_bundle."""
        data = (self.path / self.model_file).read_bytes()
        if hashlib.sha256(data).hexdigest() != self.manifest["files"][self.model_file]["sha256"]:
            raise BundleError(f"{self.path / self.model_file}: SHA-256 does not match the "
                              "manifest; refusing to load it")
        return data

    def classifier(self, num_threads: int | None = None) -> Classifier:
        return Classifier(self.model_bytes(), num_threads=num_threads)


def load_bundle(path: str | Path, variant: str = "int8") -> Bundle:
    """Read and verify a bundle folder. Every file the manifest lists and the folder holds must
    match its SHA-256; the chosen model file must be there (others, such as model.keras, may be
    left out of a deployment package)."""
    folder = Path(path)
    manifest = read_manifest(folder)
    model_file = manifest.get("models", {}).get(variant) or MODEL_FILES.get(variant)
    if model_file is None:
        raise BundleError(f"unknown model variant {variant!r}: choose int8 or float32")
    files = manifest.get("files", {})
    if model_file not in files:
        raise BundleError(f"{folder}: manifest lists no {model_file}")
    if not (folder / model_file).is_file():
        raise BundleError(f"{folder}: {model_file} is missing")
    for name, entry in files.items():
        file = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleError(f"{folder}: manifest names a file outside the bundle: {name}")
        if file.is_file() and sha256_file(file) != entry["sha256"]:
            raise BundleError(f"{file}: SHA-256 does not match the manifest; refusing to load it")
    return Bundle(folder, manifest, model_file)


def read_manifest(folder: Path) -> dict:
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise BundleError(f"{folder}: no manifest.json (train a model first: make train)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise BundleError(f"{manifest_path}: not valid JSON ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise BundleError(f"{manifest_path}: unsupported schema version {version!r}")
    for key in ("input", "classes", "files"):
        if key not in manifest:
            raise BundleError(f"{manifest_path}: missing {key!r}")
    classes, files = manifest["classes"], manifest["files"]
    if not isinstance(classes, list) or not classes or len(set(map(str, classes))) != len(classes):
        raise BundleError(f"{manifest_path}: 'classes' must be a non-empty list of unique names")
    if not isinstance(files, dict) or not all(
            isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
            for entry in files.values()):
        raise BundleError(f"{manifest_path}: 'files' must map names to {{\"sha256\": ...}}")
    if not isinstance(manifest.get("models", {}), dict):
        raise BundleError(f"{manifest_path}: 'models' must map variants to file names")
    try:
        Geometry.from_manifest(manifest["input"].get("geometry")
                               if isinstance(manifest["input"], dict) else None)
    except (ValueError, TypeError) as err:
        raise BundleError(f"{manifest_path}: bad input geometry ({err})") from err
    return manifest


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

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        if len(pixels) == 0:
            return np.zeros((0, int(self.output["shape"][-1])), np.float32)
        self._resize(len(pixels))
        self.interpreter.set_tensor(self.input["index"], self._quantize(pixels))
        self.interpreter.invoke()
        return self._dequantize(self.interpreter.get_tensor(self.output["index"]))

    def _resize(self, n: int) -> None:
        # Reallocating is cheap but not free: only when the batch size changes.
        if n != self.batch_size:
            shape = [n, *self.input["shape"][1:]]
            self.interpreter.resize_tensor_input(self.input["index"], shape)
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
