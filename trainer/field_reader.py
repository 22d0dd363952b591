"""The field reader: a small CTC sequence model that reads a whole number field (the scorer's
``scorer.numbers.sequence``), trained on fields composed here from the training digits only.

Composed fields are what the cut-based reader finds hardest: half have digits touching or
overlapping, half spaced (some a comb's cell apart); digit sizes, heights on the line, stroke
widths and ink levels vary; a third hold marks that are not digits (currency signs, separators,
a comb's ticks), drawn here and labelled nothing; a fifth lose what removing a form line takes
from the digits it crossed.
Each field is drawn as a scan and becomes the model's input through the scorer's own
`cut_field` (``trainer.served_lines``), so that training sees what serving sees. No other source
of digits is used (the held-out sets stay held out).
"""

from __future__ import annotations

import time

import keras
import numpy as np
from keras import layers, ops
from PIL import Image, ImageDraw, ImageFilter

from scorer.numbers.field import INK_LEVEL  # a composed pixel above it is ink, as in serving
from scorer.numbers.sequence import BLANK, LINE_HEIGHT, LINE_WIDTH, spell
from trainer import export
from trainer.recipes import FIELD_READER_DEFAULTS as DEFAULTS
from trainer.served_lines import CHUNK, ServedLines

STEPS = LINE_WIDTH // 4  # the model's column steps (the convolutions halve the width twice)
MAX_DIGITS = 12  # composed fields hold 2-12 digits (1 in a tenth of them); longer ones are rare
CANVAS_HEIGHT = 96  # composed at about the scorer's working height (64-100 px)


