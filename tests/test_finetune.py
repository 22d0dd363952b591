"""digits-train --base: fine-tuning on the user's own images end to end (the real trainer on
small data), lineage in the manifest, the comparison, and the refusal of a worse model."""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
import subprocess
import sys
import zipfile

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
from PIL import Image

from scorer.bundle import load_bundle
from scorer.files import sha256_file
from trainer.finetune import HELD_OUT, regressions
from trainer.recipes import FINETUNE_DEFAULTS
from trainer.user_images import list_digest, stratified_holdout

from cli_helpers import assert_usage_error, score_cli
from conftest import ROOT
from digit_factory import STYLES

STYLE_NAMES = ("thin_pen", "pencil_on_yellow", "ballpoint_on_grey", "paper_scan")


def train_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def user_images(tmp_path_factory, mnist):
    """Uploads of MNIST test digits in four pen-and-paper styles: 150 in folders 0-9, 50 in a
    flat folder labelled by a CSV, 20 in a zip; plus a blank one and an unlabelled one.
    and a text file. Returns (root, {source name as the trainer reads it: (label, bytes)})."""
    root = tmp_path_factory.mktemp("user")
    rng = np.random.default_rng(3)
    expected: dict[str, tuple[str, bytes]] = {}
    members = {}
    csv_lines = ["source,label"]
    for k in range(220):
        i = 2000 + k
        label = int(mnist.y_test[i])
        data = STYLES[STYLE_NAMES[k % 4]](mnist.x_test[i], rng)
        ext = ".jpg" if data[:2] == b"\xff\xd8" else ".png"
        if k < 150:
            path = root / "sorted" / str(label) / f"{k}{ext}"
        elif k < 200:
            path = root / "loose" / f"{k}{ext}"
            csv_lines.append(f"{path},{label}")
        else:
            member = f"{label}/{k}{ext}"
            members[member] = data
            expected[f"{root / 'more.zip'}!/{member}"] = (str(label), data)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expected[str(path)] = (str(label), data)
    with zipfile.ZipFile(root / "more.zip", "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    Image.new("L", (40, 40), 255).save(root / "sorted" / "3" / "blank.png")
    Image.fromarray(255 - mnist.x_test[0]).save(root / "loose" / "no-label.png")
    (root / "labels.csv").write_text("\n".join(csv_lines) + "\n")
    (root / "sorted" / "notes.txt").write_text("not an image\n")
    return root, expected


def sources(root: pathlib.Path) -> list[str]:
    return ["--images", str(root / "sorted"), "--images", str(root / "loose"),
            "--images", str(root / "more.zip"), "--labels", str(root / "labels.csv")]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, mnist_bundle, user_images):
    root, _ = user_images
    out = tmp_path_factory.mktemp("finetuned") / "bundle"
    # The session's small base (96 %, trained without augmentation) loses more than 0.5 points
    # of MNIST to two augmented epochs: the flow is under test here, the guard further down.
    done = train_cli("--base", mnist_bundle, *sources(root), "--out", out, "--epochs", "2",
                     "--seed", "5", "--max-drop", "5")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done


def held_out_count(expected) -> int:
    """round(20 %) of each class, at least one (classes of two or more), never all."""
    counts = np.bincount([int(label) for label, _ in expected.values()], minlength=10)
    return sum(min(max(round(0.2 * c), 1), c - 1) for c in counts if c >= 2)


