"""Train a digit classifier and export the verified model bundle.

The story, one function per stage, called in order by `train_and_export`:
prepare the data -> build the model -> train -> evaluate (Keras, TFLite float32, TFLite int8)
-> write the bundle (models, manifest, metrics, reports) -> print a summary.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from scorer import report
from scorer.bundle import Manifest, write_bundle
from scorer.bundle.manifest import FIELD_READER
from scorer.images import DIGITS_8X8_GEOMETRY, MNIST_GEOMETRY
from trainer import augment, data, edge, epochs, export, field_reader, plots
from trainer.model import build_model
from trainer.recipes import ARCH_DEFAULTS, FIELD_READER_DEFAULTS, TUNABLES

FIELD_READER_FILE = "field_reader.tflite"
VALIDATION_FRACTION = 0.1
PREFETCH_BATCHES = 8
FINAL_LEARNING_RATE_FRACTION = 0.01  # cosine decay from the initial rate to 1 % of it


@dataclass(frozen=True)
class Settings:
    dataset: str = "mnist"
    data_path: str | None = None
    out: str = "artifacts"
    arch: str = "mlp"
    hidden: tuple[int, ...] | None = None  # None: the architecture's recipe (trainer.recipes)
    dropout: float | None = None
    epochs: int | None = None
    batch_size: int = 128
    learning_rate: float | None = None
    patience: int = 5
    seed: int = 42
    augment: bool = True
    limit: int | None = None
    # The field reader for number fields (MNIST bundles only; 0 epochs: none, fields are then
    # read by cutting alone): composed fields and epochs, FIELD_READER_DEFAULTS if None.
    field_reader_fields: int | None = None
    field_reader_epochs: int | None = None
    overwrite: bool = False  # replace --out even if it is not a bundle (see check_target)

    def with_arch_defaults(self) -> Settings:
        """Every option left as None taken from the architecture's recipe."""
        recipe = ARCH_DEFAULTS[self.arch]
        return replace(self, **{name: recipe[name] for name in TUNABLES
                                if getattr(self, name) is None})


@dataclass
class Evaluation:
    accuracy: dict[str, float] = field(default_factory=dict)
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    probabilities: dict[str, np.ndarray] = field(default_factory=dict)


def train_and_export(settings: Settings) -> dict:
    """Train, evaluate and export; returns metrics.json's content."""
    started = time.perf_counter()
    settings = settings.with_arch_defaults()
    keras.utils.set_random_seed(settings.seed)
    tf.config.experimental.enable_op_determinism()  # same seed, same data -> same metrics
    dataset = prepare_data(settings)
    model = build_model(settings.arch, dataset.x_train.shape[1:], hidden=settings.hidden,
                        dropout=settings.dropout, learning_rate=settings.learning_rate)
    model.summary(print_fn=lambda line, **_: print(line))
    history = train(model, dataset, settings)
    tflite = {
        "tflite_float32": export.to_tflite_float32(model),
        "tflite_int8": export.to_tflite_int8(model, dataset.x_train, settings.seed),
    }
    evaluation = evaluate(model, tflite, dataset)
    reader, reader_facts = train_field_reader(settings, dataset)
    metrics = metrics_json(dataset, evaluation, tflite, history, time.perf_counter() - started)
    if reader_facts:
        metrics["field_reader"] = reader_facts
    export_bundle(settings, dataset, model, tflite, evaluation, history, metrics, reader,
                  reader_facts)
    print_summary(settings, metrics)
    return metrics


def train_field_reader(settings: Settings, dataset: data.Dataset) -> tuple[bytes | None, dict]:
    """The field reader's int8 model and its facts, trained on the same training digits; (None,
    {}) for 8x8 digits or when its epochs are 0."""
    epochs = FIELD_READER_DEFAULTS["epochs"] if settings.field_reader_epochs is None \
        else settings.field_reader_epochs
    if dataset.name != "mnist" or epochs == 0:
        return None, {}
    fields = settings.field_reader_fields or FIELD_READER_DEFAULTS["fields"]
    return field_reader.train_field_reader(dataset.x_train, dataset.y_train, fields=fields,
                                           epochs=epochs, seed=settings.seed)


def prepare_data(settings: Settings) -> data.Dataset:
    dataset = data.load_dataset(settings.dataset, settings.data_path, settings.seed)
    if settings.limit:
        dataset = data.Dataset(dataset.name, dataset.x_train[: settings.limit],
                               dataset.y_train[: settings.limit], dataset.x_test,
                               dataset.y_test, dataset.source)
    print(f"{dataset.name}: {len(dataset.x_train)} training and {len(dataset.x_test)} test "
          f"images of {dataset.x_train.shape[1]}x{dataset.x_train.shape[2]}")
    return dataset


