"""A real S3 API for tests: moto's server in a subprocess, spoken to over HTTP by boto3.

Use it from a test module with::

    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from moto_server import moto_endpoint  # noqa: F401

and request the ``moto_endpoint`` fixture. For the whole session it points boto3 at the server
through its standard environment variables only (``AWS_ENDPOINT_URL``, fake credentials, a region),
exactly as production code would be configured. Use a unique bucket name per test: the server's
state is shared by the session.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

_START_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(url: str, proc: subprocess.Popen[bytes], log_path: str) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(log_path, errors="replace") as log:
                raise RuntimeError(f"moto server exited with {proc.returncode}:\n{log.read()}")
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answered, even if not with 200
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto server did not answer on {url} within {_START_TIMEOUT_S}s")


def _reset_scorer_client() -> None:
    """The scorer caches its boto3 client; make it pick up the session's endpoint."""
    try:
        from scorer import s3client
    except ImportError:
        return
    s3client.reset_client()


@contextlib.contextmanager
def moto_server(env: dict[str, str] | None = None) -> Iterator[str]:
    """A moto server in a subprocess (with extra environment `env`, e.g. moto's own settings
    such as ``S3_UPLOAD_PART_MIN_SIZE``); yields its URL, stops it afterwards."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix="moto-server-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port), "-H", "127.0.0.1"],
        stdout=log,
        stderr=subprocess.STDOUT,  # to a file, never a pipe nobody drains
        env={**os.environ, **(env or {})},
    )
    try:
        _wait_until_up(url, proc, log.name)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        os.unlink(log.name)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    with moto_server() as url, pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", url)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            mp.delenv(name, raising=False)
        # Never let a developer's proxy settings or config files route or override this.
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        _reset_scorer_client()
        try:
            yield url
        finally:
            mp.undo()
            _reset_scorer_client()
