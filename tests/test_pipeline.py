"""scorer.pipeline.score: one Row per input, in input order, whatever the workers and batches."""

from __future__ import annotations

import itertools
import multiprocessing

import numpy as np
import pytest

from scorer.bundle import load_bundle
from scorer.images import BLANK_REASON, normalize
from scorer.job import EXIT_OK, EXIT_SOME_FAILED, Tally
from scorer.pipeline import STATUS_BLANK, STATUS_ERROR, STATUS_OK, STATUS_REVIEW, score
from scorer.sources import Input

from digit_factory import mnist_png

N_GOOD = 45


@pytest.fixture(scope="module")
def bundle(mnist_bundle):
    return load_bundle(mnist_bundle)


@pytest.fixture(scope="module")
def mixed_inputs(mnist_test_images) -> list[Input]:
    """Good MNIST PNGs with read errors, undecodable bytes and blank images interleaved."""
    x, y = mnist_test_images
    blank = mnist_png(np.zeros((28, 28), np.uint8))
    items = []
    for i in range(N_GOOD):
        items.append(Input(f"good/{i}.png", mnist_png(x[i]), None, int(y[i])))
        if i % 5 == 1:
            items.append(Input(f"unreadable/{i}.png", None, "permission denied", None))
        if i % 7 == 3:
            items.append(Input(f"junk/{i}.png", b"\x89PNG\r\n\x1a\n" + b"junk" * i, None, 4))
        if i % 11 == 5:
            items.append(Input(f"blank/{i}.png", blank, None, None))
    return items


def rows_of(inputs, bundle, **kwargs):
    return list(score(iter(inputs), bundle, **kwargs))


def test_order_errors_and_predictions_with_two_workers(bundle, mixed_inputs, mnist_test_images):
    x, y = mnist_test_images
    # batch 4 x 2 workers: windows of 8, so ~9 windows with errors at varying offsets in each
    rows = rows_of(mixed_inputs, bundle, workers=2, batch_size=4)

    assert [r.source for r in rows] == [item.name for item in mixed_inputs]
    assert [r.label for r in rows] == [item.label for item in mixed_inputs]
    classifier = bundle.classifier()
    for row, item in zip(rows, mixed_inputs, strict=True):
        kind = item.name.split("/")[0]
        if kind == "good":
            assert row.status == STATUS_OK and row.error == ""
            expected_image = normalize(item.data, bundle.geometry)
            np.testing.assert_array_equal(row.image, expected_image)
            probs = classifier.predict(expected_image[None])[0]
            assert row.prediction == int(probs.argmax())
            assert row.confidence == pytest.approx(float(probs.max()), abs=1e-6)
            assert row.probabilities is None  # not asked for
        else:
            assert row.status == (STATUS_BLANK if kind == "blank" else STATUS_ERROR)
            assert row.prediction is None and row.confidence is None and row.image is None
            assert row.error and "\n" not in row.error
    reasons = {r.source.split("/")[0]: r.error for r in rows if r.prediction is None}
    assert reasons["unreadable"] == "permission denied"  # a read error is passed on verbatim
    assert reasons["blank"] == BLANK_REASON  # the reason stays in the error column
    assert reasons["junk"].startswith("not a readable image")
    good = [r for r in rows if r.status == STATUS_OK]
    assert len(good) == N_GOOD
    accuracy = np.mean([r.prediction == r.label for r in good])
    assert accuracy >= 0.85, accuracy  # real digits, really classified


def test_one_worker_equals_two_workers_exactly(bundle, mixed_inputs):
    serial = rows_of(mixed_inputs, bundle, workers=1, batch_size=3, keep_probabilities=True)
    parallel = rows_of(mixed_inputs, bundle, workers=2, batch_size=3, keep_probabilities=True)
    big_batch = rows_of(mixed_inputs, bundle, workers=2, batch_size=256, keep_probabilities=True)
    for a, b, c in zip(serial, parallel, big_batch, strict=True):
        assert (a.source, a.prediction, a.confidence, a.status, a.error, a.label) == \
            (b.source, b.prediction, b.confidence, b.status, b.error, b.label) == \
            (c.source, c.prediction, c.confidence, c.status, c.error, c.label)
        if a.status == STATUS_OK:
            np.testing.assert_array_equal(a.probabilities, b.probabilities)
            np.testing.assert_array_equal(a.probabilities, c.probabilities)
            np.testing.assert_array_equal(a.image, b.image)


def test_keep_probabilities(bundle, mixed_inputs):
    rows = rows_of(mixed_inputs, bundle, workers=2, batch_size=5, keep_probabilities=True)
    for row in rows:
        if row.status == STATUS_OK:
            assert row.probabilities.shape == (10,)
            assert row.probabilities.sum() == pytest.approx(1.0, abs=0.03)
            assert row.prediction == int(row.probabilities.argmax())
            assert row.confidence == pytest.approx(float(row.probabilities.max()))
        else:
            assert row.probabilities is None


