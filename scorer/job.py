"""One scoring job: inputs -> predictions CSV (+ report when labels are known).

Shared by the CLI and the Lambda handler; it knows about files and S3 URLs, not about either.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

from scorer import report
from scorer.bundle import Bundle
from scorer.numbers import NumberMode
from scorer.outputs import PredictionsCsv, write_report
from scorer.pipeline import STATUS_BLANK, STATUS_ERROR, STATUS_REVIEW, Row, score
from scorer.sources import Input

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_SOME_FAILED = 3


@dataclass
class Tally:
    """Counts for the summary line and the exit code, and the labelled predictions for the
    report. `finish()` stops the clock, so the report and the summary quote the same speed."""

    scored: int = 0  # rows with a prediction: status ok or review
    review: int = 0  # of those, below the confidence threshold
    blank: int = 0
    failed: int = 0
    labelled: int = 0
    correct: int = 0
    any_label: bool = False  # some row (of any status) has a label: the CSV has a label column
    fields: bool = False  # number mode: rows are fields, predictions and labels digit strings
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None
    y_true: list[int | str] = field(default_factory=list, repr=False)
    y_pred: list[int | str] = field(default_factory=list, repr=False)
    confidence: list[float] = field(default_factory=list, repr=False)

    def add(self, row: Row) -> None:
        self.any_label = self.any_label or row.label is not None
        if row.status == STATUS_ERROR:
            self.failed += 1
            return
        if row.status == STATUS_BLANK:
            self.blank += 1
            return
        self.scored += 1
        self.review += row.status == STATUS_REVIEW
        if row.label is not None:
            self.labelled += 1
            self.correct += row.label == row.prediction
            self.y_true.append(row.label)
            self.y_pred.append(row.prediction)
            self.confidence.append(row.confidence)

    @classmethod
    def of_counts(cls, counts: dict, any_label: bool, fields: bool) -> Tally:
        """A finished tally of rows counted elsewhere (the parts of a scale-out job):
        `counts` holds scored, review, blank, failed, labelled and correct."""
        names = ("scored", "review", "blank", "failed", "labelled", "correct")
        tally = cls(**{name: counts[name] for name in names}, any_label=any_label,
                    fields=fields)
        tally.finish()
        return tally

    def counts(self) -> dict[str, int]:
        """The row counts by status, as logs, metrics and job results report them."""
        return {"scored": self.scored, "review": self.review, "blank": self.blank,
                "failed": self.failed}

    @property
    def total(self) -> int:
        return self.scored + self.blank + self.failed

    def finish(self) -> None:
        self.ended = time.perf_counter()

    @property
    def seconds(self) -> float:
        end = time.perf_counter() if self.ended is None else self.ended
        return max(end - self.started, 1e-9)

    @property
    def rate(self) -> float:
        return self.total / self.seconds

    @property
    def rounded_rate(self) -> float:
        """The speed both the summary line and the report quote (so they never disagree)."""
        return round(self.rate, 1)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def exit_code(self) -> int:
        """3 when some input could not be read (their rows say why), else 0: blanks and rows
        for review are results, not failures."""
        return EXIT_SOME_FAILED if self.failed else EXIT_OK

    def summary_line(self, skipped: int) -> str:
        """One line for people: counts, speed (unless nothing was scored: the time then went
        on refusing inputs) and, with labels, accuracy."""
        verb, unit = ("read", "fields") if self.fields else ("scored", "images")
        scored = f"{verb} {self.scored}" + (f" ({self.review} for review)" if self.review
                                             else "")
        parts = [scored, f"blank {self.blank}", f"failed {self.failed}",
                 f"skipped {skipped} (not images)"]
        if self.scored:
            parts.append(f"{self.rounded_rate:,.0f} {unit}/s")
        if self.labelled:
            parts.append(f"{'exact' if self.fields else 'accuracy'} "
                         f"{self.correct / self.labelled:.2%} on {self.labelled} labelled")
        return ", ".join(parts)


@dataclass(frozen=True)
class JobOptions:
    """How a job scores its rows and writes them (the defaults are the CLI's)."""

    workers: int | None = None  # processes that score, this one included (None: all cores)
    batch_size: int = 256  # most images per model invocation
    probabilities: bool = False  # a p<class> column per class (digit mode)
    min_confidence: float | None = None  # predictions below it get status "review"
    numbers: NumberMode | None = None  # each input is one field, read as a number
    label_column: bool | None = None  # True: a label column even if no row has a label (parts)
    formula_guard: bool = True  # False: cells exact, even those a spreadsheet runs as formulas
    timings: bool = True  # False: no speed or clock time in the report (byte-identical reruns)
    run_info: dict | None = None  # first entries of the report's "run" section (e.g. sources)


DEFAULT_OPTIONS = JobOptions()  # frozen: safe to share as a default


def run_job(inputs: Iterable[Input], bundle: Bundle, out: str, report_dir: str | None = None, *,
            options: JobOptions = DEFAULT_OPTIONS,
            progress: Callable[[Iterator[Row]], Iterable[Row]] | None = None,
            collector: report.ExampleCollector | None = None) -> Tally:
    """Score `inputs` into the CSV at `out` (path, '-' or s3:// URL) as `options` say; with
    `report_dir` and at least one labelled row, also write the report there. Nothing is
    published unless every row was written.

    Hooks: `progress` wraps the row iterator (a tqdm bar, the review folder's watch); a given
    `collector` is fed the labelled predictions (with their images) even without `report_dir`
    (the parts of a scale-out job keep their examples for the merge)."""
    fields = options.numbers is not None
    tally = Tally(fields=fields)
    if collector is None and report_dir:
        collector = report.ExampleCollector()
    sink = PredictionsCsv(out, bundle.labels, options.probabilities,
                          label_column=options.label_column,
                          formula_guard=options.formula_guard, fields=fields)
    try:
        rows = score(inputs, bundle, workers=options.workers, batch_size=options.batch_size,
                     keep_probabilities=options.probabilities,
                     min_confidence=options.min_confidence, numbers=options.numbers)
        for row in progress(rows) if progress else rows:
            sink.write(row)
            tally.add(row)
            if collector is not None and row.prediction is not None and row.label is not None:
                collector.add(example_of(row))
    except BaseException:
        sink.abort()
        raise
    sink.finish()  # removes its temporary files whatever happens in it, SIGTERM included
    tally.finish()
    if report_dir and tally.labelled:
        write_job_report(tally, bundle, collector, options, report_dir, out)
    return tally


def write_job_report(tally: Tally, bundle: Bundle, collector: report.ExampleCollector,
                     options: JobOptions, report_dir: str, out: str) -> None:
    """The report of the rows counted in `tally`, into `report_dir` (the CSV is out already)."""
    try:
        run = run_summary(tally, bundle, options.run_info, options.min_confidence,
                          options.timings)
        files = build_report(tally, bundle, collector.misclassified,
                             collector.least_confident, run)
        write_report(files, report_dir)
    except BaseException as stop:  # a stop or a full disk now: say what is already out
        stop.add_note(f"the predictions were written ({'stdout' if out == '-' else out}); "
                      "the report was not")
        raise


def example_of(row: Row) -> report.Example:
    """A labelled row as the report shows it: the model's input, or the field with its cuts."""
    cuts = () if row.reading is None else row.reading.cuts
    return report.Example(row.source, row.label, row.prediction, row.confidence, row.image,
                          cuts)


def build_report(tally: Tally, bundle: Bundle, misread: list[report.Example],
                 least_confident: list[report.Example], run: dict) -> dict[str, bytes]:
    """Every report file of the labelled rows counted in `tally`."""
    coverage = report.coverage(tally.y_true, tally.y_pred, tally.confidence)
    if tally.fields:
        fields = report.field_metrics(tally.y_true, tally.y_pred, bundle.labels)
        return report.report_files(fields["digits"], title="number readings",
                                   misclassified=misread, least_confident=least_confident,
                                   coverage=coverage, extra=run, fields=fields)
    return report.report_files(report.compute_metrics(tally.y_true, tally.y_pred, bundle.labels),
                               title="digit predictions", misclassified=misread,
                               least_confident=least_confident, coverage=coverage, extra=run)


def run_summary(tally: Tally, bundle: Bundle, run_info: dict | None,
                min_confidence: float | None, timings: bool) -> dict:
    """The report's "run" section: where the images and the model came from, and the counts."""
    info = {
        **(run_info or {}),
        "model": str(bundle.path), "model_file": bundle.model_file,
        "images_scored": tally.scored, "images_for_review": tally.review,
        "images_blank": tally.blank, "images_failed": tally.failed,
        "unlabelled": tally.scored - tally.labelled,
        "min_confidence": min_confidence,
    }
    if timings:
        info["images_per_second"] = tally.rounded_rate
        info["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return info
