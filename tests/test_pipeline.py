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



# --- the main process scores too, never a large image ------------------------------------------


def ring_png() -> bytes:
    """A valid digit-like PNG whose pixels take 44 MB: a "large" image (LARGE_DECODE_BYTES)."""
    import io

    from PIL import Image, ImageDraw

    ring = Image.new("RGBA", (3400, 3400), (255, 255, 255, 0))
    ImageDraw.Draw(ring).ellipse((1000, 1000, 2400, 2400), outline=(0, 0, 0, 255), width=120)
    buffer = io.BytesIO()
    ring.save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_main_process_scores_chunks_no_worker_has_started(bundle, mnist_test_images):
    """With two workers, one pool process and this one share the chunks: neither idles."""
    from scorer.costs import input_cost
    from scorer.workers import ScoringPool

    x, _ = mnist_test_images
    items = [Input(f"{i}.png", mnist_png(x[i % 100]), None, None) for i in range(2048)]
    pool = ScoringPool(bundle, workers=2, batch_size=16)
    try:
        windows = [items[i:i + 256] for i in range(0, len(items), 256)]
        handles = [pool.submit(w, [input_cost(item) for item in w], use_pool=True)
                   for w in windows]
        shared = [pool.collect(handle) for handle in handles]
    finally:
        pool.close()
    assert pool.chunks_here > 0 and pool.chunks_in_pool > 0, (pool.chunks_here, pool.chunks_in_pool)
    assert pool.chunks_here + pool.chunks_in_pool == len(items) // 16
    alone = ScoringPool(bundle, workers=1, batch_size=256)
    for window, result in zip(windows, shared, strict=True):
        expected = alone.collect(alone.submit(window, [0] * len(window), use_pool=True))
        assert result.reasons == expected.reasons
        np.testing.assert_array_equal(result.images, expected.images)
        np.testing.assert_array_equal(result.probabilities, expected.probabilities)
    assert alone.executor is None  # one worker: everything in this process


def test_a_worker_killed_after_a_chunk_was_taken_back_leaves_every_row(bundle,
                                                                       mnist_test_images):
    """A chunk the main process takes back from the pool (it cancels the chunk's task), then a
    worker killed: every row comes back, and no thread of the pool dies (CPython 3.11's pool
    thread raised InvalidStateError on the cancelled task and died with a traceback)."""
    import os
    import signal
    import threading
    import time
    from concurrent.futures import wait

    from scorer.costs import input_cost
    from scorer.process_pool import CANCEL_IS_SAFE, workers_of
    from scorer.workers import ScoringPool

    x, _ = mnist_test_images
    slow = [Input(f"ring{i}.png", ring_png(), None, None) for i in range(8)]  # a chunk each
    died: list[BaseException] = []
    hook, threading.excepthook = threading.excepthook, lambda args: died.append(args.exc_value)
    pool = ScoringPool(bundle, workers=2, batch_size=8)
    pool.CHUNKS_PER_WORKER = 8  # all in the pool: some wait there, not started
    try:
        chunks = pool.submit(slow, [input_cost(item) for item in slow], use_pool=True)
        given = [chunk.future for chunk in chunks]
        wait(given[:1], timeout=0)
        deadline = time.monotonic() + 30
        while not given[0].running() and time.monotonic() < deadline:  # the worker has begun
            time.sleep(0.01)
        taken = pool._take_back()  # the newest chunk, not started: its task is cancelled
        assert (taken is not None) == CANCEL_IS_SAFE
        os.kill(workers_of(pool.executor)[0].pid, signal.SIGKILL)
        wait([f for f in given if not f.cancelled()], timeout=10)  # the pool fails them all
        if taken is not None:
            pool._score_here(taken)
        result = pool.collect(chunks)
    finally:
        pool.close()
        threading.excepthook = hook
    assert died == []
    assert len(result.reasons) == len(slow)
    assert all(reason == "" for reason in result.reasons), result.reasons


