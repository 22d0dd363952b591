"""The user's labelled images for fine-tuning, read and normalized by the scorer's own code.

Sources are what `digits-score` reads (folders named 0-9, zips, s3:// prefixes, a labels CSV),
through `scorer.sources.iter_inputs`, and each image is normalized by
`scorer.images.normalize_many` with the base bundle's geometry: training sees exactly the pixels
serving will see. The summary (counts, sources, one SHA-256 over every image's name, label and
bytes) goes into the new bundle's lineage.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from scorer.images import BLANK_REASON, Geometry, normalize_many
from scorer.sources import LabelMatcher, SourceStats, iter_inputs, read_labels_csv

CHUNK = 256  # images normalized per call
MIN_IMAGES = 10


class UserImagesError(ValueError):
    """The images cannot be used for fine-tuning; the message says why."""


@dataclass
class UserImages:
    """uint8 (n, h, w) model inputs and int labels, with their source names, in input order."""

    x: np.ndarray
    y: np.ndarray
    names: list[str]
    digest: str  # SHA-256 over the sorted "name\tlabel\tsha256(bytes)" lines
    not_used: dict[str, int] = field(default_factory=dict)


def read_user_images(sources: list[str], labels_csv: str | None, classes: list[str],
                     geometry: Geometry) -> UserImages:
    """Every labelled, readable, non-blank image of `sources`, normalized for `geometry`.
    Unlabelled, blank and unreadable images are counted, not used. Raises UserImagesError
    (or scorer.sources.SourceError for a source that does not exist)."""
    matcher = LabelMatcher(read_labels_csv(labels_csv, classes) if labels_csv else {})
    stats = SourceStats()
    kept: list[tuple[str, int, np.ndarray, str]] = []
    not_used = {"unlabelled": 0, "blank": 0, "unreadable": 0}
    pending: list = []

    def flush() -> None:
        for item, (image, reason) in zip(pending, normalize_many([i.data for i in pending],
                                                                 geometry), strict=True):
            if image is None:
                not_used["blank" if reason == BLANK_REASON else "unreadable"] += 1
            else:
                kept.append((item.name, int(item.label), image,
                             hashlib.sha256(item.data).hexdigest()))
        pending.clear()

    for item in matcher.apply(iter_inputs(sources, stats)):
        if item.label is None:
            not_used["unlabelled"] += 1
        elif item.data is None:
            not_used["unreadable"] += 1
        else:
            pending.append(item)
            if len(pending) == CHUNK:
                flush()
    flush()
    not_used["not_images"] = stats.skipped
    if len(kept) < MIN_IMAGES:
        raise UserImagesError(f"{len(kept)} labelled images could be read (at least "
                              f"{MIN_IMAGES} needed); not used: {describe_not_used(not_used)}. "
                              "Put them in folders named 0-9 or give --labels")
    names, labels, images, digests = zip(*kept, strict=True)
    return UserImages(np.stack(images), np.asarray(labels, np.uint8), list(names),
                      list_digest(names, labels, digests, classes), not_used)


def describe_not_used(not_used: dict[str, int]) -> str:
    return ", ".join(f"{count} {what.replace('_', ' ')}" for what, count in not_used.items())


def list_digest(names, labels, digests, classes: list[str]) -> str:
    """One SHA-256 over the sorted lines "name<TAB>label<TAB>sha256 of the bytes": the same
    images with the same labels give the same hash, whatever order they were read in."""
    lines = sorted(f"{name}\t{classes[label]}\t{digest}\n"
                   for name, label, digest in zip(names, labels, digests, strict=True))
    return hashlib.sha256("".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def stratified_holdout(y: np.ndarray, fraction: float, seed: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(train, held out) indices: from each class, round(fraction * its count) images, at
    least one when it has two or more, chosen by a generator seeded with `seed`."""
    rng = np.random.default_rng([seed, 15])
    train, held = [], []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        wanted = round(fraction * len(members))
        n_held = min(max(wanted, 1), len(members) - 1) if len(members) >= 2 else 0
        held.append(members[:n_held])
        train.append(members[n_held:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


def per_class(y: np.ndarray, classes: list[str]) -> dict[str, int]:
    counts = np.bincount(y, minlength=len(classes))
    return {name: int(counts[i]) for i, name in enumerate(classes)}
