"""Where the scorer's inputs come from: files, folders, zip archives and S3 (see ``scorer.s3``).

Everything streams: folders are listed one directory at a time, zip members are read one by one,
and contents are read only when the consumer asks for the next input, so memory stays flat.

* Folders are walked recursively in sorted name order. Symlinked folders are followed, but each
  directory (device, inode) is entered once, so symlink cycles terminate.
* Hidden entries (".DS_Store", ".git", ...) in folders and zips, and ``__MACOSX/`` in zips, are
  skipped silently. Other non-image files are skipped and counted in ``SourceStats``.
* ``.zip`` files met while walking a folder are expanded, like ``.zip`` objects under an S3
  prefix, so a folder and its copy on S3 give the same rows. Zips inside zips are not expanded.
* A file named like an image that was given explicitly is always an input, even if broken.
* Problems with one file or member (unreadable, dangling symlink, FIFO, too large, encrypted,
  corrupt zip) become ``Input(error=...)`` rows and the job goes on: retrying cannot fix them.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
import stat
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from scorer.images import IMAGE_EXTENSIONS  # re-exported: s3.py and callers use it from here

ZIP_EXTENSION = ".zip"
# A single digit image is a few kB; anything this large is a mistake or an attack. The image
# decoder has its own pixel-count guard, this one keeps us from even reading the bytes.
MAX_FILE_BYTES = 50 * 1024 * 1024
_READ_CHUNK = 1024 * 1024
MAX_SKIPPED_EXAMPLES = 5
LABEL_NAMES = frozenset("0123456789")
_S3_URL = re.compile(r"^s3://([A-Za-z0-9._-]+)(?:/(.*))?$", re.IGNORECASE | re.DOTALL)


class SourceError(ValueError):
    """A spec that names nothing (missing path, bad S3 URL, missing bucket, empty prefix)."""


@dataclass(frozen=True)
class Input:
    """One thing to classify: its bytes, or a one-line reason why they could not be read."""

    name: str
    data: bytes | None
    error: str | None
    label: int | None
    path: str | None = None  # a local file not read yet (``defer_reads``): see ``read()``

    def read(self) -> Input:
        """This input with its bytes (or the reason they could not be read): deferred reads let
        worker processes do the file I/O instead of the process that lists the files."""
        if self.path is None or self.data is not None or self.error is not None:
            return self
        data, error = read_file(self.path)
        return Input(self.name, data, error, self.label)


@dataclass
class SourceStats:
    """Counts of files seen but not turned into rows, for the run summary."""

    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)

    def skip(self, name: str) -> None:
        self.skipped += 1
        if len(self.skipped_examples) < MAX_SKIPPED_EXAMPLES:
            self.skipped_examples.append(name)


def is_s3(spec: str) -> bool:
    return spec[:5].lower() == "s3://"


def parse_s3_url(url: str) -> tuple[str, str]:
    """``"s3://b/p/x"`` -> ``("b", "p/x")``; ``"s3://b"`` -> ``("b", "")``."""
    match = _S3_URL.match(url)
    if not match:
        raise ValueError(f"not an s3://bucket/key URL: {url!r}")
    return match.group(1), match.group(2) or ""


def label_from_parent(path: str) -> int | None:
    """The digit named by the immediate parent folder ("3/x.png" -> 3), else None."""
    parent = posixpath.basename(posixpath.dirname(path.replace(os.sep, "/")))
    return int(parent) if parent in LABEL_NAMES else None


def extension(name: str) -> str:
    return posixpath.splitext(name)[1].lower()


def error_input(name: str, reason: str, label: int | None = None) -> Input:
    # Reasons end up in one CSV cell / log line; untrusted text must not break it.
    return Input(name=name, data=None, error=" ".join(reason.split()), label=label)


def check_specs(specs: Iterable[str]) -> list[str]:
    """Raise SourceError for the first spec that cannot name anything; return the specs as a list.

    Local paths must exist (a dangling symlink counts as existing: it becomes an error row).
    S3 URLs are only checked for syntax here; the bucket is checked when iteration reaches it.
    """
    checked = list(specs)
    for spec in checked:
        if is_s3(spec):
            try:
                parse_s3_url(spec)
            except ValueError as exc:
                raise SourceError(str(exc)) from None
        elif not os.path.lexists(spec):
            raise SourceError(f"{spec}: no such file or directory")
    return checked


def iter_inputs(
    specs: Iterable[str], stats: SourceStats, *, fail_fast: bool = False, defer_reads: bool = False
) -> Iterator[Input]:
    """Yield an Input for every image named by ``specs``, in a deterministic order.

    Each spec: a file, a folder (recursive, sorted, symlinked folders followed but never into a
    cycle), a .zip archive (each member image an input), an ``s3://bucket/prefix/`` (every object
    under it, in key order; .zip objects expanded) or ``s3://bucket/key`` (one object).

    Local specs are validated now, before anything is yielded (SourceError). ``fail_fast`` only
    concerns S3: when True, S3 errors (throttling, 5xx, access denied) raise so that the caller's
    message is retried; when False they become error rows. Local and zip problems specific to one
    object are always error rows. ``defer_reads``: local image files are yielded unread (with
    ``path`` set), for the consumer to ``read()`` where it suits it.
    """
    checked = check_specs(specs)
    return _iter_checked(checked, stats, fail_fast, defer_reads)


def _iter_checked(
    specs: list[str], stats: SourceStats, fail_fast: bool, defer_reads: bool = False
) -> Iterator[Input]:
    for spec in specs:
        if is_s3(spec):
            from scorer import s3  # lazy: boto3 is only needed (and installed) for S3 use

            yield from s3.iter_s3_url(spec, stats, fail_fast=fail_fast)
        elif os.path.isdir(spec):
            yield from _walk_folder(spec, stats, defer_reads)
        else:
            yield from _iter_file(spec, stats, defer_reads)


def iter_s3_object(
    bucket: str, key: str, stats: SourceStats, *, fail_fast: bool = True
) -> Iterator[Input]:
    """One S3 object: an image -> one Input; a .zip -> one Input per member image."""
    from scorer import s3

    return s3.iter_s3_object(bucket, key, stats, fail_fast=fail_fast)


def _iter_file(path: str, stats: SourceStats, defer_reads: bool = False) -> Iterator[Input]:
    """A single local file: an image, a zip to expand, or something to skip and count."""
    ext = extension(path)
    if ext == ZIP_EXTENSION:
        yield from _iter_local_zip(path, stats)
    elif ext in IMAGE_EXTENSIONS:
        yield Input(path, None, None, label_from_parent(path), path) if defer_reads \
            else _read_local(path)
    else:
        stats.skip(path)


def _walk_folder(root: str, stats: SourceStats, defer_reads: bool = False) -> Iterator[Input]:
    """Depth-first, sorted walk with an explicit stack (no recursion limit on deep trees)."""
    visited: set[tuple[int, int]] = set()
    stack: list[Iterator[os.DirEntry[str]]] = []
    entries = _list_dir(root, visited)
    if isinstance(entries, Input):
        yield entries
        return
    stack.append(entries)
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        if is_hidden(entry.name):
            continue
        if _is_dir(entry):
            sub = _list_dir(entry.path, visited)
            if isinstance(sub, Input):
                yield sub
            elif sub is not None:
                stack.append(sub)
        else:
            yield from _iter_file(entry.path, stats, defer_reads)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows symlinks; a dangling link is "not a dir" -> error row later
    except OSError:
        return False


def _list_dir(
    path: str, visited: set[tuple[int, int]]
) -> Iterator[os.DirEntry[str]] | Input | None:
    """Sorted entries of a directory not seen before; None if already visited (symlink cycle or a
    second link to the same folder); an error Input if it cannot be listed."""
    try:
        st = os.stat(path)
        ident = (st.st_dev, st.st_ino)
        if ident in visited:
            return None
        visited.add(ident)
        with os.scandir(path) as it:
            # Only names are held (one directory at a time), never file contents.
            return iter(sorted(it, key=lambda e: e.name))
    except OSError as exc:
        return error_input(path, f"cannot list folder: {exc.strerror or exc}")


def _open_regular_fd(path: str) -> tuple[int | None, int, str | None]:
    """Open a regular file for reading without ever blocking: (fd, size, None) or
    (None, 0, reason).

    O_NONBLOCK makes opening a FIFO return at once (a plain open() would wait for a writer);
    fstat on the open descriptor then tells regular files from FIFOs, devices and sockets with no
    race between checking and reading.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        if os.path.islink(path):
            return None, 0, "dangling symlink"
        return None, 0, "file not found (removed after listing?)"
    except OSError as exc:
        return None, 0, exc.strerror or str(exc)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        mode = st.st_mode
        kind = "directory" if stat.S_ISDIR(mode) else "FIFO" if stat.S_ISFIFO(mode) else "special"
        return None, 0, f"not a regular file ({kind})"
    return fd, st.st_size, None


