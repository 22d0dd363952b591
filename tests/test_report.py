"""Tests for scorer.report: metrics and text against scikit-learn, files, HTML safety, collector."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scorer.report import (
    Example,
    ExampleCollector,
    classification_report_text,
    compute_metrics,
    confusion_matrix,
    confusion_matrix_csv,
    coverage,
    coverage_curve,
    coverage_table,
    report_files,
)
from scorer.report.page import thumbnail_data_uri

sk = pytest.importorskip("sklearn.metrics")

REPO = Path(__file__).resolve().parents[1]
DIGITS = [str(i) for i in range(10)]


def _noisy(seed: int, n: int, n_classes: int, error_rate: float):
    """Seeded (y_true, y_pred): y_pred is y_true with about error_rate random replacements."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, n_classes, n)
    y_pred = y_true.copy()
    flip = rng.random(n) < error_rate
    y_pred[flip] = rng.integers(0, n_classes, int(flip.sum()))
    return y_true, y_pred


def _cases():
    cases = {f"random10-seed{s}": (*_noisy(s, 500, 10, 0.2), DIGITS) for s in range(4)}
    cases["random3"] = (*_noisy(7, 61, 3, 0.5), ["cat", "dog", "pig"])
    cases["very-noisy10"] = (*_noisy(8, 37, 10, 1.0), DIGITS)
    y_true, y_pred = _noisy(9, 300, 10, 0.3)
    y_true[y_true == 4] = 5  # class 4 absent from y_true but still predicted
    cases["absent-from-truth"] = (y_true, y_pred, DIGITS)
    y_true, y_pred = _noisy(10, 300, 10, 0.3)
    y_pred[y_pred == 2] = 3  # class 2 never predicted
    cases["never-predicted"] = (y_true, y_pred, DIGITS)
    y_true, _ = _noisy(11, 100, 10, 0.0)
    cases["perfect"] = (y_true, y_true.copy(), DIGITS)
    cases["single-sample"] = (np.array([3]), np.array([5]), DIGITS)
    # No correct prediction at all: scikit-learn then prints supports as floats ("1.0").
    y_true, _ = _noisy(13, 50, 10, 0.0)
    cases["all-wrong"] = (y_true, (y_true + 1) % 10, DIGITS)
    cases["single-correct"] = (np.array([1]), np.array([1]), ["a", "b", "c"])
    cases["one-class-only"] = (np.zeros(9, int), np.zeros(9, int), ["x", "y", "z"])
    # A label longer than "weighted avg" widens the first column.
    cases["long-names"] = (*_noisy(12, 80, 3, 0.4), ["zero", "a-rather-long-class-name", "2"])
    return cases


CASES = _cases()


@pytest.fixture(params=sorted(CASES), ids=str)
def case(request):
    return CASES[request.param]


def test_confusion_matrix_matches_sklearn(case):
    y_true, y_pred, labels = case
    n = len(labels)
    ours = confusion_matrix(y_true, y_pred, n)
    assert ours.dtype == np.int64 and ours.shape == (n, n)
    np.testing.assert_array_equal(ours, sk.confusion_matrix(y_true, y_pred, labels=range(n)))


def test_compute_metrics_matches_sklearn_exactly(case):
    y_true, y_pred, labels = case
    m = compute_metrics(y_true, y_pred, labels)
    rng = list(range(len(labels)))
    assert m["samples"] == len(y_true)
    assert m["labels"] == list(labels)
    assert m["accuracy"] == sk.accuracy_score(y_true, y_pred)
    p, r, f, s = sk.precision_recall_fscore_support(
        y_true, y_pred, labels=rng, average=None, zero_division=0
    )
    assert list(m["classes"]) == list(labels)  # every label, in order, even with support 0
    for i, label in enumerate(labels):
        row = m["classes"][label]
        # Exact equality: the text report must round identically, so the floats must be the same.
        assert (row["precision"], row["recall"], row["f1-score"]) == (p[i], r[i], f[i])
        assert row["support"] == s[i]
    for key, average in (("macro avg", "macro"), ("weighted avg", "weighted")):
        expected = sk.precision_recall_fscore_support(
            y_true, y_pred, labels=rng, average=average, zero_division=0
        )[:3]
        row = m[key]
        assert (row["precision"], row["recall"], row["f1-score"]) == expected
        assert row["support"] == len(y_true)
    assert m["confusion_matrix"] == sk.confusion_matrix(y_true, y_pred, labels=rng).tolist()


