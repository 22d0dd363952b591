"""Shared fixtures: real MNIST data and real model bundles, trained once per session by the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))  # helpers such as digit_factory and moto_server

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def train_bundle(out: Path, *args: str) -> Path:
    """Run the real `digits-train` CLI; returns the bundle folder."""
    command = [sys.executable, "-m", "trainer.cli", "--out", str(out), *args]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def mnist():
    """The whole MNIST dataset (uint8), from the user's cache or fetched once into it."""
    from trainer.data import load_mnist

    return load_mnist()


@pytest.fixture(scope="session")
def mnist_test_images(mnist) -> tuple[np.ndarray, np.ndarray]:
    """The first 1,000 MNIST test images (uint8 (n, 28, 28), light ink on dark) and labels."""
    return mnist.x_test[:1000], mnist.y_test[:1000].astype(int)


@pytest.fixture(scope="session")
def mnist_bundle(tmp_path_factory, mnist) -> Path:
    """A small but real MNIST model bundle (~97 % accurate), trained in well under a minute
    (plain images: augmentation would only slow it down)."""
    out = tmp_path_factory.mktemp("bundles") / "mnist"
    return train_bundle(out, *MNIST_BUNDLE_ARGS, "--field-reader-epochs", "0")


MNIST_BUNDLE_ARGS = ("--dataset", "mnist", "--limit", "30000", "--epochs", "4", "--hidden", "128",
                     "--patience", "2", "--no-augment",
                     "--learning-rate", "0.003")  # 4 epochs of cosine decay: start higher
FIELD_READER_ARGS = ("--field-reader-fields", "16000", "--field-reader-epochs", "5")


@pytest.fixture(scope="session")
def mnist_fields_bundle(tmp_path_factory, mnist) -> Path:
    """mnist_bundle's recipe with a small field reader for number fields (about 4 minutes):
    weaker than `make train`'s, but a real one, trained and converted as that is."""
    out = tmp_path_factory.mktemp("bundles") / "mnist_fields"
    return train_bundle(out, *MNIST_BUNDLE_ARGS, *FIELD_READER_ARGS)


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory) -> Path:
    """A plain MLP bundle trained on scikit-learn's 8x8 digits (offline, seconds)."""
    out = tmp_path_factory.mktemp("bundles") / "digits"
    return train_bundle(out, *DIGITS_BUNDLE_ARGS)


DIGITS_BUNDLE_ARGS = ("--dataset", "digits", "--epochs", "40", "--hidden", "64", "--no-augment")
DIGITS_CNN_ARGS = ("--dataset", "digits", "--arch", "cnn", "--epochs", "12")


@pytest.fixture(scope="session")
def digits_cnn_bundle(tmp_path_factory) -> Path:
    """A CNN bundle on the 8x8 digits with the CNN's own recipe and augmentation on (default)."""
    out = tmp_path_factory.mktemp("bundles") / "digits_cnn"
    return train_bundle(out, *DIGITS_CNN_ARGS)


@pytest.fixture(scope="module")
def labelled_tree(tmp_path_factory, mnist_test_images) -> Path:
    """400 MNIST test digits as PNGs under folders 0..9."""
    from cli_helpers import write_png_tree  # importable once this file has set sys.path

    x, y = mnist_test_images
    root = tmp_path_factory.mktemp("labelled") / "digits"
    write_png_tree(root, x[:400], y[:400])
    return root
