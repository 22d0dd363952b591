"""trainer: the bundle `digits-train` writes, export parity, repeatability, and CLI errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from scorer.bundle import load_bundle
from scorer.files import sha256_file
from trainer import data, export

from conftest import DIGITS_BUNDLE_ARGS, DIGITS_CNN_ARGS, ROOT, train_bundle

BUNDLE_FILES = {
    "model.tflite", "model_float32.tflite", "model.keras", "model_data.h", "manifest.json",
    "metrics.json", "training_history.json", "classification_report.txt", "confusion_matrix.csv",
    "confusion_matrix.png", "training_curves.png", "misclassified.png", "report.json",
    "report.html", "coverage.csv",
}


def test_bundle_has_every_file_and_the_manifest_hashes_them(digits_bundle):
    assert {p.name for p in digits_bundle.iterdir()} == BUNDLE_FILES
    manifest = json.loads((digits_bundle / "manifest.json").read_text())
    assert set(manifest["files"]) == BUNDLE_FILES - {"manifest.json"}
    for name, entry in manifest["files"].items():
        assert sha256_file(digits_bundle / name) == entry["sha256"]
        assert (digits_bundle / name).stat().st_size == entry["bytes"]
    assert manifest["input"]["geometry"]["height"] == 8
    assert manifest["classes"] == [str(i) for i in range(10)]
    assert manifest["training"]["dataset"] == "digits"
    assert "tensorflow" in manifest["versions"] or "tensorflow-cpu" in manifest["versions"]


def test_metrics_json_follows_the_contract(digits_bundle):
    metrics = json.loads((digits_bundle / "metrics.json").read_text())
    assert metrics["dataset"] == "digits" and metrics["test_samples"] == 450
    models = metrics["models"]
    assert models["keras"]["accuracy"] > 0.9
    assert models["tflite_float32"]["bytes"] == (digits_bundle / "model_float32.tflite").stat(
    ).st_size
    int8 = models["tflite_int8"]
    assert int8["bytes"] == (digits_bundle / "model.tflite").stat().st_size
    assert int8["accuracy"] > 0.9 and abs(int8["accuracy"] - models["keras"]["accuracy"]) < 0.02
    assert int8["agreement_with_keras"] > 0.97
    # Weights shrink 4x; a 64-unit model's fixed overhead keeps it near half (MNIST's: ~26 %).
    assert int8["bytes"] <= 0.55 * models["tflite_float32"]["bytes"]


def test_reports_describe_the_int8_model(digits_bundle):
    metrics = json.loads((digits_bundle / "metrics.json").read_text())
    report = json.loads((digits_bundle / "report.json").read_text())
    assert report["accuracy"] == pytest.approx(metrics["models"]["tflite_int8"]["accuracy"])
    text = (digits_bundle / "classification_report.txt").read_text()
    assert "precision" in text and "macro avg" in text
    assert (digits_bundle / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (digits_bundle / "confusion_matrix.csv").read_text().splitlines()
    assert len(rows) == 11 and sum(sum(map(int, r.split(",")[1:])) for r in rows[1:]) == 450


def test_export_parity_with_keras(digits_bundle):
    """The TFLite files agree with the Keras model they came from, run by the scorer's runtime."""
    import keras

    dataset = data.load_digits(seed=42)
    model = keras.models.load_model(digits_bundle / "model.keras")
    keras_probs = model.predict(dataset.x_test.astype(np.float32), verbose=0)
    float_probs = export.tflite_predict((digits_bundle / "model_float32.tflite").read_bytes(),
                                        dataset.x_test)
    int8_probs = export.tflite_predict((digits_bundle / "model.tflite").read_bytes(),
                                       dataset.x_test)
    np.testing.assert_allclose(float_probs, keras_probs, atol=1e-4)
    assert np.mean(int8_probs.argmax(1) == keras_probs.argmax(1)) > 0.97
    assert np.abs(int8_probs - keras_probs).max() < 0.2  # uint8 output step is 1/256