def test_compute_metrics_is_plain_json(case):
    m = compute_metrics(*case)
    assert json.loads(json.dumps(m)) == m  # no numpy scalars anywhere


@pytest.mark.parametrize("digits", [2, 4])
def test_classification_report_text_is_byte_identical(case, digits):
    y_true, y_pred, labels = case
    expected = sk.classification_report(
        y_true,
        y_pred,
        labels=range(len(labels)),
        target_names=labels,
        digits=digits,
        zero_division=0,
    )
    metrics = compute_metrics(y_true, y_pred, labels)
    assert classification_report_text(metrics, digits=digits) == expected
    # And after a JSON round trip, which is how the trainer may reload a report.
    again = json.loads(json.dumps(metrics))
    assert classification_report_text(again, digits=digits) == expected


def test_default_digits_is_4():
    y_true, y_pred = _noisy(3, 50, 10, 0.3)
    m = compute_metrics(y_true, y_pred, DIGITS)
    assert classification_report_text(m) == classification_report_text(m, digits=4)
    assert re.search(r"\d\.\d{4}\s", classification_report_text(m))


def test_empty_input_gives_zero_scores():
    m = compute_metrics(np.array([], int), np.array([], int), ["a", "b"])
    assert m["samples"] == 0 and m["accuracy"] == 0.0
    assert m["macro avg"]["f1-score"] == 0.0 and m["weighted avg"]["recall"] == 0.0
    assert m["confusion_matrix"] == [[0, 0], [0, 0]]
    assert "accuracy" in classification_report_text(m)


@pytest.mark.parametrize(
    ("y_true", "y_pred", "labels", "error"),
    [
        ([0, 3], [0, 1], ["a", "b", "c"], ValueError),  # index out of range
        ([0, -1], [0, 1], ["a", "b"], ValueError),
        ([0, 1, 1], [0, 1], ["a", "b"], ValueError),  # length mismatch
        ([0, 1], [0, 1], ["a", "a"], ValueError),  # duplicate labels would collide as keys
        ([0.0, 1.0], [0, 1], ["a", "b"], TypeError),  # float "indices"
        ([[0, 1]], [[0, 1]], ["a", "b"], ValueError),  # not 1-D
    ],
)
def test_invalid_input_is_rejected(y_true, y_pred, labels, error):
    with pytest.raises(error):
        compute_metrics(np.array(y_true), np.array(y_pred), labels)


def test_confusion_matrix_csv_round_trips():
    y_true, y_pred = _noisy(5, 400, 10, 0.25)
    m = compute_metrics(y_true, y_pred, DIGITS)
    rows = list(csv.reader(io.StringIO(confusion_matrix_csv(m))))
    assert rows[0] == ["true\\pred", *DIGITS]
    assert [r[0] for r in rows[1:]] == DIGITS
    back = np.array([[int(x) for x in r[1:]] for r in rows[1:]])
    np.testing.assert_array_equal(back, sk.confusion_matrix(y_true, y_pred, labels=range(10)))


def test_confusion_matrix_csv_quotes_awkward_labels():
    labels = ["a,b", 'say "hi"', "plain"]
    m = compute_metrics(np.array([0, 1, 2]), np.array([0, 2, 2]), labels)
    rows = list(csv.reader(io.StringIO(confusion_matrix_csv(m))))
    assert rows[0][1:] == labels and [r[0] for r in rows[1:]] == labels


# --- report files and HTML -------------------------------------------------------------------

EVIL = "<img src=x onerror=alert(1)>.png"


def _image(seed: int, size: int = 28) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


@pytest.fixture
def files_and_inputs():
    y_true, y_pred = _noisy(6, 300, 10, 0.2)
    metrics = compute_metrics(y_true, y_pred, DIGITS)
    mis = [Example(EVIL, 3, 5, 0.62, _image(0)), Example("a/b.png", 1, 7, 0.9, _image(1, 8))]
    unsure = [
        Example("archive.zip!/x/1.png", None, 4, 0.11, _image(2)),
        Example("s3://bucket/k/2.png", 2, 2, 0.2, _image(3)),
    ]
    extra = {
        "model": "m.tflite",
        "images/s": np.float32(812.5),
        "threads": np.int64(4),
        "timestamp": "2025-01-01T00:00:00Z",
        "note": "<b>bold</b>",
        "sources": ["scans/", "s3://bucket/more/"],
        "min_confidence": None,
    }
    files = report_files(
        metrics,
        title="Eval <i>run</i> & co",
        misclassified=mis,
        least_confident=unsure,
        extra=extra,
    )
    return files, metrics, mis, unsure


