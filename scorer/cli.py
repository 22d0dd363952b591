"""`digits-score`: classify digit images from folders, zips and S3 into a predictions CSV."""

from __future__ import annotations

import signal
import sys

import click

from scorer import __version__
from scorer.stopping import Terminated, install_stop_handlers


def check_report_dir(report_dir: str | None) -> None:
    """A local --report-dir must be (or be creatable as) a folder: fail before scoring."""
    from pathlib import Path

    from scorer.s3client import is_s3

    if report_dir is None or is_s3(report_dir):
        return
    import tempfile

    path = Path(report_dir)
    while not path.exists() and path != path.parent:  # the nearest part that exists
        path = path.parent
    if not path.is_dir():
        raise click.BadParameter(f"{path} is not a folder", param_hint="--report-dir")
    try:  # a read-only mount is found now, not after the whole run
        tempfile.TemporaryFile(dir=path).close()
    except OSError as err:
        raise click.BadParameter(f"cannot write in {path}: {err.strerror or err}",
                                 param_hint="--report-dir") from err


def check_out(out: str) -> None:
    """A local --out must name a file in a folder we can write to: fail before scoring."""
    from pathlib import Path

    from scorer.outputs import PredictionsCsv
    from scorer.s3client import is_s3

    if out == "-" or is_s3(out):
        return
    path = Path(out)
    if path.is_dir():
        raise click.BadParameter(f"{out} is a folder; give a file name", param_hint="--out")
    if path.exists() and not path.is_file() and not PredictionsCsv.is_stream(out):
        # block devices and sockets: never written over (devices and FIFOs are written into)
        raise click.BadParameter(f"{out} is not a regular file, character device or FIFO",
                                 param_hint="--out")
    if not path.resolve().parent.is_dir():
        raise click.BadParameter(f"folder {path.parent} does not exist", param_hint="--out")
    try:
        PredictionsCsv.check_target(out)
    except OSError as err:  # e.g. no permission to write beside --out
        raise click.BadParameter(f"cannot write there: {err}", param_hint="--out") from err


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
               epilog="Row status: ok; review (below --min-confidence, prediction kept); blank "
                      "(no ink: a result, not a failure); error (unreadable; the error column "
                      "says why). Exit codes: 0 every input read (blanks and reviews included); "
                      "3 some inputs could not be read; 1 an output could not be written (a "
                      "full disk); 2 usage error (bad option, missing source, missing or "
                      "corrupt model bundle, hash mismatch). "
                      "Details: docs/output.md.")
@click.argument("sources", nargs=-1, required=False)  # required unless --model-info
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
              help="Processes that read, normalize and classify, this one included (it scores "
              "whenever it would wait for the others).  [default: all cores]")
@click.option("--batch-size", type=click.IntRange(1, 65536), default=256,
              help="Most images per model invocation (at most 64 in worker processes).")
@click.option("--read", "read_mode", type=click.Choice(["digit", "number"]), default="digit",
              help="What one image holds: one digit, or one number written on one line (a "
              "field: an amount, a ZIP code, a meter reading, a comb of boxes). In number mode "
              "prediction is the digit string and a digits column shows where each digit was "
              "cut.")
@click.option("--length", "length_text", default=None, metavar="N|MIN-MAX",
              help="Number mode: how many digits a field holds (5, or 4-6). The reader uses it "
              "to choose between cuts; a reading of another length gets status=review.  "
              "[default: any]")
@click.option("--probabilities", is_flag=True, help="Add p0..p9 columns (digit mode).")
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=None,
              help="Predictions below this confidence get status=review (they keep the "
              "prediction), for a person to check. The report's accuracy-against-coverage table "
              "helps choose it.  [default: off]")
@click.option("--time-per-image", type=click.FloatRange(0, 900, min_open=True), default=10.0,
              metavar="SECONDS",
              help="Most time decoding and normalizing one image may take; an image that takes "
              "longer is an error row (a small file can cost minutes: a time bomb).")
@click.option("--verbose", is_flag=True,
              help="Also show the TFLite runtime's messages (or set DIGITS_VERBOSE=1).")
@click.option("--raw-csv", is_flag=True,
              help="Write every cell exactly. By default a cell starting with = + - @ (a file "
              "name a spreadsheet would run as a formula) gets a leading single quote.")
