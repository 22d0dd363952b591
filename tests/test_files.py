"""scorer.files: unnamed temporary files, published under their target's name."""

from __future__ import annotations

import os

import pytest

from scorer.files import UnnamedFile, file_mode


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "named fallback"])
def test_an_unnamed_file_appears_only_when_published(tmp_path, monkeypatch, unnamed):
    """Until `publish`, the folder shows nothing (O_TMPFILE) or one hidden temporary file
    (where the file system cannot make unnamed ones); `publish` replaces the target with the
    mode a plain open() gives; `close` leaves nothing behind either way."""
    if not unnamed:
        monkeypatch.delattr(os, "O_TMPFILE")
    target = tmp_path / "out.csv"
    target.write_text("old")
    made = UnnamedFile(str(tmp_path))
    with made.open_text() as text:
        text.write("a,b\r\n")
    assert len(list(tmp_path.iterdir())) == (1 if unnamed else 2)
    with open(made.path, encoding="utf-8", newline="") as again:
        assert again.read() == "a,b\r\n"
    made.publish(str(target))
    made.close()
    assert [path.name for path in tmp_path.iterdir()] == ["out.csv"]
    assert target.read_bytes() == b"a,b\r\n"
    assert target.stat().st_mode & 0o777 == file_mode()
    dropped = UnnamedFile(str(tmp_path))
    dropped.close()
    assert [path.name for path in tmp_path.iterdir()] == ["out.csv"]