def test_report_files_has_the_four_files(files_and_inputs):
    files, *_ = files_and_inputs
    assert set(files) == {
        "report.json",
        "classification_report.txt",
        "confusion_matrix.csv",
        "report.html",
    }
    assert all(isinstance(v, bytes) and v for v in files.values())


def test_report_json_matches_metrics(files_and_inputs):
    files, metrics, *_ = files_and_inputs
    doc = json.loads(files["report.json"])
    run = doc.pop("run")
    assert doc.pop("title") == "Eval <i>run</i> & co"
    assert doc == metrics
    assert run == {
        "model": "m.tflite",
        "images/s": 812.5,
        "threads": 4,
        "timestamp": "2025-01-01T00:00:00Z",
        "note": "<b>bold</b>",
        "sources": ["scans/", "s3://bucket/more/"],
        "min_confidence": None,
    }


def test_report_text_and_csv_files(files_and_inputs):
    files, metrics, *_ = files_and_inputs
    assert files["classification_report.txt"].decode() == classification_report_text(metrics)
    assert files["confusion_matrix.csv"].decode() == confusion_matrix_csv(metrics)


def test_report_json_without_extra_has_empty_run():
    m = compute_metrics(np.array([0, 1]), np.array([0, 1]), ["a", "b"])
    files = report_files(m, title="t", misclassified=[], least_confident=[])
    assert json.loads(files["report.json"])["run"] == {}
    assert "data:image/png" not in files["report.html"].decode()


