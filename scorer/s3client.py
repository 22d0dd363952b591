"""S3 URLs and the one S3 client of a process (a leaf: sources, outputs and jobs share it).

boto3 is imported only when a client is first needed: local scoring never pays for it.
Configuration is boto3's own: the default credentials chain, the region from the environment,
and ``AWS_ENDPOINT_URL`` for S3-compatible endpoints (read by boto3 >= 1.28 by itself).
"""

from __future__ import annotations

import functools
import re
import threading
from typing import Any

MAX_POOL_CONNECTIONS = 20  # >= the threads that fetch objects at once (scorer.sources.s3)
_S3_URL = re.compile(r"^s3://([A-Za-z0-9._-]+)(?:/(.*))?$", re.IGNORECASE | re.DOTALL)
_client_lock = threading.Lock()


def is_s3(spec: str) -> bool:
    return spec[:5].lower() == "s3://"


def parse_s3_url(url: str) -> tuple[str, str]:
    """``"s3://b/p/x"`` -> ``("b", "p/x")``; ``"s3://b"`` -> ``("b", "")``."""
    match = _S3_URL.match(url)
    if not match:
        raise ValueError(f"not an s3://bucket/key URL: {url!r}")
    return match.group(1), match.group(2) or ""


def s3_url(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def client() -> Any:
    """One S3 client per process: clients are thread-safe, but creating one is not (nor cheap)."""
    with _client_lock:
        return _make_client()


@functools.lru_cache(maxsize=1)
def _make_client() -> Any:
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard"}, max_pool_connections=MAX_POOL_CONNECTIONS)
    return boto3.client("s3", config=config)


def reset_client() -> None:
    """Forget the cached client (tests that change the endpoint or credentials call this)."""
    with _client_lock:
        _make_client.cache_clear()


def s3_errors() -> tuple[type[BaseException], ...]:
    """What an S3 call can raise: botocore's errors, and OSError from the connection."""
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError, OSError)


# Conditions of one object that no retry can change: it was deleted (a notification can arrive
# after that), or it sits in an archive storage class (GLACIER, DEEP_ARCHIVE) until restored.
GONE_OR_ARCHIVED = frozenset({"NoSuchKey", "404", "NotFound", "InvalidObjectState"})


def is_gone_or_archived(exc: BaseException) -> bool:
    return error_code(exc) in GONE_OR_ARCHIVED


def gone_or_archived_reason(exc: BaseException) -> str:
    if error_code(exc) == "InvalidObjectState":
        return "object is archived (GLACIER or DEEP_ARCHIVE): restore it to score it"
    return "object no longer exists (deleted before it was read)"


def error_code(exc: BaseException) -> str:
    """The S3 error code of a ClientError ("NoSuchKey", "SlowDown", ...), else ""."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))
