"""tools/lambda_lock.py: what the Lambda's lock must pin, its format, refusing a stale or broken
lock, and writing one with the real pip (on small pure-Python wheels from the package index).

How the build uses the lock (pip --require-hashes, refusing before pip runs) is tested in
tests/test_package.py.
"""

from __future__ import annotations

import hashlib
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tools"
TEMPLATE = ROOT / "infra" / "template.yaml"
THIS_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"

if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))  # not a package: its modules import each other by name
ll = importlib.import_module("lambda_lock")


# ---------------------------------------------------------------- helpers (test_package uses them)


def committed_versions() -> dict[str, str]:
    return {name: pin.version for name, pin in ll.read_lock(ll.DEFAULT_LOCK).pins.items()}


def hand_written_lock(path: Path, pins: dict[str, str], targets: str = "cp312-x86_64",
                      glibc: str = "2.34") -> Path:
    """A lock in pip's hash-checking format, written here rather than by format_lock."""
    lines = ["# hand-written for a test", f"# targets: {targets}", f"# glibc: {glibc}"]
    for i, (name, version) in enumerate(sorted(pins.items()), start=1):
        lines.append(f"{name}=={version} \\\n    --hash=sha256:{i:064x}")
    path.write_text("\n".join(lines) + "\n")
    return path


def without(pins: dict[str, str], name: str) -> dict[str, str]:
    assert name in pins
    return {k: v for k, v in pins.items() if k != name}


def template_targets() -> set[str]:
    """cpXY-arch of every Lambda runtime and architecture the SAM template deploys."""
    text = TEMPLATE.read_text()
    versions = set(re.findall(r"^\s+Runtime:\s*python(3\.\d+)\s*$", text, re.M))
    arches = set(re.findall(r"^\s+Architectures:\s*\[\s*(\w+)\s*\]", text, re.M)) or {"x86_64"}
    assert versions, f"no python runtime found in {TEMPLATE}"
    return {ll.Target(version, arch).tag for version in versions for arch in arches}


# ---------------------------------------------------------------- what it pins and covers


def test_runtime_requirements_are_complete_and_exclude_the_aws_sdk():
    names = {re.split(r"[<>=!~;\[ ]", r)[0].lower() for r in ll.runtime_requirements()}
    # The scorer's dependencies, plus what aws-lambda-powertools imports (found with --no-deps).
    assert names == {"numpy", "pillow", "ai-edge-litert", "click", "tqdm",
                     "aws-lambda-powertools", "jmespath", "typing-extensions"}
    assert not names & {"boto3", "botocore", "tensorflow", "keras", "scikit-learn"}


def test_runtime_requirements_follow_pyproject(tmp_path):
    """A dependency added to pyproject.toml reaches the Lambda without editing the tool."""
    text = (ll.REPO_ROOT / "pyproject.toml").read_text()
    changed = text.replace('"click>=8.1",', '"click>=8.1",\n    "jmespath>=0.9",', 1)
    assert changed != text
    (tmp_path / "pyproject.toml").write_text(changed)
    assert "jmespath>=0.9" in ll.runtime_requirements(tmp_path / "pyproject.toml")
    assert "jmespath>=0.9" not in ll.runtime_requirements()


def test_platform_tags_cover_manylinux2014_to_amazon_linux_2023():
    tags = ll.platform_tags("x86_64")
    assert tags[0] == "manylinux2014_x86_64"
    assert "manylinux_2_17_x86_64" in tags and "manylinux_2_28_x86_64" in tags
    assert "manylinux_2_27_x86_64" in tags  # ai-edge-litert 2.x wheels
    assert tags[-1] == "manylinux_2_34_x86_64"
    assert "manylinux_2_35_x86_64" not in tags
    assert all(t.endswith("_aarch64") for t in ll.platform_tags("aarch64"))
    assert ll.platform_tags("x86_64", (2, 26))[-1] == "manylinux_2_26_x86_64"
    with pytest.raises(ValueError):
        ll.platform_tags("arm64")
    with pytest.raises(ValueError):
        ll.platform_tags("x86_64", (2, 5))


