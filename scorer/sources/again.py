"""Read again, after a run, the inputs a few rows name: local files, zip members
(``archive.zip!/member``, local or on S3) and S3 objects (``s3://bucket/key``).

The pipeline drops every input's bytes once it is scored, so memory stays flat; the few rows a
person must look at (``--review-dir``) are fetched again by their source names, through the same
readers, limits and checks as the first time. Members of one archive are read in one pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from scorer.sources.base import ZIP_EXTENSION, Input, SourceError, SourceStats, error_input
from scorer.sources.specs import iter_inputs

MEMBER_MARK = "!/"  # how a zip member's name joins the archive's: "scans.zip!/3/001.png"


def container(name: str) -> str | None:
    """The archive a zip member's source name points into ("a.zip!/x.png" -> "a.zip"), else
    None. The first ``.zip!/`` counts: zips inside zips are never expanded."""
    start = 0
    while (mark := name.find(MEMBER_MARK, start)) > 0:
        if name[:mark].lower().endswith(ZIP_EXTENSION):
            return name[:mark]
        start = mark + 1
    return None


def read_again(names: Iterable[str]) -> Iterator[Input]:
    """One Input (bytes, or error with a reason) per distinct name, archive by archive; a name
    no longer there (deleted, renamed, a member gone) gets an error Input."""
    groups: dict[str | None, list[str]] = {}
    for name in dict.fromkeys(names):  # distinct, in order
        groups.setdefault(container(name), []).append(name)
    for archive, members in groups.items():
        if archive is None:
            for name in members:
                yield _read_one(name)
        else:
            yield from _read_members(archive, members)


def _read_one(name: str) -> Input:
    for item in _inputs(name):
        if item.name == name:
            return item
    return error_input(name, "cannot read it again: gone, or no longer an image")


def _read_members(archive: str, members: list[str]) -> Iterator[Input]:
    wanted = set(members)
    for item in _inputs(archive):
        if item.name in wanted:
            wanted.discard(item.name)
            yield item
        elif item.name == archive and item.error:  # the archive itself cannot be read
            break
    for name in members:
        if name in wanted:
            yield error_input(name, "cannot read it again: the archive or member is gone")


def _inputs(spec: str) -> Iterator[Input]:
    """What the sources yield for `spec` now: errors become rows, a spec gone yields nothing."""
    try:
        yield from iter_inputs([spec], SourceStats(), fail_fast=False)
    except SourceError:  # no such file, bucket or prefix any more
        return
