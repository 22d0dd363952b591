"""tools/package_lambda.py: its pure parts, the lock, and one real build imported by a clean
interpreter.

The build test installs real wheels for this machine's Python from the committed lock (pip
reaches the package index) and takes about half a minute; the lock tests run the real pip on
small pure-Python wheels. The end-to-end scoring test with a real bundle lives elsewhere.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "package_lambda.py"
TEMPLATE = ROOT / "infra" / "template.yaml"
THIS_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def load_script():
    spec = importlib.util.spec_from_file_location("package_lambda", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["package_lambda"] = module
    spec.loader.exec_module(module)
    return module


pl = load_script()


def touch(path: Path, data: bytes = b"x", mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


# ---------------------------------------------------------------- pip command


def test_platform_tags_cover_manylinux2014_to_amazon_linux_2023():
    tags = pl.platform_tags("x86_64")
    assert tags[0] == "manylinux2014_x86_64"
    assert "manylinux_2_17_x86_64" in tags and "manylinux_2_28_x86_64" in tags
    assert "manylinux_2_27_x86_64" in tags  # ai-edge-litert 2.x wheels
    assert tags[-1] == "manylinux_2_34_x86_64"
    assert "manylinux_2_35_x86_64" not in tags
    assert all(t.endswith("_aarch64") for t in pl.platform_tags("aarch64"))
    assert pl.platform_tags("x86_64", (2, 26))[-1] == "manylinux_2_26_x86_64"
    with pytest.raises(ValueError):
        pl.platform_tags("arm64")
    with pytest.raises(ValueError):
        pl.platform_tags("x86_64", (2, 5))


def test_pip_command_installs_the_lock_with_hashes_only(tmp_path):
    lock = tmp_path / "lock.txt"
    cmd = pl.pip_install_command(tmp_path / "pkg", "3.12", "x86_64", lock)
    assert cmd[1:4] == ["-m", "pip", "install"]
    for flag in ("--no-deps", "--require-hashes", "--only-binary=:all:", "--no-compile",
                 "--upgrade"):
        assert flag in cmd
    assert cmd[cmd.index("-r") + 1] == str(lock)
    assert cmd[cmd.index("--python-version") + 1] == "3.12"
    assert cmd[cmd.index("--implementation") + 1] == "cp"
    assert cmd[cmd.index("--target") + 1] == str(tmp_path / "pkg")
    platforms = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--platform"]
    assert platforms == pl.platform_tags("x86_64")
    # Nothing is installed but what the lock pins: every argument is an option or its value.
    takes_value = {"--target", "--platform", "--implementation", "--python-version", "-r"}
    loose = [a for i, a in enumerate(cmd[4:], 4)
             if not a.startswith("-") and cmd[i - 1] not in takes_value]
    assert loose == []


def test_runtime_requirements_are_complete_and_exclude_the_aws_sdk():
    names = {re.split(r"[<>=!~;\[ ]", r)[0].lower() for r in pl.runtime_requirements()}
    # The scorer's dependencies, plus what aws-lambda-powertools imports (found with --no-deps).
    assert names == {"numpy", "pillow", "ai-edge-litert", "click", "tqdm",
                     "aws-lambda-powertools", "jmespath", "typing-extensions"}
    assert not names & {"boto3", "botocore", "tensorflow", "keras", "scikit-learn"}


def test_runtime_requirements_follow_pyproject(tmp_path):
    """A dependency added to pyproject.toml reaches the Lambda without editing the tool."""
    text = (pl.REPO_ROOT / "pyproject.toml").read_text()
    changed = text.replace('"click>=8.1",', '"click>=8.1",\n    "jmespath>=0.9",', 1)
    assert changed != text
    (tmp_path / "pyproject.toml").write_text(changed)
    assert "jmespath>=0.9" in pl.runtime_requirements(tmp_path / "pyproject.toml")
    assert "jmespath>=0.9" not in pl.runtime_requirements()


# ---------------------------------------------------------------- the lock


def template_targets() -> set[str]:
    """cpXY-arch of every Lambda runtime and architecture the SAM template deploys."""
    text = TEMPLATE.read_text()
    versions = set(re.findall(r"^\s+Runtime:\s*python(3\.\d+)\s*$", text, re.M))
    arches = set(re.findall(r"^\s+Architectures:\s*\[\s*(\w+)\s*\]", text, re.M)) or {"x86_64"}
    assert versions, f"no python runtime found in {TEMPLATE}"
    return {pl.Target(version, arch).tag for version in versions for arch in arches}


def committed_versions() -> dict[str, str]:
    return {name: pin.version for name, pin in pl.read_lock(pl.DEFAULT_LOCK).pins.items()}


def hand_written_lock(path: Path, pins: dict[str, str], targets: str = "cp312-x86_64",
                      glibc: str = "2.34") -> Path:
    """A lock in pip's hash-checking format, written here rather than by format_lock."""
    lines = ["# hand-written for a test", f"# targets: {targets}", f"# glibc: {glibc}"]
    for i, (name, version) in enumerate(sorted(pins.items()), start=1):
        lines.append(f"{name}=={version} \\\n    --hash=sha256:{i:064x}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_targets_are_written_like_cp312_x86_64():
    assert pl.Target.parse("cp312-x86_64") == pl.Target("3.12", "x86_64")
    assert pl.Target("3.11", "aarch64").tag == "cp311-aarch64"
    for bad in ("cp312", "py312-x86_64", "cp312-arm64", "312-x86_64", "cp27-x86_64"):
        with pytest.raises(ValueError):
            pl.Target.parse(bad)


def test_committed_lock_pins_exactly_the_runtime_requirements_for_the_deployed_runtime():
    from packaging.requirements import Requirement

    lock = pl.read_lock(pl.DEFAULT_LOCK)
    wanted = {pl._canonical(r.name): r for r in map(Requirement, pl.runtime_requirements())}
    assert set(lock.pins) == set(wanted)
    for name, pin in lock.pins.items():
        assert wanted[name].specifier.contains(pin.version, prereleases=True), (name, pin)
        assert pin.hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in pin.hashes)
    # numpy has one wheel per Python version and architecture: every target was hashed.
    assert len(set(lock.pins["numpy"].hashes)) == len(lock.targets)
    tags = {t.tag for t in lock.targets}
    assert template_targets() <= tags
    assert pl.Target(THIS_PYTHON, "x86_64").tag in tags  # the real build below
    assert lock.glibc == pl.DEFAULT_GLIBC
    for target in lock.targets:
        assert pl.lock_problems(lock, pl.runtime_requirements(), target) == []
    # Exactly as make lock writes it: a hand edit shows here.
    assert pl.DEFAULT_LOCK.read_text() == pl.format_lock(lock)