def test_targets_are_written_like_cp312_x86_64():
    assert ll.Target.parse("cp312-x86_64") == ll.Target("3.12", "x86_64")
    assert ll.Target("3.11", "aarch64").tag == "cp311-aarch64"
    for bad in ("cp312", "py312-x86_64", "cp312-arm64", "312-x86_64", "cp27-x86_64"):
        with pytest.raises(ValueError):
            ll.Target.parse(bad)


# ---------------------------------------------------------------- reading and checking


def test_committed_lock_pins_exactly_the_runtime_requirements_for_the_deployed_runtime():
    from packaging.requirements import Requirement

    lock = ll.read_lock(ll.DEFAULT_LOCK)
    wanted = {ll.canonical(r.name): r for r in map(Requirement, ll.runtime_requirements())}
    assert set(lock.pins) == set(wanted)
    for name, pin in lock.pins.items():
        assert wanted[name].specifier.contains(pin.version, prereleases=True), (name, pin)
        assert pin.hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in pin.hashes)
    # numpy has one wheel per Python version and architecture: every target was hashed.
    assert len(set(lock.pins["numpy"].hashes)) == len(lock.targets)
    tags = {t.tag for t in lock.targets}
    assert template_targets() <= tags
    assert ll.Target(THIS_PYTHON, "x86_64").tag in tags  # test_package's real build
    assert lock.glibc == ll.DEFAULT_GLIBC
    for target in lock.targets:
        assert ll.lock_problems(lock, ll.runtime_requirements(), target) == []
    # Exactly as make lock writes it: a hand edit shows here.
    assert ll.DEFAULT_LOCK.read_text() == ll.format_lock(lock)


def test_a_hand_written_lock_that_fits_passes_the_checks(tmp_path):
    lock = hand_written_lock(tmp_path / "lock.txt", committed_versions(),
                             targets="cp313-aarch64 cp312-x86_64")
    read = ll.checked_lock(lock, ll.runtime_requirements(), ll.Target("3.12", "x86_64"))
    assert read.targets == (ll.Target("3.13", "aarch64"), ll.Target("3.12", "x86_64"))
    assert {name: pin.version for name, pin in read.pins.items()} == committed_versions()
    assert all(len(pin.hashes) == 1 for pin in read.pins.values())


@pytest.mark.parametrize("change, problem", [
    (lambda pins: {"targets": "cp311-x86_64 cp312-aarch64"}, "no wheels for cp312-x86_64"),
    (lambda pins: {"pins": without(pins, "jmespath")}, "it lacks jmespath"),
    (lambda pins: {"pins": {**pins, "six": "1.17.0"}},
     "pins six, which the Lambda does not require"),
    (lambda pins: {"pins": {**pins, "numpy": "1.25.2"}}, "numpy==1.25.2 is outside numpy>=1.26"),
    (lambda pins: {"glibc": "2.26"}, "this build is for glibc <= 2.34"),
], ids=["target", "missing", "extra", "specifier", "glibc"])
def test_a_lock_that_does_not_fit_is_refused(tmp_path, change, problem):
    pins = committed_versions()
    lock = hand_written_lock(tmp_path / "lock.txt", **{"pins": pins, **change(pins)})
    with pytest.raises(ll.LockError, match="run `make lock`") as refused:
        ll.checked_lock(lock, ll.runtime_requirements(), ll.Target("3.12", "x86_64"))
    assert problem in str(refused.value)


