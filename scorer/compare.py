"""Champion against challenger: two bundles on the same labelled images.

Each image is read and normalized once, by the scoring pipeline with bundle A (workers, byte
budgets and error rows as in `digits-score`); bundle B classifies the same model inputs in this
process. So both models see exactly the same pixels, and the bundles must agree on the input
geometry and the classes (a fine-tuned bundle always agrees with its base).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from scorer.bundle import Bundle, BundleError
from scorer.pipeline import STATUS_BLANK, STATUS_ERROR, Row, score
from scorer.report.comparison import Changed, compare
from scorer.sources import Input

BATCH = 256  # model inputs classified by B at a time


@dataclass
class Paired:
    """The labelled predictions of both models, in input order, and what was not compared."""

    y_true: list[int] = field(default_factory=list)
    pred: tuple[list[int], list[int]] = field(default_factory=lambda: ([], []))
    conf: tuple[list[float], list[float]] = field(default_factory=lambda: ([], []))
    changed: Changed = field(default_factory=Changed)
    unlabelled: int = 0
    blank: int = 0
    failed: int = 0

    def result(self, labels: list[str]) -> dict:
        return compare(self.y_true, self.pred[0], self.conf[0], self.pred[1], self.conf[1],
                       labels)


def check_comparable(a: Bundle, b: Bundle) -> None:
    """Raise BundleError unless both bundles read the same input the same way."""
    if a.geometry != b.geometry:
        raise BundleError(f"{a.path} and {b.path} want different input geometries: compare "
                          "bundles of the same kind (28x28 or 8x8)")
    if a.labels != b.labels:
        raise BundleError(f"{a.path} and {b.path} have different classes")


def compare_bundles(inputs: Iterable[Input], a: Bundle, b: Bundle, *,
                    workers: int | None = None) -> Paired:
    """Score `inputs` with both bundles (labelled ones only count); see the module's docstring."""
    check_comparable(a, b)
    classifier = b.classifier()
    paired = Paired()
    batch: list[Row] = []
    for row in score(_labelled(inputs, paired), a, workers=workers):
        if row.status == STATUS_ERROR:
            paired.failed += 1
        elif row.status == STATUS_BLANK:
            paired.blank += 1
        else:
            batch.append(row)
            if len(batch) == BATCH:
                _add(paired, batch, classifier)
                batch = []
    _add(paired, batch, classifier)
    return paired


def _add(paired: Paired, rows: list[Row], classifier) -> None:
    if not rows:
        return
    probabilities = classifier.predict(np.stack([row.image for row in rows]))
    for row, probs in zip(rows, probabilities, strict=True):
        guess = int(probs.argmax())
        paired.y_true.append(int(row.label))
        for side, (pred, conf) in enumerate(((row.prediction, row.confidence),
                                             (guess, float(probs[guess])))):
            paired.pred[side].append(pred)
            paired.conf[side].append(conf)
        paired.changed.add(row.source, int(row.label), (row.prediction, row.confidence),
                           (guess, float(probs[guess])), row.image)


def _labelled(inputs: Iterable[Input], paired: Paired) -> Iterator[Input]:
    """Inputs with a label (unlabelled ones, counted, would be read for nothing)."""
    for item in inputs:
        if item.label is None:
            paired.unlabelled += 1
        else:
            yield item
