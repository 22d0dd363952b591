#!/usr/bin/env python3
"""Build the AWS Lambda deployment zip for the scorer (no Docker, any OS).

    python tools/package_lambda.py --python-version 3.12 --model artifacts --out build/lambda.zip

Layout of the zip (its root is the Lambda task root, ``$LAMBDA_TASK_ROOT``):

    scorer/...            the scorer package, ``.py`` files only
    model/...             the model bundle (see BUNDLE_REQUIRED / BUNDLE_OPTIONAL), if --model
    numpy/ PIL/ ai_edge_litert/ aws_lambda_powertools/ ...   third-party wheels, pruned

Third-party wheels are installed with ``pip install --target --platform ... --only-binary=:all:
--no-deps --require-hashes -r infra/lambda-requirements.txt`` for the Lambda interpreter and
glibc: exactly the lock's pins, each wheel checked against its sha256. Everything about that
lock (what it must pin, its format, refusing a stale one, regenerating it) is in
tools/lambda_lock.py; the build refuses a lock that does not fit before pip runs.
``--write-lock`` (``make lock``) regenerates it:

    python tools/package_lambda.py --write-lock

The tree is then pruned by an explicit list (PRUNE_PATHS, PRUNE_DIR_NAMES) and written as a
deterministic zip (sorted entries, fixed timestamps, fixed permissions), atomically.

Exit status: 0 on success, 1 when the build fails or breaks a Lambda limit, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

# A sibling module: importable when this file runs as a script (its folder is on sys.path).
from lambda_lock import (
    DEFAULT_GLIBC,
    DEFAULT_LOCK,
    LOCK_TARGETS,
    REPO_ROOT,
    LockError,
    Target,
    checked_lock,
    platform_args,
    platform_tags,
    runtime_requirements,
    scorer_module,
    write_lock,
)

DEFAULT_SCORER_DIR = REPO_ROOT / "scorer"
DEFAULT_OUT = REPO_ROOT / "build" / "lambda.zip"
DEFAULT_PYTHON_VERSION = "3.12"

# Lambda quotas: 50 MB for a zip uploaded directly, 250 MB unzipped (function + layers).
MAX_ZIPPED_BYTES = 50 * 1024 * 1024
MAX_UNZIPPED_BYTES = 250 * 1024 * 1024

# Distributions that must never be in the zip: training stack (too big, not needed to score) and
# the AWS SDK (provided by the Lambda runtime; bundling it pins an old copy).
FORBIDDEN_TOP_LEVEL: frozenset[str] = frozenset(
    {"tensorflow", "keras", "tf_keras", "sklearn", "scipy", "matplotlib", "boto3", "botocore"}
)
FORBIDDEN_DISTS: frozenset[str] = frozenset(
    {"tensorflow", "tensorflow_cpu", "keras", "tf_keras", "scikit_learn", "scipy", "matplotlib",
     "boto3", "botocore"}
)

# Explicit prune list, paths relative to the install root. Each was checked against
# ai-edge-litert 2.3.0 (cp311/cp312, manylinux_2_27_x86_64): with all of them removed the
# Interpreter still loads and invokes float32 and dynamic-range-quantized models.
# A path that is absent (another ai-edge-litert version) is reported and skipped.
PRUNE_PATHS: tuple[tuple[str, str], ...] = (
    # 18.9 MB: WebGPU accelerator, loaded only by the CompiledModel API for GPU; the CPU
    # Interpreter (XNNPACK) never dlopens it.
    ("ai_edge_litert/libLiteRtWebGpuAccelerator.so", "WebGPU accelerator (CompiledModel GPU)"),
    # 8.0 MB: LiteRT C API runtime behind CompiledModel/TensorBuffer; the Interpreter wrapper
    # links libpywrap_litert_common.so only (readelf NEEDED).
    ("ai_edge_litert/libLiteRt.so", "LiteRT runtime for the CompiledModel API"),
    # 8.1 MB: apply_plugin_main, the command-line NPU plugin tool.
    ("ai_edge_litert/tools", "NPU plugin CLI tools"),
    # 4.5 MB: NPU compiler/dispatch plugins (Google Tensor, Qualcomm, MediaTek, Intel, Samsung).
    ("ai_edge_litert/vendors", "NPU vendor compiler/dispatch plugins"),
    # 0.4 MB: ahead-of-time NPU compilation package (Python).
    ("ai_edge_litert/aot", "AOT NPU compilation package"),
    # Console scripts (f2py, numpy-config, tqdm) with this machine's interpreter in the shebang.
    ("bin", "console scripts"),
)
# Directory names removed wherever they occur under these top-level packages ("" = everywhere).
PRUNE_DIR_NAMES: tuple[tuple[str, str, str], ...] = (
    # ~15 MB unzipped: numpy's own test suites (numpy/_core/tests, numpy/lib/tests, ...).
    ("numpy", "tests", "numpy test suites"),
    # Byte code compiled by the build machine's Python, not the Lambda's; Lambda compiles its own.
    ("", "__pycache__", "byte code"),
)

# The model bundle files the scorer needs (field_reader.tflite: when the bundle has one, which
# load_bundle then requires). model.keras (training format, needs TensorFlow) and
# the reports are left out of the zip.
BUNDLE_REQUIRED: tuple[str, ...] = ("model.tflite", "manifest.json")
BUNDLE_OPTIONAL: tuple[str, ...] = ("model_float32.tflite", "field_reader.tflite", "metrics.json")
BUNDLE_ARCNAME = "model"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest timestamp a zip can hold


class BuildError(RuntimeError):
    """The package cannot be built or breaks a Lambda limit (exit status 1)."""


@dataclass(frozen=True)
class ZipStats:
    entries: int
    zipped_bytes: int
    unzipped_bytes: int


def pip_install_command(
    target: Path,
    python_version: str,
    arch: str,
    lock: Path,
    glibc: tuple[int, int] = DEFAULT_GLIBC,
    python: str = sys.executable,
) -> list[str]:
    """pip installing exactly the lock's pins into `target`; any wheel not hashed there fails."""
    return [
        python, "-m", "pip", "install", "--target", str(target),
        *platform_args(arch, glibc),
        "--implementation", "cp",
        "--python-version", python_version,
        "--only-binary=:all:",
        "--no-deps",
        "--require-hashes",
        "-r", str(lock),
        "--no-compile",
        "--upgrade",
        "--disable-pip-version-check",
        "--quiet",
    ]


