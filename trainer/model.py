"""The Keras models: the seed's Sequential MLP (default) and a small CNN (opt-in).

Both take raw 0-255 pixels of shape (height, width): the scaling is a layer of the model, so the
exported TFLite files need no preprocessing outside them.
"""

from __future__ import annotations

import keras
from keras import layers

N_CLASSES = 10
PIXEL_MAX = 255.0


def build_model(
    arch: str,
    input_shape: tuple[int, int],
    hidden: tuple[int, ...] = (256, 128),
    dropout: float = 0.2,
    learning_rate: float = 1e-3,
) -> keras.Model:
    """A compiled model mapping float32 (n, height, width) raw pixels to (n, 10) probabilities."""
    if arch == "mlp":
        body = mlp_layers(hidden, dropout)
    elif arch == "cnn":
        body = cnn_layers(input_shape, dropout)
    else:
        raise ValueError(f"unknown architecture {arch!r}: choose 'mlp' or 'cnn'")
    model = keras.Sequential(
        [
            keras.Input(shape=input_shape, name="pixels"),
            layers.Rescaling(1.0 / PIXEL_MAX, name="scale_0_1"),
            *body,
            layers.Dense(N_CLASSES, activation="softmax", name="probabilities"),
        ],
        name=f"digits_{arch}",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def mlp_layers(hidden: tuple[int, ...], dropout: float) -> list[layers.Layer]:
    stack: list[layers.Layer] = [layers.Flatten(name="flatten")]
    for i, units in enumerate(hidden, start=1):
        stack.append(layers.Dense(units, activation="relu", name=f"hidden_{i}"))
        if dropout > 0:
            stack.append(layers.Dropout(dropout, name=f"dropout_{i}"))
    return stack


def cnn_layers(input_shape: tuple[int, int], dropout: float) -> list[layers.Layer]:
    """Two conv blocks; 'same' padding so the 8x8 digits fit as well as MNIST's 28x28."""
    return [
        layers.Reshape((*input_shape, 1), name="add_channel"),
        layers.Conv2D(32, 3, padding="same", activation="relu", name="conv_1"),
        layers.MaxPooling2D(2, name="pool_1"),
        layers.Conv2D(64, 3, padding="same", activation="relu", name="conv_2"),
        layers.MaxPooling2D(2, name="pool_2"),
        layers.Flatten(name="flatten"),
        layers.Dropout(dropout, name="dropout"),
        layers.Dense(128, activation="relu", name="hidden"),
    ]


def augmentation(seed: int) -> keras.Sequential:
    """Light augmentation of (n, h, w, 1) training batches; never part of the exported model."""
    return keras.Sequential(
        [
            layers.RandomRotation(0.04, fill_mode="constant", seed=seed),
            layers.RandomTranslation(0.08, 0.08, fill_mode="constant", seed=seed + 1),
            layers.RandomZoom(0.08, fill_mode="constant", seed=seed + 2),
        ],
        name="augment",
    )
