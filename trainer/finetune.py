"""Fine-tune a bundle on the user's own handwriting, compare it with its base, export it.

The story, one function per stage, called in order by `fine_tune_and_export`:
load the base bundle -> read the user's images (the scorer's own reading and normalization) ->
hold out a seeded, stratified share -> mix the rest 1:REPLAY with replayed training images of
the base's dataset (MNIST's training split; never another digit source) -> train the base's
Keras model on the mix (augmented, cosine learning-rate decay) -> convert (float32, int8) ->
compare base and new (int8) on the held-out images and on the test set -> refuse a model that
is worse, or write the bundle with its lineage.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from scorer.bundle import Bundle, load_bundle, write_bundle
from scorer.files import sha256_file
from scorer.report.comparison import (
    Changed,
    compare,
    comparison_sections,
    comparison_text,
    insert_sections,
)
from trainer import data, epochs, export, train
from trainer.lineage import lineage_of, manifest
from trainer.recipes import FINETUNE_DEFAULTS
from trainer.user_images import (
    UserImages,
    describe_not_used,
    per_class,
    read_user_images,
    stratified_holdout,
)

NAMES = ("base", "new")
HELD_OUT = "your held-out images"


@dataclass(frozen=True)
class FineTuneSettings:
    base: str
    images: tuple[str, ...]
    labels: str | None = None
    out: str = "artifacts-finetuned"
    data_path: str | None = None
    epochs: int = FINETUNE_DEFAULTS["epochs"]
    learning_rate: float = FINETUNE_DEFAULTS["learning_rate"]
    batch_size: int = FINETUNE_DEFAULTS["batch_size"]
    replay: float = FINETUNE_DEFAULTS["replay"]
    holdout: float = FINETUNE_DEFAULTS["holdout"]
    seed: int = 42
    augment: bool = True
    max_drop: float = 0.5  # percentage points of test accuracy the new model may lose
    accept_worse: bool = False
    overwrite: bool = False


class Refused(Exception):
    """The new model is worse than its base; nothing was written. The message says how."""


class Clock:
    """Seconds per stage, for the summary and metrics.json."""

    def __init__(self):
        self.started = self.last = time.perf_counter()
        self.stages: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = round(now - self.last, 1)
        self.last = now

    @property
    def total(self) -> float:
        return round(time.perf_counter() - self.started, 1)


def fine_tune_and_export(settings: FineTuneSettings) -> dict:
    """Fine-tune, compare, and export (unless refused: raises Refused); returns metrics.json."""
    clock = Clock()
    keras.utils.set_random_seed(settings.seed)
    tf.config.experimental.enable_op_determinism()
    base = load_bundle(settings.base)
    user = read_images(settings, base)
    train_idx, held_idx = stratified_holdout(user.y, settings.holdout, settings.seed)
    dataset = replay_dataset(settings, base)
    replay = Replay(user.x[train_idx], user.y[train_idx], dataset, settings)
    clock.lap("reading")
    model = base_model(base, settings)
    history = fit(model, replay, settings)
    clock.lap("training")
    x_calibration = replay.epoch(0)[0]  # the user's images and the first epoch's replay
    tflite = {"tflite_float32": export.to_tflite_float32(model),
              "tflite_int8": export.to_tflite_int8(model, x_calibration, settings.seed)}
    clock.lap("converting")
    evaluation = train.evaluate(model, tflite, dataset)
    results, changed = compare_with_base(base, tflite["tflite_int8"], user, held_idx, dataset,
                                         evaluation)
    clock.lap("evaluating")
    print("\n" + comparison_text(results, NAMES), end="")
    problems = regressions(results, settings.max_drop)
    if problems and not settings.accept_worse:
        raise Refused("; ".join(problems))
    metrics = finetune_metrics(dataset, evaluation, tflite, history, results, clock.total)
    facts = train.edge_facts(tflite["tflite_int8"])
    # The base's field reader is kept as it is: it reads lines, not one person's hand.
    files = train.bundle_files(dataset, model, tflite, evaluation, history, metrics, facts,
                               base.field_reader_bytes())
    files["report.html"] = insert_sections(files["report.html"].decode(),
                                           comparison_sections(results, NAMES, changed)).encode()
    files["comparison.json"] = (json.dumps(results, indent=2) + "\n").encode()
    lineage = lineage_of(settings, base, user, held_idx, dataset, replay, results, problems)
    clock.lap("reports")
    metrics["seconds"] = clock.total
    metrics["stage_seconds"] = clock.stages
    files["metrics.json"] = (json.dumps(metrics, indent=2) + "\n").encode()
    write_bundle(Path(settings.out), files,
                 manifest(settings, base, dataset, replay, metrics, lineage, facts),
                 overwrite=settings.overwrite)
    print_summary(settings, metrics, problems)
    return metrics


def read_images(settings: FineTuneSettings, base: Bundle) -> UserImages:
    user = read_user_images(list(settings.images), settings.labels, base.labels, base.geometry)
    counts = ", ".join(f"{k}: {v}" for k, v in per_class(user.y, base.labels).items())
    print(f"your images: {len(user.y)} labelled ({counts}); not used: "
          f"{describe_not_used(user.not_used)}")
    return user


def replay_dataset(settings: FineTuneSettings, base: Bundle) -> data.Dataset:
    """The base's own dataset: its training split is replayed, its test split compares."""
    name = base.manifest.dataset.get("name", "mnist")
    return data.load_dataset(name, settings.data_path,
                             int(base.manifest.training.get("seed", 42)))


