"""`digits-score --read number` end to end: real field PNGs, the real bundle, a real subprocess.

The fields are clean MNIST digits written apart (test_s3_jobs.field_of), so the reader reads
them; two labels in the labels CSV are wrong on purpose (a digit changed, a digit too many) so
that the report has misread fields and a wrong length to show, whatever the reader does. Every
figure of the report is checked against what this file computes from the CSV rows itself.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import assert_usage_error, read_csv, score_cli
from digit_factory import mnist_png
from test_s3_jobs import clean_digits, field_of

HEADER = ["source", "prediction", "confidence", "status", "error", "label", "digits"]
BLANK_ERROR = "blank image: no ink found"
FAILURE_DIR = Path("/tmp/number_reader_failures")
SUMMARY = re.compile(r"read (\d+)(?: \((\d+) for review\))?, blank (\d+), failed (\d+), "
                     r"skipped (\d+) \(not images\)(?:, ([\d,.]+) fields/s)?(?:, exact "
                     r"([\d.]+)% on (\d+) labelled)?")




# --- what this file computes itself ----------------------------------------------------------


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance by the textbook table (not the scorer's own)."""
    table = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            table[i][j] = min(table[i - 1][j] + 1, table[i][j - 1] + 1,
                              table[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return table[-1][-1]


def parse_digits(cell: str) -> list[tuple[str, int, int, float]]:
    """"7@12-40:0.998 0@44-71:0.951" -> [("7", 12, 40, 0.998), ("0", 44, 71, 0.951)]."""
    found = []
    for entry in cell.split():
        match = re.fullmatch(r"(\d)@(\d+)-(\d+):([01]\.\d{3})", entry)
        assert match, (entry, cell)
        found.append((match[1], int(match[2]), int(match[3]), float(match[4])))
    return found


def summary_of(stderr: str) -> re.Match:
    lines = [line for line in stderr.splitlines() if line.startswith("read ")]
    assert len(lines) == 1, stderr
    match = SUMMARY.fullmatch(lines[0])
    assert match, lines[0]
    return match


def png_of(grey: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG")
    return buffer.getvalue()


def empty_comb_png(cells: int = 5) -> bytes:
    """A printed comb (black lines, 2 px) on white and nothing written in it."""
    cell_w, cell_h, lw = 70, 100, 2
    grey = np.full((cell_h + 40, cells * cell_w + 40), 246, np.uint8)
    y0, x0 = 20, 20
    grey[y0:y0 + lw, x0:x0 + cells * cell_w + lw] = 30
    grey[y0 + cell_h:y0 + cell_h + lw, x0:x0 + cells * cell_w + lw] = 30
    for i in range(cells + 1):
        grey[y0:y0 + cell_h + lw, x0 + i * cell_w:x0 + i * cell_w + lw] = 30
    return png_of(grey)


# --- the folder of fields ----------------------------------------------------------------------


class Fields:
    """A folder of field PNGs and a labels CSV: `truth` is what each field holds, `labels` what
    the labels CSV says (two of them wrong on purpose), by source text as the CLI prints it."""

    def __init__(self, root: Path, bundle: Path, x: np.ndarray, y: np.ndarray):
        clean = clean_digits(bundle, x, y)
        zeros = iter(i for i in clean if y[i] == 0)
        others = iter(i for i in clean if y[i] != 0)
        self.folder = root / "fields"
        (self.folder / "7").mkdir(parents=True)
        self.truth: dict[str, str] = {}

        def write(name: str, picked: list[int]) -> str:
            text = "".join(str(int(y[i])) for i in picked)
            source = str(self.folder / name)
            Path(source).write_bytes(field_of([x[i] for i in picked], text).png)
            self.truth[source] = text
            return source

        z, o = lambda: next(zeros), lambda: next(others)  # noqa: E731
        self.zero7 = write("meter_007.png", [z(), z(), next(i for i in clean if y[i] == 7)])
        self.zero420 = write("zip_0420.png", [z(), next(i for i in clean if y[i] == 4), next(
            i for i in clean if y[i] == 2), z()])
        for n, name in [(3, "a.png"), (4, "b.png"), (5, "c.png"), (6, "d.png"), (4, "e.png")]:
            write(name, [o() for _ in range(n)])
        self.relabelled = write("relabelled.png", [o() for _ in range(3)])
        self.longer = write("longer.png", [o() for _ in range(4)])
        self.in_seven = write("7/in_folder_seven.png", [o() for _ in range(3)])  # no label
        self.broken = str(self.folder / "broken.png")
        Path(self.broken).write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 10)
        self.blank = str(self.folder / "empty.png")
        Path(self.blank).write_bytes(png_of(np.full((80, 300), 247, np.uint8)))

        self.labels = {s: t for s, t in self.truth.items() if s != self.in_seven}
        wrong = self.truth[self.relabelled]
        self.labels[self.relabelled] = wrong[:-1] + str((int(wrong[-1]) + 1) % 10)
        self.labels[self.longer] = self.truth[self.longer] + "1"
        self.labels[self.blank] = "55"  # a label on a blank row counts for nothing
        self.labels_csv = root / "labels.csv"
        with self.labels_csv.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["source", "label"])
            writer.writerows(sorted(self.labels.items()))


@pytest.fixture(scope="module")
def fields(tmp_path_factory, mnist_bundle, mnist_test_images) -> Fields:
    return Fields(tmp_path_factory.mktemp("number_cli"), mnist_bundle, *mnist_test_images)


@pytest.fixture(scope="module")
def labelled_run(fields, mnist_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("number_run")
    done = score_cli(fields.folder, "--model", mnist_bundle, "--read", "number", "--labels",
                     fields.labels_csv, "--out", out / "fields.csv", "--report-dir",
                     out / "report")
    return done, out


def rows_by_source(path: Path) -> dict[str, dict]:
    header, rows = read_csv(path)
    assert header == HEADER
    return {row["source"]: row for row in rows}


# --- the labelled run ---------------------------------------------------------------------------


def test_csv_columns_statuses_and_exit_code(labelled_run, fields):
    done, out = labelled_run
    assert done.returncode == 3, done.stderr  # the broken file
    assert "Traceback" not in done.stderr
    header, rows = read_csv(out / "fields.csv")
    assert header == HEADER
    by_source = {row["source"]: row for row in rows}
    assert set(by_source) == {*fields.truth, fields.broken, fields.blank}
    assert [row["source"] for row in rows] == sorted(by_source)  # folders are read sorted

    broken = by_source[fields.broken]
    assert broken["status"] == "error" and broken["error"] != ""
    assert broken["prediction"] == broken["confidence"] == broken["digits"] == ""
    blank = by_source[fields.blank]
    assert (blank["status"], blank["error"]) == ("blank", BLANK_ERROR)
    assert blank["prediction"] == blank["confidence"] == blank["digits"] == ""
    assert blank["label"] == "55"  # the label is kept; the report ignores blank rows

    for source, text in fields.truth.items():
        row = by_source[source]
        assert row["status"] == "ok" and row["error"] == "", row
        assert row["prediction"] == text, row  # clean digits written apart: read right
        assert row["label"] == fields.labels.get(source, ""), row


def test_leading_zeros_are_kept_in_predictions_and_labels(labelled_run, fields):
    _, out = labelled_run
    text = (out / "fields.csv").read_text(encoding="utf-8")
    by_source = rows_by_source(out / "fields.csv")
    for source, expected in [(fields.zero7, "007"), (fields.zero420, "0420")]:
        row = by_source[source]
        assert row["prediction"] == row["label"] == expected
        assert row["digits"].startswith("0@")
        assert f"{source},{expected}," in text  # the cell itself, as written
    # what the docs advise: the csv module reads every cell as text, so "007" stays "007"
    with (out / "fields.csv").open(newline="", encoding="utf-8") as f:
        predictions = {row["source"]: row["prediction"] for row in csv.DictReader(f)}
    assert predictions[fields.zero7] == "007" and predictions[fields.zero420] == "0420"
    assert str(int(predictions[fields.zero7])) == "7"  # what reading it as a number would lose


def test_digits_column_spells_the_prediction(labelled_run):
    _, out = labelled_run
    for row in rows_by_source(out / "fields.csv").values():
        if row["status"] not in ("ok", "review"):
            continue
        digits = parse_digits(row["digits"])
        assert "".join(d for d, *_ in digits) == row["prediction"], row
        assert all(0 <= x0 < x1 for _, x0, x1, _ in digits), row
        assert all(a[2] <= b[1] for a, b in zip(digits, digits[1:], strict=False)), row
        assert all(0 < c <= 1 for *_, c in digits), row
        assert float(row["confidence"]) == pytest.approx(np.prod([c for *_, c in digits]),
                                                         abs=0.01), row


def test_report_figures_are_those_of_the_csv(labelled_run, fields):
    _, out = labelled_run
    rows = rows_by_source(out / "fields.csv").values()
    read = [r for r in rows if r["status"] in ("ok", "review") and r["label"] != ""]
    truth, pred = [r["label"] for r in read], [r["prediction"] for r in read]
    report = json.loads((out / "report" / "report.json").read_text())

    assert report["mode"] == "number"
    assert report["fields"] == len(read) == len(fields.labels) - 1  # the blank row's is not
    exact = sum(t == p for t, p in zip(truth, pred, strict=True)) / len(read)
    edits = sum(edit_distance(t, p) for t, p in zip(truth, pred, strict=True))
    wrong_length = sum(len(t) != len(p) for t, p in zip(truth, pred, strict=True)) / len(read)
    assert report["exact_match"] == pytest.approx(exact)
    assert report["digit_accuracy"] == pytest.approx(1 - edits / sum(map(len, truth)))
    assert report["wrong_length"] == pytest.approx(wrong_length)
    assert 0 < report["exact_match"] < 1 and report["wrong_length"] > 0  # the wrong labels

    lengths = sorted({len(t) for t in truth})
    assert list(report["by_length"]) == [str(n) for n in lengths]
    for n in lengths:
        group = [(t, p) for t, p in zip(truth, pred, strict=True) if len(t) == n]
        entry = report["by_length"][str(n)]
        assert entry["fields"] == len(group)
        assert entry["exact_match"] == pytest.approx(sum(t == p for t, p in group) / len(group))
        assert entry["wrong_length"] == pytest.approx(
            sum(len(t) != len(p) for t, p in group) / len(group))

    pairs = [(a, b) for t, p in zip(truth, pred, strict=True) if len(t) == len(p)
             for a, b in zip(t, p, strict=True)]
    assert report["digits"]["samples"] == len(pairs)
    assert report["digits"]["accuracy"] == pytest.approx(sum(a == b for a, b in pairs)
                                                         / len(pairs))
    at_zero = report["coverage"]["table"][0]
    assert at_zero["threshold"] == 0.0 and at_zero["accepted"] == len(read)
    assert at_zero["accuracy"] == pytest.approx(exact)
    run = report["run"]
    assert run["read"] == "number" and run["length"] is None
    assert (run["images_scored"], run["images_blank"], run["images_failed"]) == (
        len([r for r in rows if r["status"] in ("ok", "review")]), 1, 1)
    assert run["unlabelled"] == 1  # the field in the folder named 7

    text = (out / "report" / "classification_report.txt").read_text()
    assert text.startswith(f"fields: {len(read)}\n"), text[:200]
    assert f"exact match: {exact:.4f}" in text


def test_report_page_shows_each_misread_field(labelled_run):
    _, out = labelled_run
    rows = rows_by_source(out / "fields.csv").values()
    misread = [r for r in rows if r["status"] in ("ok", "review") and r["label"] != ""
               and r["prediction"] != r["label"]]
    html = (out / "report" / "report.html").read_text(encoding="utf-8")
    start = html.index("<h2>Misread fields")
    section = html[start:html.index("<h2>", start + 4)]
    if not misread:
        assert "No misread fields." in section
        return
    assert section.count("<figure") == len(misread) == section.count("<img ")
    for row in misread:
        assert f'title="{row["source"]}"' in section
        assert f"true {row['label']} → predicted {row['prediction']}" in section
    assert "src=\"data:image/png;base64," in section and "http" not in section


def test_summary_line_counts_fields(labelled_run):
    done, out = labelled_run
    rows = rows_by_source(out / "fields.csv").values()
    summary = summary_of(done.stderr)
    scored = [r for r in rows if r["status"] in ("ok", "review")]
    assert int(summary[1]) == len(scored)
    assert summary[2] is None  # nothing for review
    assert (int(summary[3]), int(summary[4])) == (1, 1)
    assert float(summary[6].replace(",", "")) > 0
    labelled = [r for r in scored if r["label"] != ""]
    assert int(summary[8]) == len(labelled)
    exact = sum(r["prediction"] == r["label"] for r in labelled) / len(labelled)
    assert float(summary[7]) == pytest.approx(100 * exact, abs=0.006)


# --- --length and --min-confidence --------------------------------------------------------------


def test_length_sends_fields_of_another_length_to_review(fields, mnist_bundle, tmp_path):
    done = score_cli(fields.folder, "--model", mnist_bundle, "--read", "number", "--length", "4",
                     "--out", tmp_path / "out.csv")
    assert done.returncode == 3, done.stderr
    rows = rows_by_source_unlabelled(tmp_path / "out.csv")
    for source, text in fields.truth.items():
        row = rows[source]
        if row["prediction"] != text:  # kept, to look at
            FAILURE_DIR.mkdir(parents=True, exist_ok=True)
            saved = FAILURE_DIR / f"cli_length4_{text}_read_{row['prediction']}.png"
            saved.write_bytes(Path(source).read_bytes())
            pytest.fail(f"{text} read as {row['prediction']} with --length 4 ({saved})")
        if len(text) == 4:
            assert (row["status"], row["error"]) == ("ok", ""), row
        else:
            assert row["status"] == "review", row
            assert row["error"] == f"read {len(text)} digits, expected 4", row
    assert rows[fields.blank]["status"] == "blank" and rows[fields.broken]["status"] == "error"
    review = sum(len(t) != 4 for t in fields.truth.values())
    assert summary_of(done.stderr)[2] == str(review)

    ranged = score_cli(fields.zero7, fields.zero420, "--model", mnist_bundle, "--read",
                       "number", "--length", "4-6")
    assert ranged.returncode == 0, ranged.stderr
    _, rows = read_csv(ranged.stdout)
    assert [(r["prediction"], r["status"], r["error"]) for r in rows] == [
        ("007", "review", "read 3 digits, expected 4-6"), ("0420", "ok", "")]


def rows_by_source_unlabelled(path: Path) -> dict[str, dict]:
    header, rows = read_csv(path)
    assert header == [c for c in HEADER if c != "label"]  # no label known: no label column
    return {row["source"]: row for row in rows}


def test_min_confidence_one_sends_every_reading_to_review(fields, mnist_bundle, tmp_path):
    done = score_cli(fields.folder, "--model", mnist_bundle, "--read", "number",
                     "--min-confidence", "1.0", "--out", tmp_path / "out.csv")
    assert done.returncode == 3, done.stderr
    rows = rows_by_source_unlabelled(tmp_path / "out.csv")
    read = [r for r in rows.values() if r["prediction"] != ""]
    assert len(read) == len(fields.truth)
    assert all(r["status"] == "review" and r["error"] == "" for r in read), read
    assert all(float(r["confidence"]) < 1.0 for r in read)
    assert rows[fields.blank]["status"] == "blank" and rows[fields.broken]["status"] == "error"
    summary = summary_of(done.stderr)
    assert summary[1] == summary[2] == str(len(read))


# --- usage errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("args, mentions", [
    (["--length", "5"], "--length needs --read number"),
    (["--read", "digit", "--length", "5"], "--length needs --read number"),
    (["--read", "number", "--length", "6-4"], "need 1 <= MIN <= MAX"),
    (["--read", "number", "--length", "x"], "is not N or MIN-MAX"),
    (["--read", "number", "--length", "0"], "need 1 <= MIN"),
    (["--read", "number", "--probabilities"], "--probabilities"),
    (["--read", "numbers"], "--read"),
], ids=["length-alone", "length-in-digit-mode", "length-6-4", "length-x", "length-0",
        "probabilities", "read-numbers"])
