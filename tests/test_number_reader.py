"""The number reader on one image per failure mode: touching and broken digits, combs, boxes and
printed lines, specks and punctuation, rotation, size, polarity, photos and pencil.

Every field is written with digits that the `mnist_bundle` model reads right on their own, even
after tests/field_factory.py has redrawn them with its pens (`Reader.pool`): a field read wrong
is the reader's mistake (its cuts, its form-line removal, its choice), not the model's.

Each case reads FIELDS seeded fields (3-6 digits, 2 for the touching pair) through the real
TFLite model. The cases a reader should get right every time must read every field exactly;
the hard ones (a touching pair, pencil, a phone photo) must read at least `need` of them. A field
read wrong is saved under FAILURE_DIR so that a person can look at it.

Measured 2026-11-29 (commit bd7c5cf) with the fixture's bundle, fields read exactly out of the
test's 10 / out of 30 (those 10 and the next 20): touching pair 3/10, 9/30; broken five 9, 29;
comb dashed 10, 30; dotted 10, 30; red 10, 30; blue 10, 30; green 8, 28; ticks 10, 30; empty
cells at the end 10, 30; crossing a cell line 9, 29; separate boxes 7, 26; underline 10, 28;
ruled 10, 27; squared 10, 29; specks 10, 30; punctuation 6, 21; rotated 9, 27; small 10, 29;
long 10, 30; light on dark 10, 30; photo 10, 30; pencil 10, 29. Since 2026-11-30, when form-line
removal stopped taking the aligned bottoms of touching digits for a dashed line, touching pairs
read 6/10, 13/30. The thresholds are what a reader should reach on clean digits, not what this
one reached: the cases below them fail.
"""

from __future__ import annotations

import io
import re
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from PIL import Image

from scorer.bundle import Classifier, load_bundle
from scorer.images import BlankImageError, normalize
from scorer.numbers import Length, Reading, cut_field, read_cut

from field_factory import (
    PRINT_COLOURS,
    box,
    compose,
    digit_cover,
    finish,
    paper_colour,
    rasterise,
    render_field,
)
from test_s3_jobs import clean_digits, field_of

FIELDS = 10  # seeded fields per case
FAILURE_DIR = Path("/tmp/number_reader_failures")  # fields read wrong, to look at
POOL_CANDIDATES = 320  # clean digits checked for the pool (the first ones of the 1,000)
REDRAW_PENS = (None, 0.05, 0.1)  # MNIST's own stroke, a fine pen, a marker (x digit height)


# --- the reader, and digits it cannot blame ---------------------------------------------------


class Reader:
    """The fixture bundle's geometry and classifier, and the pool of digits fields are made of."""

    def __init__(self, bundle_dir: Path, x: np.ndarray, y: np.ndarray):
        bundle = load_bundle(bundle_dir)
        self.geometry, self.classifier = bundle.geometry, bundle.classifier()
        field_reader = bundle.field_reader_bytes()  # read with it too, as digits-score does
        self.field_reader = field_reader and Classifier(field_reader)
        self.x, self.y = x, y
        clean = clean_digits(bundle_dir, x, y)[:POOL_CANDIDATES]
        self.pool = [i for i in clean if self.survives_redrawing(i)]

    def survives_redrawing(self, i: int) -> bool:
        """The digit, redrawn alone by field_factory with each of REDRAW_PENS (60 px high), is
        still read right by the model with >= 0.9: the pens do not turn it into another digit."""
        images = []
        for k, pen in enumerate(REDRAW_PENS):
            cover = digit_cover(self.x[i], np.random.default_rng(k), 60.0,
                                None if pen is None else pen * 60.0)
            ink = np.pad(255 - np.clip(cover * 255, 0, 255).astype(np.uint8), 10,
                         constant_values=255)
            images.append(normalize(png_bytes(ink), self.geometry))
        p = self.classifier.predict(np.stack(images))
        return bool((p.argmax(1) == self.y[i]).all() and p.max(1).min() >= 0.9)

    def read(self, data: bytes, length: Length | None = None) -> Reading:
        cut = cut_field(data, self.geometry)
        line = None if self.field_reader is None else \
            self.field_reader.predict(cut.line.pixels[None])[0]
        return read_cut(cut, self.classifier.predict(cut.found.images), length, line)

    def digits(self, rng: np.random.Generator, n: int, need_five: bool = False
               ) -> tuple[list[np.ndarray], str]:
        """n different pool digits in random order (one of them a 5 if `need_five`)."""
        chosen = [int(i) for i in rng.choice(self.pool, n, replace=False)]
        if need_five and not any(self.y[i] == 5 for i in chosen):
            fives = [i for i in self.pool if self.y[i] == 5 and i not in chosen]
            chosen[int(rng.integers(n))] = int(rng.choice(fives))
        return [self.x[i] for i in chosen], "".join(str(int(self.y[i])) for i in chosen)


