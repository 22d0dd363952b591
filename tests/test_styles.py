"""Accuracy on realistic uploads: the same MNIST digits as scans, photos, chalkboards, drawing-app
PNGs... must score about as well as the clean digits once scorer.images has normalized them,
while the naive approach (greyscale + resize to 28x28) collapses to chance on them.

Measured with the `mnist_bundle` fixture's model (6 runs: test digits 0-299, 300-599, 600-899,
generator seeds 0 and 1; clean accuracy 94-98 %): every style but thin_pen stayed within 1.7
points of the clean accuracy on the same digits; thin_pen (1-px skeleton strokes) lost 2.0-4.7
points. The margins below are about twice those worst cases. The naive approach scored 7-14 %
on every style (chance is 10 %).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from scorer.bundle import load_bundle
from scorer.images import normalize

from digit_factory import STYLES, mnist_png

N_DIGITS = 300
SEED = 0
MARGIN = 0.04  # points below clean accuracy allowed for a style (worst seen: 1.7)
MARGIN_BY_STYLE = {"thin_pen": 0.08}  # worst seen: 4.7
PHOTOGRAPHED = ["paper_scan", "small_off_centre", "drawing_app_rgba"]


def naive_pixels(data: bytes) -> np.ndarray:
    """What a quick script would do: greyscale, squash to 28x28, no normalization."""
    im = Image.open(io.BytesIO(data)).convert("L").resize((28, 28))
    return np.asarray(im, np.uint8)


def render(style, digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """The style's image; digit_factory's canvas can come out narrower than a wide digit
    (ValueError from its random placement), so such a draw is retried with the next numbers."""
    for _ in range(10):
        try:
            return style(digit, rng)
        except ValueError:
            continue
    raise AssertionError(f"{style.__name__} failed 10 times on one digit")


class Bench:
    """Accuracies on the first N_DIGITS MNIST test digits, each style rendered once (cached)."""

    def __init__(self, bundle_path, x: np.ndarray, y: np.ndarray):
        bundle = load_bundle(bundle_path)
        self.geometry = bundle.geometry
        self.classifier = bundle.classifier()
        self.x, self.y = x[:N_DIGITS], y[:N_DIGITS]
        self.encoded: dict[str, list[bytes]] = {}

    def accuracy(self, pixels: list[np.ndarray]) -> float:
        predictions = self.classifier.predict(np.stack(pixels)).argmax(1)
        return float((predictions == self.y).mean())

    def images(self, style: str) -> list[bytes]:
        if style not in self.encoded:
            rng = np.random.default_rng(SEED)
            self.encoded[style] = [render(STYLES[style], d, rng) for d in self.x]
        return self.encoded[style]

    def normalized(self, style: str) -> float:
        return self.accuracy([normalize(data, self.geometry) for data in self.images(style)])

    def naive(self, style: str) -> float:
        return self.accuracy([naive_pixels(data) for data in self.images(style)])


@pytest.fixture(scope="module")
def bench(mnist_bundle, mnist_test_images) -> Bench:
    return Bench(mnist_bundle, *mnist_test_images)


@pytest.fixture(scope="module")
def clean(bench) -> float:
    return bench.accuracy([normalize(mnist_png(d), bench.geometry) for d in bench.x])


def test_clean_digits_survive_normalization(bench, clean):
    """Normalizing an image that is already MNIST-shaped must not cost accuracy."""
    raw = bench.accuracy(list(bench.x))
    print(f"\nclean MNIST: raw pixels {raw:.1%}, through normalize {clean:.1%}")
    assert clean >= raw - 0.01
    assert clean >= 0.90  # the fixture's model is ~95-97 % accurate


@pytest.mark.parametrize("style", sorted(STYLES))
def test_style_scores_about_as_well_as_clean_digits(bench, clean, style):
    accuracy = bench.normalized(style)
    margin = MARGIN_BY_STYLE.get(style, MARGIN)
    print(f"\n{style}: {accuracy:.1%} (clean {clean:.1%}, allowed >= {clean - margin:.1%})")
    assert accuracy >= clean - margin


@pytest.mark.parametrize("style", PHOTOGRAPHED)
def test_naive_resizing_fails_where_normalization_works(bench, style):
    normalized, naive = bench.normalized(style), bench.naive(style)
    print(f"\n{style}: normalized {normalized:.1%}, naive {naive:.1%}")
    assert naive < 0.35  # near chance: the digit is dark on light, small, or off-centre
    assert normalized - naive > 0.50