def _open_regular(path: str) -> tuple[BinaryIO | None, str | None]:
    """As _open_regular_fd, as a file object: (file, None) or (None, reason)."""
    fd, _, reason = _open_regular_fd(path)
    return (None, reason) if fd is None else (os.fdopen(fd, "rb"), None)


class _FdReader:
    """`read(n)` straight on a descriptor: no buffered file object for a one-shot read."""

    __slots__ = ("read",)

    def __init__(self, fd: int):
        self.read = functools.partial(os.read, fd)


def read_file(path: str) -> tuple[bytes | None, str | None]:
    """A local file's bytes, or (None, one-line reason): never blocks, never reads past the cap."""
    fd, size, reason = _open_regular_fd(path)
    if fd is None:
        return None, reason or "cannot open"
    try:
        if size > MAX_FILE_BYTES:
            return None, too_large_reason(size)
        data = os.read(fd, size + 1)  # one call for the usual case: the whole file and no more
        if len(data) > size:  # it grew since fstat: read on, capped
            data += read_capped(_FdReader(fd), expected=0)
    except OSError as exc:
        return None, exc.strerror or str(exc)
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        return None, too_large_reason(len(data))
    return data, None


def _read_local(path: str) -> Input:
    data, error = read_file(path)
    return Input(path, data, error, label_from_parent(path))


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