def test_only_errors_and_no_inputs(bundle):
    assert rows_of([], bundle, workers=2, batch_size=4) == []
    bad = [Input(f"{i}.png", None if i % 2 else b"", None if i % 2 == 0 else "gone", None)
           for i in range(20)]
    rows = rows_of(bad, bundle, workers=2, batch_size=4)
    assert [r.status for r in rows] == [STATUS_ERROR] * 20
    assert [r.source for r in rows] == [item.name for item in bad]
    assert all(r.error for r in rows)


def test_single_image_and_a_window_boundary(bundle, mnist_test_images):
    x, _ = mnist_test_images
    for n in (1, 7, 8, 9, 17):  # windows of 4 x 2 = 8
        items = [Input(f"{i}.png", mnist_png(x[i]), None, None) for i in range(n)]
        rows = rows_of(items, bundle, workers=2, batch_size=4)
        assert [r.source for r in rows] == [item.name for item in items]
        assert all(r.status == STATUS_OK for r in rows)


def test_streams_its_input_and_stops_its_workers(bundle, mnist_test_images):
    """An endless input is consumed a few windows at a time; closing the generator ends the
    worker processes."""
    x, _ = mnist_test_images
    data = [mnist_png(x[i]) for i in range(10)]
    taken = 0

    def endless():
        nonlocal taken
        for i in itertools.count():
            taken += 1
            yield Input(f"{i}.png", data[i % 10], None, None)

    rows = score(endless(), bundle, workers=2, batch_size=4)
    first = list(itertools.islice(rows, 30))
    assert [r.source for r in first] == [f"{i}.png" for i in range(30)]
    assert taken <= 30 + 2 * 8 + 8  # at most about two windows beyond what was yielded
    rows.close()
    assert multiprocessing.active_children() == []


def test_undecodable_file_names_become_printable(bundle, mnist_test_images):
    """Non-UTF-8 file names reach Python as lone surrogates; the row shows their bytes."""
    name = b"odd-\xff\xfe.png".decode("utf-8", "surrogateescape")
    rows = rows_of([Input(name, mnist_png(mnist_test_images[0][0]), None, None),
                    Input(name, None, "gone", None)], bundle, workers=1)
    assert [r.source for r in rows] == ["odd-\\xff\\xfe.png"] * 2
    for row in rows:
        row.source.encode("utf-8")


def test_min_confidence_sends_unsure_rows_to_review_and_keeps_their_prediction(
        bundle, mixed_inputs):
    plain = rows_of(mixed_inputs, bundle, workers=1, batch_size=8)
    confidences = sorted(r.confidence for r in plain if r.status == STATUS_OK)
    threshold = confidences[len(confidences) // 3]  # about a third of the rows fall below it
    checked = rows_of(mixed_inputs, bundle, workers=2, batch_size=8, min_confidence=threshold)
    for before, after in zip(plain, checked, strict=True):
        assert (after.prediction, after.confidence) == (before.prediction, before.confidence)
        if before.status != STATUS_OK:
            assert after.status == before.status  # blanks and errors are not reviewed
        elif before.confidence < threshold:
            assert after.status == STATUS_REVIEW and after.error == ""
        else:
            assert after.status == STATUS_OK
    below = sum(c < threshold for c in confidences)  # int8 confidences tie: count, not guess
    assert sum(r.status == STATUS_REVIEW for r in checked) == below > 0


def test_tally_counts_blanks_and_reviews_as_results_not_failures(bundle, mixed_inputs):
    rows = rows_of(mixed_inputs, bundle, workers=1, batch_size=8, min_confidence=0.999)
    tally = Tally()
    for row in rows:
        tally.add(row)
    statuses = [r.status for r in rows]
    assert tally.blank == statuses.count(STATUS_BLANK) > 0
    assert tally.review == statuses.count(STATUS_REVIEW) > 0
    assert tally.scored == statuses.count(STATUS_OK) + tally.review
    assert tally.failed == statuses.count(STATUS_ERROR) > 0
    assert tally.exit_code == EXIT_SOME_FAILED
    line = tally.summary_line(skipped=2)
    assert f"({tally.review} for review)" in line and f"blank {tally.blank}" in line
    only_blanks = Tally()
    for row in rows:
        if row.status in (STATUS_BLANK, STATUS_OK, STATUS_REVIEW):
            only_blanks.add(row)
    assert only_blanks.exit_code == EXIT_OK  # blanks alone never make the exit code 3

