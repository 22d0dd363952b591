"""Tests for scorer.images: each normalization step, decoding of every mode, errors, and
end-to-end behaviour on real MNIST digits rendered in realistic upload styles."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import io  # noqa: E402
import resource  # noqa: E402
import struct  # noqa: E402
import zlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from scorer import images  # noqa: E402
from scorer.images import (  # noqa: E402
    DIGITS_8X8_GEOMETRY,
    IMAGE_EXTENSIONS,
    MNIST_GEOMETRY,
    Geometry,
    ImageError,
    decode,
    decoding,
    normalization,
    normalize,
    steps,
)
from scorer.images import batch as images_batch  # noqa: E402

from digit_factory import STYLES, exif_rotated_jpeg, mnist_png, paper_rgb  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mnist_images(mnist_test_images):
    """(x uint8 (n, 28, 28), y (n,)) real MNIST test digits (see conftest)."""
    return mnist_test_images


def encode(im: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1])


def marker(h: int = 40, w: int = 30) -> np.ndarray:
    """uint8 (h, w): dark L-shaped mark near the top-left on white, so flips/rotations show."""
    a = np.full((h, w), 255, np.uint8)
    a[4:30, 4:9] = 0
    a[4:9, 4:20] = 0
    return a


# ---------------------------------------------------------------- geometry


def test_geometry_manifest_round_trip_and_validation():
    for geometry in (MNIST_GEOMETRY, DIGITS_8X8_GEOMETRY):
        manifest = geometry.to_manifest()
        assert set(manifest) == {"height", "width", "digit_box", "centering", "supersample", "ink"}
        assert Geometry.from_manifest({**manifest, "unknown": 1}) == geometry
    assert Geometry.from_manifest({"height": 28.0}).height == 28  # JSON float tolerated
    bad = [{"height": 0}, {"centering": "middle"}, {"ink": "blue"}, {"supersample": 1.5},
           {"digit_box": 40}, {"width": True}]  # fmt: skip
    for values in bad:
        with pytest.raises(ValueError, match="geometry"):
            Geometry.from_manifest(values)
    assert {".png", ".jpeg", ".webp", ".tiff"} <= IMAGE_EXTENSIONS


# ---------------------------------------------------------------- steps


def test_polarity_detected_both_ways():
    dark_on_light = marker().astype(np.float32)
    assert steps.ink_is_dark(dark_on_light)
    light = steps.to_light_ink(dark_on_light)
    assert light[0, 0] == 0 and light[10, 6] == 255
    assert not steps.ink_is_dark(light)
    assert steps.to_light_ink(light) is light
    # chalk: noisy dark board, light strokes, bigger than the small-image fast path
    rng = np.random.default_rng(0)
    board = rng.normal(50, 12, (120, 160)).astype(np.float32)
    board[30:90, 70:78] = 220
    assert not steps.ink_is_dark(board)
    # a few hot pixels on white paper must not flip a small dark digit into "light ink"
    paper = np.full((300, 400), 240, np.float32)
    paper[20:60, 350:356] = 30
    paper[rng.integers(0, 300, 20), rng.integers(0, 400, 20)] = 255
    assert steps.ink_is_dark(paper)


def test_flatten_background_removes_lighting_gradient():
    yy, xx = np.mgrid[0:200, 0:300].astype(np.float32)
    grey = 20 + 0.3 * xx + 0.1 * yy  # light-ink image with a 100-level background ramp
    grey[80:140, 140:150] += 150
    flat = steps.flatten_background(grey)
    assert np.percentile(flat[:, :100], 99) < 8  # the ramp is gone...
    assert flat[80:140, 140:150].mean() > 130  # ...and the ink is kept


def test_stretch_contrast_maps_noise_to_zero_and_ink_to_255():
    grey = np.zeros((28, 28), np.float32)
    grey[8:20, 12:16] = 100
    out = steps.stretch_contrast(grey)
    assert out.max() == 255 and out[0, 0] == 0 and out[10, 13] == 255
    rng = np.random.default_rng(1)
    noisy = np.abs(rng.normal(0, 5, (100, 100))).astype(np.float32)
    noisy[30:70, 45:55] = 120
    out = steps.stretch_contrast(noisy)
    assert np.median(out[:, :30]) == 0 and out[40:60, 48:52].min() > 200
    with pytest.raises(ImageError, match="blank"):
        steps.stretch_contrast(np.zeros((28, 28), np.float32))


def test_crop_to_ink_bounding_box_and_specks():
    grey = np.zeros((28, 28), np.float32)
    grey[5:17, 9:13] = 255
    assert steps.crop_to_ink(grey).shape == (12, 4)
    big = np.zeros((300, 400), np.float32)
    big[100:160, 200:230] = 255
    big[10, 10] = big[290, 390] = 255  # isolated specks must not stretch the box
    crop, extent = steps.crop_with_extent(big)
    assert abs(crop.shape[0] - 60) <= 2 and abs(crop.shape[1] - 30) <= 2 and extent <= 62
    with pytest.raises(ImageError, match="blank"):
        steps.crop_to_ink(np.zeros((50, 50), np.float32))


@pytest.mark.parametrize("shape", [(40, 10), (10, 30), (7, 7), (200, 120)])
def test_fit_box_keeps_aspect_ratio(shape):
    grey = np.full(shape, 200, np.float32)
    out = steps.fit_box(grey, 20)
    assert max(out.shape) == 20
    assert abs(out.shape[0] / out.shape[1] - shape[0] / shape[1]) <= 0.1 * shape[0] / shape[1]
    assert out.dtype == np.float32 and out.min() >= 0


def test_place_centre_of_mass_within_half_a_pixel():
    rng = np.random.default_rng(2)
    idx = np.arange(28, dtype=float)
    for _ in range(20):
        h, w = rng.integers(5, 21, 2)
        blob = rng.uniform(0, 255, (h, w)).astype(np.float32) * (rng.random((h, w)) < 0.4)
        blob[0, 0] = 255
        out = steps.place(blob, MNIST_GEOMETRY).astype(float)
        assert out.shape == (28, 28) and out.max() == 255
        cy, cx = out.sum(1) @ idx / out.sum(), out.sum(0) @ idx / out.sum()
        assert abs(cy - 14) <= 0.5 + 0.02 and abs(cx - 14) <= 0.5 + 0.02  # rounding to uint8


def test_place_box_centering_and_supersample():
    blob = np.full((32, 12), 255, np.float32)
    out = steps.place(blob, DIGITS_8X8_GEOMETRY)
    assert out.shape == (8, 8) and out.dtype == np.uint8 and out.max() == 255
    assert (out[:, :2] == 0).all() and (out[:, -2:] == 0).all()  # 12 wide: columns 10..21
    box = Geometry(centering="box")
    out = steps.place(np.full((20, 10), 255, np.float32), box)
    rows, cols = np.flatnonzero(out.any(1)), np.flatnonzero(out.any(0))
    assert (rows[0], rows[-1], cols[0], cols[-1]) == (4, 23, 9, 18)
    dark = steps.place(np.full((20, 10), 255, np.float32), Geometry(ink="dark"))
    assert dark[0, 0] == 255 and dark.min() == 0


def test_normalize_8x8_geometry(mnist_images):
    x, _ = mnist_images
    for digit in x[:20]:
        out = normalize(mnist_png(digit), DIGITS_8X8_GEOMETRY)
        assert out.shape == (8, 8) and out.dtype == np.uint8 and out.max() == 255
        # box centring with a 32 px box: the digit touches top and bottom (or both sides)
        touches = (out[0].any() and out[-1].any()) or (out[:, 0].any() and out[:, -1].any())
        assert touches


def test_thin_strokes_are_thickened():
    grey = np.zeros((200, 120), np.float32)
    grey[:, 60] = 255  # a 1-px line, 200 px long: 0.05 px wide at 20 px
    assert steps.stroke_width(grey) <= 2
    thick = steps.thicken_strokes(grey)
    assert steps.stroke_width(thick) >= 0.8 * steps.MIN_STROKE * max(thick.shape)
    out = normalize(encode(Image.fromarray(255 - grey.astype(np.uint8)), "PNG"))
    assert (out > 128).sum(1).max() >= 2  # at least 2 px of solid ink across at 28x28


# ---------------------------------------------------------------- decoding


def test_decode_modes():
    ref = marker().astype(np.float32)
    im = Image.fromarray(marker())
    cases = {
        "png L": encode(im, "PNG"),
        "png 1-bit": encode(im.convert("1"), "PNG"),
        "png 16-bit": encode(Image.fromarray(marker().astype(np.uint16) * 257), "PNG"),
        "png palette": encode(im.convert("P"), "PNG"),
        "png RGB": encode(im.convert("RGB"), "PNG"),
        "png LA": encode(im.convert("LA"), "PNG"),
        "bmp": encode(im.convert("RGB"), "BMP"),
        "tiff CMYK": encode(im.convert("CMYK"), "TIFF"),
        "tiff F": encode(Image.fromarray(marker().astype(np.float32) / 255), "TIFF"),
        "webp lossless": encode(im.convert("RGB"), "WEBP", lossless=True),
        "gif": encode(im.convert("P"), "GIF"),
    }
    for name, data in cases.items():
        grey = decode(data)
        assert grey.dtype == np.float32 and grey.shape == ref.shape, name
        assert np.abs(grey - ref).max() <= 2, name
    lossy = {"jpeg CMYK": encode(im.convert("CMYK"), "JPEG", quality=95),
             "jpeg": encode(im, "JPEG", quality=95)}  # fmt: skip
    for name, data in lossy.items():
        assert np.abs(decode(data) - ref).mean() < 4, name


def test_decode_rgba_transparent_background_is_white():
    rgba = np.zeros((40, 30, 4), np.uint8)  # transparent black everywhere...
    rgba[5:35, 10:14] = (20, 40, 200, 255)  # ...except an opaque blue stroke
    grey = decode(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert grey[0, 0] == 255 and grey[20, 12] < 60
    out = normalize(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert out[0, 0] == 0 and out.max() == 255


def test_decode_first_frame_of_gif_and_tiff():
    first = Image.fromarray(marker()).convert("P")
    other = Image.new("P", first.size, 0)
    for fmt in ("GIF", "TIFF"):
        data = encode(first, fmt, save_all=True, append_images=[other])
        assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2, fmt
        assert np.abs(decode(data) - marker()).max() <= 2, fmt


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_decode_applies_exif_orientation(orientation, mnist_images):
    digit = mnist_images[0][0]
    data = exif_rotated_jpeg(digit, np.random.default_rng(5), orientation)
    upright = paper_rgb(digit, np.random.default_rng(5)).astype(np.float32).mean(-1)
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("L"), np.float32)
    grey = decode(data)
    assert grey.shape == upright.shape
    assert np.abs(grey - upright).mean() < 5
    if stored.shape == upright.shape:  # the test means something: stored pixels differ
        assert np.abs(stored - upright).mean() > 10


# ---------------------------------------------------------------- errors


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height greyscale, followed by a tiny IDAT."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        encode(Image.fromarray(marker()), "PNG")[:60],  # truncated
        np.random.default_rng(3).bytes(5000),
        b"This is a text file that someone named digit.png\n" * 10,
        encode(Image.fromarray(marker()), "JPEG")[:300],  # truncated JPEG
    ],
    ids=["empty", "truncated-png", "random", "text", "truncated-jpeg"],
)
def test_unreadable_inputs_raise_image_error(data):
    for func in (decode, normalize):
        with pytest.raises(ImageError) as err:
            func(data)
        reason = str(err.value)
        assert "\n" not in reason and reason and " at 0x" not in reason


def test_unidentified_image_reason_is_plain():
    for data in (b"This is a text file\n" * 10, np.random.default_rng(3).bytes(5000)):
        with pytest.raises(ImageError) as err:
            normalize(data)
        assert str(err.value) == "not a readable image: unknown or unsupported image format"
    assert decoding._reason(OSError("broken <_io.BytesIO object at 0x7f12ab34>")) == "broken"


@pytest.mark.parametrize("side", [30000, 7000])  # beyond Pillow's own limit; beyond ours only
def test_decompression_bomb_rejected_without_allocating(side):
    data = png_header_only(side, side)
    assert len(data) < 200
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    for func in (decode, normalize):
        with pytest.raises(ImageError, match="too large"):
            func(data)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200  # decoding 49+ megapixels would have taken >= 49 MiB per copy


def test_blank_images_raise_image_error():
    for value in (0, 255, 128):
        blank = Image.new("L", (28, 28), value)
        with pytest.raises(ImageError, match="blank"):
            normalize(encode(blank, "PNG"))
    noise = np.random.default_rng(4).normal(200, 3, (300, 300))  # featureless paper
    with pytest.raises(ImageError, match="blank"):
        normalize(encode(Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8)), "PNG"))


# ---------------------------------------------------------------- end to end


def test_mnist_passes_through_unchanged(mnist_images):
    # Measured on 500 MNIST test digits: mean correlation 1.0000 (min 0.99996), mean absolute
    # difference 0.017 grey levels; 84% are bit-identical (the rest differ by 1 level where an
    # image's peak was < 255 and is stretched). Bounds leave a wide margin yet would catch a
    # one-pixel shift of a thin "1" (correlation ~0.7) or a rescale.
    x, _ = mnist_images
    cors, diffs = [], []
    for digit in x[:500]:
        out = normalize(mnist_png(digit))
        assert out.shape == (28, 28) and out.dtype == np.uint8
        cors.append(corr(out, digit))
        diffs.append(np.abs(out.astype(int) - digit).mean())
    assert np.mean(cors) > 0.995 and np.min(cors) > 0.95
    assert np.mean(diffs) < 1.0
    inverted = [corr(normalize(mnist_png(255 - d)), d) for d in x[:50]]  # dark on light
    assert np.min(inverted) > 0.95


def test_small_jpeg_mnist_keeps_its_size(mnist_images):
    # 28x28 JPEGs ring around the strokes; the ink box must ignore that. Measured: mean
    # correlation 0.986, 5th percentile 0.88 on 300 digits (0.54 when ringing set the box).
    x, _ = mnist_images
    cors = [corr(normalize(encode(Image.fromarray(d), "JPEG", quality=75)), d) for d in x[:200]]
    assert np.mean(cors) > 0.95 and np.percentile(cors, 5) > 0.75


# Model-free proxy for "the model sees the same digit": correlation of the normalized styled
# image with the normalized clean MNIST digit. Measured over 200 digits (seed 1):
#   mean 0.926-0.955 and 5th percentile 0.79-0.85 for all styles but thin_pen;
#   thin_pen (skeleton redrawn with a fine pen, so stroke shape really differs) mean 0.78, p5 0.59.
# A polarity, crop or lighting failure gives ~0.0-0.4. Thresholds keep a ~0.05-0.1 margin.
STYLE_BOUNDS = {name: (0.88, 0.70) for name in STYLES} | {"thin_pen": (0.72, 0.45)}


@pytest.mark.parametrize("style", sorted(STYLES))
def test_styles_normalize_like_the_clean_digit(style, mnist_images):
    x, _ = mnist_images
    rng = np.random.default_rng(1)
    cors = []
    for digit in x[:200]:
        out = normalize(STYLES[style](digit, rng))
        assert out.shape == (28, 28) and out.dtype == np.uint8
        cors.append(corr(out, normalize(mnist_png(digit))))
    mean_bound, p5_bound = STYLE_BOUNDS[style]
    assert np.mean(cors) > mean_bound, (style, np.mean(cors))
    assert np.percentile(cors, 5) > p5_bound, (style, np.percentile(cors, 5))


def test_large_photo_is_decoded_reduced_and_correct(mnist_images):
    digit = mnist_images[0][0]
    big = Image.fromarray(digit).resize((600, 600), Image.Resampling.BICUBIC)
    canvas = np.full((2000, 3000), 230, np.uint8)
    canvas[700:1300, 1200:1800] = 255 - np.asarray(big) * 0.8
    data = encode(Image.fromarray(canvas).convert("RGB"), "JPEG", quality=85)
    # 6 megapixels are never decoded in full: the JPEG draft gives <= 2x the working size
    side = normalization.WORK_SIDE
    assert max(decoding.open_image(data, side).size) <= 2 * side
    assert corr(normalize(data), normalize(mnist_png(digit))) > 0.85


def test_small_images_skip_blur_and_background_fit(mnist_images, monkeypatch):
    # The 28x28 path (the folder-scoring hot path) must stay free of the heavy steps for
    # photos: blurring and fitting a background surface. (Speed itself is benchmarked.)
    def heavy(*args, **kwargs):
        raise AssertionError("heavy step on a small image")

    monkeypatch.setattr(steps, "_blur", heavy)
    monkeypatch.setattr(np.linalg, "lstsq", heavy)
    for digit in mnist_images[0][:20]:
        assert normalize(mnist_png(digit)).shape == (28, 28)
        assert normalize(mnist_png(255 - digit)).shape == (28, 28)


@pytest.mark.parametrize("style", ["pencil_on_yellow", "ballpoint_on_grey", "ruled_paper"])
def test_faint_or_coloured_ink_on_tinted_paper_is_found(mnist_images, style):
    """Before the lighting fit for small photos, a ~50 px pencil digit on yellow paper with light
    falling off across it came back as "blank image" (67 of 300 such images): the border's
    spread from the light raised the noise floor above the ink. Now every one is found, and it
    looks like the clean digit. Ruled lines and blue ink on grey must not be taken for ink or
    lost either."""
    rng = np.random.default_rng(7)
    found = [(normalize(STYLES[style](digit, rng)), normalize(mnist_png(digit)))
             for digit in mnist_images[0][:120]]
    likeness = [corr(got, clean) for got, clean in found]
    assert np.median(likeness) > 0.85 and np.percentile(likeness, 10) > 0.6


def test_small_photos_go_through_the_single_path_identically(mnist_images):
    """normalize_many sends small photos (a varying border) out of the vectorised stack, so
    their lighting is fitted as normalize() fits it: the results are identical."""
    rng = np.random.default_rng(3)
    blobs = [STYLES["pencil_on_yellow"](d, rng) for d in mnist_images[0][:20]]
    blobs += [mnist_png(d) for d in mnist_images[0][:20]]
    for (got, reason), data in zip(images.normalize_many(blobs), blobs, strict=True):
        assert reason == ""
        np.testing.assert_array_equal(got, normalize(data))


# ---------------------------------------------------------------- normalize_many

# mass centring, dark ink and a digit box so small that 64 px digits take the two-stage reduction
SMALL_BOX_GEOMETRY = Geometry(height=16, width=16, digit_box=8, ink="dark")
ALL_GEOMETRIES = [MNIST_GEOMETRY, DIGITS_8X8_GEOMETRY, SMALL_BOX_GEOMETRY]


def one_by_one(blobs, geometry):
    """What normalize_many must return: normalize() on each, errors as their reason."""
    out = []
    for data in blobs:
        try:
            out.append((normalize(data, geometry), ""))
        except ImageError as err:
            out.append((None, str(err)))
    return out


def assert_same_as_normalize(blobs, geometry):
    got, want = images.normalize_many(blobs, geometry), one_by_one(blobs, geometry)
    assert len(got) == len(want) == len(blobs)
    for k, ((array, reason), (expected, expected_reason)) in enumerate(zip(got, want, strict=True)):
        assert reason == expected_reason, (k, reason, expected_reason)
        if expected is None:
            assert array is None, k
        else:
            assert array.dtype == np.uint8 and array.shape == expected.shape, k
            assert np.array_equal(array, expected), (k, np.abs(array - expected.astype(int)).max())
    return got


def corrupt_blobs(digit: np.ndarray) -> list:
    png = mnist_png(digit)
    jpeg = encode(Image.fromarray(digit), "JPEG")
    noise = np.random.default_rng(7).bytes(300)
    return [b"", png[:60], png[:-20], b"not an image" * 20, noise, jpeg[:200],
            png_header_only(9000, 9000), None]  # fmt: skip


def small_variety(x: np.ndarray, rng: np.random.Generator) -> list[bytes]:
    """Small images of mixed sizes, modes and polarities, blanks and near-blanks, as PNGs."""
    blobs = []
    for k, digit in enumerate(x):
        im = Image.fromarray(digit)
        w, h = [(28, 28), (20, 32), (64, 64), (8, 8), (33, 17), (1, 20), (20, 1)][k % 7]
        resized = np.asarray(im.resize((w, h), Image.Resampling.BILINEAR))
        blobs.append(encode(Image.fromarray(resized), "PNG"))
        blobs.append(mnist_png(255 - digit))  # dark on light
        noisy = np.clip(digit * rng.uniform(0.05, 1) + rng.normal(90, 12, digit.shape), 0, 255)
        blobs.append(mnist_png(noisy.astype(np.uint8)))  # noisy grey ground: contrast stretch
        if k % 3 == 0:  # inverted, noisy and faint: some are blank after the noise floor
            faint = np.clip(200 - digit * rng.uniform(0.02, 0.2) + rng.normal(0, 3, digit.shape),
                            0, 255)  # fmt: skip
            blobs.append(mnist_png(faint.astype(np.uint8)))
        rgba = np.zeros((28, 28, 4), np.uint8)
        rgba[..., 3] = digit  # black ink, transparent ground
        blobs.append(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
        blobs.append(encode(im.convert("RGB").quantize(8), "PNG"))  # palette
        grey16 = (255 - digit).astype(np.uint16) * 257 - rng.integers(0, 200, digit.shape)
        blobs.append(encode(Image.fromarray(np.clip(grey16, 0, 65535).astype(np.uint16)), "PNG"))
        blobs.append(encode(im.convert("1"), "PNG"))
        blobs.append(encode(im.convert("LA"), "PNG"))
        blobs.append(encode(Image.fromarray(digit.astype(np.float32) / 255), "TIFF"))  # mode F
        blobs.append(encode(im, "GIF"))
        blobs.append(encode(im, "BMP"))
        blobs.append(encode(im, "JPEG", quality=70))
    for value in (0, 255, 128):
        blobs.append(encode(Image.new("L", (28, 28), value), "PNG"))
    speck = np.zeros((28, 28), np.uint8)
    speck[14, 14] = 255
    blobs.append(mnist_png(speck))
    return blobs


@pytest.mark.parametrize("geometry", ALL_GEOMETRIES, ids=["mnist", "8x8", "small-box"])
def test_normalize_many_matches_normalize_on_mnist(geometry, mnist_images):
    x, _ = mnist_images
    got = assert_same_as_normalize([mnist_png(d) for d in x[:1000]], geometry)
    assert all(reason == "" for _, reason in got)


@pytest.mark.parametrize("geometry", ALL_GEOMETRIES, ids=["mnist", "8x8", "small-box"])
def test_normalize_many_matches_normalize_on_mixed_input(geometry, mnist_images):
    x, _ = mnist_images
    rng = np.random.default_rng(11)
    small = small_variety(x[:70], rng)
    styled = [STYLES[name](digit, rng) for name in sorted(STYLES) for digit in x[100:104]]
    corrupt = corrupt_blobs(x[0])
    blobs = []  # interleave: small, large and corrupt inputs in one call
    for k, data in enumerate(small):
        blobs.append(data)
        if k % 20 == 0:
            blobs.extend(styled[k // 20 :: 11])
        if k % 50 == 0:
            blobs.extend(corrupt)
    got = assert_same_as_normalize(blobs, geometry)
    reasons = [reason for _, reason in got]
    assert sum(r.startswith("blank") for r in reasons) >= 4
    assert sum(r.startswith("not a readable") for r in reasons) >= 5
    assert sum(r.startswith("image too large") for r in reasons) >= 1
    sizes = {Image.open(io.BytesIO(b)).size for b in blobs if b and b[:4] == b"\x89PNG"}
    assert {(28, 28), (20, 32), (64, 64), (8, 8)} <= sizes and max(max(s) for s in sizes) > 64


def test_normalize_many_stacks_in_bounded_groups(mnist_images, monkeypatch):
    # Long inputs are cut into stacks of STACK images per size; flushing must keep the order.
    monkeypatch.setattr(images_batch, "STACK", 3)
    blobs = small_variety(mnist_images[0][200:214], np.random.default_rng(12))
    assert_same_as_normalize(blobs, MNIST_GEOMETRY)


def test_normalize_many_processes_small_images_together(mnist_images, monkeypatch):
    def one_at_a_time(*args, **kwargs):
        raise AssertionError("a small image took the one-by-one path")

    monkeypatch.setattr(images_batch, "normalize_grey", one_at_a_time)
    got = images.normalize_many([mnist_png(d) for d in mnist_images[0][:10]])
    assert [reason for _, reason in got] == [""] * 10


def test_normalize_many_of_nothing_is_empty():
    assert images.normalize_many([]) == []
    assert images.normalize_many((), DIGITS_8X8_GEOMETRY) == []


def test_plain_png_fast_path_matches_pillow(mnist_images):
    """MNIST-style PNGs skip Pillow's chunk reader; the pixels are Pillow's own."""
    from scorer.images.batch import small_grey_png

    for digit in mnist_images[0][:50]:
        blob = encode(Image.fromarray(digit), "PNG")
        height, width, pixels = small_grey_png(blob)
        assert (height, width) == digit.shape
        assert np.array_equal(np.frombuffer(pixels, np.uint8).reshape(digit.shape), digit)


def test_plain_png_fast_path_declines_anything_unusual(mnist_images):
    from scorer.images.batch import small_grey_png

    digit = mnist_images[0][0]
    plain = encode(Image.fromarray(digit), "PNG")
    bad_crc = bytearray(plain)
    bad_crc[-20] ^= 0xFF  # inside the IDAT data or its CRC
    interlaced = bytearray(plain)  # Pillow cannot write Adam7: set the IHDR flag, fix the CRC
    interlaced[28] = 1
    interlaced[29:33] = zlib.crc32(bytes(interlaced[12:29])).to_bytes(4, "big")
    declined = {
        "interlaced": bytes(interlaced),
        "16-bit": encode(Image.fromarray(digit.astype(np.uint16) * 257), "PNG"),
        "transparency": encode(Image.fromarray(digit), "PNG", transparency=0),
        "rgb": encode(Image.fromarray(digit).convert("RGB"), "PNG"),
        "large": encode(Image.new("L", (65, 10)), "PNG"),
        "truncated": plain[:-30],
        "bad crc": bytes(bad_crc),
        "signature only": plain[:8],
        "jpeg": encode(Image.fromarray(digit), "JPEG"),
    }
    for name, blob in declined.items():
        assert small_grey_png(blob) is None, name
    # and whatever it declines still normalizes exactly as one at a time
    blobs = list(declined.values())
    singles = []
    for blob in blobs:
        try:
            singles.append((normalize(blob), ""))
        except ImageError as err:
            singles.append((None, str(err)))
    for (a, ra), (b, rb) in zip(images.normalize_many(blobs), singles, strict=True):
        assert ra == rb and (a is None and b is None or np.array_equal(a, b))


def test_decoded_size_is_bounded_from_the_header():
    """A small PNG declaring 6000x6000 RGBA (144 MB of pixels) is refused before decoding; one
    just under the limit is decoded, reduced early, and its size estimated from the header."""
    big = encode(Image.new("RGBA", (6000, 4000), (255, 255, 255, 0)), "PNG")
    assert len(big) < 200_000
    assert decoding.estimated_decoded_bytes(big) == 0  # refused: decoding it costs nothing
    with pytest.raises(ImageError, match="too large.*MB to decode"):
        decode(big)
    near = Image.new("RGBA", (3400, 3400), (255, 255, 255, 0))
    near.paste((0, 0, 0, 255), (1500, 1000, 1900, 2400))
    data = encode(near, "PNG")
    assert decoding.estimated_decoded_bytes(data) == 3400 * 3400 * 4 <= decoding.MAX_DECODED_BYTES
    im = decoding.open_image(data, 512)
    assert max(im.size) <= 4 * 512  # reduced right after decoding
    assert normalize(data).max() > 0


def test_a_corrupt_exif_chunk_is_ignored(mnist_images):
    """A valid PNG whose eXIf chunk is garbage is scored as if it had none."""
    data = mnist_png(mnist_images[0][0])
    garbage = b"\xff" * 40  # not even a TIFF header
    chunk = (struct.pack(">I", len(garbage)) + b"eXIf" + garbage
             + struct.pack(">I", zlib.crc32(b"eXIf" + garbage) & 0xFFFFFFFF))
    end = data.index(b"IDAT") - 4  # before the first IDAT chunk
    broken = data[:end] + chunk + data[end:]
    np.testing.assert_array_equal(normalize(broken), normalize(data))
    assert images.normalize_many([broken])[0][0] is not None


def test_a_jpeg_of_too_many_scans_is_refused_before_decoding():
    """A progressive JPEG costs a pass over the whole image per scan: thousands of scans are
    minutes of CPU for one small upload. More than MAX_JPEG_SCANS are refused unread; an
    ordinary progressive JPEG (about 10 scans) decodes as before."""
    from scorer.images.decoding import JPEG_SCAN, MAX_JPEG_SCANS

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray((rng.random((200, 300)) * 255).astype(np.uint8)).save(
        buffer, "JPEG", progressive=True, quality=80)
    plain = buffer.getvalue()
    assert 2 <= plain.count(JPEG_SCAN) <= 20
    assert decode(plain).shape == (200, 300)
    end = plain.rfind(b"\xff\xd9")
    last_scan = plain[plain.rfind(JPEG_SCAN):end]
    bomb = plain[:end] + last_scan * MAX_JPEG_SCANS + b"\xff\xd9"  # repeated refinement scans
    with pytest.raises(ImageError, match=r"too many JPEG scans: \d+ \(limit 100\)"):
        decode(bomb)


@pytest.fixture
def slow_image() -> bytes:
    """A legitimate 12 MP progressive JPEG of noise: a few tenths of a second to decode here."""
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).random((3000, 4000)) * 255
    Image.fromarray(noise.astype(np.uint8)).save(buffer, "JPEG", progressive=True, quality=80)
    return buffer.getvalue()


@pytest.fixture
def short_budget():
    """A time per image of 20 ms for the test, the default restored after it."""
    from scorer.images import budget

    budget.set_seconds_per_image(0.02)
    yield 0.02
    budget.set_seconds_per_image(budget.SECONDS_PER_IMAGE)


def test_an_image_that_outlasts_its_time_budget_is_refused(slow_image, short_budget,
                                                           mnist_images):
    """Decoding and normalizing one image is interrupted when the time per image runs out,
    in every path an image takes (one, many, a number field), and the next image has a
    budget of its own."""
    import time

    from scorer.images.budget import TooSlow
    from scorer.numbers import cut_field

    digit = mnist_png(mnist_images[0][0])
    for read in (normalize, lambda data: cut_field(data, MNIST_GEOMETRY)):
        started = time.perf_counter()
        with pytest.raises(TooSlow, match=r"took too long: more than 0\.02 s"):
            read(slow_image)
        assert time.perf_counter() - started < 0.5  # interrupted, not finished
        read(digit)  # no stale timer: a quick image after a slow one is read
    results = images.normalize_many([digit, slow_image, digit])
    assert [reason for _, reason in results] == ["", str(TooSlow(short_budget)), ""]
    np.testing.assert_array_equal(results[0][0], normalize(digit))


def test_the_time_budget_is_generous_by_default_and_never_nests(slow_image):
    """With the default budget the slow image is read; a budget inside another does not
    restart the clock (the outer one counts) and leaves no timer running."""
    import signal

    from scorer.images import budget

    assert budget.seconds_per_image() == budget.SECONDS_PER_IMAGE == 10
    with pytest.raises(ImageError, match="blank"):  # noise is background: read to the end
        normalize(slow_image)
    with budget.time_budget():
        outer = signal.getitimer(signal.ITIMER_REAL)[0]
        with budget.time_budget():
            assert 0 < signal.getitimer(signal.ITIMER_REAL)[0] <= outer
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0
    with pytest.raises(ValueError, match="positive"):
        budget.set_seconds_per_image(0)
