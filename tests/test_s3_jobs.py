"""S3 jobs' configuration (READ and LENGTH: what one image holds), and the number fields that the
handler and scale-out tests upload: real MNIST digits, written side by side on white paper."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from PIL import Image

from scorer import s3_jobs
from scorer.bundle import load_bundle
from scorer.numbers import Length, NumberMode

ENV = ("MODEL_DIR", "INPUT_PREFIX", "OUTPUT_PREFIX", "INPUT_BUCKET", "OUTPUT_BUCKET",
       "MIN_CONFIDENCE", "READ", "LENGTH")


# ---------------------------------------------------------------- number fields for the tests


class Field(NamedTuple):
    """One field image: its PNG bytes, its true reading and each digit's columns [x0, x1)."""

    png: bytes
    text: str
    spans: list[tuple[int, int]]


def clean_digits(bundle_dir: Path, images: np.ndarray, labels: np.ndarray,
                 confidence: float = 0.99) -> list[int]:
    """Indices of the MNIST digits that the bundle reads right on their own (as 28x28 digits),
    with at least `confidence`: a field of them misread is the number reader's mistake, not
    the model's."""
    probabilities = load_bundle(bundle_dir).classifier().predict(images)
    best, sure = probabilities.argmax(1), probabilities.max(1)
    return [i for i in range(len(images)) if best[i] == labels[i] and sure[i] >= confidence]


