"""S3 URLs, the one S3 client of a process, and small object helpers (JSON, listing, ordered
concurrent GETs, bulk delete). A leaf: sources, outputs and jobs share it.

boto3 is imported only when a client is first needed: local scoring never pays for it.
Configuration is boto3's own: the default credentials chain, the region from the environment,
and ``AWS_ENDPOINT_URL`` for S3-compatible endpoints (read by boto3 >= 1.28 by itself).
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

MAX_POOL_CONNECTIONS = 20  # >= the threads that fetch objects at once (scorer.sources.s3)
FETCH_WORKERS = 16  # concurrent GETs of fetch_in_order (and of merged job parts)
FETCH_AHEAD_BYTES = 32 * 2**20  # most bytes of bodies fetch_in_order holds ahead
DELETE_BATCH = 1000  # DeleteObjects takes at most 1,000 keys
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
MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
ARCHIVED = "InvalidObjectState"
# S3 answers a GET or HEAD of a missing key with 403, not 404, when the caller may not list
# the bucket; the function may list only under its prefixes (an s3:prefix condition, which a
# GET does not carry), so a denied read may be a missing key.
DENIED = frozenset({"AccessDenied", "403", "Forbidden"})


def is_missing(exc: BaseException, bucket: str, key: str) -> bool:
    """Whether a failed GET/HEAD of the key means it does not exist: 404, or 403 for a key
    that a listing of exactly that key does not show (the one reading both of S3's answers)."""
    code = error_code(exc)
    return code in MISSING or (code in DENIED and not is_listed(bucket, key))


def is_listed(bucket: str, key: str) -> bool:
    """Whether the key exists, by listing it (allowed under a prefix-conditioned
    s3:ListBucket). True when even the listing is refused: then the 403 was real."""
    try:
        page = client().list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
    except s3_errors():
        return True
    return any(obj["Key"] == key for obj in page.get("Contents", []))


def is_gone_or_archived(exc: BaseException, bucket: str, key: str) -> bool:
    return error_code(exc) == ARCHIVED or is_missing(exc, bucket, key)


def gone_or_archived_reason(exc: BaseException) -> str:
    if error_code(exc) == ARCHIVED:
        return "object is archived (GLACIER or DEEP_ARCHIVE): restore it to score it"
    return "object no longer exists (deleted before it was read)"


# Worth another try (S3 Batch Operations' TemporaryFailure): throttling, timeouts, 5xx.
RETRYABLE_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                             "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable",
                             "503"})
TIMEOUTS = ("ReadTimeoutError", "ConnectTimeoutError", "EndpointConnectionError",
            "ConnectionClosedError")


def is_retryable(exc: BaseException) -> bool:
    """Whether another try may succeed: throttling, timeouts and S3 server errors (botocore's
    own retries, mode "standard", have already tried a few times)."""
    status = (getattr(exc, "response", None) or {}).get("ResponseMetadata", {}) \
        .get("HTTPStatusCode", 0)
    return error_code(exc) in RETRYABLE_CODES or status >= 500 or \
        type(exc).__name__ in TIMEOUTS


def error_code(exc: BaseException) -> str:
    """The S3 error code of a ClientError ("NoSuchKey", "SlowDown", ...), else ""."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


# ---------------------------------------------------------------- small object helpers


def put_json(bucket: str, key: str, doc: dict) -> None:
    client().put_object(Bucket=bucket, Key=key, ContentType="application/json",
                        Body=json.dumps(doc, ensure_ascii=False).encode("utf-8"))


def get_json(bucket: str, key: str) -> dict | None:
    """The JSON object at the key, or None if there is none."""
    try:
        body = client().get_object(Bucket=bucket, Key=key)["Body"]
    except s3_errors() as exc:
        if is_missing(exc, bucket, key):
            return None
        raise
    with body:
        return json.loads(body.read())


def list_objects(bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
    """(key, size) of every object under the prefix, in key order."""
    for page in client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        yield from ((obj["Key"], int(obj.get("Size", 0))) for obj in page.get("Contents", []))


def list_keys(bucket: str, prefix: str) -> Iterator[str]:
    return (key for key, _ in list_objects(bucket, prefix))


def fetch_in_order(bucket: str, keys: list[str], sizes: list[int]) -> Iterator[bytes]:
    """The objects' bodies, in the given order, fetched ahead at most 2 x FETCH_WORKERS objects
    and FETCH_AHEAD_BYTES (by their listed sizes; one larger object alone)."""
    pool = ThreadPoolExecutor(FETCH_WORKERS, thread_name_prefix="part-get")
    window: deque[tuple[Future[bytes], int]] = deque()
    ahead = 0

    def get(key: str) -> bytes:
        with client().get_object(Bucket=bucket, Key=key)["Body"] as body:
            return body.read()

    try:
        for key, size in zip(keys, sizes, strict=True):
            while window and (len(window) >= 2 * FETCH_WORKERS
                              or ahead + size > FETCH_AHEAD_BYTES):
                future, done = window.popleft()
                ahead -= done
                yield future.result()
            window.append((pool.submit(get, key), size))
            ahead += size
        while window:
            yield window.popleft()[0].result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def delete_under(bucket: str, prefix: str) -> int:
    """Delete every object under the prefix; returns how many there were."""
    keys = list(list_keys(bucket, prefix))
    for start in range(0, len(keys), DELETE_BATCH):
        batch = keys[start:start + DELETE_BATCH]
        response = client().delete_objects(Bucket=bucket, Delete={
            "Objects": [{"Key": key} for key in batch], "Quiet": True})
        if response.get("Errors"):
            raise RuntimeError(f"could not delete parts: {response['Errors'][:3]}")
    return len(keys)
