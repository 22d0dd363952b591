"""`--review-dir DIR`: the images a person should look at, copied into folders by prediction.

Every `review` row (below --min-confidence, or a number read at the wrong length) and, when
labels are known, every misread row is copied, original bytes unchanged, to
``DIR/<predicted class>/<safe name>`` (a number field: ``DIR/<predicted digits>/``), and
``DIR/review.csv`` maps each copy back to its source. A person moves the misfiled copies to the
right folders; the folder is then labelled data for ``digits-train --base``.

The pipeline keeps no bytes (memory stays flat), so the rows are noted as they stream past and
their sources are read again once the predictions are written (``scorer.sources.again``).
DIR is written as a whole: into a temporary folder beside it, renamed into place when complete.
It must not exist yet (or be empty): a folder a person may be sorting is never merged into or
replaced. At most `limit` copies and MAX_BYTES are written; the rest are counted and reported.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from scorer.files import file_mode
from scorer.images import IMAGE_EXTENSIONS
from scorer.outputs import defuse_formula
from scorer.pipeline import STATUS_REVIEW, Row
from scorer.sources.again import read_again
from scorer.sources.base import extension

REVIEW_CSV = "review.csv"
COLUMNS = ["file", "source", "prediction", "confidence", "status", "label", "why", "error"]
DEFAULT_LIMIT = 1000  # copies; a folder a person can sort in an hour or two
MAX_BYTES = 512 * 2**20  # copied bytes in all: a few phone photos are MBs each
MAX_STEM = 80  # characters of a copy's name before its extension (and any -hash suffix)
MAX_FOLDER = 40  # characters of a folder name (a number field's digits)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# Names Windows reserves in every folder, whatever the extension.
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
             *(f"lpt{i}" for i in range(10))}


class ReviewDirError(ValueError):
    """A --review-dir that cannot be used; the message says why."""


def check_target(target: str) -> None:
    """Raise ReviewDirError unless `target` is a local folder that does not exist yet (or is
    empty) and whose nearest existing parent we may write in: before a run, not after it."""
    if target.startswith("s3://"):
        raise ReviewDirError("must be a local folder (a person sorts it)")
    path = Path(target)
    if path.exists() or path.is_symlink():
        if not path.is_dir() or path.is_symlink():
            raise ReviewDirError(f"{target} exists and is not a folder")
        if any(path.iterdir()):
            raise ReviewDirError(f"{target} is not empty: give a new folder (a review folder "
                                 "is never merged into or replaced: a person may be sorting it)")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ReviewDirError(f"{parent} is not a folder")
    try:
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as err:
        raise ReviewDirError(f"cannot write in {parent}: {err.strerror or err}") from err


def safe_component(text: str, limit: int, fallback: str) -> str:
    """`text` as one path component any file system takes: ASCII letters, digits, '.', '_'
    and '-' only (accents dropped, the rest '_'), not hidden, not a reserved Windows name, no
    trailing dot, at most `limit` characters."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    name = _UNSAFE.sub("_", ascii_text).lstrip(".-")[:limit].rstrip(". ") or fallback
    return f"_{name}" if name.split(".")[0].lower() in _RESERVED else name


def copy_name(source: str) -> tuple[str, str]:
    """(stem, extension) of a copy: the source's last path component (after '/', '\\' or a
    zip's '!/'), made safe; the extension is one the scorer reads, lower case."""
    base = re.split(r"[/\\]", source)[-1]
    ext = extension(base)
    stem = base[: len(base) - len(ext)] if ext else base
    return safe_component(stem, MAX_STEM, "image"), ext if ext in IMAGE_EXTENSIONS else ".png"


@dataclass
class Entry:
    """One row to copy, and where its copy goes."""

    source: str
    folder: str
    prediction: str
    confidence: float
    status: str
    label: str
    why: str
    file: str = ""
    error: str = ""


