"""`digits-train`: train, evaluate and export the model bundle."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from trainer import __version__
from trainer.recipes import FIELD_READER_DEFAULTS, FINETUNE_DEFAULTS, describe

TRAIN_BATCH = 128
# Options that shape a model from scratch: a fine-tuned bundle keeps its base's.
FROM_SCRATCH_ONLY = ("dataset", "arch", "hidden", "dropout", "limit", "patience",
                     "field_reader_epochs", "field_reader_fields")


def parse_hidden(_ctx, _param, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        units = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        units = ()
    if not units or min(units) < 1:
        raise click.BadParameter(f"{value!r}: give positive layer sizes such as 512,256")
    return units


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--dataset", type=click.Choice(["mnist", "digits"]), default="mnist",
              help="MNIST 28x28 (70k images) or scikit-learn's bundled 8x8 digits (offline).")
@click.option("--data", "data_path", type=click.Path(exists=True), default=None,
              help="MNIST from this Keras mnist.npz or folder of the four IDX files (.gz or not) "
                   "instead of the cache, Keras's download or the package registry.")
@click.option("--out", default="artifacts", help="Folder for the model bundle (replaced whole). "
              "A folder holding anything but an earlier bundle is refused unless --force.")
@click.option("--force", "--overwrite", "overwrite", is_flag=True,
              help="Replace --out even if it holds other files (they are deleted).")
@click.option("--arch", type=click.Choice(["mlp", "cnn"]), default="mlp",
              help="A Dense MLP, or a small CNN (TFLite Micro ops only). Each has its own "
                   "recipe: the options below default to the chosen architecture's.")
@click.option("--hidden", default=None, callback=parse_hidden,
              help=f"Dense hidden layer sizes, comma-separated (the CNN's come after its conv "
                   f"blocks).  [default: {describe('hidden')}]")
@click.option("--dropout", type=click.FloatRange(0, 0.9), default=None,
              help=f"Dropout after each hidden layer.  [default: {describe('dropout')}]")
@click.option("--epochs", type=click.IntRange(1, 1000), default=None,
              help=f"Epochs (the learning-rate schedule spans them); early stopping may end "
                   f"sooner (never when fine-tuning).  [default: {describe('epochs')}; "
                   f"fine-tuning {FINETUNE_DEFAULTS['epochs']}]")
@click.option("--batch-size", type=click.IntRange(1, 65536), default=None,
              help=f"Training batch.  [default: {TRAIN_BATCH}; fine-tuning "
                   f"{FINETUNE_DEFAULTS['batch_size']}]")
@click.option("--learning-rate", type=click.FloatRange(0, 1, min_open=True), default=None,
              help=f"Adam's initial learning rate, cosine-decayed to 1 % of it by the last epoch.  "
                   f"[default: {describe('learning_rate')}; fine-tuning "
                   f"{FINETUNE_DEFAULTS['learning_rate']:g}]")
@click.option("--patience", type=click.IntRange(1, 100), default=5,
              help="Early stopping: epochs without validation-loss improvement.")
@click.option("--seed", type=int, default=42, help="Seed for weights, shuffling and splits.")
@click.option("--augment/--no-augment", default=True,
              help="Vary stroke width, slant, rotation, scale, elastic wobble and position of "
                   "most training images, freshly each epoch (seeded; never in the exported "
                   "model). --no-augment trains on the plain images.")
@click.option("--limit", type=click.IntRange(10, None), default=None,
              help="Train on at most this many images (quick runs and tests).")
@click.option("--field-reader-epochs", type=click.IntRange(0, 1000), default=None,
              help=f"Epochs of the field reader for number fields (MNIST; default "
                   f"{FIELD_READER_DEFAULTS['epochs']}; 0: none, fields are then read by "
                   "cutting alone).")
@click.option("--field-reader-fields", type=click.IntRange(100, 10_000_000), default=None,
              help=f"Fields composed from the training digits to train it on (default "
                   f"{FIELD_READER_DEFAULTS['fields']:,}).")
@click.option("--base", default=None, metavar="BUNDLE",
              help="Fine-tune this bundle on --images instead of training from scratch "
                   "(docs/fine-tuning.md). Needs --images and --out.")
@click.option("--images", multiple=True, metavar="SOURCE",
              help="Fine-tuning: your labelled images, as digits-score reads them (folders "
                   "named 0-9, zips, s3:// prefixes); repeat for several.")
@click.option("--labels", "labels_csv", type=click.Path(dir_okay=False), default=None,
              help="Fine-tuning: CSV with source,label columns (overrides folder names).")
@click.option("--holdout", type=click.FloatRange(0.05, 0.5), default=FINETUNE_DEFAULTS["holdout"],
              help="Fine-tuning: share of your images held out (stratified, seeded) to compare "
                   "the new model with the base; never trained on.")
@click.option("--replay", type=click.FloatRange(0, 20), default=FINETUNE_DEFAULTS["replay"],
              help="Fine-tuning: training images of the base's dataset (MNIST's training "
                   "split) mixed in per image of yours, so the model keeps what it knew.")
@click.option("--max-drop", type=click.FloatRange(0, 100), default=0.5,
              help="Fine-tuning: most points of test-set accuracy the new model may lose; "
                   "it must also be no worse on your held-out images.")
@click.option("--accept-worse", is_flag=True,
              help="Fine-tuning: write the new bundle even if it is worse (with a warning).")
@click.version_option(__version__, prog_name="digits-train")
@click.pass_context
def main(ctx: click.Context, **options) -> None:
    """Train a handwritten-digit classifier and export a verified model bundle: int8 and float32
    TFLite, model.keras, manifest.json, metrics.json and reports. With --base, fine-tune that
    bundle on your own labelled images instead, compare it with the base, and write it only if
    it is no worse.

    Exit codes: 0 done, 1 fine-tuned model worse than its base (nothing written), 2 usage or
    data errors (for example no MNIST source could serve)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ chatter out
    from scorer.bundle import BundleError, check_target
    from trainer.data import DataError

    if options["base"] or options["images"]:
        check_finetune_options(ctx, options)
    try:  # before minutes of training: the bundle replaces --out whole
        check_target(Path(options["out"]), options["overwrite"])
    except BundleError as err:
        click.echo(f"Error: --out: {err}", err=True)
        sys.exit(2)
    if options["base"]:
        fine_tune(options)
        return

    try:
        from trainer.train import Settings, train_and_export

        train_and_export(Settings(**{key: value for key, value in options.items()
                                     if key not in (*FINETUNE_ONLY, "batch_size")},
                                  batch_size=options["batch_size"] or TRAIN_BATCH))
    except (DataError, BundleError) as err:  # BundleError: --out changed while training
        click.echo(f"Error: {err}", err=True)
        sys.exit(2)


