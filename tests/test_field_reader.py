"""The field reader: a CTC sequence model in the bundle that reads a whole number field, and how
its reading is combined with the cut-based reader's.

Unit tests for the line image, CTC decoding and the combination rule; then a real bundle with a
small field reader (conftest's `mnist_fields_bundle`, trained by `digits-train` as `make train`
trains one), its manifest, its refusal when tampered with, the CLI and the workers.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from scorer.bundle import BundleError, load_bundle, write_bundle
from scorer.files import sha256_file
from scorer.numbers import Length, cut_field, read_cut
from scorer.numbers.decode import Digit
from scorer.numbers.reader import DISAGREE, agree
from scorer.numbers.sequence import BLANK, LINE_HEIGHT, LINE_WIDTH, line_image, spell, spread

from cli_helpers import score_cli, write_png_tree
from field_factory import render_field


def steps_of(path: list[int], sure: float = 0.9) -> np.ndarray:
    """(len(path), 11) probabilities whose best class at each step is `path`'s."""
    probabilities = np.full((len(path), BLANK + 1), (1 - sure) / BLANK, np.float32)
    probabilities[np.arange(len(path)), path] = sure
    return probabilities


# --- decoding ---------------------------------------------------------------------------------


def test_spell_merges_runs_and_keeps_repeats_split_by_a_blank():
    probabilities = steps_of([BLANK, 3, 3, BLANK, 3, 7, BLANK, BLANK])
    probabilities[2, 3] = 0.95  # a run's confidence is its best step's
    digits = spell(probabilities)
    assert [d.value for d in digits] == [3, 3, 7]
    assert [d.confidence for d in digits] == pytest.approx([0.95, 0.9, 0.9])
    step = LINE_WIDTH / 8  # each step covers this many columns of the line image
    assert [(d.x0, d.x1) for d in digits] == [(step, 3 * step), (4 * step, 5 * step),
                                              (5 * step, 6 * step)]


def test_spread_widens_digits_to_halfway_between_them_and_the_ink_ends():
    pixels = np.zeros((LINE_HEIGHT, LINE_WIDTH), np.uint8)
    pixels[5:25, 20:200] = 255
    spelled = spell(steps_of([BLANK] * 10 + [4] + [BLANK] * 20 + [2] + [BLANK] * 32))
    assert [(d.x0, d.x1) for d in spelled] == [(40, 44), (124, 128)]
    assert [(d.x0, d.x1) for d in spread(spelled, pixels)] == [(20, 84), (84, 200)]


def test_spell_of_blanks_only_is_nothing():
    assert spell(steps_of([BLANK] * 64)) == []


# --- the line image ---------------------------------------------------------------------------


def test_line_image_keeps_only_the_kept_ink_and_maps_columns_back():
    grey = np.zeros((100, 400), np.float32)
    grey[30:70, 100:120] = 200  # two digits' worth of ink
    grey[30:70, 300:330] = 120
    grey[5:8, 390:395] = 255  # a speck the reader dropped: not kept
    keep = np.zeros_like(grey, bool)
    keep[30:70, 100:120] = keep[30:70, 300:330] = True
    line = line_image(grey, keep)
    assert line.pixels.shape == (LINE_HEIGHT, LINE_WIDTH) and line.pixels.dtype == np.uint8
    assert line.pixels.max() == 255  # stretched: the brightest kept ink is white
    columns = np.flatnonzero(line.pixels.max(0) > 60)
    field_x = line.x0 + columns / line.scale
    assert field_x.min() == pytest.approx(100, abs=3) and field_x.max() == pytest.approx(330, abs=3)
    assert not ((field_x > 125) & (field_x < 295)).any()  # the gap stays a gap
    assert not line.pixels[:, round((400 - line.x0) * line.scale):].any()  # the speck is gone


def test_a_long_field_is_squeezed_into_the_line():
    grey = np.zeros((60, 3000), np.float32)
    grey[10:50, 10:2990] = 255
    line = line_image(grey, grey > 0)
    assert line.pixels[:, -1].any()  # it fills the line's whole width
    assert line.scale == pytest.approx(LINE_WIDTH / (2980 + 2 * 5), rel=1e-3)


