"""`digits-score`: classify digit images from folders, zips and S3 into a predictions CSV."""

from __future__ import annotations

import csv
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import click

from scorer import __version__

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_SOME_FAILED = 3


@dataclass
class Tally:
    scored: int = 0
    failed: int = 0
    labelled: int = 0
    correct: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, row) -> None:
        if row.status == "ok":
            self.scored += 1
            if row.label is not None:
                self.labelled += 1
                self.correct += row.label == row.prediction
        else:
            self.failed += 1

    @property
    def rate(self) -> float:
        return (self.scored + self.failed) / max(time.perf_counter() - self.started, 1e-9)


def read_labels_csv(path: str, classes: list[str]) -> dict[str, int]:
    """`source,label` rows -> {source: class index}; a bad file is a usage error."""
    index = {name: i for i, name in enumerate(classes)}
    labels: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"source", "label"} <= set(reader.fieldnames):
                raise click.BadParameter("needs a header with 'source' and 'label' columns",
                                         param_hint="--labels")
            for line, entry in enumerate(reader, start=2):
                label = (entry["label"] or "").strip()
                if label not in index:
                    raise click.BadParameter(
                        f"line {line}: label {label!r} is not one of {', '.join(classes)}",
                        param_hint="--labels")
                labels[entry["source"]] = index[label]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise click.BadParameter(str(err), param_hint="--labels") from err
    return labels


def apply_labels(inputs, labels: dict[str, int]):
    """Labels from --labels override folder names: exact source match."""
    from dataclasses import replace

    for item in inputs:
        label = labels.get(item.name)
        yield item if label is None else replace(item, label=label)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
               epilog="Exit codes: 0 every image scored; 3 some inputs failed (their rows say "
                      "why); 2 usage error (bad option, missing source, missing or corrupt model "
                      "bundle, hash mismatch).")
@click.argument("sources", nargs=-1, required=True)
@click.option("--model", "model_dir", default="artifacts",
              help="Model bundle folder written by digits-train.")
@click.option("--variant", type=click.Choice(["int8", "float32"]), default="int8",
              help="Which TFLite model of the bundle to run.")
@click.option("--out", default="-", help="Predictions CSV: a path, s3://bucket/key, or - for "
              "stdout.")
@click.option("--report-dir", default=None, help="Folder or s3:// prefix for report.json, "
              "classification_report.txt, confusion_matrix.csv and report.html (needs labels).")
@click.option("--labels", "labels_csv", type=click.Path(dir_okay=False), default=None,
              help="CSV with source,label columns; otherwise a parent folder named 0-9 is the "
              "label.")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Decoding processes.  [default: all cores]")
@click.option("--batch-size", type=click.IntRange(1, 65536), default=256,
              help="Images per model invocation.")
@click.option("--probabilities", is_flag=True, help="Add p0..p9 columns.")
@click.version_option(__version__, prog_name="digits-score")
def main(sources, model_dir, variant, out, report_dir, labels_csv, workers, batch_size,
         probabilities) -> None:
    """Classify digit images in SOURCES (image files, folders, .zip archives, s3://bucket/prefix/
    or s3://bucket/archive.zip) and write one CSV row per image:
    source,prediction,confidence,status,error[,label][,p0..p9].

    Images of any style are normalised the way MNIST was (ink polarity, contrast, crop, 20 px box,
    centre of mass). Broken files become rows with status=error; the run goes on."""
    from scorer.bundle import BundleError, load_bundle
    from scorer.sources import SourceError, SourceStats, check_specs, iter_inputs

    try:
        bundle = load_bundle(model_dir, variant)
        check_specs(sources)
    except (BundleError, SourceError) as err:
        raise click.UsageError(str(err)) from err
    labels = read_labels_csv(labels_csv, bundle.labels) if labels_csv else {}
    stats = SourceStats()
    inputs = apply_labels(iter_inputs(sources, stats), labels) if labels else \
        iter_inputs(sources, stats)
    try:
        tally = run(inputs, bundle, out, report_dir, workers, batch_size, probabilities,
                    model_dir)
    except SourceError as err:  # an S3 bucket or prefix found missing once listing starts
        raise click.UsageError(str(err)) from err
    print_summary(tally, stats)
    sys.exit(EXIT_SOME_FAILED if tally.failed else EXIT_OK)


def run(inputs, bundle, out, report_dir, workers, batch_size, probabilities, model_dir) -> Tally:
    from tqdm import tqdm

    from scorer import report
    from scorer.outputs import PredictionsCsv
    from scorer.pipeline import score

    sink = PredictionsCsv(out, bundle.labels, probabilities)
    tally = Tally()
    collector = report.ExampleCollector() if report_dir else None
    y_true, y_pred = [], []
    try:
        rows = score(inputs, bundle, workers=workers, batch_size=batch_size,
                     keep_probabilities=probabilities)
        for row in tqdm(rows, unit="img", file=sys.stderr, disable=None, leave=False):
            sink.write(row)
            tally.add(row)
            if collector is not None and row.status == "ok" and row.label is not None:
                y_true.append(row.label)
                y_pred.append(row.prediction)
                collector.add(report.Example(row.source, row.label, row.prediction,
                                             row.confidence, row.image))
    except BaseException:
        sink.abort()
        raise
    sink.finish()
    if report_dir:
        publish_report(report_dir, bundle, y_true, y_pred, collector, tally, model_dir)
    return tally


def publish_report(report_dir, bundle, y_true, y_pred, collector, tally, model_dir) -> None:
    from scorer import report
    from scorer.outputs import write_report

    if not y_true:
        click.echo("warning: no labelled images were scored, so no report was written "
                   "(use folders named 0-9 or --labels)", err=True)
        return
    metrics = report.compute_metrics(y_true, y_pred, bundle.labels)
    run_info = {"model": str(model_dir), "model_file": bundle.model_file,
                "images_scored": tally.scored, "images_failed": tally.failed,
                "unlabelled": tally.scored - tally.labelled,
                "images_per_second": round(tally.rate, 1),
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    files = report.report_files(metrics, title="digit predictions",
                                misclassified=collector.misclassified,
                                least_confident=collector.least_confident, extra=run_info)
    write_report(files, report_dir)


def print_summary(tally: Tally, stats) -> None:
    parts = [f"scored {tally.scored}", f"failed {tally.failed}",
             f"skipped {stats.skipped} (not images)", f"{tally.rate:,.0f} images/s"]
    if tally.labelled:
        parts.append(f"accuracy {tally.correct / tally.labelled:.2%} on {tally.labelled} "
                     "labelled")
    click.echo(", ".join(parts), err=True)


if __name__ == "__main__":
    main()