def test_a_hand_written_lock_that_fits_passes_the_checks(tmp_path):
    lock = hand_written_lock(tmp_path / "lock.txt", committed_versions(),
                             targets="cp313-aarch64 cp312-x86_64")
    read = pl.checked_lock(lock, pl.runtime_requirements(), pl.Target("3.12", "x86_64"))
    assert read.targets == (pl.Target("3.13", "aarch64"), pl.Target("3.12", "x86_64"))
    assert {name: pin.version for name, pin in read.pins.items()} == committed_versions()
    assert all(len(pin.hashes) == 1 for pin in read.pins.values())


def without(pins: dict[str, str], name: str) -> dict[str, str]:
    assert name in pins
    return {k: v for k, v in pins.items() if k != name}


@pytest.mark.parametrize("change, problem", [
    (lambda pins: {"targets": "cp311-x86_64 cp312-aarch64"}, "no wheels for cp312-x86_64"),
    (lambda pins: {"pins": without(pins, "jmespath")}, "it lacks jmespath"),
    (lambda pins: {"pins": {**pins, "six": "1.17.0"}},
     "pins six, which the Lambda does not require"),
    (lambda pins: {"pins": {**pins, "numpy": "1.25.2"}}, "numpy==1.25.2 is outside numpy>=1.26"),
    (lambda pins: {"glibc": "2.26"}, "this build is for glibc <= 2.34"),
], ids=["target", "missing", "extra", "specifier", "glibc"])
def test_build_refuses_a_lock_that_does_not_fit_before_pip_runs(tmp_path, change, problem):
    pins = committed_versions()
    lock = hand_written_lock(tmp_path / "lock.txt", **{"pins": pins, **change(pins)})
    out = tmp_path / "lambda.zip"
    logged: list[str] = []
    with pytest.raises(pl.BuildError, match="run `make lock`") as refused:
        pl.build(out, "3.12", "x86_64", None, lock=lock, log=logged.append)
    assert problem in str(refused.value)
    assert logged == [] and not out.exists()  # nothing was installed


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
    with pytest.raises(pl.BuildError, match="run `make lock`") as refused:
        pl.read_lock(path)
    assert problem in str(refused.value)
    with pytest.raises(pl.BuildError, match="cannot be read"):
        pl.read_lock(tmp_path / "absent.txt")


