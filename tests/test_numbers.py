"""The number reader's parts: length bounds, runs, connected pieces (against SciPy), form-line
removal, the decoder's choice within --length, and the field metrics (against brute force)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from scorer.numbers import Length, parse_length
from scorer.numbers.components import Piece, pieces
from scorer.numbers.decode import choose, field_confidence
from scorer.numbers.lines import remove_form_lines
from scorer.numbers.runs import (
    bands,
    bridged_runs,
    close_gaps,
    paint_long,
    paint_runs,
    row_runs,
)
from scorer.numbers.segments import Candidates, line_pieces
from scorer.report.fields import edit_distance, field_metrics

DIGITS = [str(d) for d in range(10)]


# --- --length ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "bounds"), [("5", (5, 5)), ("4-6", (4, 6)), (" 2-2 ", (2, 2)),
                                               ("1-40", (1, 40))])
def test_parse_length(text, bounds):
    assert parse_length(text) == Length(*bounds)
    assert Length(*bounds).admits(bounds[0]) and not Length(*bounds).admits(bounds[1] + 1)


@pytest.mark.parametrize("text", ["", "five", "6-4", "0", "-3", "3-", "1-41", "2.5"])
def test_parse_length_refuses(text):
    with pytest.raises(ValueError, match="N or MIN-MAX|need 1 <= MIN"):
        parse_length(text)


def test_length_prints_as_given():
    assert str(parse_length("5")) == "5" and str(parse_length("4-6")) == "4-6"


# --- runs and pieces ---------------------------------------------------------------------------


def random_masks(count: int = 40):
    rng = np.random.default_rng(1)
    for _ in range(count):
        shape = (int(rng.integers(1, 60)), int(rng.integers(1, 120)))
        yield rng.random(shape) < rng.uniform(0.05, 0.6)


def test_runs_round_trip():
    for mask in random_masks():
        assert np.array_equal(paint_runs(mask.shape, *row_runs(mask)), mask)


def test_long_runs_and_gap_closing():
    mask = np.array([[1, 1, 0, 0, 1, 0, 1, 1, 1]], bool)
    assert paint_long(mask.shape, row_runs(mask), 3).astype(int).tolist() == \
        [[0, 0, 0, 0, 0, 0, 1, 1, 1]]
    assert close_gaps(mask, 1).astype(int).tolist() == [[1, 1, 0, 0, 1, 1, 1, 1, 1]]
    assert close_gaps(mask, 2).all()
    assert bands(np.array([0, 1, 1, 0, 1], bool)) == [(1, 3), (4, 5)]


def test_bridged_runs_are_the_runs_of_the_bridged_image():
    rng = np.random.default_rng(3)
    for mask in random_masks():
        gap = int(rng.integers(0, 6))
        expected, found = row_runs(close_gaps(mask, gap)), bridged_runs(mask, gap)
        assert all(np.array_equal(a, b) for a, b in zip(expected, found, strict=True))


def test_pieces_match_scipy_8_connectivity():
    for mask in random_masks():
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        found = pieces(mask)
        assert len(found) == count
        expected = sorted(int(np.sum(labelled == k)) for k in range(1, count + 1))
        assert sorted(p.area for p in found) == expected
        for p in found:  # each piece's mask is exactly one scipy component, cropped
            label = labelled[p.y0:p.y1, p.x0:p.x1][p.mask]
            assert len(set(label.tolist())) == 1
            assert p.mask.sum() == p.area == np.sum(labelled == label[0])
        assert [p.centre_x for p in found] == sorted(p.centre_x for p in found)


# --- form lines --------------------------------------------------------------------------------


def test_an_underline_goes_and_a_crossing_stroke_stays():
    ink = np.zeros((80, 400), bool)
    ink[60:62, 10:390] = True  # a printed underline
    ink[20:75, 100:104] = True  # a stroke crossing it
    ink[20:24, 200:230] = True  # a short horizontal stroke (a 7's bar): not a line
    out = remove_form_lines(ink)
    assert not out[60:62, 10:95].any() and not out[60:62, 110:390].any()
    assert out[20:75, 100:104].all()
    assert out[20:24, 200:230].all()


def touching_round_digits(radii=(15, 19, 16, 18, 14, 19, 17, 15),
                          drops=(0, 3, -2, 1, 4, -1, 2, -3)) -> np.ndarray:
    """Bool ink of round digits (rings 4 px thick) overlapping their neighbours by 3 px, each
    sitting a few px above or below a common baseline, as handwriting does."""
    yy, xx = np.mgrid[0:80, 0:244]
    ink = np.zeros(yy.shape, bool)
    left = 20.0
    for radius, drop in zip(radii, drops, strict=True):
        distance = np.hypot(yy - (60 + drop - radius), (xx - left - radius / 1.3) * 1.3)
        ink |= (distance >= radius - 4) & (distance <= radius)
        left += 2 * radius / 1.3 - 3
    return ink


def test_touching_digits_bottoms_are_not_a_dashed_line():
    """Bridged across the gaps between them, the bottoms of touching digits run along about half
    of the field, as a dashed line would; a printed line spans it. (With the old threshold, a
    third of the width, this removed a fifth of the ink.)"""
    ink = touching_round_digits()
    assert np.array_equal(remove_form_lines(ink), ink)
    underlined = ink.copy()
    underlined[66:68, 10:234] = True  # the same digits on a printed line: the line goes
    out = remove_form_lines(underlined)
    assert not out[66:68].any() and np.array_equal(out, ink)


def test_dashed_comb_lines_and_separators_go():
    ink = np.zeros((90, 600), bool)
    for x in range(10, 590, 14):  # dashed top and bottom lines
        ink[10:12, x:x + 8] = True
        ink[78:80, x:x + 8] = True
    for x in range(10, 600, 80):  # separators between the lines
        ink[10:80, x:x + 2] = True
    ink[25:65, 40:46] = True  # a digit's stroke inside a cell
    out = remove_form_lines(ink)
    assert out[25:65, 40:46].all()
    assert out.sum() == 40 * 6


def test_evenly_spaced_ticks_on_a_baseline_go_but_a_tall_stroke_stays():
    ink = np.zeros((100, 500), bool)
    ink[85:87, 5:495] = True  # baseline
    for x in range(5, 495, 70):
        ink[65:85, x:x + 2] = True  # ticks, 20 px
    ink[15:85, 40:45] = True  # a 1 standing on the baseline, 70 px
    out = remove_form_lines(ink)
    assert out[15:84, 40:45].all()
    assert out.sum() <= 70 * 5


# --- the decoder -------------------------------------------------------------------------------


def candidates(spans, penalties, skip):
    n = len(skip)
    return Candidates(np.array(spans).reshape(-1, 2), np.zeros((len(spans), 28, 28), np.uint8),
                      np.array(penalties, float), np.array(skip, float),
                      np.array([(10 * i, 10 * i + 8) for i in range(n)]))


def one_hot(classes, confidences):
    p = np.full((len(classes), 10), 0.0, np.float32)
    for row, (c, q) in enumerate(zip(classes, confidences, strict=True)):
        p[row] = (1 - q) / 9
        p[row, c] = q
    return p


def test_cheapest_reading_and_length_choose_between_cuts():
    # atoms 0, 1: either two digits (3, 5) or one (8); the 8 is more confident
    found = candidates([(0, 1), (1, 2), (0, 2)], [0.0, 0.0, 0.0], [np.inf, np.inf])
    p = one_hot([3, 5, 8], [0.7, 0.7, 0.95])
    assert [d.value for d in choose(found, p, None).digits] == [8]
    two = choose(found, p, parse_length("2"))
    assert [d.value for d in two.digits] == [3, 5] and two.problem == ""
    three = choose(found, p, parse_length("3"))  # impossible: the best reading, for review
    assert [d.value for d in three.digits] == [8]
    assert three.problem == "read 1 digits, expected 3"


def test_a_length_far_costlier_than_the_best_reading_is_not_forced():
    # two clear digits; reading them as four needs two unlikely cuts
    found = candidates([(0, 1), (1, 2), (2, 3), (3, 4), (0, 2), (2, 4)], [2.0] * 4 + [0.0] * 2,
                       [np.inf] * 4)
    p = one_hot([1, 1, 1, 1, 7, 3], [0.9, 0.9, 0.9, 0.9, 0.99, 0.99])
    choice = choose(found, p, parse_length("4"))
    assert [d.value for d in choice.digits] == [7, 3]
    assert choice.problem == "read 2 digits, expected 4"


def test_marks_are_skipped_and_columns_reported():
    found = candidates([(0, 1), (1, 2), (2, 3)], [0.0, 0.0, 0.0], [np.inf, 0.1, np.inf])
    p = one_hot([4, 1, 2], [0.99, 0.6, 0.99])  # the middle atom, a comma, looks like a 1
    choice = choose(found, p, None)
    assert [d.value for d in choice.digits] == [4, 2]
    assert [(d.x0, d.x1, d.atoms) for d in choice.digits] == [(0, 8, (0, 1)), (20, 28, (2, 3))]
    assert field_confidence(choice.digits) == pytest.approx(0.99 * 0.99, rel=1e-6)


def piece_at(x0: int, y0: int, width: int, height: int) -> Piece:
    return Piece(y0, x0, y0 + height, x0 + width, width * height, np.ones((height, width), bool))


def test_the_field_reader_s_line_leaves_out_marks_at_its_ends():
    """A box's edge (a thin straight piece: in lined fields only), a $ reaching above and below
    the digits and a dot are left out at either end; a dash between digits, a mark over its
    neighbour's columns and a lone piece stay."""
    edge, dollar = piece_at(0, 20, 2, 60), piece_at(10, 10, 20, 80)
    digits = [piece_at(x, 20, 25, 60) for x in (40, 90, 120, 150)]
    dash, dot = piece_at(70, 48, 12, 4), piece_at(180, 74, 6, 6)
    found = [edge, dollar, digits[0], dash, *digits[1:], dot]
    assert line_pieces(found, 60.0, 100, lined=True) == [digits[0], dash, *digits[1:]]
    assert line_pieces(found, 60.0, 100, lined=False) == [edge, dollar, digits[0], dash,
                                                          *digits[1:]]
    assert line_pieces([dot], 60.0, 100, lined=False) == [dot]
    bar = piece_at(160, 20, 30, 5)  # a 5's detached bar, reaching past its body: a stroke
    assert line_pieces([*digits, bar], 60.0, 100, lined=False) == [*digits, bar]


