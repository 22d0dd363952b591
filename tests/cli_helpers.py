"""Helpers the CLI's test modules share: run `python -m scorer`, read its CSV, check a usage
error, write labelled PNG folders."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import numpy as np

from digit_factory import mnist_png

ROOT = Path(__file__).resolve().parent.parent


def score_cli(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m scorer ARGS` in a subprocess; text stdout and stderr."""
    command = [sys.executable, "-m", "scorer", *map(str, args)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          encoding="utf-8", errors="replace")


def read_csv(text_or_path) -> tuple[list[str], list[dict]]:
    text = (text_or_path.read_text(encoding="utf-8") if isinstance(text_or_path, Path)
            else text_or_path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = list(reader)
    return reader.fieldnames, rows


def accuracy(rows: list[dict]) -> float:
    labelled = [r for r in rows if r["status"] == "ok" and r["label"] != ""]
    return sum(r["prediction"] == r["label"] for r in labelled) / len(labelled)


def assert_usage_error(done: subprocess.CompletedProcess, *, mentions: str = "") -> None:
    """Exit 2, no traceback, one `Error: ...` line (click's usage layout around it)."""
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, done.stderr
    assert mentions.lower() in errors[0].lower(), errors[0]
    assert done.stdout == ""


def write_png_tree(root: Path, x: np.ndarray, y: np.ndarray) -> list[Path]:
    paths = []
    for i, (digit, label) in enumerate(zip(x, y, strict=True)):
        path = root / str(label) / f"mnist_{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(mnist_png(digit))
        paths.append(path)
    return paths
