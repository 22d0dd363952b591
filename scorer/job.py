"""One scoring job: inputs -> predictions CSV (+ report when labels are known).

Shared by the CLI and the Lambda handler; it knows about files and S3 URLs, not about either.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from scorer import report
from scorer.bundle import Bundle
from scorer.outputs import PredictionsCsv, write_report
from scorer.pipeline import STATUS_OK, Row, score
from scorer.sources import Input

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_SOME_FAILED = 3


@dataclass
class Tally:
    """Counts for the summary line and the exit code, and the labelled predictions for the
    report. `finish()` stops the clock, so the report and the summary quote the same speed."""

    scored: int = 0
    failed: int = 0
    labelled: int = 0
    correct: int = 0
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None
    y_true: list[int] = field(default_factory=list, repr=False)
    y_pred: list[int] = field(default_factory=list, repr=False)

    def add(self, row: Row) -> None:
        if row.status != STATUS_OK:
            self.failed += 1
            return
        self.scored += 1
        if row.label is not None:
            self.labelled += 1
            self.correct += row.label == row.prediction
            self.y_true.append(row.label)
            self.y_pred.append(row.prediction)

    def finish(self) -> None:
        self.ended = time.perf_counter()

    @property
    def seconds(self) -> float:
        end = time.perf_counter() if self.ended is None else self.ended
        return max(end - self.started, 1e-9)

    @property
    def rate(self) -> float:
        return (self.scored + self.failed) / self.seconds

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def exit_code(self) -> int:
        """0 when every input was scored, 3 when some could not be (their rows say why)."""
        return EXIT_SOME_FAILED if self.failed else EXIT_OK

    def summary_line(self, skipped: int) -> str:
        """One line for people: counts, speed and, with labels, accuracy."""
        parts = [f"scored {self.scored}", f"failed {self.failed}",
                 f"skipped {skipped} (not images)", f"{self.rate:,.0f} images/s"]
        if self.labelled:
            parts.append(f"accuracy {self.correct / self.labelled:.2%} on {self.labelled} "
                         "labelled")
        return ", ".join(parts)


def run_job(inputs: Iterable[Input], bundle: Bundle, out: str, report_dir: str | None = None, *,
            workers: int | None = None, batch_size: int = 256, probabilities: bool = False,
            progress=None, run_info: dict | None = None, timings: bool = True,
            formula_guard: bool = True) -> Tally:
    """Score `inputs` into the CSV at `out` (path, '-' or s3:// URL). With `report_dir` and at
    least one labelled image, also write the report there. `progress` wraps the row iterator
    (e.g. a tqdm bar). Nothing is published unless every row was written. `timings=False` keeps
    speed and clock time out of the report, so the same inputs give byte-identical outputs.
    `formula_guard=False` writes cells exactly, even those a spreadsheet would run as formulas."""
    sink = PredictionsCsv(out, bundle.labels, probabilities, formula_guard)
    tally = Tally()
    collector = report.ExampleCollector() if report_dir else None
    try:
        rows = score(inputs, bundle, workers=workers, batch_size=batch_size,
                     keep_probabilities=probabilities)
        for row in progress(rows) if progress else rows:
            sink.write(row)
            tally.add(row)
            if collector is not None and row.status == STATUS_OK and row.label is not None:
                collector.add(report.Example(row.source, row.label, row.prediction,
                                             row.confidence, row.image))
    except BaseException:
        sink.abort()
        raise
    sink.finish()
    tally.finish()
    if report_dir and tally.labelled:
        files = report.report_files(
            report.compute_metrics(tally.y_true, tally.y_pred, bundle.labels),
            title="digit predictions", misclassified=collector.misclassified,
            least_confident=collector.least_confident,
            extra=run_summary(tally, bundle, run_info, timings))
        write_report(files, report_dir)
    return tally


def run_summary(tally: Tally, bundle: Bundle, run_info: dict | None, timings: bool) -> dict:
    """The report's "run" section: where the images and the model came from, and the counts."""
    info = {
        **(run_info or {}),
        "model": str(bundle.path), "model_file": bundle.model_file,
        "images_scored": tally.scored, "images_failed": tally.failed,
        "unlabelled": tally.scored - tally.labelled,
    }
    if timings:
        info["images_per_second"] = round(tally.rate, 1)
        info["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return info