def prune(root: Path, log=print) -> list[str]:
    """Delete PRUNE_PATHS and PRUNE_DIR_NAMES under `root`; return the relative paths removed."""
    removed: list[str] = []
    for rel, why in PRUNE_PATHS:
        path = root / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            log(f"  prune: {rel} not present, skipped ({why})")
            continue
        removed.append(rel)
    for top, name, _why in PRUNE_DIR_NAMES:
        base = root / top if top else root
        if not base.is_dir():
            continue
        for path in sorted(base.rglob(name), key=lambda p: len(p.parts)):
            if path.is_dir() and path.exists():
                shutil.rmtree(path)
                removed.append(path.relative_to(root).as_posix())
    for pyc in root.rglob("*.pyc"):
        pyc.unlink()
        removed.append(pyc.relative_to(root).as_posix())
    return removed


def _dist_name(top: str) -> str | None:
    """Normalized distribution name of a `<name>-<version>.dist-info` folder, else None."""
    m = re.fullmatch(r"(.+?)-[^-]+\.(dist|egg)-info", top)
    return re.sub(r"[-_.]+", "_", m.group(1)).lower() if m else None


def forbidden_entries(names: Iterable[str]) -> list[str]:
    """Top-level packages/dists in `names` (zip arcnames) that must not ship."""
    found: set[str] = set()
    for name in names:
        top = name.split("/", 1)[0]
        stem = top.removesuffix(".py").removesuffix(".libs")  # scipy.libs/, six.py
        if stem in FORBIDDEN_TOP_LEVEL or _dist_name(top) in FORBIDDEN_DISTS:
            found.add(top)
    return sorted(found)


def collect_files(src: Path, arcprefix: str = "", suffixes: tuple[str, ...] = ()) -> dict:
    """Map arcname -> file path for every regular file under `src` (optionally by suffix)."""
    files: dict[str, Path] = {}
    for path in src.rglob("*"):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        if suffixes and path.suffix not in suffixes:
            continue
        rel = path.relative_to(src).as_posix()
        files[f"{arcprefix}/{rel}" if arcprefix else rel] = path
    return files


