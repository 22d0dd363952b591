"""The Keras models: a Sequential MLP (default) and a small CNN.

Both take raw 0-255 pixels of shape (height, width): the scaling is a layer of the model, so the
exported TFLite files need no preprocessing outside them. Both use only layers that convert to
TensorFlow Lite Micro builtins; the int8 models' ops are listed in the bundle (trainer/edge.py).
Their default sizes live in `trainer.recipes`, not here.
"""

from __future__ import annotations

import keras
from keras import layers

N_CLASSES = 10
PIXEL_MAX = 255.0


def build_model(
    arch: str,
    input_shape: tuple[int, int],
    *,
    hidden: tuple[int, ...],
    dropout: float,
    learning_rate: float,
) -> keras.Model:
    """A compiled model mapping float32 (n, height, width) raw pixels to (n, 10) probabilities."""
    if arch == "mlp":
        body = mlp_layers(hidden, dropout)
    elif arch == "cnn":
        body = cnn_layers(input_shape, hidden, dropout)
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
    return [layers.Flatten(name="flatten"), *dense_layers(hidden, dropout)]


def dense_layers(hidden: tuple[int, ...], dropout: float) -> list[layers.Layer]:
    stack: list[layers.Layer] = []
    for i, units in enumerate(hidden, start=1):
        stack.append(layers.Dense(units, activation="relu", name=f"hidden_{i}"))
        if dropout > 0:
            stack.append(layers.Dropout(dropout, name=f"dropout_{i}"))
    return stack


def cnn_layers(input_shape: tuple[int, int], hidden: tuple[int, ...],
               dropout: float) -> list[layers.Layer]:
    """Conv blocks, then the Dense `hidden` layers; 'same' padding so the 8x8 digits fit as well
    as MNIST's 28x28."""
    return [
        layers.Reshape((*input_shape, 1), name="add_channel"),
        layers.Conv2D(32, 3, padding="same", activation="relu", name="conv_1"),
        layers.MaxPooling2D(2, name="pool_1"),
        layers.Conv2D(64, 3, padding="same", activation="relu", name="conv_2"),
        layers.MaxPooling2D(2, name="pool_2"),
        layers.Flatten(name="flatten"),
        *dense_layers(hidden, dropout),
    ]
