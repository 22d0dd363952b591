#!/usr/bin/env python3
"""Build the AWS Lambda deployment zip for the scorer (no Docker, any OS).

    python tools/package_lambda.py --python-version 3.12 --model artifacts --out build/lambda.zip

Layout of the zip (its root is the Lambda task root, ``$LAMBDA_TASK_ROOT``):

    scorer/...            the scorer package, ``.py`` files only
    model/...             the model bundle (see BUNDLE_REQUIRED / BUNDLE_OPTIONAL), if --model
    numpy/ PIL/ ai_edge_litert/ aws_lambda_powertools/ ...   third-party wheels, pruned

Third-party wheels are installed with ``pip install --target --platform ... --only-binary=:all:
--no-deps --require-hashes -r infra/lambda-requirements.txt`` for the Lambda interpreter and
glibc. That lock pins every distribution of an explicit and complete list (runtime_requirements,
derived from pyproject.toml; boto3/botocore are provided by the Lambda runtime and never
bundled) to one version, with the sha256 of its wheel for every target it covers, so two builds
ship the same bytes. Before pip runs, the build refuses a lock that does not cover the requested
Python version and architecture, or that does not pin exactly runtime_requirements() within
their specifiers. ``--write-lock`` (``make lock``) regenerates it: each distribution at the
newest version with a wheel for the first target of LOCK_TARGETS (the oldest Python), which every
other target must then have too:

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

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SCORER_DIR = REPO_ROOT / "scorer"
DEFAULT_OUT = REPO_ROOT / "build" / "lambda.zip"
DEFAULT_PYTHON_VERSION = "3.12"
DEFAULT_LOCK = REPO_ROOT / "infra" / "lambda-requirements.txt"

# Lambda quotas: 50 MB for a zip uploaded directly, 250 MB unzipped (function + layers).
MAX_ZIPPED_BYTES = 50 * 1024 * 1024
MAX_UNZIPPED_BYTES = 250 * 1024 * 1024

# Everything the handler imports at run time is installed with no dependency resolution (pip
# --no-deps), so nothing comes in by accident. The list is derived from the package metadata
# (see runtime_requirements): the scorer's dependencies and the `aws` extra in pyproject.toml,
# less what the Lambda runtime provides, plus the unconditional requirements of those,
# followed through the installed distributions' metadata. Measured by importing in a clean venv
# from a --no-deps install:
# - ai_edge_litert.interpreter imports only numpy. ai-edge-litert's declared dependencies
#   (flatbuffers, protobuf, ml_dtypes, backports.strenum, tqdm, typing-extensions) are used by
#   its converter/CompiledModel/AOT tooling, not by the classic Interpreter: not followed.
# - aws_lambda_powertools (Logger, Metrics, utilities.batch, utilities.data_classes) imports
#   jmespath and typing_extensions, its unconditional requirements.
PROVIDED_BY_LAMBDA: frozenset[str] = frozenset({"boto3", "botocore"})
REQUIREMENTS_NOT_FOLLOWED: frozenset[str] = frozenset({"ai-edge-litert"})


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_requirements(pyproject: Path = REPO_ROOT / "pyproject.toml") -> tuple[str, ...]:
    """The Lambda's requirement list, from pyproject.toml and installed metadata, sorted."""
    from importlib.metadata import PackageNotFoundError, requires

    import tomllib
    from packaging.requirements import Requirement

    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    pending = [Requirement(r) for r in
               project["dependencies"] + project["optional-dependencies"]["aws"]]
    found: dict[str, Requirement] = {}
    while pending:
        req = pending.pop(0)  # breadth first: a direct requirement wins over a transitive one
        name = _canonical(req.name)
        if name in found or name in PROVIDED_BY_LAMBDA or \
                (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        found[name] = req
        if name in REQUIREMENTS_NOT_FOLLOWED:
            continue
        try:
            pending += [Requirement(r) for r in requires(req.name) or []]
        except PackageNotFoundError as err:
            raise BuildError(f"{req.name} is not installed here: its requirements cannot be "
                             "read (make package installs the dev extras first)") from err
    return tuple(str(found[name]) for name in sorted(found))


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

# The model bundle files the scorer needs. model.keras (training format, needs TensorFlow) and
# the reports are left out of the zip.
BUNDLE_REQUIRED: tuple[str, ...] = ("model.tflite", "manifest.json")
BUNDLE_OPTIONAL: tuple[str, ...] = ("model_float32.tflite", "metrics.json")
BUNDLE_ARCNAME = "model"

# Lambda python3.12+ runs on Amazon Linux 2023 (glibc 2.34); python3.11 and older on Amazon
# Linux 2 (glibc 2.26). ai-edge-litert 2.x ships manylinux_2_27 wheels, so it needs AL2023.
DEFAULT_GLIBC = (2, 34)
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest timestamp a zip can hold


class BuildError(RuntimeError):
    """The package cannot be built or breaks a Lambda limit (exit status 1)."""


@dataclass(frozen=True)
class ZipStats:
    entries: int
    zipped_bytes: int
    unzipped_bytes: int


def platform_tags(arch: str, glibc: tuple[int, int] = DEFAULT_GLIBC) -> list[str]:
    """pip --platform tags for Lambda on `arch`: manylinux2014 plus every manylinux_2_17..glibc."""
    if arch not in ("x86_64", "aarch64"):
        raise ValueError(f"unsupported architecture {arch!r} (x86_64 or aarch64)")
    major, minor = glibc
    if major != 2 or minor < 17:
        raise ValueError(f"glibc {major}.{minor} is older than manylinux2014 (2.17)")
    return [f"manylinux2014_{arch}"] + [f"manylinux_2_{m}_{arch}" for m in range(17, minor + 1)]


def platform_args(arch: str, glibc: tuple[int, int] = DEFAULT_GLIBC) -> list[str]:
    return [arg for tag in platform_tags(arch, glibc) for arg in ("--platform", tag)]


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


# ---------------------------------------------------------------- the lock
# infra/lambda-requirements.txt in pip's hash-checking format: `name==version \` then one
# `--hash=sha256:...` line per distinct wheel of that version across the targets, so pip accepts
# exactly those files for any target. Machine-readable comment lines record what it covers.

LOCK_HEADER = (
    "# The AWS Lambda function's third-party wheels, each pinned to one version with the sha256",
    "# of its wheel for every target below; tools/package_lambda.py installs them with",
    "# pip --require-hashes. Generated by `make lock` from pyproject.toml: do not edit by hand.",
)
LOCK_ENTRY = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})+)")


