"""The field reader: a small CTC sequence model that reads a whole number field (the scorer's
``scorer.numbers.sequence``), trained on fields composed here from the training digits only.

Composed fields are what the cut-based reader finds hardest: half have digits touching or
overlapping, half spaced; digit sizes, heights on the line, stroke widths and ink levels vary.
Each field becomes the model's input through the scorer's own `line_image`, so that training
sees what serving sees. No other source of digits is used (the held-out sets stay held out).
"""

from __future__ import annotations

import time

import keras
import numpy as np
from keras import layers, ops
from PIL import Image, ImageFilter

from scorer.numbers.field import INK_LEVEL  # a composed pixel above it is ink, as in serving
from scorer.numbers.sequence import BLANK, LINE_HEIGHT, LINE_WIDTH, line_image, spell
from trainer import export
from trainer.recipes import FIELD_READER_DEFAULTS as DEFAULTS

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
    """A field of 1-MAX_DIGITS training digits side by side -> (float32 light-on-dark grey of
    CANVAS_HEIGHT rows, labels)."""
    count = int(rng.integers(1, MAX_DIGITS + 1)) if rng.random() < 0.1 else \
        int(rng.integers(2, MAX_DIGITS + 1))
    height = rng.uniform(40, 72)
    touching = rng.random() < 0.5
    canvas = np.zeros((CANVAS_HEIGHT, int(height * 1.2 * count) + 40), np.float32)
    left = x_pos = int(rng.integers(4, 20))
    labels: list[int] = []
    for index in rng.integers(0, len(x), count):
        glyph = crop_to_ink(x[index]).astype(np.float32)
        scale = height * rng.uniform(0.9, 1.1) / glyph.shape[0]
        size = (max(2, round(glyph.shape[1] * scale)), max(2, round(glyph.shape[0] * scale)))
        glyph = np.asarray(Image.fromarray(glyph).resize(size, Image.Resampling.BILINEAR))
        width, tall = glyph.shape[1], glyph.shape[0]
        top = int(np.clip((CANVAS_HEIGHT - tall) / 2 + rng.uniform(-0.08, 0.08) * height,
                          0, CANVAS_HEIGHT - tall))
        if labels:
            gap = rng.uniform(-0.35, 0.04) if touching else rng.uniform(0.06, 0.6)
            x_pos = max(left, x_pos + round(gap * height * 0.6))
        if x_pos + width > canvas.shape[1]:
            break
        region = canvas[top:top + tall, x_pos:x_pos + width]
        np.maximum(region, glyph, out=region)
        x_pos += width
        labels.append(int(y[index]))
    return restyle(canvas[:, :x_pos + 20], rng), labels


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


def make_lines(x: np.ndarray, y: np.ndarray, count: int, seed: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` composed fields -> (uint8 (n, LINE_HEIGHT, LINE_WIDTH) inputs, int32 (n,
    MAX_DIGITS) labels padded with BLANK, int32 (n,) label lengths)."""
    rng = np.random.default_rng(seed)
    lines = np.zeros((count, LINE_HEIGHT, LINE_WIDTH), np.uint8)
    labels = np.full((count, MAX_DIGITS), BLANK, np.int32)
    lengths = np.zeros(count, np.int32)
    for k in range(count):
        grey, digits = compose(x, y, rng)
        lines[k] = line_image(grey, grey > INK_LEVEL).pixels
        labels[k, :len(digits)] = digits
        lengths[k] = len(digits)
    return lines, labels, lengths


def build() -> tuple[keras.Model, keras.Model]:
    """(the model trained, on logits; the model exported: raw 0-255 pixels (n, LINE_HEIGHT,
    LINE_WIDTH) -> (n, STEPS, 11) probabilities). Conv2D, max pooling, Reshape, Conv1D and
    Dense only: builtins of TFLite (and TensorFlow Lite Micro)."""
    pixels = keras.Input((LINE_HEIGHT, LINE_WIDTH), name="pixels")
    h = layers.Rescaling(1.0 / 255, name="scale_0_1")(pixels)
    h = layers.Reshape((LINE_HEIGHT, LINE_WIDTH, 1), name="add_channel")(h)
    for i, (channels, pool) in enumerate(((16, (2, 2)), (32, (2, 2)), (64, (2, 1)),
                                          (64, (2, 1)), (64, (2, 1))), start=1):
        h = layers.Conv2D(channels, 3, padding="same", activation="relu", name=f"conv_{i}")(h)
        h = layers.MaxPooling2D(pool, name=f"pool_{i}")(h)
    h = layers.Reshape((STEPS, 64), name="columns")(h)
    h = layers.Conv1D(96, 5, padding="same", activation="relu", name="context")(h)
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
