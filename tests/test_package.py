"""tools/package_lambda.py: its pure parts, how it uses the lock, and one real build imported
by a clean interpreter. The lock itself (tools/lambda_lock.py) is tested in test_lambda_lock.py.

The build test installs real wheels for this machine's Python from the committed lock (pip
reaches the package index) and takes about half a minute. The end-to-end scoring test with a
real bundle lives elsewhere.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from test_lambda_lock import THIS_PYTHON, committed_versions, hand_written_lock, ll, without

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "package_lambda.py"

pl = importlib.import_module("package_lambda")  # test_lambda_lock put tools/ on sys.path


def touch(path: Path, data: bytes = b"x", mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


# ---------------------------------------------------------------- pip command


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
    assert platforms == ll.platform_tags("x86_64")
    # Nothing is installed but what the lock pins: every argument is an option or its value.
    takes_value = {"--target", "--platform", "--implementation", "--python-version", "-r"}
    loose = [a for i, a in enumerate(cmd[4:], 4)
             if not a.startswith("-") and cmd[i - 1] not in takes_value]
    assert loose == []


# ---------------------------------------------------------------- installing from the lock


def test_build_refuses_a_stale_lock_before_pip_runs(tmp_path):
    lock = hand_written_lock(tmp_path / "lock.txt", without(committed_versions(), "jmespath"))
    out = tmp_path / "lambda.zip"
    logged: list[str] = []
    with pytest.raises(ll.LockError, match="run `make lock`") as refused:
        pl.build(out, "3.12", "x86_64", None, lock=lock, log=logged.append)
    assert "it lacks jmespath" in str(refused.value)
    assert logged == [] and not out.exists()  # nothing was installed


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
    pin = ll.read_lock(ll.DEFAULT_LOCK).pins["jmespath"]

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
    for name in ("model.tflite", "model_float32.tflite", "field_reader.tflite", "manifest.json",
                 "metrics.json", "model.keras", "report.html"):
        touch(tmp_path / name)
    files = pl.bundle_files(tmp_path)
    assert sorted(files) == ["model/field_reader.tflite", "model/manifest.json",
                             "model/metrics.json", "model/model.tflite",
                             "model/model_float32.tflite"]
    for name in ("metrics.json", "model_float32.tflite", "field_reader.tflite"):
        (tmp_path / name).unlink()
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
    assert {ll.canonical(m.group(1)): m.group(2) for m in dist_infos} == pins
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