def test_cli_refuses_a_python_version_the_lock_does_not_cover(tmp_path):
    out = tmp_path / "lambda.zip"
    done = run_script("--python-version", "3.9", "--out", str(out))
    assert done.returncode == 1, done.stderr
    assert "no wheels for cp39-x86_64" in done.stderr and "make lock" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()
    bad = hand_written_lock(tmp_path / "lock.txt", without(committed_versions(), "numpy"))
    done = run_script("--lock", str(bad), "--out", str(out))
    assert done.returncode == 1 and "it lacks numpy" in done.stderr, done.stderr


def test_pip_refuses_a_wheel_whose_hash_is_not_in_the_lock(tmp_path):
    """The real pip, a real wheel from the committed lock: only its true hash installs."""
    pin = pl.read_lock(pl.DEFAULT_LOCK).pins["jmespath"]

    def install(hashes: tuple[str, ...], name: str) -> subprocess.CompletedProcess:
        lock = tmp_path / f"{name}.txt"
        lock.write_text(f"jmespath=={pin.version} \\\n"
                        + " \\\n".join(f"    --hash=sha256:{h}" for h in hashes) + "\n")
        cmd = pl.pip_install_command(tmp_path / name, THIS_PYTHON, "x86_64", lock)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    good = install(pin.hashes, "good")
    assert good.returncode == 0, good.stderr[-3000:]
    assert (tmp_path / "good" / "jmespath" / "__init__.py").is_file()

    tampered = tuple(("0" if h[0] != "0" else "1") + h[1:] for h in pin.hashes)
    bad = install(tampered, "bad")
    assert bad.returncode != 0
    assert "DO NOT MATCH THE HASHES" in bad.stderr, bad.stderr[-3000:]
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


TINY_REQUIREMENTS = ("jmespath>=1.0.1", "typing-extensions>=4.11")


def test_write_lock_pins_real_wheels_by_their_sha256(tmp_path):
    targets = [pl.Target(THIS_PYTHON, "x86_64"), pl.Target(THIS_PYTHON, "aarch64")]
    path = tmp_path / "infra" / "lock.txt"
    written = pl.write_lock(path, targets, requirements=TINY_REQUIREMENTS, log=lambda *_: None)
    text = path.read_text()
    assert "Generated by `make lock`" in text and "do not edit by hand" in text
    assert f"\n# targets: {targets[0].tag} {targets[1].tag}\n" in text
    lock = pl.read_lock(path)
    assert lock == written
    assert sorted(lock.pins) == ["jmespath", "typing-extensions"]
    assert pl.lock_problems(lock, TINY_REQUIREMENTS, targets[1]) == []
    # Pure-Python wheels are the same file on both architectures: hashed once.
    assert all(len(pin.hashes) == 1 for pin in lock.pins.values())

    # The hashes are those of the files pip downloads for these pins.
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--only-binary=:all:", "--dest", str(wheels),
                    *(f"{name}=={pin.version}" for name, pin in lock.pins.items())],
                   check=True, capture_output=True, timeout=300)
    downloaded = {pl._canonical(w.name.split("-")[0]): hashlib.sha256(w.read_bytes()).hexdigest()
                  for w in wheels.glob("*.whl")}
    assert downloaded == {name: pin.hashes[0] for name, pin in lock.pins.items()}

    # The real pip installs from it in hash-checking mode.
    done = subprocess.run(pl.pip_install_command(tmp_path / "pkg", THIS_PYTHON, "x86_64", path),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "pkg" / "typing_extensions.py").is_file()

    # Deterministic, and written through a temporary file that does not stay behind.
    again = path.with_name("again.txt")
    pl.write_lock(again, targets, requirements=TINY_REQUIREMENTS, log=lambda *_: None)
    assert again.read_bytes() == path.read_bytes()
    assert sorted(p.name for p in path.parent.iterdir()) == ["again.txt", "lock.txt"]