@pytest.fixture(scope="module")
def reader(mnist_bundle, mnist_test_images) -> Reader:
    """The cut reader alone (a bundle without a field reader)."""
    return Reader(mnist_bundle, *mnist_test_images)


@pytest.fixture(scope="module")
def both_readers(mnist_fields_bundle, mnist_test_images) -> Reader:
    """The cut reader and the field reader together, as digits-score reads with a bundle of
    `make train` (the same digit model as `reader`'s; the test's small field reader)."""
    return Reader(mnist_fields_bundle, *mnist_test_images)


def png_bytes(grey: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG")
    return buffer.getvalue()


def text_of(reading: Reading) -> str:
    return "".join(str(d.value) for d in reading.digits)


def image_format(data: bytes) -> str:
    return "png" if data.startswith(b"\x89PNG") else "jpg"


def save_failure(name: str, data: bytes) -> Path:
    FAILURE_DIR.mkdir(parents=True, exist_ok=True)
    path = FAILURE_DIR / f"{name}.{image_format(data)}"
    path.write_bytes(data)
    return path


# --- one case per failure mode ----------------------------------------------------------------


class Case(NamedTuple):
    """A failure mode: field_factory's style and options, how many digits, how many of FIELDS
    must be read exactly, and a check that the images are what the case says.

    `need` is 9 of 10 where the reader is reliable; where it is not yet, the floor under what
    it reads today (measured 2026-11-29 on 30 fields of each case: touching pairs 9/30, 13/30
    since 2026-11-30, punctuation with a hand-drawn € or $ 21/30, separate boxes 26/30, pale
    green combs 28/30; docs/benchmarks.md), so that a change that makes it worse fails."""

    name: str
    style: str
    options: dict
    need: int = FIELDS - 1
    lengths: tuple[int, int] = (3, 6)
    check: object = None  # (PIL image, options) -> None

    @property
    def seed(self) -> int:
        return zlib.crc32(self.name.encode())


def forty_px_high(image, _):
    assert image.height == 40


def two_thousand_px_wide(image, _):
    assert image.width == 2000


def dark_ground(image, _):
    grey = np.asarray(image.convert("L"), np.float32)
    assert np.median(grey) < 100  # the ground is dark, the ink light


def coloured_lines(image, options):
    rgb = np.asarray(image.convert("RGB"), np.float32)
    r, g, b = (rgb[..., c] for c in range(3))
    channel = {"red": r - (g + b) / 2, "green": g - (r + b) / 2, "blue": b - (r + g) / 2}
    assert (channel[options["colour"]] > 20).sum() >= 10  # printed in that drop-out colour


CASES = [
    Case("touching_pair", "touching", {}, need=5, lengths=(2, 2)),
    Case("broken_five", "broken_five", {}),
    Case("comb_dashed", "comb", {"line": "dashed", "colour": "black", "empty_cells": 0}),
    Case("comb_dotted", "comb", {"line": "dotted", "colour": "black", "empty_cells": 0}),
    Case("comb_red", "comb", {"line": "solid", "colour": "red", "empty_cells": 0},
         check=coloured_lines),
    Case("comb_blue", "comb", {"line": "solid", "colour": "blue", "empty_cells": 0},
         check=coloured_lines),
    Case("comb_green", "comb", {"line": "solid", "colour": "green", "empty_cells": 0},
         need=8, check=coloured_lines),
    Case("comb_ticks", "comb_ticks", {"empty_cells": 0}),
    Case("comb_empty_cells_at_end", "comb", {"empty_cells": 3}),
    Case("crossing_a_cell_line", "crossing", {}),
    Case("separate_boxes", "boxes", {}, need=7),
    Case("underline", "underline", {}),
    Case("ruled_paper", "ruled", {}),
    Case("squared_paper", "squared", {}),
    Case("specks", "specks", {}),
    Case("punctuation", "punctuation", {}, need=6),
    Case("rotated", "rotated", {}),
    Case("small_40px", "small", {}, check=forty_px_high),
    Case("long_2000px", "long", {}, check=two_thousand_px_wide),
    Case("light_on_dark", "light_on_dark", {}, check=dark_ground),
    Case("photo", "photo", {}, need=7),
    Case("pencil", "pencil", {}, need=7),
]


def render_case(reader: Reader, case: Case, k: int) -> tuple[bytes, str]:
    """The k-th field of a case: the same bytes on every run."""
    rng = np.random.default_rng([case.seed, k])
    n = int(rng.integers(case.lengths[0], case.lengths[1] + 1))
    digits, text = reader.digits(rng, n, need_five=case.style == "broken_five")
    return render_field(digits, rng, case.style, labels=text, **case.options), text


def read_case(reader: Reader, case: Case, fields: range = range(FIELDS)):
    """[(k, truth, reading or None for blank, bytes)] for the case's fields."""
    results = []
    for k in fields:
        data, text = render_case(reader, case, k)
        try:
            reading = reader.read(data)
        except BlankImageError:
            reading = None
        results.append((k, text, reading, data))
    return results


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_failure_mode_is_read_right(reader, case):
    check_case(reader, case, confidence_is_the_digits_product=True)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_failure_mode_is_read_right_by_both_readers(both_readers, case):
    """The same fields with the field reader beside the cuts, each case within one field of the
    cuts' floor: where the two differ, a field reader that is sure and wrong wins now and then
    (the fixture's small reader costs a broken five, a dotted comb and a punctuated field;
    make train's third lost a turned 0313 read as 0333 at 0.984), and that may cost one field
    of ten, no more.
    What the two gain together is the test below."""
    check_case(both_readers, case, confidence_is_the_digits_product=False, slack=1)


def right_in(with_reader: Reader, cases: list[Case], fields: range = range(FIELDS)) -> int:
    return sum(reading is not None and text_of(reading) == text for case in cases
               for _, text, reading, _ in read_case(with_reader, case, fields))


def test_both_readers_read_no_fewer_failure_modes_than_the_cuts_alone(reader, both_readers):
    """All 22 cases, the same 220 fields: the two readers read at least as many right as the
    cuts alone (2026-11-30: 205 and 205 with the fixture's small field reader, which gains a
    touching pair, a green comb and a crossing digit and loses a broken five, a dotted comb and
    a punctuated field; with make train's bundle 208 against 197 by its cuts alone)."""
    assert right_in(both_readers, CASES) >= right_in(reader, CASES)


def test_the_field_reader_reads_touching_fields_the_cuts_cannot(reader, both_readers):
    """Fields of 3-6 digits that all touch, the case the field reader exists for: no cut
    separates them (2026-11-30, 20 fields: 0 read right by the cuts alone, 6 with the
    fixture's small field reader)."""
    touching = [Case("touching_field", "touching", {}, lengths=(3, 6))]
    assert right_in(both_readers, touching, range(20)) >= right_in(reader, touching,
                                                                    range(20)) + 4


def check_case(reader: Reader, case: Case, confidence_is_the_digits_product: bool,
               slack: int = 0) -> None:
    results = read_case(reader, case)
    misread = []
    for k, text, reading, data in results:
        if case.check is not None:
            case.check(Image.open(io.BytesIO(data)), case.options)
        got = "<blank>" if reading is None else text_of(reading)
        if got != text:
            path = save_failure(f"{case.name}_{k}_{text}_read_{got}", data)
            misread.append(f"{text} read as {got} ({path})")
            continue
        # a field read right: one digit per digit written, left to right, and the field's
        # confidence is the product of its digits'
        spans = [(d.x0, d.x1) for d in reading.digits]
        assert all(x0 < x1 for x0, x1 in spans), spans
        assert [x0 for x0, _ in spans] == sorted(x0 for x0, _ in spans), spans
        assert reading.problem == ""
        if confidence_is_the_digits_product:
            assert reading.confidence == pytest.approx(
                np.prod([d.confidence for d in reading.digits]), rel=1e-5)
        else:
            assert 0 < reading.confidence <= 1
    right = len(results) - len(misread)
    assert right >= case.need - slack, (f"{case.name}: {right}/{len(results)} read right, "
                                        f"need {case.need - slack}: " + "; ".join(misread))


# --- an empty form field is blank ---------------------------------------------------------------


def empty_form(rng: np.random.Generator, kind: str, dash: tuple | None, colour: str) -> bytes:
    """Printed lines only, no digit: a comb of 4-6 cells, a baseline with ticks, or boxes."""
    cells, lw = int(rng.integers(4, 7)), int(rng.integers(1, 4))
    cell_w, cell_h = rng.uniform(50, 90), rng.uniform(70, 120)
    right = cells * cell_w + lw
    if kind == "comb":
        lines = [("h", 0, 0, right, lw, dash), ("h", cell_h, 0, right, lw, dash)]
        lines += [("v", i * cell_w, 0, cell_h + lw, lw, dash) for i in range(cells + 1)]
    elif kind == "ticks":
        tick = 0.4 * cell_h
        lines = [("h", 0, 0, right, lw, None)]
        lines += [("v", i * cell_w, -tick, 0, lw, None) for i in range(cells + 1)]
    else:  # separate boxes
        pitch = cell_w * 1.3
        lines = [ln for i in range(cells) for ln in box(i * pitch, 0, i * pitch + cell_w,
                                                         cell_h, lw)]
    sheet = rasterise([], lines, rng)
    return finish(compose(sheet, paper_colour(rng), (20, 20, 20), PRINT_COLOURS[colour]), rng)


EMPTY_FORMS = [("comb", None, "black"), ("comb", (8, 5), "black"), ("comb", (2, 5), "black"),
               ("comb", None, "red"), ("comb", (8, 5), "blue"), ("comb", None, "green"),
               ("ticks", None, "black"), ("ticks", None, "blue"), ("boxes", None, "black")]


@pytest.mark.parametrize("kind, dash, colour", EMPTY_FORMS, ids=[
    f"{kind}-{ {None: 'solid', (8, 5): 'dashed', (2, 5): 'dotted'}[dash]}-{colour}"
    for kind, dash, colour in EMPTY_FORMS])
def test_an_empty_form_field_is_blank(reader, kind, dash, colour):
    """Printed lines are not ink: with nothing written in them, the field is blank (a result,
    status=blank in the CSV: no ink left, or nothing but marks left out, as the pipeline
    says), not a reading of digits made of dots and sides."""
    read = []
    for k in range(3):
        rng = np.random.default_rng([zlib.crc32(f"{kind}{dash}{colour}".encode()), k])
        data = empty_form(rng, kind, dash, colour)
        grey = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
        assert (grey < 200).sum() > 200  # the printed lines are there
        try:
            reading = reader.read(data)
        except BlankImageError:
            continue
        if not reading.digits:  # only marks, left out: the pipeline's blank row
            continue
        path = save_failure(f"empty_{kind}_{colour}_{k}_read_{text_of(reading)}", data)
        read.append(f"read as {text_of(reading)!r} ({path})")
    assert not read, f"an empty {kind} ({colour}, dash {dash}) was not blank: " + "; ".join(read)


def test_a_field_with_no_ink_at_all_is_blank(reader):
    with pytest.raises(BlankImageError):
        reader.read(png_bytes(np.full((60, 300), 245, np.uint8)))


# --- where the digits are ------------------------------------------------------------------------


def test_digits_columns_lie_over_the_digits_left_to_right(reader):
    """field_of writes digits apart at known columns: each digit read lies over its own."""
    rng = np.random.default_rng(31)
    for n in (3, 4, 5, 6):
        digits, text = reader.digits(rng, n)
        field = field_of(digits, text)
        reading = reader.read(field.png)
        assert text_of(reading) == text, save_failure(f"spans_{text}", field.png)
        for digit, (left, right) in zip(reading.digits, field.spans, strict=True):
            assert digit.x0 < digit.x1
            assert abs(digit.x0 - left) <= 6 and abs(digit.x1 - right) <= 6, (
                [(d.x0, d.x1) for d in reading.digits], field.spans)
        assert all(a.x1 <= b.x0 for a, b in zip(reading.digits, reading.digits[1:],
                                                 strict=False))


# --- --length -----------------------------------------------------------------------------------


def test_length_chooses_between_cuts_of_a_touching_pair(reader):
    """Touching pairs: told the field holds 2 digits, the reader cuts every pair in two (or
    says why not), and reads at least as many right as without being told (3 of 10 measured
    2026-11-29: the cut halves of tightly touching digits are often misread; a known weakness,
    docs/benchmarks.md)."""
    case = next(c for c in CASES if c.name == "touching_pair")
    free = told = 0
    for k in range(FIELDS):
        data, text = render_case(reader, case, k)
        free += text_of(reader.read(data)) == text
        reading = reader.read(data, Length(2, 2))
        assert len(reading.digits) == 2 or reading.problem.startswith(
            f"read {len(reading.digits)} digits, expected 2"), reading.problem
        told += text_of(reading) == text
        if text_of(reading) != text:
            save_failure(f"length2_{case.name}_{k}_{text}_read_{text_of(reading)}", data)
    assert told >= 3 and told >= free, (told, free)


def test_a_field_shorter_than_its_length_is_read_for_review(reader):
    rng = np.random.default_rng(47)
    for _ in range(3):
        digits, text = reader.digits(rng, 3)
        data = field_of(digits, text).png
        assert text_of(reader.read(data, Length(3, 3))) == text
        five = reader.read(data, Length(5, 5))
        assert text_of(five) == text  # two clear digits are not cut in two to fit
        assert five.problem == "read 3 digits, expected 5"
        assert reader.read(data, Length(4, 6)).problem == "read 3 digits, expected 4-6"
        assert reader.read(data, Length(1, 3)).problem == ""


def test_a_field_longer_than_its_length_is_read_for_review(reader):
    rng = np.random.default_rng(53)
    digits, text = reader.digits(rng, 5)
    reading = reader.read(field_of(digits, text).png, Length(3, 3))
    assert text_of(reading) == text
    assert reading.problem == "read 5 digits, expected 3"


# --- determinism ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["touching_pair", "photo", "rotated"])
def test_reading_is_deterministic(reader, name):
    case = next(c for c in CASES if c.name == name)
    data, _ = render_case(reader, case, 0)
    assert render_case(reader, case, 0)[0] == data  # the factory too
    first, second = reader.read(data), reader.read(data)
    assert first.digits == second.digits
    assert first.confidence == second.confidence and first.problem == second.problem
    assert first.cuts == second.cuts and np.array_equal(first.thumb, second.thumb)
    a, b = cut_field(data, reader.geometry), cut_field(data, reader.geometry)
    assert np.array_equal(a.found.images, b.found.images)
    assert re.fullmatch(r"\d+", text_of(first))
