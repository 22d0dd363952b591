"""Accuracy against coverage: how many predictions a confidence threshold accepts, and how many
of those are right. Users pick `--min-confidence` from this table: below it, rows go to review.
"""

from __future__ import annotations

import csv
import io

import numpy as np

#: Thresholds of the table: "at 0.9, 95 % of images accepted, 99.6 % of those right".
THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
CURVE_POINTS = 51


def _arrays(y_true, y_pred, confidence, kept=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """(right, confidence as float64, or in `kept` if it is already: saves memory where only
    the order of the confidences counts)."""
    right = np.asarray(y_true) == np.asarray(y_pred)
    conf = np.asarray(confidence)
    if conf.dtype != kept:
        conf = conf.astype(np.float64)
    if right.shape != conf.shape or right.ndim != 1:
        raise ValueError(f"y_true, y_pred and confidence differ in shape: {right.shape} != "
                         f"{conf.shape}")
    return right, conf


def coverage_table(y_true, y_pred, confidence, thresholds=THRESHOLDS) -> list[dict]:
    """Per threshold t: predictions with confidence >= t ("accepted"), their share of all
    ("coverage") and the accuracy among them (None when none is accepted).

    Parameters
    ----------
    y_true, y_pred : array-like of int, shape (n,)
    confidence : array-like of float, shape (n,), the predicted class's probability
    """
    right, conf = _arrays(y_true, y_pred, confidence)
    rows = []
    for t in thresholds:
        accepted = conf >= t
        n = int(accepted.sum())
        rows.append({"threshold": float(t), "accepted": n,
                     "coverage": n / len(conf) if len(conf) else 0.0,
                     "accuracy": float(right[accepted].mean()) if n else None})
    return rows


def coverage_curve(y_true, y_pred, confidence, points: int = CURVE_POINTS) -> list[list[float]]:
    """[coverage, accuracy] pairs when accepting the k most confident predictions, for k
    spread over 1..n: the curve the table samples, for the plot."""
    right, conf = _arrays(y_true, y_pred, confidence, np.float32)
    if len(conf) == 0:
        return []
    order = np.argsort(-conf, kind="stable")  # float32 widens exactly: the same order
    hits = np.cumsum(right[order], dtype=np.int64 if len(conf) >= 2**31 else np.int32)
    ks = np.unique(np.linspace(1, len(conf), min(points, len(conf))).round().astype(int))
    return [[k / len(conf), float(hits[k - 1] / k)] for k in ks]


def coverage(y_true, y_pred, confidence) -> dict:
    """``{"table": coverage_table(...), "curve": coverage_curve(...)}`` for report_files."""
    return {"table": coverage_table(y_true, y_pred, confidence),
            "curve": coverage_curve(y_true, y_pred, confidence)}


def coverage_csv(table: list[dict]) -> str:
    """The table as CSV: threshold,accepted,coverage,accuracy (accuracy empty if none)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["threshold", "accepted", "coverage", "accuracy"])
    for row in table:
        accuracy = "" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
        writer.writerow([f"{row['threshold']:.2f}", row["accepted"], f"{row['coverage']:.4f}",
                         accuracy])
    return buf.getvalue()