def test_a_large_image_met_by_the_main_process_is_decoded_by_a_worker(bundle, mnist_test_images):
    """Two large images keep the one pool worker busy; the chunk after them is scored here, and
    its large image goes to the worker (where running out of memory only costs a worker)."""
    from scorer.costs import LARGE_DECODE_BYTES, input_cost
    from scorer.workers import ScoringPool, classify_chunk

    x, _ = mnist_test_images
    ring = ring_png()
    busy = [Input(f"busy{i}.png", ring, None, None) for i in range(2)]
    mixed = [Input("a.png", mnist_png(x[0]), None, None), Input("ring.png", ring, None, None),
             Input("b.png", mnist_png(x[1]), None, None)]
    assert input_cost(mixed[1]) > LARGE_DECODE_BYTES
    pool = ScoringPool(bundle, workers=2, batch_size=8)
    try:
        first = pool.submit(busy, [input_cost(i) for i in busy], use_pool=True)
        second = pool.submit(mixed, [input_cost(i) for i in mixed], use_pool=True)
        result = pool.collect(second)
        pool.collect(first)
    finally:
        pool.close()
    assert pool.large_images_sent >= 1 and pool.chunks_here >= 1
    from scorer.bundle import Classifier

    expected = classify_chunk(mixed, bundle.geometry, Classifier(bundle.model_bytes()))
    assert result.reasons == expected.reasons == ["", "", ""]
    np.testing.assert_array_equal(result.images, expected.images)
    np.testing.assert_array_equal(result.probabilities, expected.probabilities)


def test_a_large_image_goes_to_a_worker_even_in_a_job_of_one_window(bundle, mnist_test_images):
    """A job that fits one window is scored here, but its large image is still decoded by a
    worker (docs/security.md: running out of memory on it must cost a worker, not the job)."""
    from scorer.costs import input_cost
    from scorer.workers import ScoringPool

    x, _ = mnist_test_images
    window = [Input("a.png", mnist_png(x[0]), None, None), Input("ring.png", ring_png(), None,
                                                                  None)]
    pool = ScoringPool(bundle, workers=2, batch_size=8)
    try:
        result = pool.collect(pool.submit(window, [input_cost(i) for i in window],
                                          use_pool=False))
    finally:
        pool.close()
    assert (pool.chunks_here, pool.chunks_in_pool, pool.large_images_sent) == (1, 0, 1)
    assert result.reasons == ["", ""]


