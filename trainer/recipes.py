"""The training recipe of each architecture: the one place its defaults live.

`digits-train` shows them in --help and `trainer.train` fills every option the user did not give
from here, so `--arch cnn` alone trains the CNN's recipe. Kept free of TensorFlow imports so the
CLI's help and usage errors stay instant.
"""

from __future__ import annotations

ARCH_DEFAULTS: dict[str, dict] = {
    # hidden: Dense layer sizes (for the CNN, after its conv blocks); dropout after each of them
    "mlp": {"hidden": (512, 256), "dropout": 0.3, "epochs": 15, "learning_rate": 1e-3},
    "cnn": {"hidden": (128,), "dropout": 0.3, "epochs": 15, "learning_rate": 1e-3},
}
TUNABLES = ("hidden", "dropout", "epochs", "learning_rate")
# Fine-tuning a bundle on the user's images (digits-train --base): a gentle rate over a fixed
# number of epochs, each epoch REPLAY times as many of the base's training images as the user's
# (keeps what the base knew), a share of the user's images held out to judge the result.
# The field reader (trainer/field_reader.py): fields composed from the training digits, epochs,
# peak learning rate (cosine decay) and batch size.
FIELD_READER_DEFAULTS: dict = {"fields": 60_000, "epochs": 10, "learning_rate": 2e-3,
                               "batch_size": 64}
FINETUNE_DEFAULTS: dict = {"epochs": 20, "learning_rate": 6e-4, "batch_size": 64, "replay": 4.0,
                           "holdout": 0.2}


def describe(option: str) -> str:
    """'mlp 512,256; cnn 128': an option's default per architecture, for --help."""
    def show(value) -> str:
        return ",".join(map(str, value)) if isinstance(value, tuple) else f"{value:g}"

    return "; ".join(f"{arch} {show(recipe[option])}" for arch, recipe in ARCH_DEFAULTS.items())