def test_usage_errors(fields, mnist_bundle, args, mentions):
    done = score_cli(fields.zero7, "--model", mnist_bundle, *args)
    assert_usage_error(done, mentions=mentions)


@pytest.mark.parametrize("label", ["7a", "1.5", "-12", "", " "])
def test_a_label_that_is_not_a_digit_string_is_a_usage_error(fields, mnist_bundle, tmp_path,
                                                             label):
    labels = tmp_path / "labels.csv"
    labels.write_text(f"source,label\n{fields.zero7},007\n{fields.zero420},{label}\n")
    done = score_cli(fields.zero7, "--model", mnist_bundle, "--read", "number", "--labels",
                     labels)
    assert_usage_error(done, mentions="--labels")
    assert "line 3" in done.stderr and "not a string of digits" in done.stderr


# --- folder names and digit mode ------------------------------------------------------------


def test_a_folder_named_7_is_no_label_in_number_mode(fields, mnist_bundle):
    folder = str(Path(fields.in_seven).parent)
    numbers = score_cli(folder, "--model", mnist_bundle, "--read", "number")
    assert numbers.returncode == 0, numbers.stderr
    header, rows = read_csv(numbers.stdout)
    assert header == [c for c in HEADER if c != "label"]
    assert [r["prediction"] for r in rows] == [fields.truth[fields.in_seven]]
    assert "labelled" not in summary_of(numbers.stderr)[0]
    # the same folder in digit mode: the folder's name is the label
    digits = score_cli(folder, "--model", mnist_bundle)
    assert digits.returncode == 0, digits.stderr
    header, rows = read_csv(digits.stdout)
    assert "label" in header and "digits" not in header
    assert [r["label"] for r in rows] == ["7"]