def test_the_fine_tuned_bundle_is_a_full_verified_bundle(finetuned, mnist_bundle, user_images):
    out, done = finetuned
    n_held = held_out_count(user_images[1])
    bundle = load_bundle(out)  # every file checked against the manifest
    for name in ("model.tflite", "model_float32.tflite", "model.keras", "model_data.h",
                 "report.html", "classification_report.txt", "confusion_matrix.png",
                 "comparison.json"):
        assert (out / name).is_file(), name
    base = load_bundle(mnist_bundle)
    assert bundle.manifest.geometry == base.manifest.geometry
    assert bundle.manifest.classes == base.manifest.classes
    metrics = json.loads((out / "metrics.json").read_text())
    for model in ("keras", "tflite_float32", "tflite_int8"):  # the usual schema
        assert 0.8 < metrics["models"][model]["accuracy"] <= 1
    assert metrics["dataset"] == "mnist" and metrics["test_samples"] == 10_000
    held = metrics["user_holdout"]
    assert held["samples"] == n_held
    assert 0 <= held["base"]["tflite_int8"]["accuracy"] <= 1
    assert 0 <= held["new"]["tflite_int8"]["accuracy"] <= 1
    assert metrics["base"]["tflite_int8"]["accuracy"] == \
        pytest.approx(json.loads((mnist_bundle / "metrics.json").read_text())
                      ["models"]["tflite_int8"]["accuracy"])
    # printed and in report.html: both sets, side by side
    for text in (done.stdout, (out / "report.html").read_text()):
        assert f"{HELD_OUT} ({n_held})" in text and "mnist test (10,000)" in text
        assert "McNemar p" in text
    assert "predictions that changed" in (out / "report.html").read_text()


def test_lineage_traces_the_bundle_to_its_base_images_and_settings(finetuned, mnist_bundle,
                                                                   user_images):
    out, _ = finetuned
    root, expected = user_images
    lineage = load_bundle(out).manifest.lineage
    base = load_bundle(mnist_bundle).manifest
    assert lineage["base"]["manifest_sha256"] == sha256_file(mnist_bundle / "manifest.json")
    assert lineage["base"]["model_sha256"] == base.files["model.tflite"].sha256
    assert lineage["base"]["keras_sha256"] == base.files["model.keras"].sha256
    assert lineage["generation"] == 1
    images = lineage["images"]
    assert images["count"] == 220 and images["held_out"] == held_out_count(expected)
    assert images["train"] + images["held_out"] == 220
    labels = [int(label) for label, _ in expected.values()]
    assert images["per_class"] == {str(c): labels.count(c) for c in range(10)}
    assert images["not_used"] == {"unlabelled": 1, "blank": 1, "unreadable": 0,
                                  "not_images": 1}  # notes.txt
    assert images["sources"] == [str(root / "sorted"), str(root / "loose"),
                                 str(root / "more.zip")]
    assert images["labels_csv_sha256"] == sha256_file(root / "labels.csv")
    lines = sorted(f"{name}\t{label}\t{hashlib.sha256(data).hexdigest()}\n"
                   for name, (label, data) in expected.items())
    assert images["sha256"] == hashlib.sha256("".join(lines).encode()).hexdigest()
    settings = lineage["settings"]
    assert (settings["epochs"], settings["replay"]) == (2, 4.0)  # given, default
    assert (settings["learning_rate"], settings["batch_size"]) == \
        (FINETUNE_DEFAULTS["learning_rate"], FINETUNE_DEFAULTS["batch_size"])
    assert lineage["replay"] == {"dataset": "mnist", "split": "train",
                                 "images_per_epoch": 4 * images["train"],
                                 "drawn": "afresh each epoch",
                                 "source": lineage["replay"]["source"]}


def test_model_info_prints_the_lineage(finetuned, mnist_bundle):
    out, _ = finetuned
    done = score_cli("--model", out, "--model-info")
    assert done.returncode == 0, done.stderr
    info = dict(line.split(None, 1) for line in done.stdout.splitlines())
    assert info["lineage.base.manifest_sha256"] == sha256_file(mnist_bundle / "manifest.json")
    assert "lineage.images.count" in done.stdout and "lineage.settings.epochs" in done.stdout
    plain = score_cli("--model", mnist_bundle, "--model-info")
    assert "trained from scratch" in plain.stdout


