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

# Members of one zip: its directory is held in memory before any member is scored (about
# 0.6 KB a member: 200,000 take about 120 MB; MNIST's 70,000 images fit in one archive).
MAX_ZIP_MEMBERS = 200_000
MAX_DIRECTORY_BYTES = 64 * 2**20  # what zipfile reads whole: 320 bytes a member at the limit


def iter_zip(fileobj: BinaryIO, archive_name: str, stats: SourceStats) -> Iterator[Input]:
    """Each member image of an open, seekable zip as an Input named ``archive!/member``.

    Nothing is extracted to disk. A zip that cannot be opened gives one error row named after the
    archive. Member names are untrusted text and are shown as stored.
    """
    try:
        check_directory(fileobj)
        archive = zipfile.ZipFile(fileobj)
        members = sorted(archive.infolist(), key=lambda i: i.filename)
    except TooManyMembers as exc:
        yield error_input(archive_name, str(exc))
        return
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


class TooManyMembers(ValueError):
    """A zip whose directory would take too much memory to hold."""


def check_directory(fileobj: BinaryIO) -> None:
    """Refuse a zip of more than MAX_ZIP_MEMBERS members, or a directory of more than
    MAX_DIRECTORY_BYTES, before zipfile parses it: it holds the whole directory and an object
    of about 0.6 KB per member before any member is read (3M members took 1.7 GB). Members
    are counted by their directory signatures, not the count the end record declares, which
    zipfile never checks. A zip that is not one is left for zipfile to describe."""
    try:  # the stdlib's own reader of the end record (zipfile has no public one)
        end = zipfile._EndRecData(fileobj)
    except OSError:
        return
    if not end:
        return
    size = end[zipfile._ECD_SIZE]
    start = end[zipfile._ECD_LOCATION] - size
    if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:  # as zipfile locates it
        start -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator
    if size > MAX_DIRECTORY_BYTES:
        raise TooManyMembers(f"zip directory too large: {size / 2**20:.0f} MB (limit "
                             f"{MAX_DIRECTORY_BYTES / 2**20:.0f} MB); split the archive")
    if start < 0:
        return
    fileobj.seek(start)
    members = fileobj.read(size).count(zipfile.stringCentralDir)  # >= the true count
    if members > MAX_ZIP_MEMBERS:
        raise TooManyMembers(f"zip holds too many members: {members:,} (limit "
                             f"{MAX_ZIP_MEMBERS:,}); split the archive or unzip it")


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

