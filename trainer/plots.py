"""PNG figures for the training report (matplotlib, trainer only): each returns PNG bytes."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

GALLERY_MAX = 36


def to_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def confusion_matrix_png(matrix: np.ndarray, labels: list[str], title: str) -> bytes:
    """Heatmap of an int (n, n) confusion matrix, rows true, columns predicted, counts annotated."""
    figure, axes = plt.subplots(figsize=(6.4, 5.6))
    row_share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    image = axes.imshow(row_share, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, label="share of the true class")
    for (i, j), count in np.ndenumerate(matrix):
        axes.text(j, i, str(count), ha="center", va="center", fontsize=7,
                  color="white" if row_share[i, j] > 0.5 else "black")
    axes.set(xticks=range(len(labels)), yticks=range(len(labels)), xticklabels=labels,
             yticklabels=labels, xlabel="predicted", ylabel="true", title=title)
    return to_png(figure)


def training_curves_png(history: dict[str, list[float]]) -> bytes:
    """Loss and accuracy per epoch, training and validation."""
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = range(1, len(history["loss"]) + 1)
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        axes.plot(epochs, history[metric], label="training")
        if f"val_{metric}" in history:
            axes.plot(epochs, history[f"val_{metric}"], label="validation")
        axes.set(xlabel="epoch", ylabel=metric, title=metric)
        axes.grid(alpha=0.3)
        axes.legend()
    return to_png(figure)


def misclassified_png(images: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray,
                      confidence: np.ndarray) -> bytes:
    """Gallery of up to 36 misclassified test digits, least confident mistakes last."""
    wrong = np.flatnonzero(y_true != y_pred)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")][:GALLERY_MAX]
    columns = 9
    rows = max(1, int(np.ceil(len(wrong) / columns)))
    figure, grid = plt.subplots(rows, columns, figsize=(columns * 1.1, rows * 1.3), squeeze=False)
    for axes in grid.flat:
        axes.axis("off")
    for axes, i in zip(grid.flat, wrong, strict=False):
        axes.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        axes.set_title(f"{y_true[i]}→{y_pred[i]} {confidence[i]:.2f}", fontsize=7)
    figure.suptitle(f"misclassified test digits (true→predicted confidence), {len(wrong)} shown")
    return to_png(figure)
