"""Metrics for number fields: exact matches, digit accuracy, wrong lengths, per-length figures,
and the digit-level metrics of the fields read with the right number of digits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scorer.report.metrics import compute_metrics


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions from a to b."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def field_metrics(y_true: Sequence[str], y_pred: Sequence[str], labels: list[str]) -> dict:
    """Labelled readings -> metrics (fractions in [0, 1]).

    ``exact_match``: share of fields read exactly (every digit, leading zeros included);
    ``digit_accuracy``: 1 - (sum of edit distances) / (sum of true lengths), at least 0;
    ``wrong_length``: share of fields read with another number of digits;
    ``by_length``: {true length: {"fields", "exact_match", "wrong_length"}};
    ``digits``: :func:`compute_metrics` over the digits of the fields read with the right
    number of digits, position by position (None if there are none).
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true and y_pred differ in length: {len(y_true)} != {len(y_pred)}")
    n = len(y_true)
    exact = sum(t == p for t, p in zip(y_true, y_pred, strict=True))
    edits = sum(edit_distance(t, p) for t, p in zip(y_true, y_pred, strict=True))
    total = sum(len(t) for t in y_true)
    wrong_length = sum(len(t) != len(p) for t, p in zip(y_true, y_pred, strict=True))
    by_length: dict[int, dict] = {}
    for t, p in zip(y_true, y_pred, strict=True):
        entry = by_length.setdefault(len(t), {"fields": 0, "exact": 0, "wrong_length": 0})
        entry["fields"] += 1
        entry["exact"] += t == p
        entry["wrong_length"] += len(t) != len(p)
    return {
        "fields": n,
        "exact_match": exact / n if n else 0.0,
        "digit_accuracy": max(0.0, 1.0 - edits / total) if total else 0.0,
        "wrong_length": wrong_length / n if n else 0.0,
        "by_length": {str(length): {"fields": e["fields"], "exact_match": e["exact"] / e["fields"],
                                    "wrong_length": e["wrong_length"] / e["fields"]}
                      for length, e in sorted(by_length.items())},
        "digits": aligned_digit_metrics(y_true, y_pred, labels),
    }


def aligned_digit_metrics(y_true: Sequence[str], y_pred: Sequence[str],
                          labels: list[str]) -> dict | None:
    """compute_metrics over the digits of fields read with the right length, by position."""
    index = {name: i for i, name in enumerate(labels)}
    true, pred = [], []
    for t, p in zip(y_true, y_pred, strict=True):
        if len(t) == len(p) and all(c in index for c in t + p):
            true += [index[c] for c in t]
            pred += [index[c] for c in p]
    if not true:
        return None
    return compute_metrics(np.array(true), np.array(pred), labels)


def summary_text(fields: dict) -> str:
    """A few lines for classification_report.txt, above the digits' report."""
    lines = [f"fields: {fields['fields']}",
             f"exact match: {fields['exact_match']:.4f}",
             f"digit accuracy (1 - edit distance / length): {fields['digit_accuracy']:.4f}",
             f"wrong number of digits: {fields['wrong_length']:.4f}", ""]
    if fields["digits"] is not None:
        lines.append("digits of the fields read with the right number of digits:")
    return "\n".join(lines) + "\n"
