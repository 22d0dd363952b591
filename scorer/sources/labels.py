"""True labels from a `source,label` CSV, matched to inputs by their exact source text.

Labels given this way override the folder names (``3/x.png``); the matcher remembers which
entries matched an input, so the run can say how many matched nothing.
"""

from __future__ import annotations

import csv
import io
import os
import stat
from collections.abc import Iterable, Iterator

from scorer.sources.base import Input, SourceError

MAX_LABELS_BYTES = 64 * 2**20  # a labels CSV larger than this is refused (memory: ~5x)


class LabelsError(SourceError):
    """A labels CSV that cannot be used (missing columns, unknown label, unreadable file)."""


def read_labels_csv(path: str, classes: list[str]) -> dict[str, int]:
    """`source,label` rows -> {source: class index}. Raises LabelsError for a bad file."""
    index = {name: i for i, name in enumerate(classes)}

    def parse(label: str, line: int) -> int:
        if label not in index:
            raise LabelsError(f"line {line}: label {label!r} is not one of {', '.join(classes)}")
        return index[label]

    return _read(path, parse)


def read_number_labels_csv(path: str, classes: list[str]) -> dict[str, str]:
    """Number mode: `source,label` rows -> {source: digit string}, read as text so that leading
    zeros stay ("00712"). Raises LabelsError for a bad file or a label that is not a string of
    class names."""
    names = set(classes)

    def parse(label: str, line: int) -> str:
        if not label or not set(label) <= names:
            raise LabelsError(f"line {line}: label {label!r} is not a string of digits "
                              f"({''.join(classes)})")
        return label

    return _read(path, parse)


def _read(path: str, parse) -> dict:
    labels: dict = {}
    try:
        reader = csv.DictReader(io.StringIO(_bounded_text(path), newline=""))
        if not reader.fieldnames or not {"source", "label"} <= set(reader.fieldnames):
            raise LabelsError("needs a header with 'source' and 'label' columns")
        for line, entry in enumerate(reader, start=2):
            labels[entry["source"]] = parse((entry["label"] or "").strip(), line)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise LabelsError(str(err)) from err
    return labels


def _bounded_text(path: str) -> str:
    """The file's text, if it is a regular file of at most MAX_LABELS_BYTES: a device such as
    /dev/zero would be read for ever, a FIFO would block before scoring starts."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise LabelsError(f"{path} is not a regular file")
    with open(path, "rb") as f:
        data = f.read(MAX_LABELS_BYTES + 1)
    if len(data) > MAX_LABELS_BYTES:
        raise LabelsError(f"{path} is larger than {MAX_LABELS_BYTES // 2**20} MB (about a "
                          "million rows): split the job")
    return data.decode("utf-8-sig")


class LabelMatcher:
    """Applies {source: class index} to a stream of inputs and counts what matched nothing."""

    def __init__(self, labels: dict[str, int] | dict[str, str]):
        self.labels = labels
        self.matched: set[str] = set()

    def apply(self, inputs: Iterable[Input]) -> Iterator[Input]:
        for item in inputs:
            label = self.labels.get(item.name)
            if label is None:
                yield item
            else:
                self.matched.add(item.name)
                yield item._replace(label=label)

    @property
    def unmatched(self) -> int:
        """Entries of the labels file that matched no input (so far)."""
        return len(self.labels) - len(self.matched)
