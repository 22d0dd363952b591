"""Zip archives, local or downloaded from S3: each member image is an input, nothing extracted."""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator
from typing import BinaryIO

from scorer.images import IMAGE_EXTENSIONS
from scorer.sources.base import (
    Input,
    SourceStats,
    error_input,
    extension,
    is_hidden,
    label_from_parent,
    read_capped,
    too_large,
    too_large_reason,
)


def iter_zip(fileobj: BinaryIO, archive_name: str, stats: SourceStats) -> Iterator[Input]:
    """Each member image of an open, seekable zip as an Input named ``archive!/member``.

    Nothing is extracted to disk. A zip that cannot be opened gives one error row named after the
    archive. Member names are untrusted text and are shown as stored.
    """
    try:
        archive = zipfile.ZipFile(fileobj)
        members = sorted(archive.infolist(), key=lambda i: i.filename)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        yield error_input(archive_name, f"cannot open zip: {exc}")
        return
    with archive:
        for info in members:
            if _zip_member_ignored(info):
                continue
            name = f"{archive_name}!/{info.filename}"
            if extension(info.filename) not in IMAGE_EXTENSIONS:
                stats.skip(name)
                continue
            yield _read_member(archive, info, name)


def _zip_member_ignored(info: zipfile.ZipInfo) -> bool:
    """Folders, macOS resource forks and hidden members are not inputs and not worth counting."""
    parts = info.filename.split("/")
    return info.is_dir() or parts[0] == "__MACOSX" or any(map(is_hidden, parts))



# NotImplementedError: unsupported compression method, zlib.error: corrupt deflate stream).
_ZIP_READ_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    NotImplementedError,
    RuntimeError,
    EOFError,
    OSError,
    ValueError,
)


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> Input:
    label = label_from_parent(info.filename)
    if info.flag_bits & 0x1:
        return error_input(name, "encrypted zip member", label)
    if too_large(info.file_size):
        return error_input(name, too_large_reason(info.file_size), label)
    try:
        with archive.open(info) as member:
            # The header's size may lie (zip bomb): never inflate more than limit + 1 bytes.
            data = read_capped(member, expected=info.file_size)
    except _ZIP_READ_ERRORS as exc:
        return error_input(name, f"cannot read zip member: {exc}", label)
    if too_large(len(data)):
        return error_input(name, too_large_reason(len(data)), label)
    return Input(name=name, data=data, error=None, label=label)