@dataclass(frozen=True)
class Target:
    """A Lambda interpreter and architecture, written cp312-x86_64 in the lock."""

    python_version: str  # "3.12"
    arch: str  # "x86_64" or "aarch64"

    @property
    def tag(self) -> str:
        return f"cp{self.python_version.replace('.', '')}-{self.arch}"

    @classmethod
    def parse(cls, tag: str) -> Target:
        m = re.fullmatch(r"cp3(\d{1,2})-(x86_64|aarch64)", tag)
        if not m:
            raise ValueError(f"not a target like cp312-x86_64: {tag!r}")
        return cls(f"3.{m.group(1)}", m.group(2))


# What `make lock` covers, oldest Python first: each version is resolved for the first target
# (the newest release with a wheel for it) and then required on the others, so a release that
# has dropped Python 3.11 (numpy 2.5) is never picked. cp311 is there for the test suite, which
# builds for its own interpreter; the template deploys python3.12 on x86_64.
LOCK_TARGETS: tuple[Target, ...] = tuple(
    Target(version, arch) for version in ("3.11", "3.12", "3.13") for arch in ("x86_64", "aarch64")
)


@dataclass(frozen=True)
class Pin:
    version: str
    hashes: tuple[str, ...]  # sha256 hex digests of its wheels, sorted


@dataclass(frozen=True)
class Lock:
    targets: tuple[Target, ...]
    glibc: tuple[int, int]
    pins: dict[str, Pin]  # canonical distribution name -> pin


