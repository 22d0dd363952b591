"""What a fine-tuned bundle came from: its manifest's `lineage` (the base bundle's hashes, the
user's images, the replayed data, the settings, the comparison it passed) and the manifest."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from scorer.bundle import Bundle, Manifest
from scorer.bundle.manifest import FIELD_READER
from scorer.files import sha256_file
from trainer import augment, data, train
from trainer.user_images import UserImages, per_class


def lineage_of(settings, base: Bundle, user: UserImages, held_idx: np.ndarray,
               dataset: data.Dataset, replay, results: dict[str, dict],
               problems: list[str]) -> dict:
    """What the bundle came from: the base bundle (hashes), the images (counts, sources, one
    hash), the replayed data, the settings and the comparison it passed."""
    manifest = base.manifest
    labels_sha = sha256_file(Path(settings.labels)) if settings.labels else None
    return {
        "base": {"path": str(base.path), "manifest_sha256": sha256_file(base.path /
                                                                        "manifest.json"),
                 "model_sha256": manifest.files[base.model_file].sha256,
                 "keras_sha256": manifest.files[manifest.models["keras"]].sha256,
                 "created": manifest.created, "dataset": manifest.dataset.get("name"),
                 "generation": int(manifest.lineage.get("generation", 0))},
        "generation": int(manifest.lineage.get("generation", 0)) + 1,
        "images": {"count": len(user.y), "per_class": per_class(user.y, base.labels),
                   "train": len(user.y) - len(held_idx), "held_out": len(held_idx),
                   "held_out_per_class": per_class(user.y[held_idx], base.labels),
                   "sources": list(settings.images), "labels_csv": settings.labels,
                   "labels_csv_sha256": labels_sha, "sha256": user.digest,
                   "sha256_of": "sorted lines 'source<TAB>label<TAB>sha256 of its bytes'",
                   "not_used": user.not_used},
        "replay": {"dataset": dataset.name, "split": "train",
                   "images_per_epoch": replay.per_epoch, "drawn": "afresh each epoch",
                   "source": dataset.source},
        "settings": {key: value for key, value in asdict(settings).items()
                     if key not in ("base", "images", "labels", "out", "overwrite")},
        "comparison": {title: {"images": r["samples"], "base": r["a"]["accuracy"],
                               "new": r["b"]["accuracy"], "changed": r["changed"],
                               "mcnemar_p": r["mcnemar"]["p_value"]}
                       for title, r in results.items()}
        | {"accepted_although_worse": problems},
    }


def manifest(settings, base: Bundle, dataset: data.Dataset, replay, metrics: dict,
             lineage: dict, facts: dict) -> Manifest:
    """The fine-tuned bundle's manifest (`settings`: FineTuneSettings, `replay`: Replay)."""
    recipe = {key: base.manifest.training.get(key) for key in ("arch", "hidden", "dropout")}
    return Manifest(
        classes=base.manifest.classes, geometry=base.geometry,
        input_shape=base.manifest.input_shape,
        models={"int8": "model.tflite", "float32": "model_float32.tflite",
                "keras": "model.keras",
                **({FIELD_READER: train.FIELD_READER_FILE}
                   if FIELD_READER in base.manifest.models else {})},
        dataset={"name": dataset.name, "source": dataset.source,
                 "train_samples": len(replay.y_user) + replay.per_epoch,  # per epoch
                 "test_samples": len(dataset.y_test), "user_samples": len(replay.y_user),
                 "replayed_per_epoch": replay.per_epoch},
        training={**recipe, "fine_tuned": True, **lineage["settings"],
                  **({"field_reader": base.manifest.training["field_reader"]}
                     if "field_reader" in base.manifest.training else {}),
                  "augmentation": augment.recipe() if settings.augment else None},
        versions=train.versions(),
        metrics={"int8_accuracy": metrics["models"]["tflite_int8"]["accuracy"],
                 "keras_accuracy": metrics["models"]["keras"]["accuracy"],
                 "user_holdout_int8_accuracy":
                     metrics["user_holdout"]["new"]["tflite_int8"]["accuracy"]},
        lineage=lineage,
        edge=facts,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
