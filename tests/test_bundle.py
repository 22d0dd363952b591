"""scorer.bundle: a bundle is verified against its manifest before use; the TFLite classifier
batches correctly and its int8 model agrees with the float32 reference."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from scorer.bundle import (
    BundleError,
    Classifier,
    Manifest,
    load_bundle,
    read_manifest,
    write_bundle,
)
from scorer.files import sha256_bytes
from scorer.images import MNIST_GEOMETRY


@pytest.fixture
def bundle_copy(mnist_bundle, tmp_path) -> Path:
    """A private copy of the trained bundle that a test may damage."""
    return Path(shutil.copytree(mnist_bundle, tmp_path / "bundle"))


def edit_manifest(folder: Path, change) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


# --- loading and verifying -------------------------------------------------------------------


def test_loads_a_trained_bundle(mnist_bundle):
    bundle = load_bundle(mnist_bundle)
    assert bundle.model_file == "model.tflite"
    assert bundle.labels == [str(d) for d in range(10)]
    assert bundle.geometry == MNIST_GEOMETRY
    assert bundle.manifest.input_shape == (28, 28)
    assert bundle.manifest.models["int8"] == "model.tflite"


def test_manifest_round_trips_through_the_dataclass(mnist_bundle):
    """The typed Manifest reads every field the trainer wrote and writes the same JSON back."""
    doc = json.loads((mnist_bundle / "manifest.json").read_text())
    assert Manifest.from_dict(doc).to_dict() == doc


def test_float32_variant(mnist_bundle):
    assert load_bundle(mnist_bundle, variant="float32").model_file == "model_float32.tflite"


def test_unknown_variant_is_refused(mnist_bundle):
    with pytest.raises(BundleError, match="variant"):
        load_bundle(mnist_bundle, variant="int4")


def test_one_flipped_byte_in_the_model_is_refused(bundle_copy):
    model = bundle_copy / "model.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="SHA-256"):
        load_bundle(bundle_copy)


def test_a_tampered_file_other_than_the_model_is_refused_too(bundle_copy):
    # Every file the manifest lists and the folder holds is checked, not only the model.
    with (bundle_copy / "metrics.json").open("a") as f:
        f.write(" ")
    with pytest.raises(BundleError, match="SHA-256"):
        load_bundle(bundle_copy)


def test_missing_manifest(bundle_copy):
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest.json"):
        load_bundle(bundle_copy)


def test_missing_folder(tmp_path):
    with pytest.raises(BundleError, match="manifest.json"):
        load_bundle(tmp_path / "no-such-bundle")


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00garbage", b""])
def test_manifest_that_is_not_json(bundle_copy, content):
    (bundle_copy / "manifest.json").write_bytes(content)
    with pytest.raises(BundleError, match="JSON"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_wrong_schema_version(bundle_copy, version):
    edit_manifest(bundle_copy, lambda m: m.update(schema_version=version))
    with pytest.raises(BundleError, match="schema version"):
        load_bundle(bundle_copy)


def test_manifest_that_is_a_list(bundle_copy):
    (bundle_copy / "manifest.json").write_text("[1, 2, 3]")
    with pytest.raises(BundleError, match="schema version"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("name", ["../x", "sub/../../x", "/etc/passwd"])
def test_manifest_naming_a_file_outside_the_bundle(bundle_copy, name):
    (bundle_copy.parent / "x").write_bytes(b"outside")
    edit_manifest(bundle_copy, lambda m: m["files"].update({name: {"sha256": "0" * 64}}))
    with pytest.raises(BundleError, match="outside the bundle"):
        load_bundle(bundle_copy)


def test_missing_model_file(bundle_copy):
    (bundle_copy / "model.tflite").unlink()
    with pytest.raises(BundleError, match="model.tflite"):
        load_bundle(bundle_copy)
    load_bundle(bundle_copy, variant="float32")  # the other variant is still complete


def test_manifest_that_does_not_list_the_model(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m["files"].pop("model_float32.tflite"))
    with pytest.raises(BundleError, match="lists no model_float32.tflite"):
        load_bundle(bundle_copy, variant="float32")


def test_deployment_package_without_model_keras_is_accepted(bundle_copy):
    (bundle_copy / "model.keras").unlink()
    for name in ("report.html", "training_curves.png", "model_data.h"):
        (bundle_copy / name).unlink(missing_ok=True)
    bundle = load_bundle(bundle_copy)
    pixels = np.zeros((2, 28, 28), np.uint8)
    assert bundle.classifier().predict(pixels).shape == (2, 10)


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.pop("classes"),
        lambda m: m.update(classes=[]),
        lambda m: m.update(files=["model.tflite"]),
        lambda m: m["files"].update({"model.tflite": "abc"}),
        lambda m: m["input"].update(geometry={"height": -1}),
        lambda m: m["input"].update(geometry={"centering": "middle"}),
        lambda m: m["input"].update(geometry="28x28"),
        lambda m: m.update(models=["model.tflite"]),
    ],
    ids=["no-classes", "empty-classes", "files-list", "entry-not-dict", "negative-height",
         "bad-centering", "geometry-str", "models-list"],
)
def test_malformed_manifest_is_a_bundle_error_not_a_crash(bundle_copy, change):
    edit_manifest(bundle_copy, change)
    with pytest.raises(BundleError):
        load_bundle(bundle_copy)


# --- the classifier ---------------------------------------------------------------------------


def test_garbage_model_bytes_are_a_bundle_error():
    for garbage in (b"", b"not a flatbuffer" * 50, os.urandom(4096)):
        with pytest.raises(BundleError, match="TFLite"):
            Classifier(garbage)


def test_predictions_do_not_depend_on_the_batch_size(mnist_bundle, mnist_test_images):
    """One classifier, resized back and forth between batch sizes, gives the same numbers."""
    x = mnist_test_images[0][:300]
    for variant in ("int8", "float32"):
        classifier = load_bundle(mnist_bundle, variant).classifier()
        whole = classifier.predict(x)
        by_seven = np.concatenate([classifier.predict(x[i : i + 7]) for i in range(0, 300, 7)])
        one_by_one = np.concatenate([classifier.predict(x[i : i + 1]) for i in range(300)])
        again = classifier.predict(x)
        assert whole.shape == (300, 10) and whole.dtype == np.float32
        for other in (by_seven, one_by_one, again):
            np.testing.assert_array_equal(other.argmax(1), whole.argmax(1))
            np.testing.assert_allclose(other, whole, atol=1e-5)


def test_probabilities_are_a_distribution(mnist_bundle, mnist_test_images):
    x = mnist_test_images[0][:100]
    for variant in ("int8", "float32"):
        probs = load_bundle(mnist_bundle, variant).classifier().predict(x)
        assert (probs >= 0).all() and (probs <= 1.0 + 1e-6).all()
        # uint8 output quantisation: 10 values, each within half a step (1/512) of the truth
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=0.03)


def test_empty_batch(mnist_bundle):
    out = load_bundle(mnist_bundle).classifier().predict(np.zeros((0, 28, 28), np.uint8))
    assert out.shape == (0, 10)


def test_int8_agrees_with_float32_and_both_are_accurate(mnist_bundle, mnist_test_images):
    x, y = mnist_test_images
    assert len(x) == 1000
    int8 = load_bundle(mnist_bundle, "int8").classifier().predict(x).argmax(1)
    float32 = load_bundle(mnist_bundle, "float32").classifier().predict(x).argmax(1)
    assert (int8 == float32).mean() >= 0.97
    # the fixture's model is small (~95-97 %): a broken input scaling would be far below this
    assert (int8 == y).mean() >= 0.90
    assert (float32 == y).mean() >= 0.90


def test_model_replaced_after_loading_is_refused(bundle_copy):
    """The classifier runs the bytes it verified, not whatever the file holds later."""
    bundle = load_bundle(bundle_copy)
    shutil.copyfile(bundle_copy / "model_float32.tflite", bundle_copy / "model.tflite")
    with pytest.raises(BundleError, match="SHA-256"):
        bundle.classifier()


# --- writing ---------------------------------------------------------------------------------


def small_manifest() -> Manifest:
    return Manifest(classes=("0", "1"), geometry=MNIST_GEOMETRY, input_shape=(28, 28))


def test_writer_lists_every_file_with_its_hash(tmp_path):
    files = {"model.tflite": b"model", "notes.txt": b"notes"}
    written = write_bundle(tmp_path / "bundle", files, small_manifest())
    read = read_manifest(tmp_path / "bundle")
    assert read == written
    assert {name: entry.sha256 for name, entry in read.files.items()} == {
        name: sha256_bytes(data) for name, data in files.items()}
    assert read.files["notes.txt"].bytes == 5


def test_failed_write_leaves_the_old_bundle_untouched(tmp_path):
    out = tmp_path / "artifacts"
    write_bundle(out, {"a.txt": b"old"}, small_manifest())
    with pytest.raises(OSError):
        write_bundle(out, {"b.txt": b"new", "missing/c.txt": b"x"}, small_manifest())
    assert (out / "a.txt").read_bytes() == b"old" and not (out / "b.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["artifacts"]  # no staging left behind
