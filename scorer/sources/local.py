"""Local files and folders: walked lazily in sorted order, read without ever blocking."""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

from scorer.images import IMAGE_EXTENSIONS
from scorer.sources.base import (
    ZIP_EXTENSION,
    Input,
    SourceStats,
    error_input,
    extension,
    folder_label,
    is_hidden,
    label_from_parent,
    read_capped,
    too_large,
    too_large_reason,
)
from scorer.sources.zips import iter_zip


def iter_file(path: str, stats: SourceStats, defer_reads: bool = False) -> Iterator[Input]:
    """A single local file: an image, a zip to expand, or something to skip and count."""
    return _iter_file(path, stats, defer_reads, label_from_parent(path))


def _iter_file(path: str, stats: SourceStats, defer_reads: bool,
               label: int | None) -> Iterator[Input]:
    ext = extension(path)
    if ext == ZIP_EXTENSION:
        yield from _iter_local_zip(path, stats)
    elif ext in IMAGE_EXTENSIONS:
        yield Input(path, None, None, label, path) if defer_reads else _read_local(path, label)
    else:
        stats.skip(path)


def walk_folder(root: str, stats: SourceStats, defer_reads: bool = False) -> Iterator[Input]:
    """Depth-first, sorted walk with an explicit stack (no recursion limit on deep trees)."""
    visited: set[tuple[int, int]] = set()
    stack: list[tuple[Iterator[os.DirEntry[str]], int | None]] = []
    entries = _list_dir(root, visited)
    if isinstance(entries, Input):
        yield entries
        return
    stack.append((entries, folder_label(root)))
    while stack:
        entries, label = stack[-1]
        entry = next(entries, None)
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
                stack.append((sub, folder_label(entry.path)))
        else:  # every file of a folder has the folder's label: found once, not per file
            yield from _iter_file(entry.path, stats, defer_reads, label)


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
        if too_large(size):
            return None, too_large_reason(size)
        data = os.read(fd, size + 1)  # one call for the usual case: the whole file and no more
        if len(data) > size:  # it grew since fstat: read on, capped
            data += read_capped(_FdReader(fd), expected=0)
    except OSError as exc:
        return None, exc.strerror or str(exc)
    finally:
        os.close(fd)
    if too_large(len(data)):
        return None, too_large_reason(len(data))
    return data, None


def load(item: Input) -> Input:
    """The input with its bytes (or the reason they could not be read): deferred reads let
    worker processes do the file I/O instead of the process that lists the files."""
    if item.path is None or item.data is not None or item.error is not None:
        return item
    data, error = read_file(item.path)
    return Input(item.name, data, error, item.label)


def _read_local(path: str, label: int | None) -> Input:
    data, error = read_file(path)
    return Input(path, data, error, label)



def _iter_local_zip(path: str, stats: SourceStats) -> Iterator[Input]:
    f, reason = _open_regular(path)  # a FIFO named x.zip must not hang zipfile
    if f is None:
        yield error_input(path, reason or "cannot open")
        return
    with f:
        yield from iter_zip(f, path, stats)