def test_int8_model_takes_raw_uint8_pixels(digits_bundle):
    classifier = load_bundle(digits_bundle).classifier()
    assert classifier.input["dtype"] == np.uint8
    scale, zero_point = classifier.input["quantization"]
    assert abs(scale - 1.0) < 0.01 and zero_point == 0  # 0-255 in, scaling inside the model
    assert list(classifier.input["shape_signature"]) == [-1, 8, 8]


def test_c_array_holds_the_int8_model(digits_bundle):
    header = (digits_bundle / "model_data.h").read_text()
    body = re.search(r"\{(.*)\}", header, re.S).group(1)
    restored = bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", body))
    assert restored == (digits_bundle / "model.tflite").read_bytes()
    assert f"model_tflite_len = {len(restored)};" in header


def test_same_seed_same_metrics(tmp_path, digits_bundle):
    again = train_bundle(tmp_path / "again", *DIGITS_BUNDLE_ARGS)
    first = json.loads((digits_bundle / "metrics.json").read_text())["models"]
    second = json.loads((again / "metrics.json").read_text())["models"]
    for model in ("keras", "tflite_float32", "tflite_int8"):
        assert abs(first[model]["accuracy"] - second[model]["accuracy"]) <= 0.001


def test_cnn_with_augmentation_trains_exports_and_repeats(tmp_path, digits_cnn_bundle):
    metrics = json.loads((digits_cnn_bundle / "metrics.json").read_text())
    assert metrics["models"]["tflite_int8"]["agreement_with_keras"] > 0.9
    assert metrics["models"]["tflite_int8"]["accuracy"] > 0.8
    training = json.loads((digits_cnn_bundle / "manifest.json").read_text())["training"]
    assert training["arch"] == "cnn" and training["augment"] is True
    from trainer import augment

    assert training["augmentation"] == json.loads(json.dumps(augment.recipe()))
    # augmented epochs are made by a worker process from (seed, epoch): the run repeats exactly
    again = train_bundle(tmp_path / "again", *DIGITS_CNN_ARGS)
    second = json.loads((again / "metrics.json").read_text())
    assert second["models"] == metrics["models"]
    assert json.loads((again / "training_history.json").read_text()) == json.loads(
        (digits_cnn_bundle / "training_history.json").read_text())


def test_each_architecture_takes_its_own_defaults_from_one_place(digits_cnn_bundle,
                                                                  digits_bundle):
    from trainer.recipes import ARCH_DEFAULTS

    cnn = json.loads((digits_cnn_bundle / "manifest.json").read_text())["training"]
    assert cnn["hidden"] == list(ARCH_DEFAULTS["cnn"]["hidden"])
    assert cnn["dropout"] == ARCH_DEFAULTS["cnn"]["dropout"]
    assert cnn["learning_rate"] == ARCH_DEFAULTS["cnn"]["learning_rate"]
    assert cnn["epochs"] == 12  # given on the command line: it wins over the recipe
    mlp = json.loads((digits_bundle / "manifest.json").read_text())["training"]
    assert mlp["dropout"] == ARCH_DEFAULTS["mlp"]["dropout"] and mlp["hidden"] == [64]
    assert mlp["augment"] is False and mlp["augmentation"] is None
    assert ARCH_DEFAULTS["cnn"] != ARCH_DEFAULTS["mlp"]


def test_settings_fill_only_what_was_not_given():
    from trainer.recipes import ARCH_DEFAULTS
    from trainer.train import Settings

    cnn = Settings(arch="cnn").with_arch_defaults()
    assert (cnn.hidden, cnn.dropout, cnn.epochs, cnn.learning_rate) == tuple(
        ARCH_DEFAULTS["cnn"][k] for k in ("hidden", "dropout", "epochs", "learning_rate"))
    mlp = Settings(arch="mlp", dropout=0.1).with_arch_defaults()
    assert mlp.dropout == 0.1 and mlp.hidden == ARCH_DEFAULTS["mlp"]["hidden"]
    assert Settings().augment is True


