"""Which scored images the report shows: a streaming choice in O(k) memory."""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
from dataclasses import dataclass

import numpy as np

#: Default number of thumbnails kept per grid: 48 = 6 full rows of 8 in the HTML page, and
#: 48 PNGs of 64x64 px add only ~30 kB of base64 to report.html.
DEFAULT_K = 48


# eq=False: the default field-wise __eq__/__hash__ would compare/hash the ndarray and fail.
@dataclass(frozen=True, eq=False)
class Example:
    """One scored image to show in the report.

    Attributes
    ----------
    source : str
        File name, S3 URL or ``archive.zip!/member``. Untrusted text: escaped in HTML.
    label : int or None
        True class index, None if unknown.
    prediction : int
        Predicted class index.
    confidence : float
        Probability of the predicted class, in [0, 1].
    image : ndarray of uint8, shape (h, w)
        The model's input (light ink on dark), shown as a thumbnail; for a number field, the
        field itself (straightened, light ink on dark).
    cuts : tuple of (x0, x1) pairs
        For a number field: each digit's columns in ``image``, drawn as boxes. Empty for digits.

    For a number field ``label`` and ``prediction`` are digit strings.
    """

    source: str
    label: int | str | None
    prediction: int | str
    confidence: float
    image: np.ndarray
    cuts: tuple = ()

    @property
    def is_error(self) -> bool:
        """True if the label is known and differs from the prediction."""
        return self.label is not None and self.label != self.prediction


def choose_examples(y_true: np.ndarray, y_pred: np.ndarray, confidence: np.ndarray,
                    k: int = DEFAULT_K) -> tuple[np.ndarray, np.ndarray]:
    """The rule of the report's two grids, over whole arrays of labelled predictions: indices
    of the k most confident errors (most confident first) and of the k least confident
    predictions (least first), ties to the earlier row. `ExampleCollector` makes the same
    choice while streaming."""
    confidence = np.asarray(confidence)
    index = np.arange(len(confidence))
    wrong = index[np.asarray(y_true) != np.asarray(y_pred)]
    misclassified = wrong[np.lexsort((wrong, -confidence[wrong]))][:k]
    least_confident = np.lexsort((index, confidence))[:k]
    return misclassified, least_confident


class ExampleCollector:
    """Streaming choice of the examples to show, in O(k) memory whatever the number of images.

    Keeps two bounded heaps:

    * ``misclassified``: the ``k_misclassified`` *most confident* errors (label known and !=
      prediction). Confident mistakes are the most telling ones (mislabelled data, systematic
      confusions), and the unsure mistakes already appear in the least-confident grid.
    * ``least_confident``: the ``k_least_confident`` lowest-confidence examples, right or wrong,
      labelled or not.

    Ties on confidence keep the example added first, so the result does not depend on heap
    internals: it equals a stable sort of everything added, cut to k.

    Parameters
    ----------
    k_misclassified, k_least_confident : int, default=48 (:data:`DEFAULT_K`)
    """

    def __init__(self, k_misclassified: int = DEFAULT_K, k_least_confident: int = DEFAULT_K):
        if k_misclassified < 0 or k_least_confident < 0:
            raise ValueError("k must be >= 0")
        self.k_misclassified = k_misclassified
        self.k_least_confident = k_least_confident
        self.seen = 0
        self.errors_seen = 0
        # Heap entries are (key, -seq, Example); the unique seq means Examples are never compared.
        self._errors: list[tuple[float, int, Example]] = []  # min-heap on confidence
        self._unsure: list[tuple[float, int, Example]] = []  # min-heap on -confidence
        self._seq = itertools.count()

    def add(self, example: Example) -> None:
        """Offer one example; it is kept only if it ranks among the k of either list."""
        conf = float(example.confidence)
        if not math.isfinite(conf):
            raise ValueError(f"confidence must be finite, got {example.confidence!r}")
        seq = next(self._seq)
        self.seen += 1
        if example.is_error:
            self.errors_seen += 1
            self._offer(self._errors, self.k_misclassified, conf, -seq, example)
        self._offer(self._unsure, self.k_least_confident, -conf, -seq, example)

    @staticmethod
    def _offer(heap: list, k: int, key: float, neg_seq: int, example: Example) -> None:
        # The heap root is the worst kept entry (on a tie, the newest one). A newcomer is newer
        # than everything kept, so it must beat the root outright to get in.
        if k == 0 or (len(heap) == k and (key, neg_seq) <= heap[0][:2]):
            return
        # Copy only what we keep: the image may be a view into a large batch array, and holding
        # the view would keep the whole batch alive.
        entry = (key, neg_seq, dataclasses.replace(example, image=np.array(example.image)))
        if len(heap) < k:
            heapq.heappush(heap, entry)
        else:
            heapq.heapreplace(heap, entry)

    @staticmethod
    def _best_first(heap: list) -> list[Example]:
        return [e for _, _, e in sorted(heap, key=lambda t: (-t[0], -t[1]))]

    def kept(self) -> list[tuple[int, Example]]:
        """Every example either list keeps, with its position among those added (0-based), in
        that order: what a later merge of several collectors' choices needs."""
        entries = {-neg_seq: example for _, neg_seq, example in self._errors + self._unsure}
        return sorted(entries.items(), key=lambda item: item[0])

    @property
    def misclassified(self) -> list[Example]:
        """Kept errors, most confident first (ties: first added first)."""
        return self._best_first(self._errors)

    @property
    def least_confident(self) -> list[Example]:
        """Kept examples by confidence ascending (ties: first added first)."""
        return self._best_first(self._unsure)