def train(model: keras.Model, dataset: data.Dataset, settings: Settings) -> dict:
    """Fit with a cosine learning-rate decay over the epochs and early stopping on a validation
    split (the last 10 % of the training data; the best epoch's weights are kept)."""
    n_val = max(1, int(len(dataset.x_train) * VALIDATION_FRACTION))
    x_fit, y_fit = dataset.x_train[:-n_val], dataset.y_train[:-n_val]
    x_val, y_val = dataset.x_train[-n_val:], dataset.y_train[-n_val:]
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=settings.patience,
                                      restore_best_weights=True),
        keras.callbacks.LearningRateScheduler(cosine_decay(settings)),
    ]
    with training_batches(x_fit, y_fit, settings) as batches:
        history = model.fit(
            batches,
            validation_data=(x_val.astype(np.float32), y_val),
            epochs=settings.epochs,
            callbacks=callbacks,
            verbose=1 if sys.stdout.isatty() else 2,  # progress bars for people, lines for logs
        )
    return {key: [float(v) for v in values] for key, values in history.history.items()}


def cosine_decay(settings: Settings):
    """epoch -> learning rate: half a cosine from the initial rate to its final fraction."""
    def rate(epoch: int, _current: float) -> float:
        progress = epoch / max(1, settings.epochs - 1)
        share = FINAL_LEARNING_RATE_FRACTION + (1 - FINAL_LEARNING_RATE_FRACTION) * 0.5 * (
            1 + math.cos(math.pi * progress))
        return settings.learning_rate * share

    return rate