def test_build_model_has_no_defaults_of_its_own():
    import inspect

    from trainer.model import build_model

    params = inspect.signature(build_model).parameters
    for name in ("hidden", "dropout", "learning_rate"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[name].default is inspect.Parameter.empty
    with pytest.raises(TypeError):
        build_model("mlp", (8, 8), (64,), 0.2, 1e-3)


def test_help_shows_each_architectures_defaults_and_augmentation_on():
    from trainer.recipes import describe

    done = run_train("--help")
    text = " ".join(done.stdout.split())
    assert done.returncode == 0
    assert " ".join(f"[default: {describe('hidden')}]".split()) in text
    assert "--augment / --no-augment" in text and "[default: augment]" in text


def test_no_augment_trains_on_the_plain_images_and_augment_changes_them():
    from trainer.train import Settings, training_batches

    dataset = data.load_digits(seed=42)
    x, y = dataset.x_train[:200], dataset.y_train[:200]

    def epoch(settings) -> tuple[np.ndarray, np.ndarray]:
        with training_batches(x, y, settings) as batches:
            got = list(batches.as_numpy_iterator())
        return np.concatenate([b[0] for b in got]), np.concatenate([b[1] for b in got])

    plain_x, plain_y = epoch(Settings(augment=False, batch_size=32, seed=1))
    keys = sorted(zip(map(bytes, plain_x.astype(np.uint8)), plain_y, strict=True))
    assert keys == sorted(zip(map(bytes, x), y, strict=True))  # the same images, reordered
    aug_x, aug_y = epoch(Settings(augment=True, batch_size=32, seed=1))
    assert sorted(aug_y) == sorted(y)
    originals = {bytes(image) for image in x}
    changed = np.mean([bytes(image) not in originals for image in aug_x.astype(np.uint8)])
    assert 0.5 < changed < 0.9  # about 70 % augmented, the rest clean


# The builtin operators TensorFlow Lite Micro's MicroMutableOpResolver registers (the subset a
# digit classifier could plausibly use), from tflite-micro's micro_mutable_op_resolver.h.
TFLM_BUILTIN_OPS = {
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "DEQUANTIZE",
    "FULLY_CONNECTED", "HARD_SWISH", "LOGISTIC", "MAX_POOL_2D", "MEAN", "MUL", "PACK", "PAD",
    "QUANTIZE", "RELU", "RELU6", "RESHAPE", "SHAPE", "SOFTMAX", "STRIDED_SLICE", "SUB",
}


@pytest.mark.parametrize("fixture", ["digits_bundle", "digits_cnn_bundle"])
def test_int8_model_uses_only_tflite_micro_builtin_ops(fixture, request):
    bundle = request.getfixturevalue(fixture)
    ops = export.builtin_ops((bundle / "model.tflite").read_bytes())
    assert "FULLY_CONNECTED" in ops and "SOFTMAX" in ops
    assert ops <= TFLM_BUILTIN_OPS, ops - TFLM_BUILTIN_OPS
    if fixture == "digits_cnn_bundle":
        assert {"CONV_2D", "MAX_POOL_2D"} <= ops


def test_op_reader_sees_ops_outside_the_allow_list():
    """The check above can fail: a model with an op TFLM lacks is reported by name."""
    import tensorflow as tf

    model = tf.keras.Sequential([
        tf.keras.Input((4,)),
        tf.keras.layers.Lambda(lambda t: tf.math.reduce_prod(t, axis=1, keepdims=True)),
    ])
    ops = export.builtin_ops(export.to_tflite_float32(model))
    assert "REDUCE_PROD" in ops and not ops <= TFLM_BUILTIN_OPS


AUGMENTATION_LAYER_WORDS = ("random", "augment")


@pytest.mark.parametrize("fixture", ["digits_bundle", "digits_cnn_bundle"])
def test_exported_models_hold_no_augmentation(fixture, request):
    import keras

    bundle = request.getfixturevalue(fixture)
    model = keras.models.load_model(bundle / "model.keras")
    kinds = {type(layer).__name__ for layer in model.layers}
    assert kinds <= {"Rescaling", "Flatten", "Dense", "Dropout", "Reshape", "Conv2D",
                     "MaxPooling2D"}, kinds
    names = " ".join(layer.name for layer in model.layers).lower()
    assert not any(word in names for word in AUGMENTATION_LAYER_WORDS)
    for file in ("model.tflite", "model_float32.tflite"):
        ops = export.builtin_ops((bundle / file).read_bytes())
        assert not any(op.startswith("CUSTOM") or "RANDOM" in op or "IMAGE" in op
                       for op in ops), ops


def test_mnist_bundle_scores_mnist(mnist_bundle):
    metrics = json.loads((mnist_bundle / "metrics.json").read_text())
    assert metrics["dataset"] == "mnist" and metrics["test_samples"] == 10000
    assert metrics["models"]["tflite_int8"]["accuracy"] > 0.95
    assert json.loads((mnist_bundle / "manifest.json").read_text())["input"]["shape"] == [28, 28]


def run_train(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("args, message", [
    (["--hidden", "abc"], "positive layer sizes"),
    (["--dataset", "cifar"], "'cifar' is not one of"),
    (["--data", "/no/such/file.npz"], "does not exist"),
    (["--epochs", "0"], "--epochs"),
    (["--bogus"], "No such option"),
])
def test_cli_usage_errors_exit_2_without_traceback(args, message):
    done = run_train(*args)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_cli_bad_data_file_exits_2_with_a_clear_message(tmp_path):
    bad = tmp_path / "mnist.npz"
    bad.write_bytes(b"not an npz")
    done = run_train("--data", str(bad), "--out", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Error: --data" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_cli_version():
    done = run_train("--version")
    assert done.returncode == 0 and "digits-train" in done.stdout


# --- --out never destroys what digits-train did not write ------------------------------------


def train_cli(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "trainer.cli", "--dataset", "digits", "--epochs", "2",
               "--hidden", "16", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})


def assert_refused(done: subprocess.CompletedProcess, mentions: str) -> None:
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and mentions in errors[0], done.stderr


def test_out_on_a_folder_of_other_files_is_refused_unless_forced(tmp_path):
    out = tmp_path / "work"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    assert_refused(train_cli("--out", str(out)), "--force")
    assert (out / "thesis.tex").read_text() == "years of work"
    done = train_cli("--out", str(out), "--force")
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (out / "thesis.tex").exists() and (out / "manifest.json").is_file()
    load_bundle(out)


def test_out_on_a_bundle_it_wrote_is_replaced(tmp_path):
    out = tmp_path / "bundle"
    assert train_cli("--out", str(out)).returncode == 0
    before = (out / "manifest.json").read_text()
    done = train_cli("--out", str(out), "--seed", "7")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "manifest.json").read_text() != before
    (out / "notes.txt").write_text("mine")  # no longer exactly what the manifest lists
    assert_refused(train_cli("--out", str(out)), "--force")
    assert (out / "notes.txt").exists()


def test_out_never_replaces_the_working_directory_or_a_file(tmp_path):
    work = tmp_path / "project" / "src"
    work.mkdir(parents=True)
    (work / "code.py").write_text("print(1)")
    for out in (".", "..", str(tmp_path / "project")):
        assert_refused(train_cli("--out", out, "--force", cwd=work), "working directory")
    assert (work / "code.py").read_text() == "print(1)"
    target = tmp_path / "file.txt"
    target.write_text("keep")
    assert_refused(train_cli("--out", str(target), "--force"), "not a folder")
    assert target.read_text() == "keep"
    link = tmp_path / "link"
    link.symlink_to(work)
    assert_refused(train_cli("--out", str(link), "--force"), "symlink")
    assert (work / "code.py").exists()
