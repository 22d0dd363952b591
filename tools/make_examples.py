#!/usr/bin/env python3
"""Write examples/: a few dozen uploads to see `digits-score` work on, from a fresh clone.

    python tools/make_examples.py            # rewrites examples/digits and examples/numbers

Seeded and deterministic for a given Pillow. The digits are MNIST's test images (never trained
on), drawn as uploads look by the test image factories (tests/digit_factory.py,
tests/field_factory.py): scans, photos, pens, pencils, paper, boxes and combs.
examples/README.md says what each folder holds and what the scorer makes of it.
"""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the project and its test image factories

from digit_factory import STYLES  # noqa: E402
from field_factory import field_digits, render_field  # noqa: E402

EXAMPLES = ROOT / "examples"
PER_DIGIT = 4  # uploads of each digit, each in another style

FIELD_STYLES = ("spaced", "boxes", "comb", "underline", "ruled", "pencil", "punctuation",
                "photo", "squared", "comb_ticks", "rotated", "light_on_dark")
SEED = 2026


def suffix_of(data: bytes) -> str:
    if data[:2] == b"\xff\xd8":
        return ".jpg"
    return ".gif" if data[:3] == b"GIF" else ".png"


def write_digits(folder: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """folder/<digit>/<style>.<ext>, a blank printed box and a broken file."""
    rng = np.random.default_rng(SEED)
    styles = list(STYLES)
    for digit in range(10):
        (folder / str(digit)).mkdir(parents=True)
        chosen = np.flatnonzero(labels == digit)[:PER_DIGIT]
        for k, index in enumerate(chosen):
            style = styles[(digit * PER_DIGIT + k) % len(styles)]
            data = STYLES[style](images[index], rng)
            (folder / str(digit) / f"{style}{suffix_of(data)}").write_bytes(data)
    (folder / "empty_box.jpg").write_bytes(empty_box(rng))
    whole = (folder / "7" / next(p.name for p in (folder / "7").iterdir()))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + whole.read_bytes()[8:200])


def empty_box(rng: np.random.Generator) -> bytes:
    """A photo of an answer box left empty, cropped inside its printed border: paper, uneven
    light and sensor noise, no ink (the scorer's `blank`)."""
    import io

    from PIL import Image

    h, w = 96, 120
    light = np.linspace(225, 245, w)[None, :] + np.linspace(0, 8, h)[:, None]
    paper = light[..., None] * np.array([1.0, 0.98, 0.93]) + rng.normal(0, 2.5, (h, w, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=88)
    return buffer.getvalue()


def write_numbers(folder: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """folder/<n>-<style>.<ext> fields of 3-6 digits, and their readings in examples/
    number-labels.csv (sources as given from the repository's root)."""
    rng = np.random.default_rng(SEED + 1)
    folder.mkdir(parents=True)
    rows = []
    for n, style in enumerate(FIELD_STYLES, 1):
        digits, reading = field_digits(images, labels, rng, int(rng.integers(3, 7)))
        data = render_field(digits, rng, style, reading)
        name = f"{n:02d}-{style}{suffix_of(data)}"
        (folder / name).write_bytes(data)
        rows.append((f"examples/numbers/{name}", reading))
    with (folder.parent / "number-labels.csv").open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["source", "label"])
        writer.writerows(rows)


def main() -> None:
    from trainer.data import load_mnist

    mnist = load_mnist()
    images, labels = mnist.x_test, mnist.y_test.astype(int)  # the first of each digit
    for name in ("digits", "numbers"):
        shutil.rmtree(EXAMPLES / name, ignore_errors=True)
    write_digits(EXAMPLES / "digits", images, labels)
    write_numbers(EXAMPLES / "numbers", images, labels)
    files = [p for p in EXAMPLES.rglob("*") if p.is_file()]
    print(f"{len(files)} files, {sum(p.stat().st_size for p in files) / 1024:.0f} KB in "
          f"{EXAMPLES}")


if __name__ == "__main__":
    main()