def test_digit_mode_is_the_default_and_unchanged(mnist_bundle, mnist_test_images, tmp_path):
    x, y = mnist_test_images
    for i in range(60):
        path = tmp_path / "digits" / str(y[i]) / f"d{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(mnist_png(x[i]))
    default = score_cli(tmp_path / "digits", "--model", mnist_bundle, "--report-dir",
                        tmp_path / "r1")
    explicit = score_cli(tmp_path / "digits", "--model", mnist_bundle, "--read", "digit",
                         "--report-dir", tmp_path / "r2")
    assert default.returncode == explicit.returncode == 0
    assert default.stdout == explicit.stdout
    header, rows = read_csv(default.stdout)
    assert header == ["source", "prediction", "confidence", "status", "error", "label"]
    assert len(rows) == 60 and all(r["prediction"] in "0123456789" for r in rows)
    assert any(line.startswith("scored 60, blank 0, failed 0,")
               for line in default.stderr.splitlines()), default.stderr
    assert "images/s" in default.stderr and "fields/s" not in default.stderr
    for name in ("classification_report.txt", "confusion_matrix.csv", "coverage.csv"):
        assert (tmp_path / "r1" / name).read_bytes() == (tmp_path / "r2" / name).read_bytes()
    report = json.loads((tmp_path / "r1" / "report.json").read_text())
    assert "mode" not in report and "read" not in report["run"]


# --- an empty comb -------------------------------------------------------------------------------


def test_an_empty_comb_is_a_blank_row(mnist_bundle):
    FAILURE_DIR.mkdir(parents=True, exist_ok=True)
    path = FAILURE_DIR / "cli_empty_comb.png"  # kept, to look at if the test fails
    path.write_bytes(empty_comb_png())
    done = score_cli(path, "--model", mnist_bundle, "--read", "number")
    assert done.returncode == 0, done.stderr
    _, rows = read_csv(done.stdout)
    assert [(r["status"], r["error"], r["prediction"]) for r in rows] == [
        ("blank", BLANK_ERROR, "")], f"{rows} ({path})"
