"""What an input costs to score, in bytes, before it is decoded: how windows are cut into
chunks so that memory stays bounded and every process gets an even share (the words for the
subdivisions are in docs/code-map.md).

An input's cost is its bytes plus what decoding it will allocate, read from its header; a local
file not read yet is priced by its size on disk (a fair proxy for photos and scans).
"""

from __future__ import annotations

import os

from scorer.images import estimated_decoded_bytes
from scorer.images.normalization import WORK_SIDE
from scorer.numbers import NumberMode
from scorer.numbers.field import DECODE_SIDE
from scorer.sources import Input

GROUP_BYTES = 16 * 2**20  # most input bytes + decoded bytes normalized together
# A chunk (what one process takes at a time) ends at this estimated cost: a few tens of ms of
# work (a 12 MP photo alone, two 2 MP ones), so that the processes of a job of photos
# finish together; 64 MNIST digits cost about 70 kB and still make one chunk.
CHUNK_COST = 2**20
# Normalizing any image larger than a thumbnail takes milliseconds whatever its bytes (about
# 5 ms for a 200x200 crop of a few kB, 0.05 ms for a 28x28 PNG of 300 bytes): a local file of
# more than TINY_FILE bytes costs IMAGE_COST on top of its size, so a chunk holds at most 8.
TINY_FILE = 1024
IMAGE_COST = CHUNK_COST // 8
# An image whose pixels take more than this (a photo decodes to ~3 MB, a scan to kB) is
# normalized alone, and in a pool only one at a time across all workers: its float steps take
# several times its size, so the total stays bounded however many workers there are.
LARGE_DECODE_BYTES = 8 * 2**20


def decode_side(numbers: NumberMode | None) -> int:
    """The largest side images are decoded at: a field is read at up to 2,400 px wide."""
    return WORK_SIDE if numbers is None else DECODE_SIDE


def size_on_disk(item: Input) -> int:
    """A local file's size (0 if it is not one, or cannot be looked up)."""
    try:
        return os.stat(item.path).st_size if item.path and item.error is None else 0
    except OSError:  # gone or unreadable: its row says so when it is read
        return 0


def file_cost(item: Input) -> int:
    """What scoring a local file not read yet costs, from its size on disk (a fair proxy for
    photos and scans), plus IMAGE_COST unless it is a thumbnail."""
    size = size_on_disk(item)
    return size + IMAGE_COST if size > TINY_FILE else size


def priced(payload: list[tuple[Input, int]], run: int) -> list[tuple[Input, int]]:
    """(input, cost) pairs with the local files not read yet (cost 0) priced by `file_cost`.
    The files of a folder are much alike: the first of every `run` is looked up, and the
    others of its run only if it was not cheap, so a folder of 28x28 PNGs costs one stat per
    run (a stat takes about as long as listing a file and writing its row), a folder of
    photos one per photo."""
    cheap = CHUNK_COST // max(run, 1)  # a run of files this cheap makes one chunk anyway
    out: list[tuple[Input, int]] = []
    left = first = 0
    for item, cost in payload:
        if cost or item.path is None:
            out.append((item, cost))
            continue
        if left == 0:  # a new run: its first file says whether the others are looked up
            first, left = file_cost(item), run
            cost = first
        else:
            cost = first if first < cheap else file_cost(item)
        left -= 1
        out.append((item, cost))
    return out


def input_cost(item: Input, numbers: NumberMode | None = None) -> int:
    """Bytes an input takes in flight: its data plus what decoding it will allocate. A local
    file not read yet is a name until the process that scores it reads it, within its own
    budget (classify_chunk): it costs nothing here, and needs no stat per file."""
    if item.data is None:
        return 0
    return len(item.data) + estimated_decoded_bytes(item.data, decode_side(numbers))


def cut_by_cost(payload: list[tuple[Input, int]], most: int) -> list[list[Input]]:
    """A window's (input, cost) pairs -> the chunks processes take one at a time: at most `most`
    inputs and CHUNK_COST each, local files not read yet priced by their size on disk."""
    return split_by_budget(priced(payload, most), most, CHUNK_COST)


def split_by_budget(items: list[tuple[Input, int]], most: int, budget: int) -> list[list[Input]]:
    """(input, cost) pairs -> consecutive chunks of at most `most` inputs and, unless a single
    input exceeds it alone, at most `budget` cost."""
    chunks: list[list[Input]] = []
    chunk: list[Input] = []
    spent = 0
    for item, cost in items:
        if chunk and (len(chunk) >= most or spent + cost > budget):
            chunks.append(chunk)
            chunk, spent = [], 0
        chunk.append(item)
        spent += cost
    if chunk:
        chunks.append(chunk)
    return chunks
