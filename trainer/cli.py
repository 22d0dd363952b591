"""`digits-train`: train, evaluate and export the model bundle."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from trainer import __version__
from trainer.recipes import describe


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
                   f"sooner.  [default: {describe('epochs')}]")
@click.option("--batch-size", type=click.IntRange(1, 65536), default=128, help="Training batch.")
@click.option("--learning-rate", type=click.FloatRange(0, 1, min_open=True), default=None,
              help=f"Adam's initial learning rate, cosine-decayed to 1 % of it by the last epoch.  "
                   f"[default: {describe('learning_rate')}]")
@click.option("--patience", type=click.IntRange(1, 100), default=5,
              help="Early stopping: epochs without validation-loss improvement.")
@click.option("--seed", type=int, default=42, help="Seed for weights, shuffling and splits.")
@click.option("--augment/--no-augment", default=True,
              help="Vary stroke width, slant, rotation, scale, elastic wobble and position of "
                   "most training images, freshly each epoch (seeded; never in the exported "
                   "model). --no-augment trains on the plain images.")
@click.option("--limit", type=click.IntRange(10, None), default=None,
              help="Train on at most this many images (quick runs and tests).")
@click.version_option(__version__, prog_name="digits-train")
def main(**options) -> None:
    """Train a handwritten-digit classifier and export a verified model bundle: int8 and float32
    TFLite, model.keras, manifest.json, metrics.json and reports.

    Exit codes: 0 done, 2 usage or data errors (for example no MNIST source could serve)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ chatter out
    from scorer.bundle import BundleError, check_target
    from trainer.data import DataError

    try:  # before minutes of training: the bundle replaces --out whole
        check_target(Path(options["out"]), options["overwrite"])
    except BundleError as err:
        click.echo(f"Error: --out: {err}", err=True)
        sys.exit(2)

    try:
        from trainer.train import Settings, train_and_export

        train_and_export(Settings(**options))
    except (DataError, BundleError) as err:  # BundleError: --out changed while training
        click.echo(f"Error: {err}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