def test_no_ink_is_a_dark_line():
    assert not line_image(np.zeros((50, 50), np.float32), np.zeros((50, 50), bool)).pixels.any()


# --- combining the two readers ----------------------------------------------------------------


def digits_of(text: str, confidence: float, width: int = 30) -> list[Digit]:
    return [Digit(int(c), confidence, k * width, (k + 1) * width) for k, c in enumerate(text)]


def test_agreeing_readers_keep_the_cut_reading_and_the_surer_confidence():
    cut, line = digits_of("1234", 0.9), digits_of("1234", 0.99, width=31)
    digits, confidence, problem = agree(cut, "", line, None)
    assert digits == cut and problem == ""  # the cut reader's columns are the digits' own ink
    assert confidence == pytest.approx(0.99 ** 4)


def test_differing_readers_take_the_surer_and_say_so_in_the_confidence():
    cut = digits_of("1234", 0.6)  # field confidence 0.13
    digits, confidence, _ = agree(cut, "", digits_of("1284", 0.9), None)  # 0.66
    assert [d.value for d in digits] == [1, 2, 8, 4]
    assert confidence == pytest.approx(DISAGREE * 0.9 ** 4)
    digits, confidence, _ = agree(cut, "", digits_of("12845", 0.6), None)  # 0.08
    assert digits == cut and confidence == pytest.approx(DISAGREE * 0.6 ** 4)


def test_the_length_decides_between_differing_readers():
    five, four = digits_of("12345", 0.99), digits_of("1234", 0.5)
    digits, _, problem = agree(five, "", four, Length(4, 4))
    assert [d.value for d in digits] == [1, 2, 3, 4] and problem == ""
    digits, _, problem = agree(four, "read 4 digits, expected 5", five, Length(5, 5))
    assert [d.value for d in digits] == [1, 2, 3, 4, 5] and problem == ""
    # neither fits: the surer wins, and its reason for review stays or is given
    digits, _, problem = agree(five, "read 5 digits, expected 6", four, Length(6, 6))
    assert [d.value for d in digits] == [1, 2, 3, 4, 5] and problem == "read 5 digits, expected 6"
    digits, _, problem = agree(four, "read 4 digits, expected 6", five, Length(6, 6))
    assert [d.value for d in digits] == [1, 2, 3, 4, 5] and problem == "read 5 digits, expected 6"


# --- training and the bundle -------------------------------------------------------------------


def test_composed_fields_are_made_of_the_digits_given(mnist):
    from trainer.field_reader import MAX_DIGITS, make_lines

    sevens = mnist.x_train[mnist.y_train == 7][:50]
    lines, labels, lengths = make_lines(sevens, np.full(len(sevens), 7), 40, seed=3)
    assert lines.shape == (40, LINE_HEIGHT, LINE_WIDTH) and lines.dtype == np.uint8
    assert ((lengths >= 1) & (lengths <= MAX_DIGITS)).all() and lengths.max() > 2
    for label, length in zip(labels, lengths, strict=True):
        assert (label[:length] == 7).all() and (label[length:] == BLANK).all()
    again = make_lines(sevens, np.full(len(sevens), 7), 40, seed=3)
    assert (again[0] == lines).all()  # seeded


def test_training_lines_are_what_serving_makes_of_the_fields(mnist):
    """The field reader trains on the line the scorer itself makes of each composed field drawn
    as a scan (lighting, deslanting, form lines removed), not on the composed ink: the two
    differ, and the reader is given the second."""
    from scorer.images.geometry import MNIST_GEOMETRY
    from trainer.field_reader import INK_LEVEL, compose, make_lines
    from trainer.served_lines import field_image

    x, y = mnist.x_train[:500], mnist.y_train[:500]
    lines, _, _ = make_lines(x, y, 30, seed=11)
    rng = np.random.default_rng(11)  # make_lines' own sequence of fields
    differ = 0
    for line in lines:
        grey, _ = compose(x, y, rng)
        served = cut_field(field_image(grey), MNIST_GEOMETRY).line.pixels
        np.testing.assert_array_equal(line, served)
        differ += not np.array_equal(served, line_image(grey, grey > INK_LEVEL).pixels)
    assert differ >= 10, differ