def test_write_lock_names_a_target_without_the_wheel_and_keeps_the_old_lock(tmp_path):
    path = touch(tmp_path / "lock.txt", b"the old lock\n")
    # typing-extensions 4.11+ needs Python 3.8 or newer: no wheel of it for 3.6.
    targets = [pl.Target(THIS_PYTHON, "x86_64"), pl.Target("3.6", "x86_64")]
    with pytest.raises(pl.BuildError,
                       match=r"no wheel of typing-extensions==[\d.]+ for cp36-x86_64"):
        pl.write_lock(path, targets, requirements=("typing-extensions>=4.11",),
                      log=lambda *_: None)
    assert path.read_bytes() == b"the old lock\n"
    assert [p.name for p in tmp_path.iterdir()] == ["lock.txt"]



# ---------------------------------------------------------------- pruning


def test_prune_removes_exactly_the_listed_paths(tmp_path):
    keep = [
        touch(tmp_path / "ai_edge_litert/interpreter.py"),
        touch(tmp_path / "ai_edge_litert/libpywrap_litert_common.so"),
        touch(tmp_path / "ai_edge_litert/_pywrap_litert_interpreter_wrapper.so"),
        touch(tmp_path / "numpy/__init__.py"),
        touch(tmp_path / "numpy/testing/__init__.py"),  # numpy imports numpy.testing lazily
        touch(tmp_path / "numpy-2.0.dist-info/RECORD"),
        touch(tmp_path / "PIL/Image.py"),
        touch(tmp_path / "other/tests/keep.py"),  # tests/ is pruned from numpy only
    ]
    drop = [
        touch(tmp_path / "ai_edge_litert/libLiteRt.so"),
        touch(tmp_path / "ai_edge_litert/libLiteRtWebGpuAccelerator.so"),
        touch(tmp_path / "ai_edge_litert/tools/apply_plugin_main"),
        touch(tmp_path / "ai_edge_litert/vendors/qualcomm/compiler/x.so"),
        touch(tmp_path / "ai_edge_litert/aot/aot_compile.py"),
        touch(tmp_path / "numpy/_core/tests/test_x.py"),
        touch(tmp_path / "numpy/tests/test_y.py"),
        touch(tmp_path / "PIL/__pycache__/Image.cpython-312.pyc"),
        touch(tmp_path / "loose.pyc"),
        touch(tmp_path / "bin/f2py"),
    ]
    logged = []
    removed = pl.prune(tmp_path, log=logged.append)
    assert all(p.exists() for p in keep)
    assert not any(p.exists() for p in drop), [p for p in drop if p.exists()]
    assert "ai_edge_litert/vendors" in removed and "numpy/_core/tests" in removed
    assert not logged  # every listed path was present
    assert not pl.prune(tmp_path, log=logged.append)  # idempotent
    assert len(logged) == len(pl.PRUNE_PATHS)  # absent paths are reported, not fatal