class ReviewFolder:
    """Notes the rows to copy as they stream past (`watch`), then writes DIR (`write`)."""

    def __init__(self, target: str, classes: list[str], limit: int = DEFAULT_LIMIT,
                 max_bytes: int = MAX_BYTES):
        self.target = Path(target)
        self.classes = classes
        self.limit = limit
        self.max_bytes = max_bytes
        self.entries: list[Entry] = []
        self.left_out = 0  # rows to review past the limits: counted, not copied
        self.unreadable = 0

    def watch(self, rows: Iterator[Row]) -> Iterator[Row]:
        """The rows unchanged; the ones to review noted on the way."""
        for row in rows:
            self.offer(row)
            yield row

    def offer(self, row: Row) -> None:
        why = reasons(row)
        if not why:
            return
        if len(self.entries) >= self.limit:
            self.left_out += 1
            return
        self.entries.append(Entry(
            source=row.source, folder=self._folder(row.prediction),
            prediction=self._text(row.prediction), confidence=row.confidence,
            status=row.status, label=self._text(row.label), why=why))

    def _text(self, value: int | str | None) -> str:
        if value is None:
            return ""
        return value if isinstance(value, str) else self.classes[value]

    def _folder(self, prediction: int | str) -> str:
        return safe_component(self._text(prediction), MAX_FOLDER, "_")

    def write(self) -> int:
        """Copy the noted rows' original bytes and write review.csv, as one folder renamed
        into place; returns how many were copied. Raises OSError (a full disk): then nothing
        is left behind, not even a part."""
        self.target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.review-",
                                        dir=self.target.parent))
        try:
            copied = self._copy_all(staging)
            self._write_csv(staging / REVIEW_CSV)
            os.chmod(staging, folder_mode())  # not mkdtemp's 0700: the user's umask
            if self.target.is_dir() and not self.target.is_symlink():
                self.target.rmdir()  # empty (checked before the run); fails if filled since
            os.rename(staging, self.target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return copied

    def _copy_all(self, staging: Path) -> int:
        by_source: dict[str, list[Entry]] = {}
        for entry in self.entries:
            by_source.setdefault(entry.source, []).append(entry)
        taken: dict[str, set[str]] = {}  # folder -> names taken, case-folded
        spent = copied = 0
        for item in read_again(by_source):
            for entry in by_source[item.name]:
                if item.data is None:
                    entry.error = item.error or "cannot read it again"
                    self.unreadable += 1
                elif spent + len(item.data) > self.max_bytes:
                    entry.error = f"not copied: the review folder's {self.max_bytes >> 20} MB " \
                                  "are used up"
                    self.left_out += 1
                else:
                    entry.file = self._place(staging, entry, taken)
                    (staging / entry.file).write_bytes(item.data)
                    spent += len(item.data)
                    copied += 1
        return copied

    @staticmethod
    def _place(staging: Path, entry: Entry, taken: dict[str, set[str]]) -> str:
        """A free name in the entry's folder: the source's own, else with a hash of the whole
        source (then a counter), so the same inputs always give the same names."""
        stem, ext = copy_name(entry.source)
        digest = hashlib.sha256(entry.source.encode("utf-8", "replace")).hexdigest()[:8]
        used = taken.setdefault(entry.folder, set())
        candidates = [f"{stem}{ext}", f"{stem}-{digest}{ext}"]
        n = 2
        while candidates[0].casefold() in used:  # case-insensitive file systems too
            candidates.pop(0)
            if not candidates:
                candidates.append(f"{stem}-{digest}-{n}{ext}")
                n += 1
        used.add(candidates[0].casefold())
        (staging / entry.folder).mkdir(exist_ok=True)
        return f"{entry.folder}/{candidates[0]}"

    def _write_csv(self, path: Path) -> None:
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            for e in self.entries:
                writer.writerow([e.file, defuse_formula(e.source), e.prediction,
                                 f"{e.confidence:.6f}", e.status, e.label, e.why,
                                 defuse_formula(e.error)])
        os.chmod(path, file_mode())


def folder_mode() -> int:
    umask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(umask)
    return 0o777 & ~umask


def reasons(row: Row) -> str:
    """Why a row goes to review: 'low confidence' (status review, the reason if it has one),
    'misread' (a label that differs from the prediction), both, or '' (not for review)."""
    if row.prediction is None:  # blank or unreadable: nothing to sort
        return ""
    why = []
    if row.status == STATUS_REVIEW:
        why.append(row.error or "low confidence")
    if row.label is not None and row.label != row.prediction:
        why.append("misread")
    return "; ".join(why)