@click.option("--review-dir", default=None, metavar="DIR",
              help="Copy the original bytes of every review row (and, with labels, every "
              "misread row) into DIR/<predicted class>/, with DIR/review.csv mapping each copy "
              "to its source: sort the misfiled ones into the right folders, then fine-tune "
              "(docs/fine-tuning.md). DIR must be new or empty; written whole at the end.")
@click.option("--review-max", type=click.IntRange(1, 1_000_000), default=1000,
              help="Most copies in --review-dir (and at most 512 MB); the rest are counted in "
              "a warning.")
@click.option("--model-info", is_flag=True,
              help="Print the --model bundle's details and lineage (what it was trained or "
              "fine-tuned from) and exit; no SOURCES needed.")
@click.version_option(__version__, prog_name="digits-score")
def main(sources, model_dir, variant, out, report_dir, labels_csv, workers, batch_size,
         read_mode, length_text, probabilities, min_confidence, time_per_image, verbose, raw_csv,
         review_dir, review_max, model_info) -> None:
    """Classify digit images in SOURCES (image files, folders, .zip archives, s3://bucket/prefix/
    or s3://bucket/archive.zip) and write one CSV row per image:
    source,prediction,confidence,status,error[,label][,p0..p9] (--read number: plus digits).

    Images of any style are normalized the way MNIST was (ink polarity, contrast, crop, 20 px box,
    centre of mass). Images without ink are status=blank; broken files become rows with
    status=error; the run goes on."""
    import os

    from scorer.bundle import BundleError, load_bundle
    from scorer.bundle.classifier import VERBOSE
    from scorer.images.budget import set_seconds_per_image
    from scorer.sources import LabelMatcher, SourceError, SourceStats, check_specs, iter_inputs

    if not sources and not model_info:
        raise click.UsageError("Missing argument 'SOURCES...'.")
    if verbose:  # read where interpreters are made, in this process and its workers
        os.environ[VERBOSE] = "1"
    try:
        bundle = load_bundle(model_dir, variant)
        if model_info:
            print_model_info(bundle)
        check_specs(sources)
    except (BundleError, SourceError) as err:
        raise click.UsageError(str(err)) from err
    check_out(out)
    check_report_dir(report_dir)
    review = review_folder(review_dir, review_max, bundle.labels)
    numbers = number_mode(read_mode, length_text, probabilities, bundle.labels)
    matcher = LabelMatcher(read_labels(labels_csv, bundle.labels, numbers is not None)
                           if labels_csv else {})
    stats = SourceStats()
    inputs = matcher.apply(iter_inputs(sources, stats, defer_reads=True))
    from scorer.job import JobOptions  # here, not above: --model-info and usage errors skip it

    options = JobOptions(workers=checked_workers(workers), batch_size=batch_size,
                         probabilities=probabilities, min_confidence=min_confidence,
                         numbers=numbers, formula_guard=not raw_csv,
                         run_info={"sources": list(sources),
                                   **(numbers.describe() if numbers else {})})
    set_seconds_per_image(time_per_image)
    install_stop_handlers()  # SIGTERM raises Terminated, never inside a call into a pool
    try:
        tally = score_to_outputs(inputs, bundle, out, report_dir, review, options)
    except (SourceError, BundleError) as err:  # an S3 bucket or prefix found missing once
        raise click.UsageError(str(err)) from err  # listing starts; a model TFLite cannot load
    except Terminated as stop:  # the job removed its temporary files and stopped its workers
        click.echo(f"terminated (SIGTERM): {written(stop)}", err=True)
        sys.exit(EXIT_TERMINATED)
    except KeyboardInterrupt as stop:  # likewise
        click.echo(f"interrupted (Ctrl-C): {written(stop)}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except OSError as err:  # writing an output failed (a full disk, a read-only mount)
        click.echo(f"error: {err}; {written(err)}", err=True)
        sys.exit(EXIT_FAILED)
    click.echo(tally.summary_line(stats.skipped), err=True)
    if tally.total == 0:
        click.echo("warning: the sources hold no images (png jpg jpeg bmp gif tif tiff webp, "
                   "or zips of them)", err=True)
    if matcher.unmatched:
        click.echo(f"warning: {matcher.unmatched} of {len(matcher.labels)} --labels entries "
                   "matched no input (sources are matched by their exact text)", err=True)
    sys.exit(tally.exit_code)


EXIT_TERMINATED = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM
EXIT_INTERRUPTED = 128 + signal.SIGINT  # and by Ctrl-C
EXIT_FAILED = 1  # the outputs could not be written


def written(stop: BaseException) -> str:
    """What a stopped run had already written (the job notes it on the exception)."""
    return "; ".join(getattr(stop, "__notes__", ())) or "no output written"


def checked_workers(requested: int | None) -> int | None:
    """--workers, capped (with a warning) at what the cores and the open-file limit allow."""
    from scorer.workers import usable_workers

    if requested is None:
        return None
    usable = usable_workers(requested)
    if usable < requested:
        click.echo(f"warning: --workers {requested}: using {usable} (at most two a core this "
                   "process may use, and what its open-file limit allows)", err=True)
    return usable


def number_mode(read_mode: str, length_text: str | None, probabilities: bool,
                classes: list[str]):
    """--read/--length -> the pipeline's NumberMode, or None in digit mode (exit 2 if they do
    not fit together)."""
    from scorer.numbers import NumberMode, parse_length

    if read_mode == "digit":
        if length_text is not None:
            raise click.UsageError("--length needs --read number")
        return None
    if probabilities:
        raise click.UsageError("--probabilities is for --read digit (a field has a "
                               "probability per digit: see the digits column)")
    if any(len(name) != 1 for name in classes):
        raise click.UsageError("--read number needs a bundle whose classes are single "
                               f"characters, not {', '.join(classes)}")
    try:
        length = None if length_text is None else parse_length(length_text)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--length") from err
    return NumberMode(length)


def read_labels(path: str, classes: list[str], numbers: bool = False) -> dict:
    from scorer.sources import LabelsError, read_labels_csv, read_number_labels_csv

    try:
        return (read_number_labels_csv if numbers else read_labels_csv)(path, classes)
    except LabelsError as err:
        raise click.BadParameter(str(err), param_hint="--labels") from err


def progress_bar(rows):
    from tqdm import tqdm  # only for a terminal: importing it costs as much as 2,000 images

    return tqdm(rows, unit="img", file=sys.stderr, leave=False)


def score_to_outputs(inputs, bundle, out, report_dir, review, options):
    """Run the job (with a progress bar on a terminal), then warn about a missing report and
    write --review-dir."""
    from scorer.job import run_job

    progress = progress_bar if sys.stderr.isatty() else None
    if review is not None:  # notes the rows to copy as they stream past
        progress = review.watch if progress is None else \
            (lambda rows, bar=progress: bar(review.watch(rows)))
    tally = run_job(inputs, bundle, out, report_dir, options=options, progress=progress)
    if report_dir and not tally.labelled:
        click.echo("warning: no labelled images were scored, so no report was written "
                   "(use folders named 0-9 or --labels)", err=True)
    if review is not None:
        write_review(review, out)
    return tally


def print_model_info(bundle) -> None:
    """--model-info: the bundle's details and lineage, then exit 0."""
    from scorer.bundle.info import describe

    click.echo(describe(bundle), nl=False)
    sys.exit(0)


def review_folder(review_dir: str | None, review_max: int, classes: list[str]):
    """A ReviewFolder for --review-dir (checked now, before scoring), or None."""
    if review_dir is None:
        return None
    from scorer.review import ReviewDirError, ReviewFolder, check_target

    try:
        check_target(review_dir)
    except ReviewDirError as err:
        raise click.BadParameter(str(err), param_hint="--review-dir") from err
    return ReviewFolder(review_dir, classes, review_max)


def write_review(review, out: str) -> None:
    """Copy the noted rows into --review-dir, and say what was copied and what was not."""
    try:
        copied = review.write()
    except BaseException as stop:  # a full disk or SIGTERM now: the CSV is out, DIR is not
        stop.add_note(f"the predictions were written ({'stdout' if out == '-' else out}); "
                      f"the review folder {review.target} was not")
        raise
    click.echo(f"review: {copied} images copied to {review.target}/ by predicted class "
               f"({review.target}/review.csv maps them to their sources)", err=True)
    if review.left_out:
        click.echo(f"warning: --review-dir: {review.left_out} more rows to review were not "
                   f"copied (at most --review-max {review.limit} copies and "
                   f"{review.max_bytes >> 20} MB)", err=True)
    if review.unreadable:
        click.echo(f"warning: --review-dir: {review.unreadable} sources could not be read "
                   "again (review.csv says why)", err=True)


if __name__ == "__main__":
    main()
