"""The Lambda's lock, infra/lambda-requirements.txt: what it must pin, and reading, checking
and writing it. tools/package_lambda.py installs from it; this module never builds anything.

The lock is pip's hash-checking format: one ``name==version`` per distribution of an explicit
and complete list (runtime_requirements, derived from pyproject.toml; boto3/botocore are
provided by the Lambda runtime and never bundled), with the sha256 of its wheel for every
target it covers, so two builds ship the same bytes. Two comment lines record what it covers
(``# targets: cp311-x86_64 ...`` and ``# glibc: 2.34``). checked_lock refuses a lock that does
not cover a build's Python version, architecture and glibc, or that does not pin exactly
runtime_requirements() within their specifiers (a stale lock). write_lock (``make lock``)
regenerates it: each distribution at the newest version with a wheel for the first target of
LOCK_TARGETS (the oldest Python), which every other target must then have too.

Why not ``uv pip compile --generate-hashes``: measured with uv 0.13.9, a per-target compile
pins numpy 2.4.6 for cp311 but 2.5.5 for cp312+ (not one pin), and ``--universal`` (one pin
only with ``--fork-strategy fewest``) cannot take ``--python-platform``, so it locks versions
with no wheel for a target (tflite-micro: none for aarch64). Its hashes are the index's, for
every file of a version (185 for these 8 pins, Windows and macOS wheels too), and it has no
check of a requirements file against its inputs: this module's checks would stay anyway.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LOCK = REPO_ROOT / "infra" / "lambda-requirements.txt"


class LockError(RuntimeError):
    """The lock cannot be read, written, or used for a build (the tool exits with status 1)."""


def scorer_module(name: str):
    """A module of the repository's scorer package (light: the standard library, numpy,
    Pillow and LiteRT only), for what the tools share with it: scorer.files hashes and writes
    the lock, scorer.bundle verifies the bundle the build packages."""
    import importlib

    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    return importlib.import_module(name)


# ---------------------------------------------------------------- what it pins
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


def canonical(name: str) -> str:
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
        name = canonical(req.name)
        if name in found or name in PROVIDED_BY_LAMBDA or \
                (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        found[name] = req
        if name in REQUIREMENTS_NOT_FOLLOWED:
            continue
        try:
            pending += [Requirement(r) for r in requires(req.name) or []]
        except PackageNotFoundError as err:
            raise LockError(f"{req.name} is not installed here: its requirements cannot be "
                            "read (make package installs the dev extras first)") from err
    return tuple(str(found[name]) for name in sorted(found))


# ---------------------------------------------------------------- what it covers
# Lambda python3.12+ runs on Amazon Linux 2023 (glibc 2.34); python3.11 and older on Amazon
# Linux 2 (glibc 2.26). ai-edge-litert 2.x ships manylinux_2_27 wheels, so it needs AL2023.
DEFAULT_GLIBC = (2, 34)


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


# ---------------------------------------------------------------- the file
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


def _lock_error(path: Path, problem: str) -> LockError:
    return LockError(f"lock {path}: {problem}; run `make lock` to regenerate it")


def read_lock(path: Path) -> Lock:
    """Parse a lock as format_lock writes it; LockError if it is not one."""
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
            name, version = canonical(m.group(1)), m.group(2)
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
    wanted = {canonical(r.name): r for r in map(Requirement, requirements)}
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
    """The lock at `path`, if it pins exactly `requirements` for `target`; else LockError."""
    lock = read_lock(path)
    problems = lock_problems(lock, requirements, target, glibc)
    if problems:
        raise _lock_error(path, "; ".join(problems))
    return lock


# ---------------------------------------------------------------- writing it
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

    name = canonical(Requirement(requirement).name)
    with tempfile.TemporaryDirectory(prefix="lambda-lock-") as tmp:
        done = subprocess.run(pip_download_command(Path(tmp), target, requirement, glibc),
                              capture_output=True, text=True, check=False)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            lines = done.stderr.strip().splitlines() or ["no output"]
            why = ([ln for ln in lines if ln.startswith("ERROR")] or lines)[-1]
            raise LockError(f"no wheel of {requirement} for {target.tag} "
                            f"(glibc <= {glibc[0]}.{glibc[1]}): pip download said: {why}")
        wheel_name, version, _build, _tags = parse_wheel_filename(wheels[0].name)
        if wheel_name != name:
            raise LockError(f"pip downloaded {wheels[0].name} for {requirement}")
        return name, str(version), scorer_module("scorer.files").sha256_file(wheels[0])


def resolve_lock(requirements: Sequence[str], targets: Sequence[Target],
                 glibc: tuple[int, int] = DEFAULT_GLIBC, log=print) -> Lock:
    """Pin each requirement to the newest version with a wheel for targets[0], then hash that
    version's wheel for every target; LockError names a target that has none."""
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