def test_a_job_of_one_window_uses_the_workers_when_its_inputs_are_costly(tmp_path, bundle,
                                                                         mnist_test_images):
    """Whether a job of one window starts workers follows what its inputs cost, not how many
    there are: hundreds of MNIST PNGs stay in this process, a few photos (files on disk, not
    read yet: their size counts) and more number fields than one chunk do not."""
    from scorer.costs import input_cost
    from scorer.numbers import NumberMode
    from scorer.pipeline import FIELDS_PER_CHUNK, POOL_WORTHY_BYTES, worth_a_pool

    x, _ = mnist_test_images
    digits = [Input(f"{i}.png", mnist_png(x[i]), None, None) for i in range(500)]
    assert not worth_a_pool(digits, [input_cost(i) for i in digits], None)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(np.random.default_rng(0).bytes(POOL_WORTHY_BYTES // 3 + 1))
    photos = [Input(str(photo), None, None, None, str(photo))] * 3
    assert worth_a_pool(photos, [0, 0, 0], None)
    assert not worth_a_pool(photos[:2], [0, 0], None)
    fields = digits[:FIELDS_PER_CHUNK + 1]
    costs = [input_cost(i) for i in fields]
    assert worth_a_pool(fields, costs, NumberMode()) and not worth_a_pool(fields, costs, None)
    assert not worth_a_pool(fields[:-1], costs[:-1], NumberMode())


def test_classify_chunk_hands_only_large_images_to_prepare_large(bundle, mnist_test_images):
    from scorer.bundle import Classifier
    from scorer.images import prepare
    from scorer.workers import classify_chunk

    x, _ = mnist_test_images
    ring = ring_png()
    items = [Input("a.png", mnist_png(x[0]), None, None), Input("ring.png", ring, None, None)]
    handed: list[int] = []

    def prepare_large(data: bytes):
        handed.append(len(data))
        return prepare(data, bundle.geometry)

    classifier = Classifier(bundle.model_bytes())
    hooked = classify_chunk(items, bundle.geometry, classifier, prepare_large)
    plain = classify_chunk(items, bundle.geometry, classifier)
    assert handed == [len(ring)]
    np.testing.assert_array_equal(hooked.images, plain.images)


def test_a_stop_request_during_decoding_is_not_taken_for_a_bad_image(bundle, mnist_test_images):
    """SIGTERM makes the CLI raise Terminated wherever this process is, mostly in decoding code,
    which turns any Exception into an error row: the request must get through it."""
    import signal

    from scorer.bundle import Classifier
    from scorer.stopping import Terminated
    from scorer.workers import classify_chunk

    x, _ = mnist_test_images
    items = [Input(f"{i}.png", mnist_png(x[i % 100]), None, None) for i in range(20_000)]
    classifier = Classifier(bundle.model_bytes())

    def stop(_signum, _frame):
        raise Terminated

    previous = signal.signal(signal.SIGALRM, stop)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(Terminated):
            classify_chunk(items, bundle.geometry, classifier)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- photos: the work follows what inputs cost, not how many there are -----------------------


def photo_jpeg(digit: np.ndarray, rng: np.random.Generator, size=(1600, 1200)) -> bytes:
    """A phone-like photo: a large dark digit on tinted, unevenly lit, noisy paper (JPEG)."""
    import io

    from PIL import Image

    from digit_factory import _to_u8, ink_mask

    w, h = size
    mask = ink_mask(digit, rng, height=h // 3)
    cover = np.zeros((h, w), np.float32)
    y, x = int(rng.integers(0, h - mask.shape[0])), int(rng.integers(0, w - mask.shape[1]))
    cover[y:y + mask.shape[0], x:x + mask.shape[1]] = mask
    light = np.linspace(0.75, 1.05, w, dtype=np.float32)[None, :, None]
    paper, ink = np.array([235, 228, 205], np.float32), np.array([30, 30, 80], np.float32)
    rgb = (paper + (ink - paper) * cover[..., None]) * light
    rgb += rng.normal(0, 4, rgb.shape).astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray(_to_u8(rgb)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def deferred(path) -> Input:
    """A local file as the CLI lists it: a name, not read yet."""
    return Input(str(path), None, None, None, str(path))


def test_photos_are_cut_into_chunks_by_their_size_on_disk(tmp_path, monkeypatch):
    """A chunk is what one process takes at a time: photos (priced by their size on disk,
    since they are not read yet) go a photo or two a chunk, so 70 of them are shared evenly;
    crops of a few kB go at most 8 a chunk; thumbnails (28x28 PNGs) 64 a chunk, and their sizes
    are looked up once per run, not per file."""
    import scorer.costs as costs

    def files(folder, count, size, suffix):
        folder.mkdir()
        for i in range(count):
            (folder / f"{i}{suffix}").write_bytes(b"\xff" * size)
        return [deferred(folder / f"{i}{suffix}") for i in range(count)]

    photos = files(tmp_path / "photos", 70, costs.CHUNK_COST // 2, ".jpg")
    chunks = costs.cut_by_cost([(item, 0) for item in photos], 64)
    assert [len(chunk) for chunk in chunks] == [1] * 70
    assert [item for chunk in chunks for item in chunk] == photos
    crops = files(tmp_path / "crops", 100, 5000, ".jpg")
    chunks = costs.cut_by_cost([(item, 0) for item in crops], 64)
    assert len(chunks) >= 13 and max(len(chunk) for chunk in chunks) <= 8

    small = tmp_path / "small"
    small.mkdir()
    digits = []
    for i in range(640):
        (small / f"{i}.png").write_bytes(b"\x89PNG" * 75)
        digits.append(deferred(small / f"{i}.png"))
    looked_up = []
    monkeypatch.setattr(costs, "size_on_disk",
                        lambda item: looked_up.append(item) or len(b"\x89PNG" * 75))
    chunks = costs.cut_by_cost([(item, 0) for item in digits], 64)
    assert [len(chunk) for chunk in chunks] == [64] * 10
    assert looked_up == digits[::64]


def test_a_photo_job_of_one_window_is_shared_by_both_processes(tmp_path, bundle,
                                                              mnist_test_images):
    """A few photos (one window) use the pool, are cut into chunks of a photo or two, and
    both processes score some of them; the rows are those of one process."""
    from scorer.pipeline import worth_a_pool
    from scorer.workers import ScoringPool

    x, _ = mnist_test_images
    rng = np.random.default_rng(3)
    window = []
    for i in range(10):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(photo_jpeg(x[i], rng, (2048, 1536)))
        window.append(deferred(path))
    costs = [0] * len(window)
    assert worth_a_pool(window, costs, None)
    pool = ScoringPool(bundle, workers=2, batch_size=256)
    try:
        chunks = pool.submit(window, costs, use_pool=True)
        shared = pool.collect(chunks)
    finally:
        pool.close()
    assert len(chunks) >= 5 and max(len(chunk.items) for chunk in chunks) <= 2
    assert pool.chunks_here >= 1 and pool.chunks_in_pool >= 1, (pool.chunks_here,
                                                              pool.chunks_in_pool)
    alone = ScoringPool(bundle, workers=1, batch_size=256)
    expected = alone.collect(alone.submit(window, costs, use_pool=True))
    assert shared.reasons == expected.reasons == [""] * 10
    np.testing.assert_array_equal(shared.images, expected.images)
    np.testing.assert_array_equal(shared.probabilities, expected.probabilities)


def test_a_chunk_scored_here_hands_its_large_image_and_the_rest_to_a_worker(bundle,
                                                                          mnist_test_images):
    """The main process scores a queued chunk up to its first large image; that image and the
    rest of the chunk go to a worker, and the chunk's result is whole and in order."""
    from scorer.bundle import Classifier
    from scorer.workers import Chunk, ScoringPool, classify_chunk

    x, _ = mnist_test_images
    items = [Input("a.png", mnist_png(x[0]), None, None), Input("ring.png", ring_png(), None,
                                                                   None),
             Input("b.png", mnist_png(x[1]), None, None), Input("c.png", b"junk", None, None)]
    pool = ScoringPool(bundle, workers=2, batch_size=8)
    chunk = Chunk(list(items))
    try:
        pool._score_here(chunk)
        assert chunk.result is None and [i.name for i in chunk.items] == ["ring.png", "b.png",
                                                                        "c.png"]
        assert (pool.chunks_here, pool.large_images_sent) == (1, 1)
        result = pool.collect([chunk])
    finally:
        pool.close()
    expected = classify_chunk(items, bundle.geometry, Classifier(bundle.model_bytes()))
    assert result.reasons == expected.reasons and result.reasons[:3] == ["", "", ""]
    np.testing.assert_array_equal(result.images, expected.images)
    np.testing.assert_array_equal(result.probabilities, expected.probabilities)


def test_csvs_of_photos_and_scans_are_byte_identical_whatever_the_workers(tmp_path,
                                                                        mnist_bundle,
                                                                        mnist_test_images):
    """Photos, a page scan that decodes to more than LARGE_DECODE_BYTES (a worker's job),
    MNIST PNGs and a broken file: the same CSV from 1, 2 and 3 processes, in one window or
    many."""
    import io

    from PIL import Image

    from test_cli import score_cli

    x, y = mnist_test_images
    rng = np.random.default_rng(4)
    for i in range(24):
        folder = tmp_path / "in" / str(y[i])
        folder.mkdir(parents=True, exist_ok=True)
        if i % 3 == 0:
            (folder / f"{i:02}.png").write_bytes(mnist_png(x[i]))
        else:
            (folder / f"{i:02}.jpg").write_bytes(photo_jpeg(x[i], rng, (1600, 1200)))
    page = Image.new("L", (2480, 3508), 240)  # A4 at 300 dpi: 8.7 MB of pixels
    page.paste(Image.fromarray(255 - x[30]).resize((280, 280)), (900, 1500))
    buffer = io.BytesIO()
    page.save(buffer, "PNG")
    (tmp_path / "in" / str(y[30]) / "30-scan.png").write_bytes(buffer.getvalue())
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8 not a photo")
    outputs = []
    for workers, batch in ((1, 256), (2, 256), (3, 256), (2, 4)):
        out = tmp_path / f"w{workers}-b{batch}.csv"
        done = score_cli(tmp_path / "in", "--model", mnist_bundle, "--out", out,
                         "--probabilities", "--workers", workers, "--batch-size", batch)
        assert done.returncode == 3, done.stderr  # the broken file
        outputs.append(out.read_bytes())
    assert outputs[0].count(b"\n") == 27 and outputs.count(outputs[0]) == 4