def crop_to_ink(digit: np.ndarray) -> np.ndarray:
    """A 28x28 training digit cut to its ink's bounding box."""
    ys, xs = np.nonzero(digit > 30)
    if ys.size == 0:
        return digit
    return digit[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def compose(x: np.ndarray, y: np.ndarray, rng: np.random.Generator
            ) -> tuple[np.ndarray, list[int]]:
    """A field of 1-MAX_DIGITS training digits side by side, with marks that are not digits
    in a third of them -> (float32 light-on-dark grey of CANVAS_HEIGHT rows, labels)."""
    count = int(rng.integers(1, MAX_DIGITS + 1)) if rng.random() < 0.1 else \
        int(rng.integers(2, MAX_DIGITS + 1))
    height = rng.uniform(40, 72)
    touching = rng.random() < 0.5
    cells = not touching and rng.random() < 0.3  # spaced as in a comb: about a digit apart
    items = [(int(y[i]), crop_to_ink(x[i]).astype(np.float32))
             for i in rng.integers(0, len(x), count)]
    items = with_marks(items, height, rng)
    canvas = np.zeros((CANVAS_HEIGHT, int(height * 1.8 * len(items)) + 40), np.float32)
    left = x_pos = int(rng.integers(4, 20))
    labels: list[int] = []
    for placed, (label, glyph) in enumerate(items):
        scale = height * rng.uniform(0.9, 1.1) / glyph.shape[0] if label >= 0 else \
            min(1.0, CANVAS_HEIGHT / glyph.shape[0])  # marks are drawn to size
        size = (max(2, round(glyph.shape[1] * scale)), max(2, round(glyph.shape[0] * scale)))
        glyph = np.asarray(Image.fromarray(glyph).resize(size, Image.Resampling.BILINEAR))
        width, tall = glyph.shape[1], glyph.shape[0]
        middle = (CANVAS_HEIGHT - tall) / 2 + rng.uniform(-0.08, 0.08) * height
        top = int(np.clip(middle + mark_drop(label, height, tall), 0, CANVAS_HEIGHT - tall))
        if placed:
            gap = rng.uniform(-0.45, 0.04) if touching and label >= 0 else \
                rng.uniform(0.5, 1.5) if cells else rng.uniform(0.06, 0.6)
            x_pos = max(left, x_pos + round(gap * height * 0.6))
        if x_pos + width > canvas.shape[1]:
            break
        region = canvas[top:top + tall, x_pos:x_pos + width]
        np.maximum(region, glyph, out=region)
        x_pos += width
        if label >= 0:
            labels.append(label)
    return damage(restyle(canvas[:, :x_pos + 20], rng), rng), labels


# Marks that are not digits, labelled nothing (CTC's blank), so that the field reader learns to
# pass over them as the cut reader skips them: currency signs, separators, and the ticks a
# comb leaves once its baseline is removed. Drawn here as pen strokes; their label says where they
# stand: CENTRED on the digits' middle, ON_BASELINE, or BELOW the baseline (a comma's tail).
CENTRED, ON_BASELINE, BELOW = -1, -2, -3


def with_marks(items: list, height: float, rng: np.random.Generator) -> list:
    """(label, glyph) digits -> the same with marks in a third of the fields: a currency sign
    before or after, one or two separators inside, or comb ticks between every digit."""
    pen = height * rng.uniform(0.09, 0.15)
    roll = rng.random()
    if roll < 0.12:
        sign = (CENTRED, dollar(height, pen, rng) if rng.random() < 0.5 else euro(height, pen, rng))
        return [sign, *items] if rng.random() < 0.7 else [*items, sign]
    if roll < 0.24 and len(items) > 1:
        for _ in range(int(rng.integers(1, 3))):
            at = int(rng.integers(1, len(items)))
            items.insert(at, separator(height, pen, rng))
        return items
    if roll < 0.33:
        out = [(ON_BASELINE, tick(height, pen, rng))]
        for item in items:
            out += [item, (ON_BASELINE, tick(height, pen, rng))]
        return out
    return items


def mark_drop(label: int, height: float, tall: int) -> float:
    """How far below the digits' middle a glyph's middle goes: 0 for digits and CENTRED marks;
    a mark ON_BASELINE stands on the digits' baseline; one BELOW hangs a fifth of it lower."""
    if label in (ON_BASELINE, BELOW):
        return height / 2 - tall / 2 + (0.2 * height if label == BELOW else 0.0)
    return 0.0


def _strokes(size: tuple[float, float], pen: float, draw, rng: np.random.Generator
             ) -> np.ndarray:
    """A mark of `size` (w, h) px, padded by the pen, drawn by `draw(ImageDraw, left/top,
    right, bottom, pen width)` in white on black, turned by up to 10 degrees -> float32 grey."""
    width = max(2, round(pen))
    pad = width + 2
    image = Image.new("L", (round(size[0]) + 2 * pad, round(size[1]) + 2 * pad))
    draw(ImageDraw.Draw(image), pad, round(size[0]) + pad, round(size[1]) + pad, width)
    image = image.rotate(rng.uniform(-10, 10), Image.Resampling.BILINEAR, expand=True)
    return np.asarray(image, np.float32)


def dollar(height: float, pen: float, rng: np.random.Generator) -> np.ndarray:
    """An S of two arcs with a bar through it."""
    h = height * rng.uniform(0.9, 1.2)
    w = h * rng.uniform(0.45, 0.6)

    def draw(d, p, right, bottom, width):
        middle = (p + bottom) / 2
        d.arc((p, p + 0.1 * h, right, middle), 90, 330, 255, width)
        d.arc((p, middle, right, bottom - 0.1 * h), 270, 150, 255, width)
        d.line(((p + right) / 2, p, (p + right) / 2, bottom), 255, max(1, width - 1))
    return _strokes((w, h), pen, draw, rng)


def euro(height: float, pen: float, rng: np.random.Generator) -> np.ndarray:
    """A C open to the right, crossed by two bars."""
    h = height * rng.uniform(0.85, 1.1)
    w = h * rng.uniform(0.6, 0.8)

    def draw(d, p, right, bottom, width):
        d.arc((p + 0.15 * w, p, right + 0.25 * w, bottom), 45, 315, 255, width)
        for level in (0.4, 0.6):
            y = p + level * h
            d.line((p, y, p + 0.65 * w, y), 255, max(1, width - 1))
    return _strokes((w, h), pen, draw, rng)


def separator(height: float, pen: float, rng: np.random.Generator) -> tuple[int, np.ndarray]:
    """A dash (centred), a dot (on the baseline) or a comma (a dot with a tail)."""
    kind = rng.integers(0, 3)
    if kind == 0:
        w = height * rng.uniform(0.2, 0.5)
        return CENTRED, _strokes((w, 1), pen, lambda d, p, r, b, wd: d.line((p, b, r, b), 255, wd),
                                 rng)
    dot = pen * rng.uniform(1.0, 1.8)
    if kind == 1:
        return ON_BASELINE, _strokes((dot, dot), pen,
                                     lambda d, p, r, b, wd: d.ellipse((p, p, r, b), 255), rng)
    tail = height * rng.uniform(0.15, 0.3)

    def draw(d, p, right, bottom, width):
        d.ellipse((p + dot * 0.3, p, right, p + dot), 255)
        d.line((right - dot * 0.2, p + dot * 0.6, p, bottom), 255, max(1, width - 1))
    return BELOW, _strokes((dot * 1.3, dot + tail), pen, draw, rng)


def tick(height: float, pen: float, rng: np.random.Generator) -> np.ndarray:
    """A short upright stroke, what a comb's printed tick leaves once the baseline is gone."""
    tall = height * rng.uniform(0.15, 0.5)
    return _strokes((1, tall), pen * rng.uniform(0.4, 0.8),
                    lambda d, p, r, b, wd: d.line((p, p, p, b), 255, wd), rng)


def restyle(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Vary the stroke width and the ink level as pens, pencils and scans do."""
    image = Image.fromarray(grey)
    roll = rng.random()
    if roll < 0.2:
        image = image.filter(ImageFilter.MaxFilter(3))  # a thicker pen
    elif roll < 0.45:
        image = image.filter(ImageFilter.MinFilter(3))  # a thinner one
    elif roll < 0.75:
        image = image.filter(ImageFilter.MinFilter(5))  # a fine pen or pencil
    out = np.asarray(image, np.float32) * rng.uniform(0.55, 1.0)
    return out * (255.0 / max(float(out.max()), 1.0))


def damage(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What removing a form line leaves of the digits it crossed, in a fifth of the fields: a
    band of rows (a ruled line or a box's edge) or of columns (a cell's side) erased, in place,
    except where a stroke crosses it, continuing on both sides, as the scorer's line removal
    keeps. (A simpler test than `scorer.numbers.lines.erase_band`'s, which looks two pixels
    out and one sideways; calling it instead changes the composed fields, so it waits for the
    next retraining of the field reader.)"""
    roll = rng.random()
    if roll >= 0.2:
        return grey
    out = grey.T if roll < 0.07 else grey  # a cell's side: the same on columns
    inked = np.flatnonzero(out.max(1) > INK_LEVEL)
    if inked.size < 8:
        return grey
    for _ in range(int(rng.integers(1, 3))):
        thick = int(rng.integers(1, 4))
        y0 = int(rng.integers(inked[0] + 2, max(inked[0] + 3, inked[-1] - thick - 1)))
        y1 = y0 + thick
        crossing = (out[y0 - 1] > INK_LEVEL) & (out[y1] > INK_LEVEL)
        out[y0:y1, ~crossing] = 0.0
    return grey


def make_lines(x: np.ndarray, y: np.ndarray, count: int, seed: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` composed fields -> (uint8 (n, LINE_HEIGHT, LINE_WIDTH) inputs, as the scorer
    makes them of each field drawn as a scan; int32 (n, MAX_DIGITS) labels padded with BLANK,
    int32 (n,) label lengths)."""
    rng = np.random.default_rng(seed)
    lines = np.zeros((count, LINE_HEIGHT, LINE_WIDTH), np.uint8)
    labels = np.full((count, MAX_DIGITS), BLANK, np.int32)
    lengths = np.zeros(count, np.int32)
    with ServedLines() as served:
        for start in range(0, count, CHUNK):
            greys = []
            for k in range(start, min(count, start + CHUNK)):
                grey, digits = compose(x, y, rng)
                greys.append(grey)
                labels[k, :len(digits)] = digits
                lengths[k] = len(digits)
            lines[start:start + len(greys)] = served.lines(greys)
    return lines, labels, lengths


def build() -> tuple[keras.Model, keras.Model]:
    """(the model trained, on logits; the model exported: raw 0-255 pixels (n, LINE_HEIGHT,
    LINE_WIDTH) -> (n, STEPS, 11) probabilities). Conv2D, max pooling, Reshape, Conv1D and
    Dense only: builtins of TFLite (and TensorFlow Lite Micro)."""
    pixels = keras.Input((LINE_HEIGHT, LINE_WIDTH), name="pixels")
    h = layers.Rescaling(1.0 / 255, name="scale_0_1")(pixels)
    h = layers.Reshape((LINE_HEIGHT, LINE_WIDTH, 1), name="add_channel")(h)
    for i, (channels, pool) in enumerate(((16, (2, 2)), (32, (2, 2)), (64, (2, 1)),
                                          (96, (2, 1)), (96, (2, 1))), start=1):
        h = layers.Conv2D(channels, 3, padding="same", activation="relu", name=f"conv_{i}")(h)
        h = layers.MaxPooling2D(pool, name=f"pool_{i}")(h)
    h = layers.Reshape((STEPS, 96), name="columns")(h)
    for i in (1, 2):  # each sees 5 steps (20 px, most of a digit's width) around its own
        h = layers.Conv1D(128, 5, padding="same", activation="relu", name=f"context_{i}")(h)
    logits = layers.Dense(BLANK + 1, name="logits")(h)
    trained = keras.Model(pixels, logits, name="field_reader_logits")
    exported = keras.Model(pixels, layers.Softmax(name="probabilities")(logits),
                           name="field_reader")
    return trained, exported


def ctc_loss(y_true, y_pred):
    """y_true: (n, MAX_DIGITS + 1), the labels then their length; y_pred: (n, STEPS, 11)."""
    labels = ops.cast(y_true[:, :MAX_DIGITS], "int32")
    lengths = ops.cast(y_true[:, MAX_DIGITS], "int32")
    steps = ops.full((ops.shape(y_pred)[0],), STEPS, dtype="int32")
    return ops.mean(ops.ctc_loss(labels, y_pred, lengths, steps, mask_index=BLANK))


def train_field_reader(x: np.ndarray, y: np.ndarray, *, fields: int, epochs: int, seed: int,
                       learning_rate: float = DEFAULTS["learning_rate"],
                       batch_size: int = DEFAULTS["batch_size"]) -> tuple[bytes, dict]:
    """Train on `fields` fields composed from the training digits `x`, `y`; returns the int8
    TFLite model and facts for the manifest (its exact-match accuracy on composed fields it
    did not train on, from the int8 model as the scorer runs it)."""
    started = time.perf_counter()
    keras.utils.set_random_seed(seed)  # the same weights whatever was trained before
    lines, labels, lengths = make_lines(x, y, fields, seed)
    targets = np.concatenate([labels, lengths[:, None]], 1)
    trained, exported = build()
    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate, epochs * int(np.ceil(fields / batch_size)), alpha=0.02)
    trained.compile(keras.optimizers.Adam(schedule), loss=ctc_loss)
    print(f"field reader: {fields} composed fields, {epochs} epochs")
    trained.fit(lines.astype(np.float32), targets, batch_size=batch_size, epochs=epochs,
                verbose=2, shuffle=True)
    int8 = export.to_tflite_int8(exported, lines, seed)
    check_lines, check_labels, check_lengths = make_lines(x, y, min(1000, fields), seed + 1)
    exact = exact_share(int8, check_lines, check_labels, check_lengths)
    facts = {"composed_fields": fields, "epochs": epochs, "input": [LINE_HEIGHT, LINE_WIDTH],
             "steps": STEPS, "blank": BLANK, "composed_exact_int8": round(exact, 4),
             "seconds": round(time.perf_counter() - started, 1)}
    print(f"field reader: {exact:.2%} of unseen composed fields exactly right (int8)")
    return int8, facts


def exact_share(model_content: bytes, lines: np.ndarray, labels: np.ndarray,
                lengths: np.ndarray) -> float:
    """The share of lines the TFLite model reads exactly, decoded as the scorer decodes."""
    probabilities = export.tflite_predict(model_content, lines)
    right = [[d.value for d in spell(p)] == list(labels[k, :lengths[k]])
             for k, p in enumerate(probabilities)]
    return float(np.mean(right))