class Replay:
    """Each epoch's training images: all of the user's, and `replay` times as many training
    images of the base's dataset, drawn afresh each epoch (seeded by (seed, epoch)), so the
    model sees many of the images it learnt from, not the same few twenty times."""

    def __init__(self, x_user: np.ndarray, y_user: np.ndarray, dataset: data.Dataset,
                 settings: FineTuneSettings):
        self.x_user, self.y_user, self.dataset = x_user, y_user, dataset
        self.per_epoch = round(settings.replay * len(x_user))
        self.seed = settings.seed
        print(f"training on {len(x_user)} of your images, each epoch with {self.per_epoch} "
              f"{dataset.name} training images drawn afresh")

    def epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (n, h, w) images and labels of one epoch, the user's first."""
        rng = np.random.default_rng([self.seed, 4, epoch])
        pool = len(self.dataset.x_train)
        chosen = rng.choice(pool, self.per_epoch, replace=self.per_epoch > pool)
        return (np.concatenate([self.x_user, self.dataset.x_train[chosen]]),
                np.concatenate([self.y_user, self.dataset.y_train[chosen].astype(np.uint8)]))


def base_model(base: Bundle, settings: FineTuneSettings) -> keras.Model:
    """The base bundle's Keras model (checked against its manifest), with a fresh optimiser."""
    name = base.manifest.models.get("keras")
    entry = base.manifest.files.get(name or "")
    if entry is None or not (base.path / name).is_file():
        raise data.DataError(f"{base.path}: the bundle has no model.keras to fine-tune "
                             "(a deployment copy?): use the bundle digits-train wrote")
    if sha256_file(base.path / name) != entry.sha256:
        raise data.DataError(f"{base.path / name}: SHA-256 does not match the manifest")
    with tempfile.TemporaryDirectory() as tmp:  # load from a copy: the bytes checked
        path = Path(tmp) / "model.keras"
        path.write_bytes((base.path / name).read_bytes())
        if sha256_file(path) != entry.sha256:
            raise data.DataError(f"{base.path / name} changed while it was read")
        model = keras.models.load_model(path, compile=False)
    model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def fit(model: keras.Model, replay: Replay, settings: FineTuneSettings) -> dict:
    """A fixed number of epochs, cosine-decayed: no early stopping, since the held-out images
    judge the result and must not choose it. Each epoch's images are augmented as in
    training from scratch (`trainer.epochs`: seeded by (seed, epoch)) and shuffled."""
    rate = train.cosine_decay(settings)
    history: dict[str, list[float]] = {"loss": [], "accuracy": [], "learning_rate": []}
    for epoch in range(settings.epochs):
        x, y = replay.epoch(epoch)
        if settings.augment:
            order, x = epochs.augmented_epoch(x, settings.seed, epoch, y)
        else:
            order = epochs.epoch_rng(settings.seed, epoch).permutation(len(x))
            x = x[order]
        model.optimizer.learning_rate.assign(rate(epoch, 0.0))
        done = model.fit(x.astype(np.float32), y[order], batch_size=settings.batch_size,
                         epochs=1, shuffle=False, verbose=0).history
        for key in ("loss", "accuracy"):
            history[key].append(float(done[key][0]))
        history["learning_rate"].append(rate(epoch, 0.0))
        print(f"epoch {epoch + 1}/{settings.epochs}: loss {history['loss'][-1]:.4f}, "
              f"accuracy {history['accuracy'][-1]:.2%}, learning rate "
              f"{history['learning_rate'][-1]:.2g}")
    return history


