"""trainer.augment and trainer.epochs: seeded, repeatable, and each transformation does its job."""

from __future__ import annotations

import numpy as np
import pytest

from trainer import augment, epochs


@pytest.fixture(scope="module")
def digits(mnist) -> tuple[np.ndarray, np.ndarray]:
    return mnist.x_train[:512], mnist.y_train[:512]


def bar(height: int = 16, width: int = 3) -> np.ndarray:
    """uint8 (1, 28, 28): a vertical bar of full ink in the middle."""
    image = np.zeros((1, 28, 28), np.uint8)
    top, left = (28 - height) // 2, (28 - width) // 2
    image[0, top : top + height, left : left + width] = 255
    return image


def ink_columns(image: np.ndarray, rows: slice) -> float:
    """Mean column of the ink in some rows."""
    part = image[rows].astype(float)
    return float((part.sum(axis=0) * np.arange(part.shape[1])).sum() / part.sum())


def test_same_seed_gives_identical_images_and_another_seed_differs(digits):
    x, _ = digits
    first = augment.augment(x, np.random.default_rng(7))
    again = augment.augment(x, np.random.default_rng(7))
    other = augment.augment(x, np.random.default_rng(8))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert np.mean(np.any(first != other, axis=(1, 2))) > 0.5


def test_epochs_repeat_bit_for_bit_and_differ_between_epochs_and_seeds(digits):
    x, y = digits
    batches = [list(epochs.epoch_batches(x, y, seed, epoch, 100))
               for seed, epoch in ((42, 0), (42, 0), (42, 1), (43, 0))]
    same, again, next_epoch, other_seed = ([np.concatenate([b[0] for b in run])
                                            for run in batches])
    assert np.array_equal(same, again)
    assert not np.array_equal(same, next_epoch) and not np.array_equal(same, other_seed)
    assert [len(b[0]) for b in batches[0]] == [100] * 5 + [12]
    assert same.dtype == np.float32 and same.shape == x.shape


def test_worker_process_stream_matches_epoch_batches(digits):
    """The epoch stream made ahead by a worker process is exactly epoch_batches, epoch after
    epoch."""
    x, y = digits
    with epochs.EpochStream(x, y, seed=5, batch_size=128) as stream:
        for epoch in range(2):
            streamed = list(stream())
            expected = list(epochs.epoch_batches(x, y, 5, epoch, 128))
            assert len(streamed) == len(expected) == 4
            for (xs, ys), (xe, ye) in zip(streamed, expected, strict=True):
                assert np.array_equal(xs, xe) and np.array_equal(ys, ye)


def test_labels_are_untouched_and_every_image_is_used_once(digits):
    x, y = digits
    order, images = epochs.augmented_epoch(x, 42, 0)
    assert sorted(order) == list(range(len(x)))
    labels = np.concatenate([b[1] for b in epochs.epoch_batches(x, y, 42, 0, 64)])
    assert np.array_equal(labels, y[order])
    # clean images are the originals in the epoch's order: a match proves the pairing
    clean = np.all(images == x[order], axis=(1, 2))
    assert 0.15 < clean.mean() < 0.45  # CLEAN_FRACTION = 0.3


def test_output_keeps_dtype_shape_range_and_some_images_clean(digits):
    x, _ = digits
    out = augment.augment(x, np.random.default_rng(0))
    assert out.dtype == np.uint8 and out.shape == x.shape
    assert out.max() == 255 and out.min() == 0
    untouched = np.all(out == x, axis=(1, 2)).mean()
    assert 0.15 < untouched < 0.45
    assert np.array_equal(augment.augment(x, np.random.default_rng(0), clean_fraction=1.0), x)
    assert np.any(augment.augment(x, np.random.default_rng(0), clean_fraction=0.0) != x,
                  axis=(1, 2)).all()


def test_augmented_digits_stay_centred_and_digit_sized(digits):
    """The normalizer centres digits by centre of mass and fits them to a 20 px box: augmented
    images must look like that, not drift off-centre or shrink."""
    x, _ = digits
    out = augment.augment(x, np.random.default_rng(1), clean_fraction=0.0)
    before = augment._centre_of_mass(x.astype(np.float32))
    after = augment._centre_of_mass(out.astype(np.float32))
    assert np.abs(after - before).max() < 3.5
    height = (out > 64).any(axis=2).sum(axis=1)
    width = (out > 64).any(axis=1).sum(axis=1)
    longest = np.maximum(height, width)
    assert 15 <= np.median(longest) <= 22


def test_dilation_thickens_and_erosion_thins_strokes(digits):
    x, _ = digits
    area = (x > 127).sum()
    thick = augment.change_stroke(x, 1.0)
    thin = augment.change_stroke(x, -1.0)
    half = augment.change_stroke(x, 0.5)
    assert (thick > 127).sum() > 1.3 * area
    assert (thin > 127).sum() < 0.7 * area
    assert area < (half > 127).sum() < (thick > 127).sum()
    assert np.array_equal(augment.change_stroke(x, 0.0), x)
    assert thick.dtype == np.uint8 and thick.shape == x.shape
    assert np.all(thick >= x) and np.all(thin <= x)