def too_large_reason(size: int) -> str:
    return f"too large ({size / 2**20:.1f} MB > {MAX_FILE_BYTES / 2**20:.0f} MB limit)"


def _iter_local_zip(path: str, stats: SourceStats) -> Iterator[Input]:
    f, reason = _open_regular(path)  # a FIFO named x.zip must not hang zipfile
    if f is None:
        yield error_input(path, reason or "cannot open")
        return
    with f:
        yield from iter_zip(f, path, stats)


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


def is_hidden(name: str) -> bool:
    """True for ".DS_Store" or ".git"; not for "." and ".." (odd, but possible in zip names)."""
    return name.startswith(".") and name not in (".", "..")


# What a damaged or unsupported member can raise (RuntimeError: encrypted without password,
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
    if info.file_size > MAX_FILE_BYTES:
        return error_input(name, too_large_reason(info.file_size), label)
    try:
        with archive.open(info) as member:
            # The header's size may lie (zip bomb): never inflate more than limit + 1 bytes.
            data = read_capped(member, expected=info.file_size)
    except _ZIP_READ_ERRORS as exc:
        return error_input(name, f"cannot read zip member: {exc}", label)
    if len(data) > MAX_FILE_BYTES:
        return error_input(name, too_large_reason(len(data)), label)
    return Input(name=name, data=data, error=None, label=label)
