"""Write a bundle folder: every file plus manifest.json with their hashes, all or nothing.

Free of TensorFlow: the trainer hands over bytes and a Manifest. The files go to a temporary
folder beside the target, which is then swapped into place, so a failed run never leaves a
half bundle. The swap replaces the whole folder, so `check_target` first makes sure that
nothing but an earlier bundle (or, when asked to overwrite, a folder the user named) is lost.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from scorer.bundle.loading import read_manifest
from scorer.bundle.manifest import BundleError, Manifest


def check_target(out: Path, overwrite: bool = False) -> None:
    """Raise BundleError (a one-line reason) unless a bundle may replace `out`: a folder that
    does not exist, is empty, or holds exactly a bundle (manifest.json and the files it lists);
    with `overwrite`, any folder. Never the working directory or a folder that holds it, never
    a symlink or something that is not a folder."""
    out = Path(out)
    if out.is_symlink():
        raise BundleError(f"{out} is a symlink; give the folder itself")
    resolved = out.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise BundleError(f"{out} is the working directory or holds it; give a folder of its "
                          "own (it is replaced whole)")
    if not out.exists():
        return
    if not out.is_dir():
        raise BundleError(f"{out} exists and is not a folder")
    if overwrite or is_bundle_folder(out) or not any(out.iterdir()):
        return
    raise BundleError(f"{out} holds files that are not a model bundle; its contents would be "
                      "deleted: give another folder, or --force to replace it")


def is_bundle_folder(folder: Path) -> bool:
    """True if `folder` holds exactly a bundle: its manifest and the files it lists."""
    try:
        manifest = read_manifest(folder)
    except BundleError:
        return False
    entries = list(folder.iterdir())
    return all(entry.is_file() and not entry.is_symlink() for entry in entries) and \
        {entry.name for entry in entries} == {*manifest.files, "manifest.json"}


def write_bundle(out: Path, files: dict[str, bytes], manifest: Manifest, *,
                 overwrite: bool = False) -> Manifest:
    """Write `files` and their manifest to the folder `out`; returns the manifest written.
    Raises BundleError if `out` may not be replaced (see `check_target`)."""
    check_target(out, overwrite)
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
