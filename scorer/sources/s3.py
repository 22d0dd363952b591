"""S3 inputs: prefixes, single objects and zip objects (boto3 only through ``scorer.s3client``).

Keys are listed lazily page by page; objects are fetched by a thread pool through a bounded
window (by count and by listed bytes), and yielded in key order, so memory stays flat.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from scorer.images import IMAGE_EXTENSIONS
from scorer.s3client import (
    client,
    error_code,
    gone_or_archived_reason,
    is_gone_or_archived,
    is_missing,
    parse_s3_url,
    s3_errors,
    s3_url,
)
from scorer.sources.base import (
    ZIP_EXTENSION,
    Input,
    SourceError,
    SourceStats,
    error_input,
    extension,
    is_hidden,
    label_from_parent,
    read_capped,
    too_large,
    too_large_reason,
)
from scorer.sources.zips import iter_zip
from scorer.stopping import result_of, signals_deferred

PAGE_SIZE = 1000  # ListObjectsV2 page size (the S3 maximum); tests shrink it to force pages
MAX_WORKERS = 16
MAX_IN_FLIGHT = 64
MAX_IN_FLIGHT_BYTES = 256 * 1024 * 1024  # by listed size, so 64 big objects cannot pile up
ZIP_SHARE_OF_TMP = 0.8  # of the temporary folder a zip object may take (room for the rest)
SPOOL_BYTES = 32 * 1024 * 1024  # zip objects up to this stay in memory, bigger ones go to /tmp
_CHUNK = 1024 * 1024


def iter_s3_url(url: str, stats: SourceStats, *, fail_fast: bool = False) -> Iterator[Input]:
    """``s3://bucket/prefix/`` -> every object under it; ``s3://bucket/key`` -> that object.

    A key without a trailing slash that is not an object is tried as a folder (``key/``), as
    ``aws s3 ls`` users expect. A missing bucket or nothing under the prefix is a SourceError.
    """
    bucket, key = parse_s3_url(url)
    if key and not key.endswith("/"):
        if _object_exists(bucket, key, fail_fast):
            yield from iter_s3_object(bucket, key, stats, fail_fast=fail_fast)
            return
        key += "/"
    yield from _iter_prefix(bucket, key, stats, fail_fast)


def _object_exists(bucket: str, key: str, fail_fast: bool) -> bool:
    try:
        client().head_object(Bucket=bucket, Key=key)
    except s3_errors() as exc:
        if is_missing(exc, bucket, key):
            return False
        if fail_fast:
            raise
        # 403 and friends: let the GET report the real reason as an error row.
    return True


def iter_s3_object(
    bucket: str, key: str, stats: SourceStats, *, fail_fast: bool = True
) -> Iterator[Input]:
    """One S3 object: an image -> one Input; a .zip -> one Input per member image."""
    ext = extension(key)
    if ext == ZIP_EXTENSION:
        yield from _iter_zip_object(bucket, key, stats, fail_fast)
    elif ext in IMAGE_EXTENSIONS:
        yield _get_image(bucket, key, fail_fast)
    else:
        stats.skip(s3_url(bucket, key))


def _list_objects(bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    """Objects under the prefix, lazily, page by page, in S3's (UTF-8 binary = key) order."""
    paginator = client().get_paginator("list_objects_v2")
    pages = paginator.paginate(
        Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": PAGE_SIZE}
    )
    for page in pages:
        yield from page.get("Contents", [])


def _listing(bucket: str, prefix: str, fail_fast: bool) -> Iterator[dict[str, Any] | Input]:
    """Listed objects; an empty prefix or a missing bucket raise SourceError before anything.

    A listing failure later on raises (fail_fast) or ends this spec with one error row.
    """
    url = s3_url(bucket, prefix)
    seen_any = False
    try:
        for obj in _list_objects(bucket, prefix):
            seen_any = True
            yield obj
    except s3_errors() as exc:
        if error_code(exc) == "NoSuchBucket":
            raise SourceError(f"{url}: no such bucket") from None
        if fail_fast:
            raise
        yield error_input(url, f"S3 listing failed: {exc}")
        return
    if not seen_any:
        raise SourceError(f"{url}: no objects under this prefix")


def _skip_silently(key: str, prefix: str) -> bool:
    """Folder markers ("x/", made by the console) and hidden entries below the prefix."""
    return key.endswith("/") or any(map(is_hidden, key[len(prefix) :].split("/")))


def _iter_prefix(bucket: str, prefix: str, stats: SourceStats, fail_fast: bool) -> Iterator[Input]:
    yield from iter_listed(bucket, prefix, _listing(bucket, prefix, fail_fast), stats,
                           fail_fast=fail_fast)