def test_prune_list_is_explained():
    for rel, why in pl.PRUNE_PATHS:
        assert why and not rel.startswith("/") and ".." not in rel
    # The interpreter's own libraries are never on the list.
    pruned = {rel for rel, _ in pl.PRUNE_PATHS}
    assert "ai_edge_litert/libpywrap_litert_common.so" not in pruned
    assert not any(rel.startswith(("numpy/", "PIL/")) for rel in pruned)


# ---------------------------------------------------------------- zip contents


@pytest.mark.parametrize("name", [
    "boto3/__init__.py", "botocore/data/x.json", "botocore-1.35.0.dist-info/METADATA",
    "tensorflow/__init__.py", "tensorflow_cpu-2.18.0.dist-info/RECORD", "keras/__init__.py",
    "sklearn/__init__.py", "scikit_learn-1.5.0.dist-info/METADATA", "scipy/__init__.py",
    "scipy.libs/libx.so", "matplotlib/__init__.py", "tf_keras/__init__.py",
])
def test_forbidden_packages_are_found(name):
    assert pl.forbidden_entries(["numpy/__init__.py", name]) == [name.split("/")[0]]


def test_allowed_packages_pass():
    names = ["numpy/__init__.py", "numpy.libs/x.so", "PIL/Image.py", "ai_edge_litert/x.py",
             "aws_lambda_powertools/__init__.py", "scorer/handler.py", "model/model.tflite",
             "typing_extensions.py", "jmespath/__init__.py", "kerasish/__init__.py"]
    assert pl.forbidden_entries(names) == []


def test_bundle_files_take_what_the_scorer_needs(tmp_path):
    for name in ("model.tflite", "model_float32.tflite", "manifest.json", "metrics.json",
                 "model.keras", "report.html"):
        touch(tmp_path / name)
    files = pl.bundle_files(tmp_path)
    assert sorted(files) == ["model/manifest.json", "model/metrics.json",
                             "model/model.tflite", "model/model_float32.tflite"]
    (tmp_path / "metrics.json").unlink()
    (tmp_path / "model_float32.tflite").unlink()
    assert sorted(pl.bundle_files(tmp_path)) == ["model/manifest.json", "model/model.tflite"]
    (tmp_path / "model.tflite").unlink()
    with pytest.raises(pl.BuildError, match="model.tflite"):
        pl.bundle_files(tmp_path)