def compare_with_base(base: Bundle, new_int8: bytes, user: UserImages, held_idx: np.ndarray,
                      dataset: data.Dataset, evaluation: train.Evaluation
                      ) -> tuple[dict[str, dict], dict[str, Changed]]:
    """Base and new int8 models on the held-out images and on the test set."""
    base_int8 = base.model_bytes()
    sets = {
        HELD_OUT: (user.x[held_idx], user.y[held_idx], [user.names[i] for i in held_idx],
                   export.tflite_predict(new_int8, user.x[held_idx])),
        f"{dataset.name} test": (dataset.x_test, dataset.y_test, None,
                                 evaluation.probabilities["tflite_int8"]),
    }
    results, changed = {}, {}
    for title, (x, y, names, new_probs) in sets.items():
        base_probs = export.tflite_predict(base_int8, x)
        pa, pb = base_probs.argmax(1), new_probs.argmax(1)
        ca, cb = base_probs.max(1), new_probs.max(1)
        results[title] = compare(y, pa, ca, pb, cb, base.labels)
        changed[title] = Changed()
        for i in np.flatnonzero(pa != pb):
            changed[title].add(names[i] if names else f"test[{i}]", int(y[i]),
                               (int(pa[i]), float(ca[i])), (int(pb[i]), float(cb[i])), x[i])
    return results, changed


def regressions(results: dict[str, dict], max_drop: float) -> list[str]:
    """Why the new model must not ship: worse on the held-out images at all, or worse on the
    test set by more than `max_drop` points."""
    problems = []
    for title, result in results.items():
        a, b = result["a"]["accuracy"], result["b"]["accuracy"]
        allowed = 0.0 if title == HELD_OUT else max_drop / 100
        if b < a - allowed - 1e-12:
            problems.append(f"{title}: new {b:.2%} is {100 * (a - b):.2f} points below base "
                            f"{a:.2%}" + ("" if title == HELD_OUT else
                                          f" (--max-drop {max_drop:g})"))
    return problems


def finetune_metrics(dataset: data.Dataset, evaluation: train.Evaluation,
                     tflite: dict[str, bytes], history: dict, results: dict[str, dict],
                     seconds: float) -> dict:
    """metrics.json: the schema of a trained bundle (test-set figures), plus the held-out
    images' and the base's figures."""
    metrics = train.metrics_json(dataset, evaluation, tflite, history, seconds)
    metrics["best_val_accuracy"] = None  # no validation split: fixed epochs
    held, test = results[HELD_OUT], results[f"{dataset.name} test"]
    metrics["user_holdout"] = {
        "samples": held["samples"],
        "base": {"tflite_int8": {"accuracy": held["a"]["accuracy"]}},
        "new": {"tflite_int8": {"accuracy": held["b"]["accuracy"]}},
        "mcnemar_p": held["mcnemar"]["p_value"],
    }
    metrics["base"] = {"tflite_int8": {"accuracy": test["a"]["accuracy"]}}
    return metrics


def print_summary(settings: FineTuneSettings, metrics: dict, problems: list[str]) -> None:
    for problem in problems:
        print(f"warning: written although worse (--accept-worse): {problem}")
    stages = ", ".join(f"{name} {seconds:.1f}" for name, seconds in
                       metrics["stage_seconds"].items())
    print(f"\nint8 is {metrics['int8_size_ratio']:.0%} of float32; seconds: {stages}; "
          f"{metrics['seconds']:.0f} s in all. Bundle: {settings.out}/")
