"""`manifest.json`, the typed contract between trainer and scorer.

The trainer builds a `Manifest` and the writer adds the files' hashes; the scorer reads it back
with `Manifest.from_dict`, which refuses anything malformed with a BundleError naming the
problem. The JSON layout (schema version 1) is described in docs/bundle.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from scorer.files import sha256_bytes
from scorer.images import Geometry

SCHEMA_VERSION = 1
MODEL_FILES = {"int8": "model.tflite", "float32": "model_float32.tflite"}
FIELD_READER = "field_reader"  # the `models` key of the sequence model for number fields


class BundleError(Exception):
    """The model bundle is missing, incomplete, or does not match its manifest."""


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int | None = None  # size, for people reading the manifest; the hash is the check


@dataclass(frozen=True)
class Manifest:
    """What a bundle holds and how its model wants its input.

    ``classes`` are the output labels in class-index order; ``models`` maps a variant ("int8",
    "float32", "keras") to its file; ``files`` maps every file but the manifest to its hash.
    ``dataset``, ``training``, ``versions``, ``metrics`` and ``lineage`` are informative JSON
    objects; ``lineage`` (empty for a bundle trained from scratch) says what a fine-tuned
    bundle came from: its base bundle, the user's images and the settings (docs/bundle.md);
    ``edge`` what TensorFlow Lite Micro needs for the int8 model (arena size, ops).
    """

    classes: tuple[str, ...]
    geometry: Geometry
    input_shape: tuple[int, ...]
    models: dict[str, str] = field(default_factory=lambda: dict(MODEL_FILES))
    files: dict[str, FileEntry] = field(default_factory=dict)
    dataset: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    lineage: dict = field(default_factory=dict)
    edge: dict = field(default_factory=dict)
    created: str = ""

    def with_files(self, files: dict[str, bytes]) -> Manifest:
        """This manifest listing `files` (name -> content) with their hashes and sizes."""
        entries = {name: FileEntry(sha256_bytes(data), len(data))
                   for name, data in sorted(files.items())}
        return replace(self, files=entries)

    def to_dict(self) -> dict:
        """The JSON document, in the layout of schema version 1."""
        return {
            "schema_version": SCHEMA_VERSION,
            "created": self.created,
            "dataset": self.dataset,
            "input": {"shape": list(self.input_shape), "dtype": "uint8", "range": [0, 255],
                      "geometry": self.geometry.to_manifest()},
            "classes": list(self.classes),
            "models": dict(self.models),
            "training": self.training,
            "versions": self.versions,
            "metrics": self.metrics,
            **({"lineage": self.lineage} if self.lineage else {}),
            **({"edge": self.edge} if self.edge else {}),
            "files": {name: {"sha256": e.sha256, "bytes": e.bytes} if e.bytes is not None
                      else {"sha256": e.sha256} for name, e in self.files.items()},
        }

    @classmethod
    def from_dict(cls, doc: object, where: str = "manifest.json") -> Manifest:
        """Inverse of to_dict; raises BundleError (naming `where`) for anything malformed."""
        if not isinstance(doc, dict) or doc.get("schema_version") != SCHEMA_VERSION:
            version = doc.get("schema_version") if isinstance(doc, dict) else None
            raise BundleError(f"{where}: unsupported schema version {version!r}")
        for key in ("input", "classes", "files"):
            if key not in doc:
                raise BundleError(f"{where}: missing {key!r}")
        return cls(
            classes=_classes(doc["classes"], where),
            geometry=_geometry(doc["input"], where),
            input_shape=_input_shape(doc["input"], where),
            models=_models(doc.get("models", MODEL_FILES), where),
            files=_files(doc["files"], where),
            dataset=_object(doc, "dataset", where),
            training=_object(doc, "training", where),
            versions=_object(doc, "versions", where),
            metrics=_object(doc, "metrics", where),
            lineage=_object(doc, "lineage", where),
            edge=_object(doc, "edge", where),
            created=str(doc.get("created", "")),
        )


def _classes(classes: object, where: str) -> tuple[str, ...]:
    if not isinstance(classes, list) or not classes or len(set(map(str, classes))) != len(classes):
        raise BundleError(f"{where}: 'classes' must be a non-empty list of unique names")
    return tuple(str(name) for name in classes)


def _geometry(section: object, where: str) -> Geometry:
    try:
        return Geometry.from_manifest(section.get("geometry") if isinstance(section, dict)
                                      else None)
    except (ValueError, TypeError) as err:
        raise BundleError(f"{where}: bad input geometry ({err})") from err


def _input_shape(section: dict, where: str) -> tuple[int, ...]:
    geometry = _geometry(section, where)
    shape = section.get("shape", [geometry.height, geometry.width])
    if not isinstance(shape, list) or not all(isinstance(n, int) and n > 0 for n in shape):
        raise BundleError(f"{where}: 'input.shape' must be a list of positive integers")
    return tuple(shape)


def _models(models: object, where: str) -> dict[str, str]:
    if not isinstance(models, dict) or not all(isinstance(v, str) for v in models.values()):
        raise BundleError(f"{where}: 'models' must map variants to file names")
    return dict(models)


def _files(files: object, where: str) -> dict[str, FileEntry]:
    if not isinstance(files, dict) or not all(
            isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
            for entry in files.values()):
        raise BundleError(f"{where}: 'files' must map names to {{\"sha256\": ...}}")
    return {name: FileEntry(entry["sha256"], entry.get("bytes")) for name, entry in files.items()}


def _object(doc: dict, key: str, where: str) -> dict:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise BundleError(f"{where}: {key!r} must be a JSON object")
    return value
