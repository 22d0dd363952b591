"""Metrics over labelled predictions, and their scikit-learn-compatible text and CSV.

Pure functions over numpy arrays. This is part of the light scorer (it must fit a 50 MB Lambda
zip), so it deliberately re-implements the few scikit-learn metrics it needs instead of importing
scikit-learn; ``tests/test_report.py`` checks the numbers and the text against scikit-learn.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import numpy as np

#: First cell of the header row of ``confusion_matrix.csv`` ("row = true, column = predicted").
CSV_CORNER = "true\\pred"

_METRIC_KEYS = ("precision", "recall", "f1-score", "support")


def _as_labels(y, n_classes: int, name: str) -> np.ndarray:
    """Validate a label vector: an integer array (n,) with values in [0, n_classes), in its
    own dtype (int8 from a merge stays int8)."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
        raise ValueError(f"{name} has class indices outside [0, {n_classes})")
    return arr


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Count (true, predicted) pairs.

    Parameters
    ----------
    y_true, y_pred : array-like of int, shape (n_samples,)
        Class indices in ``[0, n_classes)``.
    n_classes : int

    Returns
    -------
    cm : ndarray of int64, shape (n_classes, n_classes)
        ``cm[i, j]`` = samples of true class ``i`` predicted as ``j`` (rows = truth, columns =
        prediction, as in ``sklearn.metrics.confusion_matrix``).
    """
    if n_classes < 1:
        raise ValueError("n_classes must be >= 1")
    t = _as_labels(y_true, n_classes, "y_true")
    p = _as_labels(y_pred, n_classes, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape[0]} != {p.shape[0]}")
    # One bincount per true class: no (true, pred) index array of n int64s (a merge of 10
    # million labelled rows would hold several such arrays at once).
    cm = np.zeros((n_classes, n_classes), np.int64)
    for true in np.unique(t):
        cm[true] = np.bincount(p[t == true], minlength=n_classes)
    return cm


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Element-wise num / den as float64, 0.0 where den == 0 (scikit-learn's zero_division=0)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def _row(p, r, f, s) -> dict:
    return {"precision": float(p), "recall": float(r), "f1-score": float(f), "support": int(s)}


def compute_metrics(y_true, y_pred, labels: Sequence[str]) -> dict:
    """Accuracy, per-class precision/recall/F1/support, macro and weighted averages.

    Parameters
    ----------
    y_true, y_pred : array-like of int, shape (n_samples,)
        Class indices into ``labels``. ``n_samples`` may be 0 (every score is then 0.0).
    labels : sequence of str, length n_classes
        Unique class names, in class-index order.

    Returns
    -------
    metrics : dict (JSON-serialisable: only str, int, float, list, dict)
        ``{"samples": int, "accuracy": float,
        "classes": {label: {"precision", "recall", "f1-score", "support"}},  # all labels, in order
        "macro avg": {...}, "weighted avg": {...},
        "confusion_matrix": list of n_classes lists of int, "labels": list of str}``.
        Undefined ratios (0/0) are 0.0, like scikit-learn's ``zero_division=0``.
    """
    labels = [str(label) for label in labels]
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be unique, got {labels}")
    cm = confusion_matrix(y_true, y_pred, len(labels))
    tp = np.diag(cm)
    support = cm.sum(axis=1)  # true count per class
    predicted = cm.sum(axis=0)
    n = int(support.sum())
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    # 2*tp / (support + predicted) is F1 without the 0/0 trap of 2PR/(P+R); it is also the exact
    # expression scikit-learn evaluates, so the floats (and the rounded text) match bit for bit.
    f1 = _safe_div(2.0 * tp, support + predicted)
    # Same numpy reductions as scikit-learn (mean; sum(x*w)/sum(w)) for bit-identical averages.
    weights = support.astype(np.float64)

    def weighted(x: np.ndarray) -> float:
        return float(np.sum(x * weights) / np.sum(weights)) if n else 0.0

    return {
        "samples": n,
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "classes": {
            label: _row(precision[i], recall[i], f1[i], support[i])
            for i, label in enumerate(labels)
        },
        "macro avg": _row(np.mean(precision), np.mean(recall), np.mean(f1), n),
        "weighted avg": _row(weighted(precision), weighted(recall), weighted(f1), n),
        "confusion_matrix": cm.tolist(),
        "labels": labels,
    }


def classification_report_text(metrics: dict, digits: int = 4) -> str:
    """Render ``metrics`` exactly as ``sklearn.metrics.classification_report`` would.

    Byte-identical to ``classification_report(y_true, y_pred, labels=range(len(labels)),
    target_names=labels, digits=digits, zero_division=0)`` for the inputs of
    :func:`compute_metrics` (every class index is in ``labels``, so the micro-average row is
    printed as "accuracy").
    """
    labels = metrics["labels"]
    width = max(max((len(x) for x in labels), default=0), len("weighted avg"), digits)
    head = f"{'':>{width}s} " + "".join(f" {h:>9}" for h in _METRIC_KEYS)
    # scikit-learn quirk, copied for byte-identity: when no prediction at all is correct, its
    # true-positive counts are float zeros, so every support is printed as a float ("1.0").
    as_float = metrics["samples"] > 0 and metrics["accuracy"] == 0.0

    def count(n: int) -> str:
        return f"{float(n) if as_float else n:>9}"

    def line(name: str, row: dict) -> str:
        scores = "".join(f" {row[k]:>9.{digits}f}" for k in _METRIC_KEYS[:3])
        return f"{name:>{width}s} {scores} {count(row['support'])}\n"

    out = [head, "\n\n"]
    out += [line(label, metrics["classes"][label]) for label in labels]
    out.append("\n")
    # The accuracy row leaves precision and recall blank and prints accuracy in the F1 column.
    out.append(
        f"{'accuracy':>{width}s} {'':>10}{'':>10} {metrics['accuracy']:>9.{digits}f}"
        f" {count(metrics['samples'])}\n"
    )
    out += [line(avg, metrics[avg]) for avg in ("macro avg", "weighted avg")]
    return "".join(out)


def confusion_matrix_csv(metrics: dict) -> str:
    """Confusion matrix as CSV text, rows = true label, columns = predicted label.

    The header row is ``true\\pred,<label 0>,...,<label n-1>`` (the first cell names both
    axes); each following row is ``<true label>,<count>,...``. Lines end with ``\\n``.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([CSV_CORNER, *metrics["labels"]])
    for label, counts in zip(metrics["labels"], metrics["confusion_matrix"], strict=True):
        writer.writerow([label, *counts])
    return buf.getvalue()