def test_frame_maps_field_pixels_back_to_the_image():
    """A dot in an image, scaled, turned and sheared as the reader does, comes back where it
    was."""
    from PIL import Image

    from scorer.numbers.field import Frame, ink_mask, to_work_size, upright

    image = np.zeros((40, 300), np.float32)
    image[12:16, 100:140] = 255.0  # a bar, so that the slant search has something to see
    grey, scale = to_work_size(image)
    before = grey.shape
    turned = np.asarray(Image.fromarray(grey).rotate(-3.0, Image.Resampling.BILINEAR,
                                                     expand=True, fillcolor=0.0), np.float32)
    sheared, _, slant = upright(turned, ink_mask(turned))
    pad = (sheared.shape[1] - turned.shape[1]) // 2
    frame = Frame(scale, 3.0, before, turned.shape, slant, pad)
    ys, xs = np.nonzero(sheared > 128)
    x, y = frame.to_image(xs, ys)
    assert abs(x.min() - 100) < 3 and abs(x.max() - 139) < 3
    assert abs(y.mean() - 13.5) < 2


# --- metrics -----------------------------------------------------------------------------------


def brute_edit_distance(a: str, b: str) -> int:
    if not a or not b:
        return len(a) + len(b)
    return min(brute_edit_distance(a[1:], b) + 1, brute_edit_distance(a, b[1:]) + 1,
               brute_edit_distance(a[1:], b[1:]) + (a[0] != b[0]))


