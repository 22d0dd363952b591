"""Small file helpers shared by the scorer and the trainer: atomic writes, unnamed temporary
files and SHA-256."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def file_mode() -> int:
    """The mode a new file gets from open(): 0o666 less the process's umask (mkstemp's 0o600
    would ignore what the user chose)."""
    umask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it into place: readers see
    the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class UnnamedFile:
    """A temporary file that has no name until `publish` gives it the target's: nothing of it
    is left if the process dies, even by SIGKILL, which no cleanup code sees (Linux's
    O_TMPFILE). Where the folder's file system cannot make one, it is a named temporary file,
    removed by `close` (then only SIGKILL leaves it behind)."""

    def __init__(self, folder: str | None, suffix: str = ".csv"):
        self.folder = folder or tempfile.gettempdir()
        self.named: str | None = None
        try:
            self.fd = os.open(self.folder, os.O_TMPFILE | os.O_RDWR, 0o600)
        except (AttributeError, OSError):  # not Linux, or e.g. an old NFS mount
            self.fd, self.named = tempfile.mkstemp(suffix=suffix, dir=self.folder)

    @property
    def path(self) -> str:
        """A path that opens this file again (for reading it back)."""
        return self.named or f"/proc/self/fd/{self.fd}"

    def open_text(self):
        """A text writer on the file (closing it leaves the file open)."""
        return open(self.fd, "w", newline="", encoding="utf-8", closefd=False)  # noqa: SIM115

    def publish(self, target: str) -> None:
        """Give the file the name `target` (in its folder), replacing what was there, with the
        mode a plain open() would give it."""
        os.fchmod(self.fd, file_mode())
        if self.named is None:  # a name of its own first: linking cannot replace a file
            self.named = os.path.join(self.folder, f".{os.path.basename(target)}.{os.getpid()}"
                                      f".{os.urandom(4).hex()}.tmp")
            link_open_file(self.fd, self.named)
        os.replace(self.named, target)
        self.named = None

    def close(self) -> None:
        """Close the file; a named one not published is removed."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.named is not None:
            Path(self.named).unlink(missing_ok=True)
            self.named = None


def link_open_file(fd: int, path: str) -> None:
    """Give the open file `fd` the name `path`. Through /proc with AT_SYMLINK_FOLLOW, which
    os.link uses only when given a directory descriptor (plain link() would link the /proc
    entry itself)."""
    fds = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.link(str(fd), path, src_dir_fd=fds, follow_symlinks=True)
    finally:
        os.close(fds)