def test_positive_shear_moves_the_top_of_a_vertical_bar_right():
    image = bar()
    slanted = augment.warp(image, shear=0.4)[0]
    top, bottom = slice(6, 10), slice(18, 22)
    assert ink_columns(image[0], top) == pytest.approx(ink_columns(image[0], bottom))
    assert ink_columns(slanted, top) - ink_columns(slanted, bottom) > 3
    left = augment.warp(image, shear=-0.4)[0]
    assert ink_columns(left, top) - ink_columns(left, bottom) < -3


def test_rotation_is_counter_clockwise_and_keeps_the_bar_length():
    image = bar()
    turned = augment.warp(image, rotation=np.deg2rad(20))[0]
    top, bottom = slice(6, 10), slice(18, 22)
    assert ink_columns(turned, top) < ink_columns(turned, bottom) - 2  # top leans left
    # re-fitted like the normalizer: the longest side stays the bar's 16 px
    assert max((turned > 64).any(axis=1).sum(), (turned > 64).any(axis=0).sum()) in range(15, 18)


def test_identity_warp_is_exact_and_shift_moves_the_centre_of_mass(digits):
    x, _ = digits
    assert np.array_equal(augment.warp(x), x)
    moved = augment.warp(x[:1], shift=(0.0, 2.0))
    before = augment._centre_of_mass(x[:1].astype(np.float32))[0]
    after = augment._centre_of_mass(moved.astype(np.float32))[0]
    assert after[1] - before[1] == pytest.approx(2.0, abs=0.05)
    assert after[0] == pytest.approx(before[0], abs=0.05)


def test_scale_shrinks_the_digit(digits):
    x, _ = digits
    small = augment.warp(x, scale=0.8)
    assert (small > 127).sum() < 0.8 * (x > 127).sum()


def test_elastic_field_is_smooth_with_the_asked_amplitude():
    rng = np.random.default_rng(3)
    knots = rng.standard_normal((4, 2, augment.ELASTIC_KNOTS, augment.ELASTIC_KNOTS))
    field = augment.elastic_field(knots.astype(np.float32), 28, 28, np.array([0.5, 1, 1.5, 2]))
    assert field.shape == (4, 2, 28, 28) and field.dtype == np.float32
    np.testing.assert_allclose(np.abs(field).reshape(4, -1).max(axis=1), [0.5, 1, 1.5, 2],
                               rtol=1e-4)
    assert np.abs(np.diff(field, axis=-1)).max() < 0.5  # neighbours move together


def test_displacement_moves_ink():
    image = bar()
    field = np.zeros((1, 2, 28, 28), np.float32)
    field[0, 1] = -2.0  # sample 2 px to the left: the content moves right
    moved = augment.warp(image, displacement=field)[0]
    assert ink_columns(moved, slice(0, 28)) - ink_columns(image[0], slice(0, 28)) == \
        pytest.approx(2.0, abs=0.05)


def test_stretch_brings_dim_ink_back_to_full_range():
    dim = (bar() // 2).astype(np.uint8)
    assert dim.max() == 127
    assert augment.stretch(dim).max() == 255
    assert np.array_equal(augment.stretch(bar()), bar())
    blank = np.zeros((1, 28, 28), np.uint8)
    assert np.array_equal(augment.stretch(blank), blank)
    assert np.array_equal(augment.warp(blank, shear=0.3, rotation=0.2), blank)


def test_small_images_are_augmented_too():
    """The 8x8 digits dataset goes through the same code; amounts scale with the image side."""
    from trainer.data import load_digits

    x = load_digits().x_train[:64]
    out = augment.augment(x, np.random.default_rng(0))
    assert out.shape == x.shape and out.dtype == np.uint8
    assert np.any(out != x)


def test_continental_ones_get_a_flag_up_left_and_sevens_a_crossbar():
    one = bar()
    seven = bar()
    seven[0, 6:8, 9:20] = 255  # the 7's top bar over its stem
    images = np.concatenate([one, seven, one])
    labels = np.array([1, 7, 3])
    u = np.zeros((3, 6))  # chance 0 < FLAG_CHANCE: every 1 and 7 is chosen; u[:, 4] = 0: a foot
    out = augment.continental_strokes(images, labels, u)
    assert np.array_equal(out[2], images[2])  # a 3 is never touched
    assert np.all(out >= images)
    added = (out > 127) & ~(images > 127)
    rows, cols = np.nonzero(added[0])
    assert cols.min() < 11 and rows.min() >= 6  # the flag leaves the top of the stem leftwards
    assert added[0][21, 9:12].any() and added[0][21, 15:18].any()  # a foot along the bottom
    bar_rows, bar_cols = np.nonzero(added[1])
    assert 12 <= np.median(bar_rows) <= 17 and bar_cols.min() < 12 and bar_cols.max() > 15
    untouched = augment.continental_strokes(images, labels, np.full((3, 6), 0.99))
    assert np.array_equal(untouched, images)  # chance 0.99 > FLAG_CHANCE: nothing added


def test_labels_make_continental_strokes_part_of_the_seeded_stream(digits):
    x, y = digits
    with_labels = augment.augment(x, np.random.default_rng(4), labels=y)
    again = augment.augment(x, np.random.default_rng(4), labels=y)
    without = augment.augment(x, np.random.default_rng(4))
    assert np.array_equal(with_labels, again)
    differs = np.any(with_labels != without, axis=(1, 2))
    assert differs.any() and set(np.unique(y[differs])) <= {1, 7}
