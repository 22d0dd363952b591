"""Read a bundle folder and verify every file against its manifest before anything runs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from scorer.bundle.classifier import Classifier
from scorer.bundle.manifest import FIELD_READER, MODEL_FILES, BundleError, Manifest
from scorer.files import sha256_bytes, sha256_file
from scorer.images import Geometry
from scorer.images.geometry import LINE_HEIGHT, LINE_WIDTH


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest
    model_file: str

    @property
    def geometry(self) -> Geometry:
        return self.manifest.geometry

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.classes)

    def model_bytes(self) -> bytes:
        """The model file, checked again: the bytes run are the bytes checked, even if the file
        changed since load_bundle."""
        return self._checked_bytes(self.model_file)

    def field_reader_bytes(self) -> bytes | None:
        """The sequence model for number fields (docs/bundle.md), checked again; None for a
        bundle without one (number fields are then read by cutting alone)."""
        name = self.manifest.models.get(FIELD_READER)
        return self._checked_bytes(name) if name else None

    def _checked_bytes(self, name: str) -> bytes:
        data = (self.path / name).read_bytes()
        if sha256_bytes(data) != self.manifest.files[name].sha256:
            raise BundleError(f"{self.path / name}: SHA-256 does not match the manifest; "
                              "refusing to load it")
        return data

    def classifier(self, num_threads: int | None = None) -> Classifier:
        return Classifier(self.model_bytes(), num_threads=num_threads)


def load_bundle(path: str | Path, variant: str = "int8") -> Bundle:
    """Read and verify a bundle folder. Every file the manifest lists and the folder holds must
    match its SHA-256; the chosen model file must be there (others, such as model.keras, may be
    left out of a deployment package)."""
    folder = Path(path)
    manifest = read_manifest(folder)
    model_file = manifest.models.get(variant) or MODEL_FILES.get(variant)
    if model_file is None:
        raise BundleError(f"unknown model variant {variant!r}: choose int8 or float32")
    for needed in (model_file, manifest.models.get(FIELD_READER)):
        if needed and needed not in manifest.files:
            raise BundleError(f"{folder}: manifest lists no {needed}")
        if needed and not (folder / needed).is_file():
            raise BundleError(f"{folder}: {needed} is missing")
    for name, entry in manifest.files.items():
        file = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleError(f"{folder}: manifest names a file outside the bundle: {name}")
        if file.is_file() and sha256_file(file) != entry.sha256:
            raise BundleError(f"{file}: SHA-256 does not match the manifest; refusing to load it")
    bundle = Bundle(folder, manifest, model_file)
    check_model_matches_manifest(bundle)
    return bundle


def check_model_matches_manifest(bundle: Bundle) -> None:
    """The model's input and output shapes must be what the manifest says (geometry and
    classes); otherwise scoring would fail on the first batch, or label predictions wrongly."""
    classifier = bundle.classifier()
    inputs = tuple(int(n) for n in classifier.input["shape"][1:])
    outputs = int(classifier.output["shape"][-1])
    geometry = (bundle.geometry.height, bundle.geometry.width)
    where = f"{bundle.path / 'manifest.json'}"
    if inputs != geometry:
        raise BundleError(f"{where}: the manifest's input geometry {geometry[0]}x{geometry[1]} "
                          f"does not match the model's input {'x'.join(map(str, inputs))}")
    if outputs != len(bundle.labels):
        raise BundleError(f"{where}: the manifest lists {len(bundle.labels)} classes but the "
                          f"model has {outputs} outputs")
    field_reader = bundle.field_reader_bytes()
    if field_reader is not None:
        reader = Classifier(field_reader)
        shape = tuple(int(n) for n in reader.input["shape"][1:])
        if shape != (LINE_HEIGHT, LINE_WIDTH) or reader.classes != len(bundle.labels) + 1:
            raise BundleError(f"{where}: the field reader takes {shape} and gives "
                              f"{reader.classes} outputs; the scorer needs "
                              f"({LINE_HEIGHT}, {LINE_WIDTH}) and {len(bundle.labels) + 1}")


def read_manifest(folder: Path) -> Manifest:
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise BundleError(f"{folder}: no manifest.json (train a model first: make train)")
    try:
        doc = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise BundleError(f"{manifest_path}: not valid JSON ({err})") from err
    return Manifest.from_dict(doc, str(manifest_path))