def test_html_is_self_contained(files_and_inputs):
    html = files_and_inputs[0]["report.html"].decode()
    lowered = html.lower()
    assert "http://" not in lowered and "https://" not in lowered
    assert "<script" not in lowered
    assert "<link" not in lowered and "@import" not in lowered and "url(" not in lowered
    # Every src= attribute is an inline image.
    srcs = re.findall(r'\ssrc="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)


def test_html_escapes_untrusted_text(files_and_inputs):
    html = files_and_inputs[0]["report.html"].decode()
    assert EVIL not in html
    assert "onerror=alert(1)&gt;.png" in html  # shown, but as text
    assert "<i>run</i>" not in html and "Eval &lt;i&gt;run&lt;/i&gt; &amp; co" in html
    assert "<b>bold</b>" not in html
    assert len(re.findall(r"<img\b", html)) == 4  # the evil name added no tag


def test_html_has_one_png_per_example(files_and_inputs):
    files, metrics, mis, unsure = files_and_inputs
    html = files["report.html"].decode()
    uris = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(uris) == len(mis) + len(unsure)
    for uri in uris:
        assert Image.open(io.BytesIO(base64.b64decode(uri))).format == "PNG"


def test_html_content(files_and_inputs):
    files, metrics, *_ = files_and_inputs
    html = files["report.html"].decode()
    assert "true 3 → predicted 5 (0.62)" in html
    assert "predicted 4 (0.11)" in html  # unknown label: no "true" part
    assert f"{metrics['accuracy']:.2%}" in html
    assert ">predicted<" in html and ">true<" in html
    for key in ("macro avg", "weighted avg", "images/s", "812.5"):
        assert key in html
    # The Run card reads as text: a list as its items, no value as "not set" (not JSON).
    assert "<th>sources</th><td>scans/, s3://bucket/more/</td>" in html
    assert "<th>min_confidence</th><td>not set</td>" in html and "null" not in html
    # Every confusion-matrix count appears as a cell.
    cells = [int(c) for c in re.findall(r'<td title="true [^"]*"[^>]*>(\d+)</td>', html)]
    assert cells == [c for row in metrics["confusion_matrix"] for c in row]


@pytest.mark.parametrize(("size", "scale"), [(28, 2), (8, 8), (64, 1), (100, 1)])
def test_thumbnail_is_a_nearest_neighbour_upscale(size, scale):
    img = _image(size, size)
    uri = thumbnail_data_uri(img)
    png = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    expected = np.kron(img, np.ones((scale, scale), np.uint8))
    np.testing.assert_array_equal(np.asarray(png), expected)


# --- ExampleCollector ------------------------------------------------------------------------


def _stream(n: int, seed: int = 0):
    """n examples with coarse confidences (many ties) and ~30 % errors, some unlabelled."""
    rng = np.random.default_rng(seed)
    batch = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
    out = []
    for i in range(n):
        label = None if i % 17 == 0 else int(rng.integers(0, 10))
        pred = int(rng.integers(0, 10)) if rng.random() < 0.3 or label is None else label
        conf = round(float(rng.random()), 2)  # 2 decimals -> plenty of ties
        out.append(Example(f"img{i}.png", label, pred, conf, batch[i]))
    return out, batch


def test_collector_is_bounded_and_exact():
    examples, batch = _stream(10_000)
    c = ExampleCollector(k_misclassified=48, k_least_confident=48)
    for ex in examples:
        c.add(ex)
        assert len(c._errors) <= 48 and len(c._unsure) <= 48
    assert c.seen == 10_000
    errors = [e for e in examples if e.label is not None and e.label != e.prediction]
    assert c.errors_seen == len(errors)
    # Python's sort is stable, so ties keep arrival order, as the collector promises.
    want_unsure = sorted(examples, key=lambda e: e.confidence)[:48]
    want_errors = sorted(errors, key=lambda e: -e.confidence)[:48]
    assert [e.source for e in c.least_confident] == [e.source for e in want_unsure]
    assert [e.source for e in c.misclassified] == [e.source for e in want_errors]
    kept = c.least_confident + c.misclassified
    for e in kept:
        # Kept images are copies, so the collector never pins a whole input batch in memory.
        assert not np.shares_memory(e.image, batch)
    original = {e.source: e for e in examples}
    for e in kept:
        np.testing.assert_array_equal(e.image, original[e.source].image)


def test_choose_examples_makes_the_collectors_choice_over_arrays():
    """One rule for the report's grids: the streaming collector (the CLI, a batch) and
    choose_examples over whole arrays (the trainer, a merge) pick the same rows in the same
    order, ties included."""
    from scorer.report import choose_examples

    examples, _ = _stream(5_000, seed=3)
    labelled = [e for e in examples if e.label is not None]
    collector = ExampleCollector()
    for e in labelled:
        collector.add(e)
    misclassified, least = choose_examples(np.array([e.label for e in labelled]),
                                           np.array([e.prediction for e in labelled]),
                                           np.array([e.confidence for e in labelled]))
    assert [labelled[i].source for i in misclassified] == \
        [e.source for e in collector.misclassified]
    assert [labelled[i].source for i in least] == [e.source for e in collector.least_confident]


def test_collector_with_fewer_examples_than_k():
    examples, _ = _stream(20, seed=1)
    c = ExampleCollector()
    for ex in examples:
        c.add(ex)
    assert [e.source for e in c.least_confident] == [
        e.source for e in sorted(examples, key=lambda e: e.confidence)
    ]
    assert all(e.is_error for e in c.misclassified)
    assert len(c.misclassified) == c.errors_seen


def test_collector_k_zero_and_bad_confidence():
    c = ExampleCollector(k_misclassified=0, k_least_confident=0)
    c.add(Example("a", 1, 2, 0.5, np.zeros((8, 8), np.uint8)))
    assert c.misclassified == [] and c.least_confident == [] and c.seen == 1
    with pytest.raises(ValueError):
        c.add(Example("b", 1, 2, float("nan"), np.zeros((8, 8), np.uint8)))
    with pytest.raises(ValueError):
        ExampleCollector(k_misclassified=-1)


def test_example_is_frozen():
    ex = Example("a", 1, 1, 0.9, np.zeros((2, 2), np.uint8))
    with pytest.raises(AttributeError):
        ex.label = 2  # type: ignore[misc]
    assert not ex.is_error and Example("a", None, 1, 0.9, ex.image).is_error is False


# --- dependency hygiene ----------------------------------------------------------------------


# --- accuracy against coverage ---------------------------------------------------------------


def test_coverage_table_counts_and_accuracy_by_threshold():
    y_true = [1, 1, 2, 2, 3, 3]
    y_pred = [1, 1, 2, 0, 3, 0]  # right, right, right, wrong, right, wrong
    conf = [0.99, 0.95, 0.9, 0.85, 0.6, 0.4]
    rows = {r["threshold"]: r for r in coverage_table(y_true, y_pred, conf, (0.0, 0.5, 0.9, 1.0))}
    assert rows[0.0] == {"threshold": 0.0, "accepted": 6, "coverage": 1.0, "accuracy": 4 / 6}
    assert rows[0.5] == {"threshold": 0.5, "accepted": 5, "coverage": 5 / 6, "accuracy": 0.8}
    assert rows[0.9] == {"threshold": 0.9, "accepted": 3, "coverage": 0.5, "accuracy": 1.0}
    assert rows[1.0] == {"threshold": 1.0, "accepted": 0, "coverage": 0.0, "accuracy": None}


def test_coverage_curve_accepts_the_most_confident_first():
    y_true, y_pred = [0, 0, 0, 0], [0, 1, 0, 1]
    curve = coverage_curve(y_true, y_pred, [0.9, 0.8, 0.7, 0.6], points=4)
    assert curve == [[0.25, 1.0], [0.5, 0.5], [0.75, 2 / 3], [1.0, 0.5]]
    assert coverage_curve([], [], []) == []
    with pytest.raises(ValueError):
        coverage_table([1, 2], [1, 2], [0.5])


def test_report_with_coverage_has_its_csv_table_and_plot():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 10, 500)
    conf = rng.uniform(0.3, 1.0, 500)
    y_pred = np.where(rng.uniform(size=500) < conf, y_true, (y_true + 1) % 10)  # sure = right
    metrics = compute_metrics(y_true, y_pred, DIGITS)
    files = report_files(metrics, title="t", misclassified=[], least_confident=[],
                         coverage=coverage(y_true, y_pred, conf))
    lines = files["coverage.csv"].decode().splitlines()
    assert lines[0] == "threshold,accepted,coverage,accuracy"
    assert lines[1].startswith("0.00,500,1.0000,")
    accuracies = [float(line.split(",")[3]) for line in lines[1:]]
    assert accuracies == sorted(accuracies)  # surer predictions are right more often here
    doc = json.loads(files["report.json"])
    assert doc["coverage"]["table"][0]["accepted"] == 500
    html = files["report.html"].decode()
    assert "Accuracy against coverage" in html and "<svg" in html and "<polyline" in html
    assert "<script" not in html
    plain = report_files(metrics, title="t", misclassified=[], least_confident=[])
    assert "coverage.csv" not in plain and "Accuracy against coverage" not in \
        plain["report.html"].decode()