def format_lock(lock: Lock) -> str:
    lines = [*LOCK_HEADER,
             "# targets: " + " ".join(t.tag for t in lock.targets),
             f"# glibc: {lock.glibc[0]}.{lock.glibc[1]}"]
    for name in sorted(lock.pins):
        pin = lock.pins[name]
        entry = [f"{name}=={pin.version}"] + [f"    --hash=sha256:{h}" for h in pin.hashes]
        lines.append(" \\\n".join(entry))
    return "\n".join(lines) + "\n"


def _lock_error(path: Path, problem: str) -> BuildError:
    return BuildError(f"lock {path}: {problem}; run `make lock` to regenerate it")


def read_lock(path: Path) -> Lock:
    """Parse a lock as format_lock writes it; BuildError if it is not one."""
    from packaging.version import InvalidVersion, Version

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise _lock_error(path, f"cannot be read ({err.strerror})") from err
    targets: tuple[Target, ...] | None = None
    glibc: tuple[int, int] | None = None
    pins: dict[str, Pin] = {}
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if m := re.fullmatch(r"#\s*targets:(.*)", line):
            try:
                targets = tuple(Target.parse(tag) for tag in m.group(1).split())
            except ValueError as err:
                raise _lock_error(path, str(err)) from err
        elif m := re.fullmatch(r"#\s*glibc:\s*(\d+)\.(\d+)", line):
            glibc = int(m.group(1)), int(m.group(2))
        elif line and not line.startswith("#"):
            m = LOCK_ENTRY.fullmatch(line)
            if not m:
                raise _lock_error(path, f"not a pin with sha256 hashes: {line[:80]!r}")
            name, version = _canonical(m.group(1)), m.group(2)
            try:
                Version(version)
            except InvalidVersion as err:
                raise _lock_error(path, f"{name}=={version} is not a version") from err
            if name in pins:
                raise _lock_error(path, f"{name} is pinned twice")
            pins[name] = Pin(version, tuple(re.findall(r"sha256:([0-9a-f]{64})", m.group(3))))
    if not targets:
        raise _lock_error(path, "no '# targets:' line")
    if glibc is None:
        raise _lock_error(path, "no '# glibc:' line")
    return Lock(targets, glibc, pins)


def lock_problems(lock: Lock, requirements: Sequence[str], target: Target,
                  glibc: tuple[int, int] = DEFAULT_GLIBC) -> list[str]:
    """Why `lock` cannot install `requirements` for `target` (empty if it can)."""
    from packaging.requirements import Requirement

    problems = []
    if target not in lock.targets:
        covered = " ".join(t.tag for t in lock.targets)
        problems.append(f"it has no wheels for {target.tag} (it covers {covered}; a new target "
                        "goes in LOCK_TARGETS first)")
    if glibc != lock.glibc:
        problems.append(f"its wheels are for glibc <= {lock.glibc[0]}.{lock.glibc[1]}, "
                        f"this build is for glibc <= {glibc[0]}.{glibc[1]} (a lock for another "
                        "glibc: --write-lock --glibc)")
    wanted = {_canonical(r.name): r for r in map(Requirement, requirements)}
    missing = sorted(wanted.keys() - lock.pins.keys())
    extra = sorted(lock.pins.keys() - wanted.keys())
    if missing:
        problems.append(f"it lacks {', '.join(missing)}")
    if extra:
        problems.append(f"it pins {', '.join(extra)}, which the Lambda does not require")
    for name in sorted(wanted.keys() & lock.pins.keys()):
        version = lock.pins[name].version
        if not wanted[name].specifier.contains(version, prereleases=True):
            problems.append(f"{name}=={version} is outside {wanted[name]}")
    return problems


def checked_lock(path: Path, requirements: Sequence[str], target: Target,
                 glibc: tuple[int, int] = DEFAULT_GLIBC) -> Lock:
    """The lock at `path`, if it pins exactly `requirements` for `target`; else BuildError."""
    lock = read_lock(path)
    problems = lock_problems(lock, requirements, target, glibc)
    if problems:
        raise _lock_error(path, "; ".join(problems))
    return lock