def test_edit_distance_against_brute_force():
    words = ["", "0", "01", "10", "007", "170", "1234", "2143"]
    for a, b in itertools.product(words, repeat=2):
        assert edit_distance(a, b) == brute_edit_distance(a, b)


def test_field_metrics():
    truth = ["00712", "42", "987", "5"]
    read = ["00712", "47", "98", "5"]
    m = field_metrics(truth, read, DIGITS)
    assert m["fields"] == 4
    assert m["exact_match"] == 0.5
    assert m["digit_accuracy"] == pytest.approx(1 - 2 / 11)
    assert m["wrong_length"] == 0.25
    assert m["by_length"]["2"] == {"fields": 1, "exact_match": 0.0, "wrong_length": 0.0}
    assert m["by_length"]["3"]["wrong_length"] == 1.0
    digits = m["digits"]  # the 5 + 2 + 1 digits of the fields read with the right length
    assert digits["samples"] == 8 and digits["accuracy"] == pytest.approx(7 / 8)
    assert field_metrics(["12"], ["3"], DIGITS)["digits"] is None


# --- bounded work ------------------------------------------------------------------------------


def png(grey: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_field_of_noise_is_refused_not_read_for_ever():
    """Hundreds of separate blots the size of digits are not one number: an error row, found
    before the work that grows with the square of the marks."""
    from scorer.images import MNIST_GEOMETRY, ImageError
    from scorer.numbers import cut_field

    rng = np.random.default_rng(0)
    field = np.full((100, 2400), 255, np.uint8)
    for x in range(10, 2380, 14):  # 170 blots, 8-10 px apart, 30-60 px high
        top, tall = int(rng.integers(5, 40)), int(rng.integers(30, 60))
        field[top:top + tall, x:x + 6] = 0
    with pytest.raises(ImageError, match="not one number: 170 marks"):
        cut_field(png(field), MNIST_GEOMETRY)
