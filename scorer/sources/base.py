"""What every source yields: an Input (bytes or a reason), the run's counts, and shared limits."""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from typing import BinaryIO, NamedTuple

ZIP_EXTENSION = ".zip"
# A single digit image is a few kB; anything this large is a mistake or an attack. The image
# decoder has its own pixel-count guard, this one keeps us from even reading the bytes.
MAX_FILE_BYTES = 50 * 1024 * 1024
_READ_CHUNK = 1024 * 1024
MAX_SKIPPED_EXAMPLES = 5
LABEL_NAMES = frozenset("0123456789")


class SourceError(ValueError):
    """A spec that names nothing (missing path, bad S3 URL, missing bucket, empty prefix)."""


class Input(NamedTuple):
    """One thing to classify: its bytes, or a one-line reason why they could not be read."""

    name: str
    data: bytes | None
    error: str | None
    label: int | None
    path: str | None = None  # a local file not read yet (``defer_reads``): see ``local.load``


@dataclass
class SourceStats:
    """Counts of files seen but not turned into rows, for the run summary."""

    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)

    def skip(self, name: str) -> None:
        self.skipped += 1
        if len(self.skipped_examples) < MAX_SKIPPED_EXAMPLES:
            self.skipped_examples.append(name)



def label_from_parent(path: str) -> int | None:
    """The digit named by the immediate parent folder ("3/x.png" -> 3), else None."""
    return folder_label(posixpath.dirname(path.replace(os.sep, "/")))


def folder_label(folder: str) -> int | None:
    """The digit a folder's name is ("data/3" -> 3), else None."""
    name = posixpath.basename(folder.replace(os.sep, "/").rstrip("/"))
    return int(name) if name in LABEL_NAMES else None


def extension(name: str) -> str:
    return posixpath.splitext(name)[1].lower()


def error_input(name: str, reason: str, label: int | None = None) -> Input:
    # Reasons end up in one CSV cell / log line; untrusted text must not break it.
    return Input(name=name, data=None, error=" ".join(reason.split()), label=label)



def read_capped(stream: BinaryIO, *, expected: int) -> bytes:
    """Read to the end, but never more than MAX_FILE_BYTES + 1 bytes (the caller checks > limit).

    Reads in pieces: a single read(n) may allocate n bytes up front, and the limit is far above
    a typical image. ``expected`` (from stat or a header) sizes the first read so that a small
    file takes one read and no copying.
    """
    limit = MAX_FILE_BYTES + 1
    chunks: list[bytes] = []
    total = 0
    want = min(max(expected, 0) + 1, _READ_CHUNK)
    while total < limit:
        piece = stream.read(min(want, limit - total))
        if not piece:
            break
        chunks.append(piece)
        total += len(piece)
        want = _READ_CHUNK
    return b"".join(chunks)


def too_large(size: int) -> bool:
    """More bytes than one input may have (the limit is read at call time: tests lower it)."""
    return size > MAX_FILE_BYTES


def too_large_reason(size: int) -> str:
    return f"too large ({size / 2**20:.1f} MB > {MAX_FILE_BYTES / 2**20:.0f} MB limit)"



def is_hidden(name: str) -> bool:
    """True for ".DS_Store" or ".git"; not for "." and ".." (odd, but possible in zip names)."""
    return name.startswith(".") and name not in (".", "..")


# What a damaged or unsupported member can raise (RuntimeError: encrypted without password,
