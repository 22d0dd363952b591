"""Write a bundle folder: every file plus manifest.json with their hashes, all or nothing.

Free of TensorFlow: the trainer hands over bytes and a Manifest. The files go to a temporary
folder beside the target, which is then swapped into place, so a failed run never leaves a
half bundle.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from scorer.bundle.manifest import Manifest


def write_bundle(out: Path, files: dict[str, bytes], manifest: Manifest) -> Manifest:
    """Write `files` and their manifest to the folder `out`; returns the manifest written."""
    manifest = manifest.with_files(files)
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        (staging / "manifest.json").write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
        os.chmod(staging, 0o755)  # noqa: S103 (mkdtemp makes it 0700; a bundle is not secret)
        swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def swap_into_place(staging: Path, out: Path) -> None:
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)