@contextlib.contextmanager
def training_batches(x: np.ndarray, y: np.ndarray,
                     settings: Settings) -> Iterator[tf.data.Dataset]:
    """Shuffled (seeded) batches of float32 raw pixels. Augmented, each epoch's order and images
    are a pure function of (seed, epoch), made by numpy in a worker process one epoch ahead."""
    if not settings.augment:
        yield (
            tf.data.Dataset.from_tensor_slices((x.astype(np.float32), y))
            .shuffle(len(x), seed=settings.seed, reshuffle_each_iteration=True)
            .batch(settings.batch_size)
            .prefetch(tf.data.AUTOTUNE)
        )
        return
    signature = (tf.TensorSpec((None, *x.shape[1:]), tf.float32),
                 tf.TensorSpec((None,), tf.as_dtype(y.dtype)))
    steps = -(-len(x) // settings.batch_size)
    with epochs.EpochStream(x, y, settings.seed, settings.batch_size) as stream:
        yield (tf.data.Dataset.from_generator(stream, output_signature=signature)
               .apply(tf.data.experimental.assert_cardinality(steps))
               .prefetch(PREFETCH_BATCHES))


def evaluate(model: keras.Model, tflite: dict[str, bytes], dataset: data.Dataset) -> Evaluation:
    """Accuracy of the Keras model and of both TFLite files on the whole test set."""
    evaluation = Evaluation()
    x_test = dataset.x_test
    probabilities = {"keras": model.predict(x_test.astype(np.float32), batch_size=1024,
                                            verbose=0)}
    for name, content in tflite.items():
        probabilities[name] = export.tflite_predict(content, x_test)
    for name, probs in probabilities.items():
        evaluation.probabilities[name] = probs
        evaluation.predictions[name] = probs.argmax(axis=1)
        evaluation.accuracy[name] = float(np.mean(evaluation.predictions[name] == dataset.y_test))
    return evaluation


def metrics_json(dataset: data.Dataset, evaluation: Evaluation, tflite: dict[str, bytes],
                 history: dict, seconds: float) -> dict:
    agreement = np.mean(evaluation.predictions["tflite_int8"] == evaluation.predictions["keras"])
    int8_bytes, float_bytes = len(tflite["tflite_int8"]), len(tflite["tflite_float32"])
    return {
        "dataset": dataset.name,
        "test_samples": len(dataset.y_test),
        "models": {
            "keras": {"accuracy": evaluation.accuracy["keras"]},
            "tflite_float32": {"accuracy": evaluation.accuracy["tflite_float32"],
                               "bytes": float_bytes},
            "tflite_int8": {"accuracy": evaluation.accuracy["tflite_int8"], "bytes": int8_bytes,
                            "agreement_with_keras": float(agreement)},
        },
        "int8_size_ratio": int8_bytes / float_bytes,
        "int8_coverage": report.coverage_table(
            dataset.y_test, evaluation.predictions["tflite_int8"],
            evaluation.probabilities["tflite_int8"].max(axis=1)),
        "epochs_run": len(history["loss"]),
        "best_val_accuracy": max(history.get("val_accuracy", [0.0])),
        "seconds": round(seconds, 1),
    }


def export_bundle(settings: Settings, dataset: data.Dataset, model: keras.Model,
                 tflite: dict[str, bytes], evaluation: Evaluation, history: dict,
                 metrics: dict, reader: bytes | None, reader_facts: dict) -> None:
    facts = edge_facts(tflite["tflite_int8"])
    files = bundle_files(dataset, model, tflite, evaluation, history, metrics, facts, reader)
    write_bundle(Path(settings.out), files,
                 manifest(settings, dataset, metrics, facts, reader_facts),
                 overwrite=settings.overwrite)
    print(f"bundle written to {settings.out}/ ({len(files) + 1} files)")


def edge_facts(int8_model: bytes) -> dict:
    """The tensor arena and the ops TensorFlow Lite Micro needs for the int8 model, measured
    with its interpreter (docs/bundle.md); empty where tflite-micro has no wheel."""
    return edge.edge_facts(int8_model) if edge.tflm_available() else {}


def bundle_files(dataset: data.Dataset, model: keras.Model, tflite: dict[str, bytes],
                 evaluation: Evaluation, history: dict, metrics: dict, facts: dict,
                 field_reader: bytes | None = None) -> dict[str, bytes]:
    """Every file of the bundle but the manifest: models (the field reader if given), C
    header, metrics, reports."""
    return {
        "model.tflite": tflite["tflite_int8"],
        "model_float32.tflite": tflite["tflite_float32"],
        "model.keras": keras_bytes(model),
        "model_data.h": edge.model_header(tflite["tflite_int8"], facts or None).encode(),
        "metrics.json": (json.dumps(metrics, indent=2) + "\n").encode(),
        "training_history.json": (json.dumps(history, indent=2) + "\n").encode(),
        **training_report_files(dataset, evaluation, history, metrics),
        **({FIELD_READER_FILE: field_reader} if field_reader is not None else {}),
    }


def training_report_files(dataset: data.Dataset, evaluation: Evaluation, history: dict,
                 metrics: dict) -> dict[str, bytes]:
    """Reports on the deployed model (int8 TFLite): the scorer's text/JSON/HTML plus figures."""
    y_pred = evaluation.predictions["tflite_int8"]
    probs = evaluation.probabilities["tflite_int8"]
    confidence = probs.max(axis=1)
    summary = report.compute_metrics(dataset.y_test, y_pred, dataset.classes)
    misclassified, least_confident = report.choose_examples(dataset.y_test, y_pred, confidence)

    def shown(indices) -> list[report.Example]:
        return [report.Example(f"test[{i}]", int(dataset.y_test[i]), int(y_pred[i]),
                               float(confidence[i]), dataset.x_test[i]) for i in indices]

    files = report.report_files(
        summary, title=f"{dataset.name} test set, int8 TFLite model",
        misclassified=shown(misclassified), least_confident=shown(least_confident),
        coverage=report.coverage(dataset.y_test, y_pred, confidence),
        extra={"dataset": dataset.name, "source": dataset.source,
               "keras_accuracy": metrics["models"]["keras"]["accuracy"]},
    )
    matrix = np.asarray(summary["confusion_matrix"])
    files["confusion_matrix.png"] = plots.confusion_matrix_png(
        matrix, dataset.classes, f"int8 TFLite on {len(y_pred)} test images")
    files["training_curves.png"] = plots.training_curves_png(history)
    files["misclassified.png"] = plots.misclassified_png(dataset.x_test, dataset.y_test, y_pred,
                                                          confidence)
    return files


def keras_bytes(model: keras.Model) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        return path.read_bytes()


def manifest(settings: Settings, dataset: data.Dataset, metrics: dict, facts: dict,
             reader_facts: dict) -> Manifest:
    """The bundle's manifest; the writer adds every file's hash."""
    return Manifest(
        classes=tuple(dataset.classes),
        geometry=MNIST_GEOMETRY if dataset.name == "mnist" else DIGITS_8X8_GEOMETRY,
        input_shape=tuple(dataset.x_train.shape[1:]),
        models={"int8": "model.tflite", "float32": "model_float32.tflite",
                "keras": "model.keras", **({FIELD_READER: FIELD_READER_FILE} if reader_facts
                                           else {})},
        dataset={"name": dataset.name, "source": dataset.source,
                 "train_samples": len(dataset.x_train), "test_samples": len(dataset.x_test)},
        training={**asdict(settings), "hidden": list(settings.hidden),
                  "augmentation": augment.recipe() if settings.augment else None,
                  **({"field_reader": reader_facts} if reader_facts else {})},
        versions=versions(),
        metrics={"int8_accuracy": metrics["models"]["tflite_int8"]["accuracy"],
                 "keras_accuracy": metrics["models"]["keras"]["accuracy"]},
        edge=facts,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("tensorflow", "tensorflow-cpu", "keras", "numpy", "ai-edge-litert"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def print_summary(settings: Settings, metrics: dict) -> None:
    models = metrics["models"]
    print(f"\n{'model':<16}{'accuracy':>10}{'bytes':>12}{'agrees with keras':>20}")
    for name, entry in models.items():
        agreement = entry.get("agreement_with_keras")
        print(f"{name:<16}{entry['accuracy']:>10.2%}{entry.get('bytes', ''):>12}"
              f"{'' if agreement is None else f'{agreement:.2%}':>20}")
    at_09 = next(row for row in metrics["int8_coverage"] if row["threshold"] == 0.9)
    print(f"\nint8 at confidence >= 0.9: {at_09['coverage']:.1%} of test images accepted, "
          f"{at_09['accuracy'] or 0:.2%} of those right (see report.html)")
    print(f"\n{metrics['dataset']}: {metrics['test_samples']} test images, "
          f"{metrics['epochs_run']} epochs, int8 is {metrics['int8_size_ratio']:.0%} of float32, "
          f"{metrics['seconds']:.0f} s in all. Bundle: {settings.out}/")