def iter_listed(bucket: str, prefix: str, objects: Iterable[dict[str, Any] | Input],
                stats: SourceStats, *, fail_fast: bool = False) -> Iterator[Input]:
    """Listed objects (ListObjectsV2 entries: ``Key``, ``Size``) under ``prefix``, as a prefix
    job reads them: folder markers and hidden entries below the prefix skipped, non-images
    counted, zips expanded, images fetched concurrently and yielded in the given order through
    a bounded window. A Step Functions batch of listed keys goes through here too."""
    window: deque[tuple[int, Future[Input] | Input]] = deque()
    window_bytes = 0
    pool = ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="s3-get")
    try:
        for obj in objects:
            if isinstance(obj, Input):  # the listing failed part-way
                window.append((0, obj))
                break
            key, size = obj["Key"], int(obj.get("Size", 0))
            if _skip_silently(key, prefix):
                continue
            ext = extension(key)
            if ext == ZIP_EXTENSION:
                # One zip at a time, in order: drain first so zips never pile up in memory.
                while window:
                    yield _result(window.popleft()[1])
                window_bytes = 0
                yield from _iter_zip_object(bucket, key, stats, fail_fast, in_listing=True)
            elif ext not in IMAGE_EXTENSIONS:
                stats.skip(s3_url(bucket, key))
            elif too_large(size):
                window.append((0, _too_large_row(bucket, key, size)))
            else:
                with signals_deferred():
                    window.append((size, pool.submit(_get_image, bucket, key, fail_fast, True)))
                window_bytes += size
            while window and (len(window) >= MAX_IN_FLIGHT or window_bytes > MAX_IN_FLIGHT_BYTES):
                size_done, item = window.popleft()
                window_bytes -= size_done
                yield _result(item)
        while window:
            yield _result(window.popleft()[1])
    finally:
        # Also runs when the consumer stops early or a GET raised: drop what has not started.
        with signals_deferred():
            pool.shutdown(wait=True, cancel_futures=True)


def _result(item: Future[Input] | Input) -> Input:
    return item if isinstance(item, Input) else result_of(item)


def _too_large_row(bucket: str, key: str, size: int) -> Input:
    name = s3_url(bucket, key)
    return error_input(name, too_large_reason(size), label_from_parent(key))


def _failed_get(exc: BaseException, bucket: str, key: str, fail_fast: bool,
                in_listing: bool) -> str:
    """The error row's reason for a failed GET, or raise. Inside a listing (a prefix job), an
    object deleted or archived since it was listed is one bad row, not a reason to abort the
    job (and retrying cannot fix it); elsewhere `fail_fast` raises, so the caller decides."""
    if in_listing and is_gone_or_archived(exc, bucket, key):
        return gone_or_archived_reason(exc)
    if fail_fast:
        raise exc
    return f"S3 GET failed: {exc}"


def _get_image(bucket: str, key: str, fail_fast: bool, in_listing: bool = False) -> Input:
    """GET one image object (runs in worker threads); S3 errors raise or become an error row."""
    name = s3_url(bucket, key)
    label = label_from_parent(key)
    try:
        response = client().get_object(Bucket=bucket, Key=key)
        body = response["Body"]
        try:
            size = int(response.get("ContentLength", 0))
            if too_large(size):
                return _too_large_row(bucket, key, size)
            data = read_capped(body, expected=size)
        finally:
            body.close()
    except s3_errors() as exc:
        return error_input(name, _failed_get(exc, bucket, key, fail_fast, in_listing), label)
    if too_large(len(data)):
        return _too_large_row(bucket, key, len(data))
    return Input(name=name, data=data, error=None, label=label)


def max_zip_bytes() -> int:
    """Largest zip object downloaded: MAX_ZIP_BYTES from the environment, else 80 % of the
    temporary folder's size (on Lambda, its EphemeralStorage: 512 MB unless configured), so a
    large archive is an error row instead of a full disk."""
    configured = os.environ.get("MAX_ZIP_BYTES")
    if configured:
        return int(configured)
    return int(ZIP_SHARE_OF_TMP * shutil.disk_usage(tempfile.gettempdir()).total)


def _iter_zip_object(bucket: str, key: str, stats: SourceStats, fail_fast: bool,
                     in_listing: bool = False) -> Iterator[Input]:
    """Download a zip object to a spooled temp file (memory, then /tmp) and expand it."""
    name = s3_url(bucket, key)
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
        try:
            response = client().get_object(Bucket=bucket, Key=key)
            body, size = response["Body"], int(response.get("ContentLength", 0))
            try:
                if size > max_zip_bytes():  # it would fill /tmp (512 MB on Lambda by default)
                    yield error_input(name, f"zip archive too large ({size / 2**20:.0f} MB > "
                                            f"{max_zip_bytes() / 2**20:.0f} MB limit)")
                    return
                shutil.copyfileobj(body, spool, _CHUNK)
            finally:
                body.close()
        except s3_errors() as exc:
            yield error_input(name, _failed_get(exc, bucket, key, fail_fast, in_listing))
            return
        spool.seek(0)
        yield from iter_zip(spool, name, stats)  # type: ignore[arg-type]