def test_a_worse_model_is_refused_and_nothing_is_replaced(tmp_path, mnist_bundle, user_images):
    """Labels shifted by one and no replay: the new model unlearns MNIST, so it is refused
    (exit 1) and the bundle already at --out stays as it was; --accept-worse writes it."""
    root, expected = user_images
    shifted = tmp_path / "shifted.csv"
    shifted.write_text("source,label\n" + "".join(
        f"{name},{(int(label) + 1) % 10}\n" for name, (label, _) in expected.items()
        if "!/" not in name))
    out = tmp_path / "out"
    shutil.copytree(mnist_bundle, out)  # an earlier bundle there
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    args = ("--base", mnist_bundle, "--images", root / "sorted", "--images", root / "loose",
            "--labels", shifted, "--out", out, "--epochs", "3", "--replay", "0",
            "--learning-rate", "0.01", "--batch-size", "8", "--no-augment")
    done = train_cli(*args)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "refused" in done.stderr and "mnist test" in done.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    accepted = train_cli(*args, "--accept-worse")
    assert accepted.returncode == 0, accepted.stderr[-2000:]
    lineage = load_bundle(out).manifest.lineage
    assert lineage["comparison"]["accepted_although_worse"]
    assert "written although worse" in accepted.stdout


def test_regressions_on_the_held_out_images_are_never_allowed():
    def result(a, b):
        return {"a": {"accuracy": a}, "b": {"accuracy": b}}

    assert regressions({HELD_OUT: result(0.9, 0.9), "mnist test": result(0.99, 0.986)}, 0.5) == []
    (problem,) = regressions({HELD_OUT: result(0.9, 0.8875), "mnist test": result(0.99, 0.99)},
                             0.5)
    assert problem.startswith(HELD_OUT)
    (problem,) = regressions({HELD_OUT: result(0.9, 0.95), "mnist test": result(0.99, 0.984)},
                             0.5)
    assert "--max-drop 0.5" in problem


def test_holdout_is_stratified_and_seeded():
    y = np.repeat(np.arange(10), [40] * 9 + [1])
    train, held = stratified_holdout(y, 0.2, seed=1)
    assert np.bincount(y[held], minlength=10).tolist() == [8] * 9 + [0]
    assert len(np.intersect1d(train, held)) == 0 and len(train) + len(held) == len(y)
    assert np.array_equal(held, stratified_holdout(y, 0.2, seed=1)[1])
    assert not np.array_equal(held, stratified_holdout(y, 0.2, seed=2)[1])


def test_the_images_hash_ignores_order_but_not_labels_or_bytes():
    classes = [str(i) for i in range(10)]
    digest = list_digest(["a", "b"], [1, 2], ["h1", "h2"], classes)
    assert digest == list_digest(["b", "a"], [2, 1], ["h2", "h1"], classes)
    assert digest != list_digest(["a", "b"], [1, 3], ["h1", "h2"], classes)
    assert digest != list_digest(["a", "b"], [1, 2], ["h1", "hX"], classes)


@pytest.mark.parametrize(("args", "mentions"), [
    (("--images", "x"), "--base"),
    (("--base", "B"), "--images"),
    (("--base", "B", "--images", "x"), "--out"),
    (("--base", "B", "--images", "x", "--out", "B"), "--out"),
    (("--base", "B", "--images", "x", "--out", "o", "--arch", "cnn"), "--arch"),
    (("--base", "B", "--images", "x", "--out", "o", "--max-drop", "-1"), "--max-drop"),
])
def test_usage_errors(tmp_path, args, mentions):
    done = train_cli(*[str(tmp_path / a) if a in ("B", "o", "x") else a for a in args])
    assert_usage_error(done, mentions=mentions)


def test_a_missing_base_or_source_is_one_line_and_exit_2(tmp_path, mnist_bundle):
    done = train_cli("--base", tmp_path / "nope", "--images", tmp_path, "--out", tmp_path / "o")
    assert done.returncode == 2 and done.stderr.count("Error") == 1, done.stderr
    assert "Traceback" not in done.stderr
    done = train_cli("--base", mnist_bundle, "--images", tmp_path / "missing", "--out",
                     tmp_path / "o")
    assert done.returncode == 2 and "missing" in done.stderr and "Traceback" not in done.stderr
