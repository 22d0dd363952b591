"""scorer.job, directly: the Tally (counts, summary line, exit code) and run_job with a real
bundle on real PNGs: one CSV and one report, published whole or not at all, as JobOptions say."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from scorer.bundle import load_bundle
from scorer.job import EXIT_OK, EXIT_SOME_FAILED, JobOptions, Tally, run_job
from scorer.numbers import NumberMode
from scorer.pipeline import Row
from scorer.report import ExampleCollector
from scorer.sources import Input, SourceError, SourceStats, iter_inputs

from cli_helpers import read_csv, write_png_tree
from digit_factory import mnist_png
from field_factory import spaced

REPORT_FILES = ["classification_report.txt", "confusion_matrix.csv", "coverage.csv",
                "report.html", "report.json"]
ONE_PROCESS = JobOptions(workers=1)  # quick, and the pool has tests of its own


def row(status: str = "ok", prediction: int | None = 7, label: int | None = None,
        confidence: float | None = 0.9) -> Row:
    if status in ("blank", "error"):
        prediction = confidence = None
    return Row("x.png", prediction, confidence, status, "", label)


def tally_of(rows: list[Row], fields: bool = False) -> Tally:
    tally = Tally(fields=fields)
    for each in rows:
        tally.add(each)
    tally.finish()
    return tally


@pytest.fixture(scope="module")
def bundle(mnist_bundle):
    return load_bundle(mnist_bundle)


@pytest.fixture(scope="module")
def uploads(tmp_path_factory, mnist_test_images) -> Path:
    """40 labelled digits in folders 0-9, plus an empty box and a broken file (unlabelled)."""
    x, y = mnist_test_images
    root = tmp_path_factory.mktemp("job") / "uploads"
    write_png_tree(root, x[:40], y[:40])
    (root / "empty.png").write_bytes(mnist_png(np.zeros((28, 28), np.uint8)))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory, mnist_test_images) -> Path:
    folder = tmp_path_factory.mktemp("job") / "unlabelled"
    folder.mkdir()
    for i in range(5):
        (folder / f"{i}.png").write_bytes(mnist_png(mnist_test_images[0][i]))
    return folder


def inputs_of(folder: Path) -> Iterator[Input]:
    return iter_inputs([str(folder)], SourceStats())


# --- Tally -----------------------------------------------------------------------------------


def test_tally_counts_statuses_and_keeps_the_labelled_predictions():
    tally = tally_of([row(label=7), row(label=1, confidence=0.6), row("review", label=7),
                      row(), row("blank"), row("error", label=4)])
    assert (tally.scored, tally.review, tally.blank, tally.failed) == (4, 1, 1, 1)
    assert (tally.labelled, tally.correct, tally.total) == (3, 2, 6)
    assert tally.accuracy == pytest.approx(2 / 3)
    assert (tally.y_true, tally.y_pred, tally.confidence) == ([7, 1, 7], [7, 7, 7],
                                                              [0.9, 0.6, 0.9])
    assert tally.counts() == {"scored": 4, "review": 1, "blank": 1, "failed": 1}
    assert tally.any_label  # the error row's label counts: the CSV keeps its label column


def test_only_unreadable_inputs_make_the_exit_code_3():
    assert tally_of([row(), row("review"), row("blank")]).exit_code == EXIT_OK
    assert tally_of([]).exit_code == EXIT_OK
    assert tally_of([row(), row("error")]).exit_code == EXIT_SOME_FAILED


def test_no_speed_is_quoted_when_nothing_was_scored():
    """Refusing broken or blank inputs is quick: a rate of them would read as scoring speed."""
    line = tally_of([row("error"), row("blank")]).summary_line(skipped=1)
    assert line == "scored 0, blank 1, failed 1, skipped 1 (not images)"
    assert "images/s" in tally_of([row(), row("error")]).summary_line(skipped=0)


def test_a_tally_without_labels_has_no_accuracy():
    tally = tally_of([row(), row("blank")])
    assert tally.accuracy is None and not tally.any_label
    assert "accuracy" not in tally.summary_line(skipped=0)


def test_a_finished_tally_quotes_one_speed():
    tally = tally_of([row()] * 50)
    seconds = tally.seconds
    time.sleep(0.01)
    assert tally.seconds == seconds  # the clock stopped at finish()
    assert tally.rate == pytest.approx(50 / tally.seconds)
    assert tally.rounded_rate == round(tally.rate, 1)


def test_the_summary_line_names_images_or_fields():
    rows = [row(label=7), row("review", label=3), row("blank"), row("error")]
    digits = tally_of(rows).summary_line(skipped=2)
    assert re.fullmatch(r"scored 2 \(1 for review\), blank 1, failed 1, skipped 2 \(not images\),"
                        r" [\d,]+ images/s, accuracy 50\.00% on 2 labelled", digits), digits
    fields = tally_of([row()], fields=True).summary_line(skipped=0)
    assert re.fullmatch(r"read 1, blank 0, failed 0, skipped 0 \(not images\), [\d,]+ fields/s",
                        fields), fields


def test_of_counts_makes_a_finished_tally_of_counts_from_elsewhere():
    counts = {"scored": 9, "review": 2, "blank": 1, "failed": 3, "labelled": 4, "correct": 3}
    tally = Tally.of_counts(counts, any_label=True, fields=True)
    assert tally.ended is not None and tally.fields and tally.any_label
    assert (tally.total, tally.accuracy, tally.exit_code) == (13, 0.75, EXIT_SOME_FAILED)
    assert "exact 75.00% on 4 labelled" in tally.summary_line(skipped=0)


# --- run_job: one CSV and one report, whole ----------------------------------------------------


def test_a_job_writes_a_row_per_input_and_the_report(tmp_path, bundle, uploads):
    out, report = tmp_path / "out.csv", tmp_path / "report"
    options = JobOptions(workers=1, run_info={"sources": [str(uploads)]})
    tally = run_job(inputs_of(uploads), bundle, str(out), str(report), options=options)
    header, rows = read_csv(out)
    assert header == ["source", "prediction", "confidence", "status", "error", "label"]
    assert len(rows) == tally.total == 42
    by_name = {Path(r["source"]).name: r for r in rows}
    assert by_name["empty.png"]["status"] == "blank" and by_name["broken.png"]["status"] == "error"
    assert tally.labelled == 40 and tally.exit_code == EXIT_SOME_FAILED
    assert sorted(p.name for p in report.iterdir()) == REPORT_FILES
    doc = json.loads((report / "report.json").read_text())
    assert doc["samples"] == 40 and doc["accuracy"] == pytest.approx(tally.accuracy)
    assert doc["run"]["sources"] == [str(uploads)]
    assert doc["run"]["images_per_second"] == tally.rounded_rate  # as the summary line says
    assert "finished" in doc["run"] and doc["run"]["min_confidence"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "report"]


def test_without_timings_a_job_writes_the_same_bytes_twice(tmp_path, bundle, uploads):
    """What a redelivered S3 message or a retried batch relies on."""
    written = []
    for run in ("first", "second"):
        out, report = tmp_path / run / "out.csv", tmp_path / run / "report"
        out.parent.mkdir()
        run_job(inputs_of(uploads), bundle, str(out), str(report),
                options=JobOptions(workers=1, timings=False))
        written.append({p.name: p.read_bytes() for p in [out, *sorted(report.iterdir())]})
    assert written[0] == written[1]
    run = json.loads(written[0]["report.json"])["run"]
    assert "images_per_second" not in run and "finished" not in run


def test_a_failure_mid_run_leaves_the_old_csv_and_no_other_file(tmp_path, bundle, uploads):
    """The source fails after rows were written (an S3 prefix deleted while listed): nothing
    is published, the temporary CSV goes, and the previous CSV stays whole."""
    out, report = tmp_path / "out.csv", tmp_path / "report"
    out.write_text("the previous run's rows\n")
    seen = []

    def failing() -> Iterator[Input]:
        for count, item in enumerate(inputs_of(uploads)):
            if count == 30:
                raise SourceError("the bucket went away")
            yield item

    def progress(rows):
        for each in rows:
            seen.append(each)
            yield each

    with pytest.raises(SourceError):
        run_job(failing(), bundle, str(out), str(report),
                options=JobOptions(workers=1, batch_size=4), progress=progress)
    assert seen  # rows were written before the failure
    assert out.read_text() == "the previous run's rows\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_a_report_that_cannot_be_written_says_the_csv_is_out(tmp_path, bundle, uploads):
    out, report = tmp_path / "out.csv", tmp_path / "report"
    report.write_text("a file where the report folder should be")
    with pytest.raises(OSError) as failure:
        run_job(inputs_of(uploads), bundle, str(out), str(report), options=ONE_PROCESS)
    assert failure.value.__notes__ == [f"the predictions were written ({out}); the report was "
                                       "not"]
    assert len(read_csv(out)[1]) == 42


def test_no_report_without_a_labelled_row(tmp_path, bundle, unlabelled):
    out, report = tmp_path / "out.csv", tmp_path / "report"
    tally = run_job(inputs_of(unlabelled), bundle, str(out), str(report), options=ONE_PROCESS)
    assert tally.labelled == 0 and tally.scored == 5
    assert not report.exists()


# --- run_job: options and hooks ----------------------------------------------------------------


def test_probabilities_add_a_column_per_class(tmp_path, bundle, uploads):
    out = tmp_path / "out.csv"
    run_job(inputs_of(uploads), bundle, str(out),
            options=JobOptions(workers=1, probabilities=True))
    header, rows = read_csv(out)
    classes = [f"p{name}" for name in bundle.labels]
    assert header[-len(classes):] == classes
    for each in rows:
        cells = [each[name] for name in classes]
        if each["status"] == "ok":
            p = np.array(cells, float)
            assert p.sum() == pytest.approx(1, abs=0.03)  # int8 outputs: steps of 1/256
            assert bundle.labels[int(p.argmax())] == each["prediction"]
        else:
            assert cells == [""] * len(classes)


def test_min_confidence_sends_the_less_sure_rows_to_review(tmp_path, bundle, uploads):
    plain, checked = tmp_path / "plain.csv", tmp_path / "checked.csv"
    run_job(inputs_of(uploads), bundle, str(plain), options=ONE_PROCESS)
    before = [r for r in read_csv(plain)[1] if r["status"] == "ok"]
    levels = sorted({float(r["confidence"]) for r in before})
    threshold = (levels[-2] + levels[-1]) / 2  # between two levels: the CSV rounds them
    tally = run_job(inputs_of(uploads), bundle, str(checked),
                    options=JobOptions(workers=1, min_confidence=threshold))
    after = {r["source"]: r for r in read_csv(checked)[1]}
    below = [r for r in before if float(r["confidence"]) < threshold]
    assert below and tally.review == len(below)
    for each in before:
        expected = "review" if float(each["confidence"]) < threshold else "ok"
        assert after[each["source"]]["status"] == expected
        assert after[each["source"]]["prediction"] == each["prediction"]


def test_label_column_keeps_an_empty_label_column(tmp_path, bundle, unlabelled):
    default, kept = tmp_path / "default.csv", tmp_path / "kept.csv"
    run_job(inputs_of(unlabelled), bundle, str(default), options=ONE_PROCESS)
    run_job(inputs_of(unlabelled), bundle, str(kept),
            options=JobOptions(workers=1, label_column=True))
    assert "label" not in read_csv(default)[0]
    header, rows = read_csv(kept)
    assert header[-1] == "label" and [r["label"] for r in rows] == [""] * 5


def test_the_formula_guard_can_be_turned_off(tmp_path, bundle, mnist_test_images):
    data = mnist_png(mnist_test_images[0][0])
    guarded, raw = tmp_path / "guarded.csv", tmp_path / "raw.csv"
    run_job([Input("=1+1.png", data, None, None)], bundle, str(guarded), options=ONE_PROCESS)
    run_job([Input("=1+1.png", data, None, None)], bundle, str(raw),
            options=JobOptions(workers=1, formula_guard=False))
    assert read_csv(guarded)[1][0]["source"] == "'=1+1.png"
    assert read_csv(raw)[1][0]["source"] == "=1+1.png"


def test_number_mode_reads_each_input_as_a_field(tmp_path, bundle, mnist_test_images):
    x, _ = mnist_test_images
    field = spaced([x[0], x[1], x[2]], np.random.default_rng(3), fmt="PNG")
    out = tmp_path / "out.csv"
    tally = run_job([Input("amount.png", field, None, None)], bundle, str(out),
                    options=JobOptions(workers=1, numbers=NumberMode()))
    header, [read] = read_csv(out)
    assert header[-1] == "digits" and tally.fields and tally.scored == 1
    cut = [re.fullmatch(r"(\d)@\d+-\d+:[01]\.\d{3}", part) for part in read["digits"].split()]
    assert all(cut) and read["prediction"] == "".join(match[1] for match in cut)


def test_progress_sees_every_row_in_order(tmp_path, bundle, uploads):
    out, seen = tmp_path / "out.csv", []

    def progress(rows):
        for each in rows:
            seen.append(each.source)
            yield each

    run_job(inputs_of(uploads), bundle, str(out), options=ONE_PROCESS, progress=progress)
    assert seen == [r["source"] for r in read_csv(out)[1]]


def test_a_given_collector_gets_the_labelled_rows_without_a_report(tmp_path, bundle, uploads):
    """How the parts of a scale-out job keep their examples for the merged report."""
    collector = ExampleCollector()
    tally = run_job(inputs_of(uploads), bundle, str(tmp_path / "out.csv"),
                    options=ONE_PROCESS, collector=collector)
    assert collector.seen == tally.labelled == 40
    assert collector.errors_seen == tally.labelled - tally.correct
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]