def field_of(digits: list[np.ndarray], text: str, gap: int = 8, scale: int = 3) -> Field:
    """MNIST digits (uint8 28x28, light ink on dark), each cropped to its ink columns, side by
    side `gap` px apart with a margin around them, as dark ink on white, scaled up `scale`
    times: a clearly written field, the digits neither touching nor broken."""
    columns = [np.zeros((28, 12), np.uint8)]
    spans, x = [], 12
    for digit in digits:
        ink = np.flatnonzero(digit.any(0))
        columns += [digit[:, ink[0]:ink[-1] + 1], np.zeros((28, gap), np.uint8)]
        width = int(ink[-1]) + 1 - int(ink[0])
        spans.append((x * scale, (x + width) * scale))
        x += width + gap
    strip = np.pad(np.concatenate([*columns, np.zeros((28, 4), np.uint8)], 1), ((8, 8), (0, 0)))
    image = Image.fromarray(255 - strip).resize((strip.shape[1] * scale, strip.shape[0] * scale),
                                                Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return Field(buffer.getvalue(), text, spans)


def clean_fields(bundle_dir: Path, images: np.ndarray, labels: np.ndarray,
                 lengths: list[int]) -> list[Field]:
    """One field per entry of `lengths`, of that many different clean digits (`clean_digits`),
    taken in order: the same fields on every run."""
    chosen = iter(clean_digits(bundle_dir, images, labels))
    fields = []
    for n in lengths:
        picked = [next(chosen) for _ in range(n)]
        fields.append(field_of([images[i] for i in picked],
                               "".join(str(int(labels[i])) for i in picked)))
    return fields


def parse_digits(cell: str) -> list[tuple[str, int, int, float]]:
    """The digits column ("7@12-40:0.998 0@44-71:0.951") -> [(digit, x0, x1, confidence)]."""
    found = []
    for entry in cell.split():
        digit, rest = entry.split("@")
        span, confidence = rest.split(":")
        x0, x1 = span.split("-")
        found.append((digit, int(x0), int(x1), float(confidence)))
    return found


def check_digits_column(row: dict, field: Field) -> None:
    """A row of a field read right: its digits column spells the prediction, one entry per
    digit written, each cut around the middle of its own digit, left to right."""
    digits = parse_digits(row["digits"])
    assert "".join(d for d, *_ in digits) == row["prediction"] == field.text, row
    assert len(digits) == len(field.spans)
    for (_, x0, x1, confidence), (left, right) in zip(digits, field.spans, strict=True):
        assert x0 < x1 and x0 <= (left + right) // 2 < x1, (row, field.spans)
        assert x0 >= left - 9 and x1 <= right + 9, (row, field.spans)  # not into a neighbour
        assert 0.0 < confidence <= 1.0
    assert all(a[2] <= b[1] for a, b in zip(digits, digits[1:], strict=False))
    # the field's confidence is the product of its digits' (rounded to 3 places in the cell)
    assert float(row["confidence"]) == pytest.approx(np.prod([d[3] for d in digits]), abs=0.01)


def test_fields_of_clean_digits_are_what_the_tests_say(mnist_bundle, mnist_test_images):
    x, y = mnist_test_images
    clean = clean_digits(mnist_bundle, x, y)
    assert len(clean) >= 200  # a small model, but most MNIST digits are clear to it
    fields = clean_fields(mnist_bundle, x, y, [5, 3])
    assert [len(f.text) for f in fields] == [5, 3] and [len(f.spans) for f in fields] == [5, 3]
    assert fields[0].text == "".join(str(y[i]) for i in clean[:5])
    image = Image.open(io.BytesIO(fields[0].png))
    assert image.mode == "L" and image.height == 44 * 3
    ink = np.asarray(image) < 128  # dark ink on white, in the columns the spans say
    assert all(ink[:, a:b].any() for a, b in fields[0].spans)
    assert not ink[:, fields[0].spans[0][1] + 3:fields[0].spans[1][0] - 3].any()


# ---------------------------------------------------------------- READ and LENGTH


@pytest.fixture
def env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_digit_mode_is_the_default(env):
    config = s3_jobs.Config.from_env()
    assert config.numbers is None
    env.setenv("READ", "digit")
    env.setenv("LENGTH", "")  # the template passes its empty default
    assert s3_jobs.Config.from_env().numbers is None
    assert s3_jobs.read_mode(config) == {"read": "digit"}
    assert s3_jobs.run_info("s3://b/incoming/x/", config) == {"source": "s3://b/incoming/x/"}


@pytest.mark.parametrize("length, expected", [("", None), ("5", Length(5, 5)),
                                              ("4-6", Length(4, 6)), (" 12 ", Length(12, 12)),
                                              ("1-40", Length(1, 40))])
def test_number_mode_with_and_without_a_length(env, length, expected):
    env.setenv("READ", "number")
    env.setenv("LENGTH", length)
    config = s3_jobs.Config.from_env()
    assert config.numbers == NumberMode(expected)
    text = None if expected is None else str(expected)
    assert s3_jobs.read_mode(config) == {"read": "number", "length": text}
    assert s3_jobs.run_info("s3://b/incoming/x.zip", config) == {
        "source": "s3://b/incoming/x.zip", "read": "number", "length": text}


@pytest.mark.parametrize("read, length, message", [
    ("numbers", "", "READ must be digit or number, got 'numbers'"),
    ("Number", "", "READ must be digit or number"),
    ("field", "5", "READ must be digit or number"),
    ("digit", "5", "LENGTH '5' needs READ=number"),
    ("", "4-6", "LENGTH '4-6' needs READ=number"),
    ("number", "five", "LENGTH: 'five' is not N or MIN-MAX"),
    ("number", "6-4", "LENGTH: '6-4': need 1 <= MIN <= MAX <= 40"),
    ("number", "0", "LENGTH: '0': need 1 <= MIN"),
    ("number", "41", "LENGTH: '41': need"),
    ("number", "4-", "LENGTH: '4-' is not N or MIN-MAX"),
])
def test_bad_read_or_length_is_refused_at_start(env, read, length, message):
    env.setenv("READ", read)
    env.setenv("LENGTH", length)
    with pytest.raises(ValueError) as caught:
        s3_jobs.Config.from_env()
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_number_mode_needs_single_character_classes(mnist_bundle, env, tmp_path):
    digits = s3_jobs.Config(str(mnist_bundle), "incoming/", "predictions/", None)
    numbers = s3_jobs.Config(str(mnist_bundle), "incoming/", "predictions/", None,
                             numbers=NumberMode(None))
    s3_jobs.check_bundle(load_bundle(mnist_bundle), digits)
    s3_jobs.check_bundle(load_bundle(mnist_bundle), numbers)  # classes "0".."9"

    # The same model with classes named as words (the manifest itself is not hashed): it can
    # classify digits, but its class names cannot be joined into a number.
    words = tmp_path / "words"
    shutil.copytree(mnist_bundle, words)
    manifest = json.loads((words / "manifest.json").read_text())
    manifest["classes"] = ["zero", "one", "two", "three", "four", "five", "six", "seven",
                           "eight", "nine"]
    (words / "manifest.json").write_text(json.dumps(manifest))
    bundle = load_bundle(words)
    s3_jobs.check_bundle(bundle, digits)
    with pytest.raises(ValueError, match="single characters, not zero, one, two"):
        s3_jobs.check_bundle(bundle, numbers)