def test_composed_fields_hold_marks_that_are_labelled_nothing(mnist):
    """Currency signs, separators and ticks are drawn into a third of the fields; the labels
    are the digits alone, so the field reader learns to pass over marks."""
    from trainer.field_reader import make_lines

    no_ink = np.zeros((50, 28, 28), np.uint8)  # digits with no ink: what is drawn is marks
    lines, labels, lengths = make_lines(no_ink, np.full(50, 7), 300, seed=4)
    marked = lines.reshape(len(lines), -1).max(1) > 0
    assert 0.2 < marked.mean() < 0.5
    assert all((label[:n] == 7).all() for label, n in zip(labels, lengths, strict=True))


def test_composed_fields_lose_what_line_removal_takes():
    """A fifth of the fields lose a band of rows or columns, as where a form line crossed
    them, except where a stroke crosses the band and goes on beyond it (as serving keeps)."""
    from trainer.field_reader import damage

    rows, columns = np.mgrid[0:96, 0:300]
    field = np.where((rows // 2 + columns // 2) % 2 == 0, 255.0, 0.0).astype(np.float32)
    field[:30], field[70:], field[:, :20], field[:, 280:] = 0.0, 0.0, 0.0, 0.0  # ink: a block
    field[30:70, 148:151] = 255.0  # and an upright stroke through all of it
    changed = 0
    for seed in range(300):
        out = damage(field.copy(), np.random.default_rng(seed))
        assert (out <= field).all()  # ink is taken, never added
        lost = field > out
        if not lost.any():
            continue
        changed += 1
        lost_rows, lost_columns = np.flatnonzero(lost.any(1)), np.flatnonzero(lost.any(0))
        assert lost_rows.size <= 6 or lost_columns.size <= 6  # at most two bands, 3 px each
        if lost_columns.size > 6:  # bands of rows: the upright stroke goes on above and below
            assert not lost[:, 148:151].any()
    assert 0.1 < changed / 300 < 0.3


def test_the_bundle_lists_its_field_reader_and_how_it_was_trained(mnist_fields_bundle):
    manifest = json.loads((mnist_fields_bundle / "manifest.json").read_text())
    assert manifest["models"]["field_reader"] == "field_reader.tflite"
    assert manifest["files"]["field_reader.tflite"]["sha256"] == \
        sha256_file(mnist_fields_bundle / "field_reader.tflite")
    facts = manifest["training"]["field_reader"]
    assert facts["composed_fields"] == 16000 and facts["epochs"] == 5
    assert facts["input"] == [LINE_HEIGHT, LINE_WIDTH] and facts["blank"] == BLANK
    assert 0 <= facts["composed_exact_int8"] <= 1
    metrics = json.loads((mnist_fields_bundle / "metrics.json").read_text())
    assert metrics["field_reader"] == facts
    assert load_bundle(mnist_fields_bundle).field_reader_bytes() is not None
    info = score_cli("--model", mnist_fields_bundle, "--model-info").stdout
    assert f"field_reader.tflite, {len(load_bundle(mnist_fields_bundle).field_reader_bytes()):,} " \
        f"bytes, sha256 {sha256_file(mnist_fields_bundle / 'field_reader.tflite')}" in info


def test_a_bundle_without_a_field_reader_reads_by_cutting_alone(mnist_bundle):
    assert load_bundle(mnist_bundle).field_reader_bytes() is None
    assert "field_reader" not in json.loads((mnist_bundle / "manifest.json").read_text())["models"]
    assert "none: number fields are read by cutting alone" in \
        score_cli("--model", mnist_bundle, "--model-info").stdout


def test_a_tampered_or_missing_field_reader_is_refused(tmp_path, mnist_fields_bundle):
    bundle = tmp_path / "bundle"
    shutil.copytree(mnist_fields_bundle, bundle)
    model = bundle / "field_reader.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 1
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="field_reader.tflite: SHA-256 does not match"):
        load_bundle(bundle)
    model.unlink()
    with pytest.raises(BundleError, match="field_reader.tflite is missing"):
        load_bundle(bundle)


def test_a_field_reader_of_another_shape_is_refused(tmp_path, mnist_fields_bundle):
    original = load_bundle(mnist_fields_bundle)
    files = {name: (mnist_fields_bundle / name).read_bytes() for name in original.manifest.files}
    files["field_reader.tflite"] = files["model.tflite"]  # a digit classifier, not a line reader
    write_bundle(tmp_path / "bad", files, replace(original.manifest))
    with pytest.raises(BundleError, match="the field reader takes"):
        load_bundle(tmp_path / "bad")


# --- reading fields ----------------------------------------------------------------------------


def touching_fields(mnist, count: int) -> list[tuple[bytes, str]]:
    """Fields of 2-5 touching MNIST *test* digits, rendered by the test factory."""
    fields = []
    for k in range(count):
        rng = np.random.default_rng([41, k])
        chosen = rng.choice(len(mnist.x_test), int(rng.integers(2, 6)), replace=False)
        text = "".join(str(int(mnist.y_test[i])) for i in chosen)
        fields.append((render_field([mnist.x_test[i] for i in chosen], rng, "touching",
                                    labels=text), text))
    return fields


def test_the_field_reader_helps_on_touching_digits(mnist, mnist_fields_bundle):
    """The combined reading is right more often than the cut reader's alone on touching digits
    (measured 2026-11-30 with the fixture's small field reader: 10 of 40 against 3; with the
    field reader of `make train`, see docs/benchmarks.md)."""
    bundle = load_bundle(mnist_fields_bundle)
    classifier, field_reader = bundle.classifier(), load_field_reader(bundle)
    alone = together = 0
    for data, text in touching_fields(mnist, 40):
        cut = cut_field(data, bundle.geometry)
        probabilities = classifier.predict(cut.found.images)
        line = field_reader.predict(cut.line.pixels[None])[0]
        alone += "".join(str(d.value) for d in read_cut(cut, probabilities, None).digits) == text
        together += "".join(str(d.value) for d in read_cut(cut, probabilities, None,
                                                            line).digits) == text
    assert together > alone, f"right: {together}/40 with the field reader, {alone}/40 without"


def load_field_reader(bundle):
    from scorer.bundle import Classifier

    return Classifier(bundle.field_reader_bytes())


def test_number_mode_with_a_field_reader_is_the_same_in_every_process(tmp_path, mnist,
                                                                      mnist_fields_bundle):
    """Fields read in the main process and in workers give byte-identical CSVs, whose digits
    columns lie inside each image."""
    folder = tmp_path / "fields"
    folder.mkdir()
    for k, (data, _) in enumerate(touching_fields(mnist, 40)):
        (folder / f"{k:03d}.png").write_bytes(data)
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.csv"
        done = score_cli("--model", mnist_fields_bundle, "--read", "number", folder, "--out",
                         out, "--workers", str(workers), "--batch-size", "8")
        assert done.returncode == 0, done.stderr
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    rows = list(csv.DictReader(outputs[0].decode().splitlines()))
    assert len(rows) == 40 and all(row["status"] in ("ok", "review") for row in rows)
    for row in rows:
        width = _png_width(folder / Path(row["source"]).name)
        spans = [tuple(map(int, part.split("@")[1].split(":")[0].split("-")))
                 for part in row["digits"].split()]
        assert len(spans) == len(row["prediction"])
        assert all(0 <= x0 < x1 <= width + 1 for x0, x1 in spans), (row, width)


def _png_width(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as image:
        return image.width


def test_a_fine_tuned_bundle_keeps_its_base_s_field_reader(tmp_path, mnist, mnist_fields_bundle):
    write_png_tree(tmp_path / "mine", mnist.x_test[:200], mnist.y_test[:200])
    out = tmp_path / "tuned"
    command = [sys.executable, "-m", "trainer.cli", "--base", mnist_fields_bundle, "--images",
               tmp_path / "mine", "--out", out, "--epochs", "1", "--accept-worse"]
    done = subprocess.run(list(map(str, command)), cwd=Path(__file__).parent.parent,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    base, tuned = load_bundle(mnist_fields_bundle), load_bundle(out)
    assert tuned.field_reader_bytes() == base.field_reader_bytes()
    assert tuned.manifest.training["field_reader"] == base.manifest.training["field_reader"]
    assert tuned.manifest.lineage["base"]["manifest_sha256"] == \
        sha256_file(mnist_fields_bundle / "manifest.json")
