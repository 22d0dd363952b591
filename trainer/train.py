"""Train a digit classifier and export the verified model bundle.

The story, one function per stage, called in order by `train_and_export`:
prepare the data -> build the model -> train -> evaluate (Keras, TFLite float32, TFLite int8)
-> write the bundle (models, manifest, metrics, reports) -> print a summary.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from scorer import report
from scorer.bundle import Manifest, write_bundle
from scorer.images import DIGITS_8X8_GEOMETRY, MNIST_GEOMETRY
from trainer import data, export, plots
from trainer.model import augmentation, build_model

VALIDATION_FRACTION = 0.1
LR_PLATEAU_FACTOR = 0.3
LR_PLATEAU_PATIENCE = 2
MIN_LEARNING_RATE = 1e-5


@dataclass(frozen=True)
class Settings:
    dataset: str = "mnist"
    data_path: str | None = None
    out: str = "artifacts"
    arch: str = "mlp"
    hidden: tuple[int, ...] = (512, 256)
    dropout: float = 0.3
    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 1e-3
    patience: int = 5
    seed: int = 42
    augment: bool = False
    limit: int | None = None
    overwrite: bool = False  # replace --out even if it is not a bundle (see check_target)


@dataclass
class Evaluation:
    accuracy: dict[str, float] = field(default_factory=dict)
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    probabilities: dict[str, np.ndarray] = field(default_factory=dict)


def train_and_export(settings: Settings) -> dict:
    """Train, evaluate and export; returns metrics.json's content."""
    started = time.perf_counter()
    keras.utils.set_random_seed(settings.seed)
    tf.config.experimental.enable_op_determinism()  # same seed, same data -> same metrics
    dataset = prepare_data(settings)
    model = build_model(settings.arch, dataset.x_train.shape[1:], settings.hidden,
                        settings.dropout, settings.learning_rate)
    model.summary(print_fn=lambda line, **_: print(line))
    history = train(model, dataset, settings)
    tflite = {
        "tflite_float32": export.to_tflite_float32(model),
        "tflite_int8": export.to_tflite_int8(model, dataset.x_train, settings.seed),
    }
    evaluation = evaluate(model, tflite, dataset)
    metrics = metrics_json(dataset, evaluation, tflite, history, time.perf_counter() - started)
    export_bundle(settings, dataset, model, tflite, evaluation, history, metrics)
    print_summary(settings, metrics)
    return metrics


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
    """Fit with early stopping on a validation split (the last 10 % of the training data)."""
    n_val = max(1, int(len(dataset.x_train) * VALIDATION_FRACTION))
    x_fit, y_fit = dataset.x_train[:-n_val], dataset.y_train[:-n_val]
    x_val, y_val = dataset.x_train[-n_val:], dataset.y_train[-n_val:]
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=settings.patience,
                                      restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=LR_PLATEAU_FACTOR,
                                          patience=LR_PLATEAU_PATIENCE, min_lr=MIN_LEARNING_RATE),
    ]
    history = model.fit(
        training_batches(x_fit, y_fit, settings),
        validation_data=(x_val.astype(np.float32), y_val),
        epochs=settings.epochs,
        callbacks=callbacks,
        verbose=1 if sys.stdout.isatty() else 2,  # progress bars for people, lines for logs
    )
    return {key: [float(v) for v in values] for key, values in history.history.items()}


def training_batches(x: np.ndarray, y: np.ndarray, settings: Settings) -> tf.data.Dataset:
    """Shuffled (seeded) batches of float32 raw pixels, augmented when asked."""
    batches = (
        tf.data.Dataset.from_tensor_slices((x.astype(np.float32), y))
        .shuffle(len(x), seed=settings.seed, reshuffle_each_iteration=True)
        .batch(settings.batch_size)
    )
    if settings.augment:
        augment = augmentation(settings.seed)
        batches = batches.map(
            lambda images, labels: (augment(images[..., None], training=True)[..., 0], labels))
    return batches.prefetch(tf.data.AUTOTUNE)


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
        "epochs_run": len(history["loss"]),
        "best_val_accuracy": max(history.get("val_accuracy", [0.0])),
        "seconds": round(seconds, 1),
    }


def export_bundle(settings: Settings, dataset: data.Dataset, model: keras.Model,
                 tflite: dict[str, bytes], evaluation: Evaluation, history: dict,
                 metrics: dict) -> None:
    files = {
        "model.tflite": tflite["tflite_int8"],
        "model_float32.tflite": tflite["tflite_float32"],
        "model.keras": keras_bytes(model),
        "model_data.h": export.c_array(tflite["tflite_int8"]).encode(),
        "metrics.json": (json.dumps(metrics, indent=2) + "\n").encode(),
        "training_history.json": (json.dumps(history, indent=2) + "\n").encode(),
        **report_files(dataset, evaluation, history, metrics),
    }
    write_bundle(Path(settings.out), files, manifest(settings, dataset, metrics),
                 overwrite=settings.overwrite)
    print(f"bundle written to {settings.out}/ ({len(files) + 1} files)")


def report_files(dataset: data.Dataset, evaluation: Evaluation, history: dict,
                 metrics: dict) -> dict[str, bytes]:
    """Reports on the deployed model (int8 TFLite): the scorer's text/JSON/HTML plus figures."""
    y_pred = evaluation.predictions["tflite_int8"]
    probs = evaluation.probabilities["tflite_int8"]
    confidence = probs.max(axis=1)
    summary = report.compute_metrics(dataset.y_test, y_pred, dataset.classes)
    collector = report.ExampleCollector()
    for i in range(len(y_pred)):
        collector.add(report.Example(f"test[{i}]", int(dataset.y_test[i]), int(y_pred[i]),
                                     float(confidence[i]), dataset.x_test[i]))
    files = report.report_files(
        summary, title=f"{dataset.name} test set, int8 TFLite model",
        misclassified=collector.misclassified, least_confident=collector.least_confident,
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


def manifest(settings: Settings, dataset: data.Dataset, metrics: dict) -> Manifest:
    """The bundle's manifest; the writer adds every file's hash."""
    return Manifest(
        classes=tuple(dataset.classes),
        geometry=MNIST_GEOMETRY if dataset.name == "mnist" else DIGITS_8X8_GEOMETRY,
        input_shape=tuple(dataset.x_train.shape[1:]),
        models={"int8": "model.tflite", "float32": "model_float32.tflite",
                "keras": "model.keras"},
        dataset={"name": dataset.name, "source": dataset.source,
                 "train_samples": len(dataset.x_train), "test_samples": len(dataset.x_test)},
        training={**asdict(settings), "hidden": list(settings.hidden)},
        versions=versions(),
        metrics={"int8_accuracy": metrics["models"]["tflite_int8"]["accuracy"],
                 "keras_accuracy": metrics["models"]["keras"]["accuracy"]},
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
    print(f"\n{metrics['dataset']}: {metrics['test_samples']} test images, "
          f"{metrics['epochs_run']} epochs, int8 is {metrics['int8_size_ratio']:.0%} of float32, "
          f"{metrics['seconds']:.0f} s in all. Bundle: {settings.out}/")