def scorer_module(name: str):
    """A module of the repository's scorer package (light: the standard library, numpy,
    Pillow and LiteRT only), for what the build shares with it."""
    import importlib

    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    return importlib.import_module(name)


def pip_download_command(dest: Path, target: Target, requirement: str,
                         glibc: tuple[int, int] = DEFAULT_GLIBC,
                         python: str = sys.executable) -> list[str]:
    return [
        python, "-m", "pip", "download", "--dest", str(dest),
        *platform_args(target.arch, glibc),
        "--implementation", "cp",
        "--python-version", target.python_version,
        "--only-binary=:all:",
        "--no-deps",
        "--disable-pip-version-check",
        "--quiet",
        requirement,
    ]


def download_wheel(requirement: str, target: Target, glibc: tuple[int, int] = DEFAULT_GLIBC
                   ) -> tuple[str, str, str]:
    """Download the wheel pip picks for `requirement` on `target`: (name, version, sha256)."""
    from packaging.requirements import Requirement
    from packaging.utils import parse_wheel_filename

    name = _canonical(Requirement(requirement).name)
    with tempfile.TemporaryDirectory(prefix="lambda-lock-") as tmp:
        done = subprocess.run(pip_download_command(Path(tmp), target, requirement, glibc),
                              capture_output=True, text=True, check=False)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            lines = done.stderr.strip().splitlines() or ["no output"]
            why = ([ln for ln in lines if ln.startswith("ERROR")] or lines)[-1]
            raise BuildError(f"no wheel of {requirement} for {target.tag} "
                             f"(glibc <= {glibc[0]}.{glibc[1]}): pip download said: {why}")
        wheel_name, version, _build, _tags = parse_wheel_filename(wheels[0].name)
        if wheel_name != name:
            raise BuildError(f"pip downloaded {wheels[0].name} for {requirement}")
        return name, str(version), scorer_module("scorer.files").sha256_file(wheels[0])


def resolve_lock(requirements: Sequence[str], targets: Sequence[Target],
                 glibc: tuple[int, int] = DEFAULT_GLIBC, log=print) -> Lock:
    """Pin each requirement to the newest version with a wheel for targets[0], then hash that
    version's wheel for every target; BuildError names a target that has none."""
    from packaging.requirements import Requirement

    if not targets:
        raise ValueError("no targets to lock")
    first, *others = targets
    versions: dict[str, str] = {}
    hashes: dict[str, set[str]] = {}
    for req in map(Requirement, requirements):
        name, version, digest = download_wheel(f"{req.name}{req.specifier}", first, glibc)
        versions[name] = version
        hashes[name] = {digest}
    log(f"  {first.tag}: " + " ".join(f"{n}=={v}" for n, v in sorted(versions.items())))
    for target in others:
        for name, version in sorted(versions.items()):
            hashes[name].add(download_wheel(f"{name}=={version}", target, glibc)[2])
        log(f"  {target.tag}: the same {len(versions)} versions")
    pins = {name: Pin(versions[name], tuple(sorted(hashes[name]))) for name in sorted(versions)}
    return Lock(tuple(targets), glibc, pins)


def write_lock(path: Path, targets: Sequence[Target] = LOCK_TARGETS,
               requirements: Sequence[str] | None = None,
               glibc: tuple[int, int] = DEFAULT_GLIBC, log=print) -> Lock:
    """Resolve `requirements` (default runtime_requirements()) for `targets` and write the lock
    to `path` atomically: on any failure the old lock is left as it was."""
    if requirements is None:
        requirements = runtime_requirements()
    log(f"locking {len(requirements)} distributions for "
        f"{' '.join(t.tag for t in targets)} (glibc <= {glibc[0]}.{glibc[1]})")
    lock = resolve_lock(requirements, targets, glibc, log=log)
    path.parent.mkdir(parents=True, exist_ok=True)
    scorer_module("scorer.files").atomic_write(path, format_lock(lock).encode("utf-8"))
    log(f"wrote {path}")
    return lock


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
        except BuildError as exc:
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
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
