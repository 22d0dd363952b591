"""The model bundle: the only contract between trainer and scorer (see docs/bundle.md).

``manifest`` (the typed `Manifest` and its JSON), ``loading`` (read and verify a folder: a file
whose SHA-256 does not match is refused), ``writer`` (write one, all or nothing),
``classifier`` (batched TFLite inference).
"""

from scorer.bundle.classifier import Classifier, load_interpreter_class
from scorer.bundle.loading import Bundle, load_bundle, read_manifest
from scorer.bundle.manifest import MODEL_FILES, SCHEMA_VERSION, BundleError, FileEntry, Manifest
from scorer.bundle.writer import check_target, write_bundle

__all__ = [
    "MODEL_FILES",
    "SCHEMA_VERSION",
    "Bundle",
    "BundleError",
    "Classifier",
    "FileEntry",
    "Manifest",
    "check_target",
    "load_bundle",
    "load_interpreter_class",
    "read_manifest",
    "write_bundle",
]