def verify_bundle(model_dir: Path) -> None:
    """Refuse a bundle whose files do not match their manifest's SHA-256 (or whose manifest
    disagrees with its model), exactly as the scorer would on its first event."""
    bundle = scorer_module("scorer.bundle")
    try:
        bundle.load_bundle(model_dir)
    except bundle.BundleError as err:
        raise BuildError(f"not packaging the model bundle: {err}") from err


def bundle_files(model_dir: Path) -> dict[str, Path]:
    """Map arcname -> path for the model bundle files; BuildError if a required one is missing."""
    missing = [n for n in BUNDLE_REQUIRED if not (model_dir / n).is_file()]
    if missing:
        raise BuildError(f"model bundle {model_dir} lacks {', '.join(missing)}")
    names = list(BUNDLE_REQUIRED) + [n for n in BUNDLE_OPTIONAL if (model_dir / n).is_file()]
    return {f"{BUNDLE_ARCNAME}/{n}": model_dir / n for n in names}


def write_zip(files: dict[str, Path], out: Path, validate=None) -> ZipStats:
    """Write `files` (arcname -> path) to `out` deterministically and atomically.

    `validate(stats)` may raise to abandon the zip: `out` is then left as it was.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    unzipped = 0
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
            for arcname in sorted(files):
                path = files[arcname]
                executable = os.stat(path).st_mode & stat.S_IXUSR
                info = zipfile.ZipInfo(arcname, date_time=ZIP_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 3  # Unix, so the permission bits below are honoured
                mode = 0o755 if executable else 0o644
                info.external_attr = (stat.S_IFREG | mode) << 16
                data = path.read_bytes()
                unzipped += len(data)
                zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
        stats = ZipStats(len(files), tmp.stat().st_size, unzipped)
        if validate is not None:
            validate(stats)
        tmp.chmod(0o644)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return stats


def check_limits(stats: ZipStats) -> list[str]:
    problems = []
    if stats.zipped_bytes > MAX_ZIPPED_BYTES:
        problems.append(
            f"zip is {mib(stats.zipped_bytes)}, over the {mib(MAX_ZIPPED_BYTES)} Lambda limit "
            "for direct upload"
        )
    if stats.unzipped_bytes > MAX_UNZIPPED_BYTES:
        problems.append(
            f"unzipped size is {mib(stats.unzipped_bytes)}, over the "
            f"{mib(MAX_UNZIPPED_BYTES)} Lambda limit"
        )
    return problems


def mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def top_level_sizes(files: dict[str, Path]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for arcname, path in files.items():
        top = arcname.split("/", 1)[0]
        sizes[top] = sizes.get(top, 0) + path.stat().st_size
    return sizes


def build(
    out: Path,
    python_version: str,
    arch: str,
    model_dir: Path | None,
    scorer_dir: Path = DEFAULT_SCORER_DIR,
    glibc: tuple[int, int] = DEFAULT_GLIBC,
    lock: Path = DEFAULT_LOCK,
    log=print,
) -> ZipStats:
    if not (scorer_dir / "__init__.py").is_file():
        raise BuildError(f"{scorer_dir} is not a Python package (no __init__.py)")
    target = Target(python_version, arch)
    # Before anything is installed: fail fast on a stale lock or a bad bundle.
    pins = checked_lock(lock, runtime_requirements(), target, glibc).pins
    if model_dir is not None:
        verify_bundle(model_dir)
    with tempfile.TemporaryDirectory(prefix="lambda-pkg-") as tmp:
        pkg = Path(tmp) / "pkg"
        cmd = pip_install_command(pkg, python_version, arch, lock, glibc=glibc)
        log(f"installing wheels for {target.tag} (glibc <= {glibc[0]}.{glibc[1]}) from {lock}: "
            + " ".join(f"{name}=={pin.version}" for name, pin in sorted(pins.items())))
        result = subprocess.run(cmd, check=False)
        if result.returncode != 0:
            raise BuildError(f"pip install failed with exit status {result.returncode}")
        removed = prune(pkg, log=log)
        log(f"pruned {len(removed)} paths: "
            + ", ".join(r for r in removed if "__pycache__" not in r and not r.endswith(".pyc")))

        files = collect_files(pkg)
        clash = [a for a in files if a.split("/", 1)[0] in ("scorer", BUNDLE_ARCNAME)]
        if clash:
            raise BuildError(f"a dependency installs into scorer/ or model/: {clash[:3]}")
        files.update(collect_files(scorer_dir, "scorer", suffixes=(".py",)))
        if model_dir is not None:
            files.update(bundle_files(model_dir))

        bad = forbidden_entries(files)
        if bad:
            raise BuildError(f"forbidden packages in the zip: {', '.join(bad)}")
        for top, size in sorted(top_level_sizes(files).items(), key=lambda kv: -kv[1]):
            if size >= 64 * 1024:
                log(f"  {mib(size):>10}  {top}")

        def report_and_check(stats: ZipStats) -> None:
            log(f"{out}: {stats.entries} files, zipped {mib(stats.zipped_bytes)} "
                f"({stats.zipped_bytes} bytes), unzipped {mib(stats.unzipped_bytes)} "
                f"({stats.unzipped_bytes} bytes)")
            problems = check_limits(stats)
            if problems:
                raise BuildError("; ".join(problems) + f"; {out} not written")

        stats = write_zip(files, out, validate=report_and_check)
    log(f"wrote {out}")
    return stats


def _python_version(value: str) -> str:
    if not re.fullmatch(r"3\.\d{1,2}", value):
        raise argparse.ArgumentTypeError(f"expected a version like 3.12, got {value!r}")
    return value


def _glibc(value: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)\.(\d+)", value)
    if not m:
        raise argparse.ArgumentTypeError(f"expected a glibc version like 2.34, got {value!r}")
    return int(m.group(1)), int(m.group(2))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Build the scorer's AWS Lambda zip (dependencies for the Lambda runtime, "
        "the scorer package and, with --model, the model bundle under model/)."
    )
    parser.add_argument("--python-version", type=_python_version, default=DEFAULT_PYTHON_VERSION,
                        help="Lambda Python version to build for (default %(default)s)")
    parser.add_argument("--platform", choices=("x86_64", "aarch64"), default="x86_64",
                        help="Lambda architecture (default %(default)s)")
    parser.add_argument("--glibc", type=_glibc, default=DEFAULT_GLIBC,
                        help="newest manylinux glibc to accept (default 2.34: Amazon Linux "
                        "2023, the python3.12+ runtimes)")
    parser.add_argument("--model", type=Path, default=None,
                        help="model bundle folder (model.tflite, manifest.json, optional "
                        "model_float32.tflite, metrics.json), zipped as model/")
    parser.add_argument("--scorer", type=Path, default=DEFAULT_SCORER_DIR,
                        help="scorer package folder (default: the repo's scorer/)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output zip (default build/lambda.zip)")
    parser.add_argument("--lock", type=Path, default=DEFAULT_LOCK,
                        help="pinned requirements with sha256 hashes to install from "
                        "(default infra/lambda-requirements.txt)")
    parser.add_argument("--write-lock", action="store_true",
                        help="build nothing: pin the Lambda's requirements for "
                        f"{' '.join(t.tag for t in LOCK_TARGETS)} and --glibc, and write "
                        "them with their wheels' hashes to --lock (what make lock runs)")
    args = parser.parse_args(argv)
    if args.model is not None:
        if not args.model.is_dir():
            parser.error(f"--model {args.model} is not a folder")
        missing = [n for n in BUNDLE_REQUIRED if not (args.model / n).is_file()]
        if missing:
            parser.error(f"--model {args.model} lacks {', '.join(missing)}")
    if not (args.scorer / "__init__.py").is_file():
        parser.error(f"--scorer {args.scorer} is not a Python package")
    if args.out.suffix != ".zip":
        parser.error(f"--out {args.out} must end in .zip")
    try:
        platform_tags(args.platform, args.glibc)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.write_lock:
        try:
            write_lock(args.lock, LOCK_TARGETS, glibc=args.glibc)
        except (BuildError, LockError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    if tuple(int(p) for p in args.python_version.split(".")) < (3, 12):
        print(f"note: Lambda python{args.python_version} runs on Amazon Linux 2 (glibc 2.26); "
              "this build is for local tests, the template deploys python3.12",
              file=sys.stderr)
    try:
        build(args.out, args.python_version, args.platform, args.model, args.scorer, args.glibc,
              args.lock)
    except (BuildError, LockError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
