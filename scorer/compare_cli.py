"""`digits-compare`: two model bundles on the same labelled images, with McNemar's test."""

from __future__ import annotations

import json
import sys

import click

from scorer import __version__


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
               epilog="Exit codes: 0 compared; 3 compared, but some inputs could not be read; "
                      "2 usage error (bad bundle, missing source, no labelled image); 1 the "
                      "report could not be written. Details: docs/fine-tuning.md.")
@click.argument("bundle_a", type=click.Path(file_okay=False))
@click.argument("bundle_b", type=click.Path(file_okay=False))
@click.argument("sources", nargs=-1, required=True)
@click.option("--labels", "labels_csv", type=click.Path(dir_okay=False), default=None,
              help="CSV with source,label columns; otherwise a parent folder named 0-9 is the "
              "label. Unlabelled images are skipped (and counted).")
@click.option("--variant", type=click.Choice(["int8", "float32"]), default="int8",
              help="Which TFLite model of each bundle to run.")
@click.option("--names", default="A,B", metavar="A,B",
              help="What to call the two bundles in the output (e.g. champion,challenger).")
@click.option("--report-dir", default=None, help="Folder or s3:// prefix for comparison.html "
              "and comparison.json.")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Processes that read and normalize.  [default: all cores]")
@click.version_option(__version__, prog_name="digits-compare")
def main(bundle_a, bundle_b, sources, labels_csv, variant, names, report_dir, workers) -> None:
    """Compare BUNDLE_A and BUNDLE_B on the labelled images in SOURCES (files, folders named
    0-9, zips, s3:// prefixes, as digits-score reads them): accuracy, per class, accuracy
    against coverage, the images whose prediction changed, and McNemar's test on the images
    where exactly one of them is right (is B's difference more than chance?).

    Each image is normalized once; both models classify the same pixels. No TensorFlow."""
    from scorer.bundle import BundleError, load_bundle
    from scorer.compare import check_comparable, compare_bundles
    from scorer.sources import (
        LabelMatcher,
        LabelsError,
        SourceError,
        SourceStats,
        check_specs,
        read_labels_csv,
    )

    pair = tuple(part.strip() for part in names.split(","))
    if len(pair) != 2 or not all(pair) or pair[0] == pair[1]:
        raise click.BadParameter("give two different names, such as base,new",
                                 param_hint="--names")
    try:
        a, b = load_bundle(bundle_a, variant), load_bundle(bundle_b, variant)
        check_comparable(a, b)
        check_specs(sources)
        labels = read_labels_csv(labels_csv, a.labels) if labels_csv else {}
    except LabelsError as err:
        raise click.BadParameter(str(err), param_hint="--labels") from err
    except (BundleError, SourceError) as err:
        raise click.UsageError(str(err)) from err
    from scorer.sources import iter_inputs

    stats = SourceStats()
    try:
        inputs = LabelMatcher(labels).apply(iter_inputs(sources, stats, defer_reads=True))
        paired = compare_bundles(inputs, a, b, workers=workers)
    except (SourceError, BundleError) as err:
        raise click.UsageError(str(err)) from err
    if not paired.y_true:
        raise click.UsageError("no labelled image could be compared: use folders named 0-9 "
                               "or --labels")
    result = paired.result(a.labels)
    click.echo(f"{pair[0]}: {a.path} ({lineage_note(a)})\n{pair[1]}: {b.path} "
               f"({lineage_note(b, a)})")
    from scorer.report.comparison import comparison_text

    click.echo(comparison_text({"labelled images": result}, pair), nl=False)
    click.echo(f"not compared: {paired.unlabelled} unlabelled, {paired.blank} blank, "
               f"{paired.failed} unreadable, {stats.skipped} not images", err=True)
    if report_dir:
        write_comparison(report_dir, result, paired, pair, a, b)
    sys.exit(3 if paired.failed else 0)


def lineage_note(bundle, base=None) -> str:
    """'trained from scratch', 'fine-tuned from <hash>' (and whether that is the other one)."""
    lineage = bundle.manifest.lineage
    if not lineage:
        return "trained from scratch"
    parent = lineage.get("base", {}).get("manifest_sha256", "?")
    note = f"fine-tuned from the bundle with manifest sha256 {parent[:12]}"
    if base is not None:
        from scorer.files import sha256_file

        if sha256_file(base.path / "manifest.json") == parent:
            note += f", which is {base.path}"
    return note


def write_comparison(report_dir: str, result: dict, paired, names, a, b) -> None:
    from scorer.outputs import write_report
    from scorer.report.comparison import comparison_page

    run = {names[0]: str(a.path), names[1]: str(b.path), "model_file": a.model_file,
           "unlabelled": paired.unlabelled, "blank": paired.blank, "failed": paired.failed}
    files = {
        "comparison.json": (json.dumps({"names": list(names), "run": run, **result}, indent=2)
                            + "\n").encode(),
        "comparison.html": comparison_page({"labelled images": result}, names,
                                           {"labelled images": paired.changed}, run).encode(),
    }
    try:
        write_report(files, report_dir)
    except OSError as err:
        click.echo(f"error: the comparison report could not be written: {err}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