def test_metrics_and_coverage_of_many_rows_take_a_few_bytes_a_row():
    """A merge of millions of labelled rows holds them as int8 classes and float32
    confidences; the metrics and the coverage curve must not widen them all to 8 bytes at
    once (10 million rows took 650 MB). The results are those of the wide arrays."""
    import tracemalloc

    from scorer.report.coverage import coverage_curve, coverage_table
    from scorer.report.metrics import confusion_matrix

    n = 1_000_000
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 10, n).astype(np.int8)
    y_pred = np.where(rng.random(n) < 0.9, y_true, rng.integers(0, 10, n)).astype(np.int8)
    confidence = rng.random(n).astype(np.float32)
    tracemalloc.start()
    try:
        matrix = confusion_matrix(y_true, y_pred, 10)
        curve = coverage_curve(y_true, y_pred, confidence)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * n, peak / n  # bytes a row at the peak (an argsort is 8 of them)
    wide_true, wide_pred = y_true.astype(np.int64), y_pred.astype(np.int64)
    expected = np.zeros((10, 10), np.int64)
    np.add.at(expected, (wide_true, wide_pred), 1)
    np.testing.assert_array_equal(matrix, expected)
    assert curve == coverage_curve(list(wide_true), list(wide_pred),
                                   confidence.astype(np.float64).tolist())
    assert coverage_table(y_true, y_pred, confidence) == coverage_table(
        wide_true, wide_pred, confidence.astype(np.float64))


def test_the_coverage_plot_spans_the_accuracies_it_shows():
    """A curve from 98.9 % to 100 % fills the plot from 98 % (it used to start at 90 %, a flat
    line along the top edge), and each axis label sits on the height of its value."""
    from scorer.report.page import _coverage_plot

    svg = _coverage_plot([[0.1, 1.0], [0.5, 0.995], [1.0, 0.989]])
    labels = dict((text, float(y)) for y, text in re.findall(
        r'<text x="[\d.]+" y="([\d.]+)" text-anchor="end" dominant-baseline="middle">'
        r"(\d+%)</text>", svg))
    assert set(labels) == {"100%", "98%"}
    curve = [tuple(map(float, point.split(","))) for point in re.search(
        r'<polyline points="([^"]+)" class="curve"/>', svg).group(1).split()]
    assert labels["100%"] == curve[0][1]  # the curve's 100 % point is level with its label
    assert labels["98%"] - curve[-1][1] > 0.3 * (labels["98%"] - labels["100%"])  # not flat
    wide = _coverage_plot([[0.2, 0.97], [1.0, 0.62]])
    assert ">61%</text>" in wide
