"""Source specs (paths, folders, zips, s3:// URLs) -> the stream of Inputs, in a fixed order."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from scorer.s3client import is_s3, parse_s3_url
from scorer.sources import local, s3
from scorer.sources.base import Input, SourceError, SourceStats


def check_specs(specs: Iterable[str]) -> list[str]:
    """Raise SourceError for the first spec that cannot name anything; return the specs as a list.

    Local paths must exist (a dangling symlink counts as existing: it becomes an error row).
    S3 URLs are only checked for syntax here; the bucket is checked when iteration reaches it.
    """
    checked = list(specs)
    for spec in checked:
        if is_s3(spec):
            try:
                parse_s3_url(spec)
            except ValueError as exc:
                raise SourceError(str(exc)) from None
        elif not os.path.lexists(spec):
            raise SourceError(f"{spec}: no such file or directory")
    return checked


def iter_inputs(
    specs: Iterable[str], stats: SourceStats, *, fail_fast: bool = False, defer_reads: bool = False
) -> Iterator[Input]:
    """Yield an Input for every image named by ``specs``, in a deterministic order.

    Each spec: a file, a folder (recursive, sorted, symlinked folders followed but never into a
    cycle), a .zip archive (each member image an input), an ``s3://bucket/prefix/`` (every object
    under it, in key order; .zip objects expanded) or ``s3://bucket/key`` (one object).

    Local specs are validated now, before anything is yielded (SourceError). ``fail_fast`` only
    concerns S3: when True, S3 errors (throttling, 5xx, access denied) raise so that the caller's
    message is retried; when False they become error rows. Local and zip problems specific to one
    object are always error rows. ``defer_reads``: local image files are yielded unread (with
    ``path`` set), for the consumer to ``load()`` where it suits it.
    """
    checked = check_specs(specs)
    return _iter_checked(checked, stats, fail_fast, defer_reads)


def _iter_checked(
    specs: list[str], stats: SourceStats, fail_fast: bool, defer_reads: bool = False
) -> Iterator[Input]:
    for spec in specs:
        if is_s3(spec):
            yield from s3.iter_s3_url(spec, stats, fail_fast=fail_fast)
        elif os.path.isdir(spec):
            yield from local.walk_folder(spec, stats, defer_reads)
        else:
            yield from local.iter_file(spec, stats, defer_reads)