def test_a_tampered_bundle_is_not_packaged(tmp_path, mnist_bundle):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(mnist_bundle, bundle)
    pl.verify_bundle(bundle)  # as trained: accepted
    model = bytearray((bundle / "model.tflite").read_bytes())
    model[len(model) // 2] ^= 0xFF
    (bundle / "model.tflite").write_bytes(bytes(model))
    with pytest.raises(pl.BuildError, match="SHA-256"):
        pl.verify_bundle(bundle)
    out = tmp_path / "lambda.zip"
    with pytest.raises(pl.BuildError, match="not packaging the model bundle"):
        pl.build(out, "3.12", "x86_64", bundle, log=lambda *_: None)  # refused before pip runs
    assert not out.exists()


def test_collect_files_takes_python_sources_only(tmp_path):
    touch(tmp_path / "__init__.py")
    touch(tmp_path / "handler.py")
    touch(tmp_path / "sub/x.py")
    touch(tmp_path / "__pycache__/handler.cpython-311.pyc")
    touch(tmp_path / "notes.txt")
    files = pl.collect_files(tmp_path, "scorer", suffixes=(".py",))
    assert sorted(files) == ["scorer/__init__.py", "scorer/handler.py", "scorer/sub/x.py"]


def test_zip_is_deterministic_and_portable(tmp_path):
    src = tmp_path / "src"
    files = {
        "b/data.bin": touch(src / "b/data.bin", os.urandom(1000)),
        "a/mod.py": touch(src / "a/mod.py", b"X = 1\n" * 100),
        "a/tool": touch(src / "a/tool", b"#!/bin/sh\n", mode=0o700),
    }
    one = pl.write_zip(files, tmp_path / "one.zip")
    os.utime(src / "a/mod.py", (1_700_000_000, 1_700_000_000))  # mtimes must not matter
    two = pl.write_zip(dict(reversed(list(files.items()))), tmp_path / "two.zip")
    assert (tmp_path / "one.zip").read_bytes() == (tmp_path / "two.zip").read_bytes()
    assert one == two and one.entries == 3 and one.unzipped_bytes == 1000 + 600 + 10
    with zipfile.ZipFile(tmp_path / "one.zip") as zf:
        infos = zf.infolist()
        assert [i.filename for i in infos] == ["a/mod.py", "a/tool", "b/data.bin"]
        assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
        assert {i.compress_type for i in infos} == {zipfile.ZIP_DEFLATED}
        modes = {i.filename: (i.external_attr >> 16) & 0o777 for i in infos}
        assert modes == {"a/mod.py": 0o644, "a/tool": 0o755, "b/data.bin": 0o644}
        assert zf.read("a/mod.py") == b"X = 1\n" * 100


def test_zip_is_replaced_atomically_and_kept_when_validation_fails(tmp_path):
    src = touch(tmp_path / "f.txt", b"new")
    out = touch(tmp_path / "out" / "lambda.zip", b"old zip")

    def refuse(stats):
        raise pl.BuildError("too big")

    with pytest.raises(pl.BuildError):
        pl.write_zip({"f.txt": src}, out, validate=refuse)
    assert out.read_bytes() == b"old zip"
    assert sorted(p.name for p in out.parent.iterdir()) == ["lambda.zip"]  # no temp left over
    pl.write_zip({"f.txt": src}, out)
    assert zipfile.ZipFile(out).read("f.txt") == b"new"


def test_limits():
    ok = pl.ZipStats(10, 30 * 2**20, 100 * 2**20)
    assert pl.check_limits(ok) == []
    big_zip = pl.ZipStats(10, 50 * 2**20 + 1, 100 * 2**20)
    assert "50.0 MiB" in pl.check_limits(big_zip)[0]
    big_tree = pl.ZipStats(10, 30 * 2**20, 250 * 2**20 + 1)
    assert "250.0 MiB" in pl.check_limits(big_tree)[0]
    assert len(pl.check_limits(pl.ZipStats(1, 2**40, 2**40))) == 2


# ---------------------------------------------------------------- command line


def run_script(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("args", [
    ["--python-version", "312"],
    ["--python-version", "3.x"],
    ["--platform", "arm64"],
    ["--model", "/nonexistent/bundle"],
    ["--out", "build/lambda.tar"],
    ["--glibc", "2"],
    ["--glibc", "2.5"],
    ["--scorer", "/nonexistent/scorer"],
    ["--bogus"],
])
def test_bad_usage_exits_2(args, tmp_path):
    done = run_script(*args, "--out", str(tmp_path / "x.zip")) if "--out" not in args else (
        run_script(*args))
    assert done.returncode == 2, done.stderr
    assert "error" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "x.zip").exists()


def test_model_folder_without_manifest_is_bad_usage(tmp_path):
    touch(tmp_path / "bundle" / "model.tflite")
    done = run_script("--model", str(tmp_path / "bundle"), "--out", str(tmp_path / "x.zip"))
    assert done.returncode == 2 and "manifest.json" in done.stderr


# ---------------------------------------------------------------- a real build


CHECK = textwrap.dedent("""
    import importlib.util, json, sys
    root = sys.argv[1]
    sys.path.insert(0, root)
    import numpy, PIL.Image, click, tqdm, jmespath, typing_extensions
    from ai_edge_litert.interpreter import Interpreter
    from aws_lambda_powertools import Logger, Metrics
    from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
    import scorer
    out = {"numpy": numpy.__file__, "scorer": scorer.__file__,
           "boto3": importlib.util.find_spec("boto3") is not None,
           "tensorflow": importlib.util.find_spec("tensorflow") is not None}
    if len(sys.argv) > 2:
        it = Interpreter(model_path=sys.argv[2], num_threads=1)
        it.allocate_tensors()
        inp = it.get_input_details()[0]
        it.set_tensor(inp["index"], numpy.zeros(inp["shape"], inp["dtype"]))
        it.invoke()
        out["output"] = it.get_tensor(it.get_output_details()[0]["index"]).tolist()
    PIL.Image.new("L", (28, 28)).save(root + "/../probe.png")
    print(json.dumps(out))
""")

TINY_MODEL = textwrap.dedent("""
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf
    model = tf.keras.Sequential([tf.keras.Input((28, 28)), tf.keras.layers.Flatten(),
                                 tf.keras.layers.Dense(10, activation="softmax")])
    with open(sys.argv[1], "wb") as f:
        f.write(tf.lite.TFLiteConverter.from_keras_model(model).convert())
""")


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path | None:
    """A bundle-shaped folder with a one-layer TFLite model (needs TensorFlow, else None)."""
    if importlib.util.find_spec("tensorflow") is None:
        return None
    raw = tmp_path_factory.mktemp("raw") / "model.tflite"
    folder = tmp_path_factory.mktemp("bundle") / "tiny"
    done = subprocess.run([sys.executable, "-c", TINY_MODEL, str(raw)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    from scorer.bundle import Manifest, write_bundle
    from scorer.images import MNIST_GEOMETRY

    # a real, verifiable bundle: make package refuses one that does not match its manifest
    model = raw.read_bytes()
    write_bundle(folder, {"model.tflite": model, "model.keras": b"not shipped"},
                 Manifest(classes=tuple("0123456789"), geometry=MNIST_GEOMETRY,
                          input_shape=(28, 28), models={"int8": "model.tflite"}))
    return folder


def test_built_zip_imports_and_runs_in_a_clean_interpreter(tmp_path, tiny_bundle):
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    out = tmp_path / "build" / "lambda.zip"
    args = ["--python-version", version, "--out", str(out)]
    if tiny_bundle is not None:
        args += ["--model", str(tiny_bundle)]
    done = run_script(*args, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "zipped" in done.stdout and "unzipped" in done.stdout
    pins = committed_versions()
    assert f"numpy=={pins['numpy']}" in done.stdout  # the log names the pinned versions

    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        unzipped = sum(i.file_size for i in zf.infolist())
        zf.extractall(tmp_path / "task")
    # Installed through the lock: exactly its distributions, at its versions.
    tops = sorted({n.split("/", 1)[0] for n in names})
    dist_infos = [m for m in (re.fullmatch(r"(.+)-([^-]+)\.dist-info", t) for t in tops) if m]
    assert {pl._canonical(m.group(1)): m.group(2) for m in dist_infos} == pins
    assert out.stat().st_size <= pl.MAX_ZIPPED_BYTES and unzipped <= pl.MAX_UNZIPPED_BYTES
    assert pl.forbidden_entries(names) == []
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    for rel, _ in pl.PRUNE_PATHS:
        assert not any(n == rel or n.startswith(rel + "/") for n in names), rel
    assert not [n for n in names if n.startswith("numpy/") and "/tests/" in n]
    assert "ai_edge_litert/libpywrap_litert_common.so" in names
    assert "scorer/__init__.py" in names
    assert not [n for n in names if n.startswith("scorer/") and not n.endswith(".py")]
    model_files = sorted(n for n in names if n.startswith("model/"))
    if tiny_bundle is not None:
        assert model_files == ["model/manifest.json", "model/model.tflite"]
    else:
        assert model_files == []

    # A venv without pip has no third-party packages; -I ignores the environment and user site.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    check = [str(python), "-I", "-c", CHECK, str(tmp_path / "task")]
    if tiny_bundle is not None:
        check.append(str(tmp_path / "task" / "model" / "model.tflite"))
    env = {"PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1", "HOME": str(tmp_path)}
    done = subprocess.run(check, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["numpy"].startswith(str(tmp_path / "task"))
    assert result["scorer"].startswith(str(tmp_path / "task"))
    assert result["boto3"] is False and result["tensorflow"] is False
    if tiny_bundle is not None:
        (row,) = result["output"]
        assert len(row) == 10 and abs(sum(row) - 1) < 1e-4