@pytest.mark.parametrize("text, problem", [
    ("# targets: cp312-x86_64\n# glibc: 2.34\nnumpy>=1.26\n", "not a pin with sha256 hashes"),
    ("# targets: cp312-x86_64\n# glibc: 2.34\nnumpy==2.4.6\n", "not a pin with sha256 hashes"),
    ("# targets: cp312-x86_64\n# glibc: 2.34\nnumpy==2.4.6 --hash=md5:" + "0" * 32 + "\n",
     "not a pin with sha256 hashes"),
    ("# targets: cp312-x86_64\n# glibc: 2.34\nnumpy==two --hash=sha256:" + "0" * 64 + "\n",
     "not a version"),
    ("# targets: cp312-x86_64\n# glibc: 2.34\n" + ("numpy==2.4.6 --hash=sha256:" + "0" * 64
                                                   + "\n") * 2, "numpy is pinned twice"),
    ("# glibc: 2.34\nnumpy==2.4.6 --hash=sha256:" + "0" * 64 + "\n", "no '# targets:' line"),
    ("# targets: cp312-arm64\n# glibc: 2.34\n", "not a target"),
    ("# targets: cp312-x86_64\nnumpy==2.4.6 --hash=sha256:" + "0" * 64 + "\n",
     "no '# glibc:' line"),
], ids=["unpinned", "no-hash", "md5", "version", "twice", "no-targets", "bad-target", "no-glibc"])
def test_a_file_that_is_not_a_lock_is_refused(tmp_path, text, problem):
    path = tmp_path / "lock.txt"
    path.write_text(text)
    with pytest.raises(ll.LockError, match="run `make lock`") as refused:
        ll.read_lock(path)
    assert problem in str(refused.value)
    with pytest.raises(ll.LockError, match="cannot be read"):
        ll.read_lock(tmp_path / "absent.txt")


# ---------------------------------------------------------------- writing


TINY_REQUIREMENTS = ("jmespath>=1.0.1", "typing-extensions>=4.11")


def test_write_lock_pins_real_wheels_by_their_sha256(tmp_path):
    targets = [ll.Target(THIS_PYTHON, "x86_64"), ll.Target(THIS_PYTHON, "aarch64")]
    path = tmp_path / "infra" / "lock.txt"
    written = ll.write_lock(path, targets, requirements=TINY_REQUIREMENTS, log=lambda *_: None)
    text = path.read_text()
    assert "Generated by `make lock`" in text and "do not edit by hand" in text
    assert f"\n# targets: {targets[0].tag} {targets[1].tag}\n" in text
    lock = ll.read_lock(path)
    assert lock == written
    assert sorted(lock.pins) == ["jmespath", "typing-extensions"]
    assert ll.lock_problems(lock, TINY_REQUIREMENTS, targets[1]) == []
    # Pure-Python wheels are the same file on both architectures: hashed once.
    assert all(len(pin.hashes) == 1 for pin in lock.pins.values())

    # The hashes are those of the files pip downloads for these pins.
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--only-binary=:all:", "--dest", str(wheels),
                    *(f"{name}=={pin.version}" for name, pin in lock.pins.items())],
                   check=True, capture_output=True, timeout=300)
    downloaded = {ll.canonical(w.name.split("-")[0]): hashlib.sha256(w.read_bytes()).hexdigest()
                  for w in wheels.glob("*.whl")}
    assert downloaded == {name: pin.hashes[0] for name, pin in lock.pins.items()}

    # The real pip installs from it in hash-checking mode (as the build does, for a target).
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                           "--require-hashes", "--only-binary=:all:", "--target",
                           str(tmp_path / "pkg"), *ll.platform_args("aarch64"),
                           "--python-version", THIS_PYTHON, "-r", str(path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "pkg" / "typing_extensions.py").is_file()

    # Deterministic, and written through a temporary file that does not stay behind.
    again = path.with_name("again.txt")
    ll.write_lock(again, targets, requirements=TINY_REQUIREMENTS, log=lambda *_: None)
    assert again.read_bytes() == path.read_bytes()
    assert sorted(p.name for p in path.parent.iterdir()) == ["again.txt", "lock.txt"]


def test_write_lock_names_a_target_without_the_wheel_and_keeps_the_old_lock(tmp_path):
    path = tmp_path / "lock.txt"
    path.write_bytes(b"the old lock\n")
    # typing-extensions 4.11+ needs Python 3.8 or newer: no wheel of it for 3.6.
    targets = [ll.Target(THIS_PYTHON, "x86_64"), ll.Target("3.6", "x86_64")]
    with pytest.raises(ll.LockError,
                       match=r"no wheel of typing-extensions==[\d.]+ for cp36-x86_64"):
        ll.write_lock(path, targets, requirements=("typing-extensions>=4.11",),
                      log=lambda *_: None)
    assert path.read_bytes() == b"the old lock\n"
    assert [p.name for p in tmp_path.iterdir()] == ["lock.txt"]