FINETUNE_ONLY = ("base", "images", "labels_csv", "holdout", "replay", "max_drop", "accept_worse")


def check_finetune_options(ctx: click.Context, options: dict) -> None:
    """--base and --images go together, with an explicit --out that is not the base; options
    that shape a new model do not apply. Usage errors (exit 2) before anything loads."""
    if not options["base"]:
        raise click.UsageError("--images needs --base BUNDLE (the bundle to fine-tune)")
    if not options["images"]:
        raise click.UsageError("--base needs --images SOURCE (your labelled images)")
    if ctx.get_parameter_source("out") != click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError("--base needs --out DIR (a new folder: the base stays as it is)")
    if Path(options["out"]).resolve() == Path(options["base"]).resolve():
        raise click.BadParameter("must not be the --base bundle (it would be replaced)",
                                 param_hint="--out")
    for name in FROM_SCRATCH_ONLY:
        if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
            raise click.UsageError(f"--{name} does not apply to --base: a fine-tuned bundle "
                                   "keeps its base's model, field reader and dataset")


def fine_tune(options: dict) -> None:
    """digits-train --base: exit 1 when the new model is worse (nothing written), 2 for bad
    bundles, sources or images."""
    from scorer.bundle import BundleError, load_bundle
    from scorer.sources import SourceError, check_specs
    from trainer.data import DataError
    from trainer.user_images import UserImagesError

    try:  # before TensorFlow loads: a bad base or source fails in a fraction of a second
        check_specs(options["images"])
        load_bundle(options["base"])
    except (BundleError, SourceError) as err:
        data_error(err)
    from trainer.finetune import FineTuneSettings, Refused, fine_tune_and_export

    settings = FineTuneSettings(
        base=options["base"], images=tuple(options["images"]), labels=options["labels_csv"],
        out=options["out"], data_path=options["data_path"],
        epochs=options["epochs"] or FINETUNE_DEFAULTS["epochs"],
        learning_rate=options["learning_rate"] or FINETUNE_DEFAULTS["learning_rate"],
        batch_size=options["batch_size"] or FINETUNE_DEFAULTS["batch_size"],
        replay=options["replay"],
        holdout=options["holdout"], seed=options["seed"], augment=options["augment"],
        max_drop=options["max_drop"], accept_worse=options["accept_worse"],
        overwrite=options["overwrite"])
    try:
        fine_tune_and_export(settings)
    except Refused as refused:
        click.echo(f"refused: the new model is worse than its base: {refused}. Nothing was "
                   f"written to {settings.out}; --accept-worse writes it anyway.", err=True)
        sys.exit(1)
    except (DataError, BundleError, SourceError, UserImagesError) as err:
        data_error(err)


def data_error(err: Exception) -> None:
    click.echo(f"Error: {' '.join(str(err).split())}", err=True)
    sys.exit(2)


if __name__ == "__main__":
    main()
