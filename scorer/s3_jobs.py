"""Scoring S3 objects and prefixes into S3: where outputs go, and which objects are ours to score.

Knows nothing about Lambda: the handler translates events into calls of `score_object` and
`score_prefix`. Outputs are named deterministically from their inputs, so a redelivered event
overwrites its CSV instead of adding a second one.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from scorer import sources
from scorer.bundle import Bundle
from scorer.images import IMAGE_EXTENSIONS
from scorer.job import JobOptions, Tally, run_job
from scorer.numbers import NumberMode, parse_length
from scorer.s3client import parse_s3_url
from scorer.sources import SourceStats

PACKAGED_MODEL = Path(__file__).resolve().parent.parent / "model"  # beside scorer/ in the zip
SCORABLE = IMAGE_EXTENSIONS | {sources.ZIP_EXTENSION}


@dataclass(frozen=True)
class Config:
    model_dir: str
    input_prefix: str
    output_prefix: str
    output_bucket: str | None  # None: write beside the input, in the same bucket
    min_confidence: float | None = None  # below it, rows get status=review
    numbers: NumberMode | None = None  # None: one digit per image; else one number (a field)
    input_bucket: str | None = None  # the only bucket a scale-out job may read (None: any)

    @classmethod
    def from_env(cls) -> Config:
        config = cls(
            model_dir=os.environ.get("MODEL_DIR") or str(PACKAGED_MODEL),
            input_prefix=os.environ.get("INPUT_PREFIX", "incoming/"),
            output_prefix=os.environ.get("OUTPUT_PREFIX", "predictions/"),
            output_bucket=os.environ.get("OUTPUT_BUCKET") or None,
            min_confidence=parse_min_confidence(os.environ.get("MIN_CONFIDENCE", "")),
            numbers=parse_read(os.environ.get("READ", ""), os.environ.get("LENGTH", "")),
            input_bucket=os.environ.get("INPUT_BUCKET") or None,
        )
        if not config.output_prefix or config.output_prefix.startswith(config.input_prefix) \
                or config.input_prefix.startswith(config.output_prefix):
            # Writing where we read would trigger the function on its own outputs.
            raise ValueError(f"INPUT_PREFIX {config.input_prefix!r} and OUTPUT_PREFIX "
                             f"{config.output_prefix!r} must not overlap")
        return config


def parse_min_confidence(text: str) -> float | None:
    """MIN_CONFIDENCE: empty for off, else a number from 0 to 1."""
    if not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"MIN_CONFIDENCE must be a number from 0 to 1, got {text!r}")
    return value


def parse_read(read: str, length: str) -> NumberMode | None:
    """READ ("digit", the default when empty, or "number") and LENGTH (empty for any number of
    digits, else N or MIN-MAX; number mode only) -> the pipeline's NumberMode, or None for
    digits."""
    mode = read.strip() or "digit"
    if mode not in ("digit", "number"):
        raise ValueError(f"READ must be digit or number, got {read!r}")
    if mode == "digit":
        if length.strip():
            raise ValueError(f"LENGTH {length!r} needs READ=number (it is the number of digits "
                             "of a field)")
        return None
    try:
        return NumberMode(parse_length(length) if length.strip() else None)
    except ValueError as err:
        raise ValueError(f"LENGTH: {err}") from None


def read_mode(config: Config) -> dict:
    """What a job reads, as the report's run section and the scale-out parts record it:
    {"read": "digit"} or {"read": "number", "length": "5" | "4-6" | None}."""
    return {"read": "digit"} if config.numbers is None else config.numbers.describe()


def run_info(source: str, config: Config) -> dict:
    """The report's run section (before the counts): the source and, in number mode, the mode
    and the length (digit mode adds nothing)."""
    return {"source": source, **(read_mode(config) if config.numbers is not None else {})}


def job_options(config: Config, run: dict | None = None,
                label_column: bool | None = None) -> JobOptions:
    """How the function scores: in its one process, with the deployment's threshold and read
    mode, and no timings, so that a redelivered message writes the same bytes again."""
    return JobOptions(workers=1, timings=False, min_confidence=config.min_confidence,
                      numbers=config.numbers, run_info=run, label_column=label_column)


def check_bundle(bundle: Bundle, config: Config) -> None:
    """Number mode joins class names into a digit string: each must be one character."""
    if config.numbers is not None and any(len(name) != 1 for name in bundle.labels):
        raise ValueError("READ=number needs a bundle whose classes are single characters, not "
                         + ", ".join(bundle.labels))


def ignore_reason(key: str, config: Config) -> str | None:
    """Why an object is not ours to score, or None when it is."""
    if key.startswith(config.output_prefix):
        return "inside the output prefix"
    if not key.startswith(config.input_prefix):
        return "outside the input prefix"
    if sources.extension(key) not in SCORABLE:
        return "not an image or zip archive"
    return None


def relative(key: str, config: Config) -> str:
    return key[len(config.input_prefix):] if key.startswith(config.input_prefix) else key


def output_url(bucket: str, name: str, config: Config) -> str:
    return f"s3://{config.output_bucket or bucket}/{config.output_prefix}{name}"


MAX_KEY_BYTES = 1024  # S3's limit on a key's length (UTF-8)
LONGEST_OUTPUT = ".report/classification_report.txt"  # the longest name written below an object


def output_name(key: str, config: Config) -> str:
    """The key below the input prefix, which output keys are named after: shortened, when they
    would pass S3's 1,024-byte limit, to its first bytes, "~" and a hash of the whole (still one
    name per key, so a redelivered message overwrites its own outputs)."""
    name = relative(key, config)
    room = MAX_KEY_BYTES - len(config.output_prefix.encode("utf-8")) - len(LONGEST_OUTPUT)
    data = name.encode("utf-8", "surrogatepass")
    if len(data) <= room:
        return name
    digest = hashlib.sha256(data).hexdigest()[:32]
    return data[: max(0, room - 33)].decode("utf-8", "ignore") + "~" + digest


def score_object(bucket: str, key: str, bundle: Bundle, config: Config) -> tuple[str, Tally]:
    """One image (one row) or zip archive (a row per member, plus a report when labelled)
    -> `<output prefix><key below the input prefix>.csv` (see output_name for very long keys).
    S3 errors propagate (retry them)."""
    name = output_name(key, config)
    out = output_url(bucket, f"{name}.csv", config)
    is_archive = sources.extension(key) == sources.ZIP_EXTENSION
    report_dir = output_url(bucket, f"{name}.report/", config) if is_archive else None
    inputs = sources.iter_s3_object(bucket, key, SourceStats(), fail_fast=True)
    tally = run_job(inputs, bundle, out, report_dir,
                    options=job_options(config, run_info(f"s3://{bucket}/{key}", config)))
    return out, tally


def prefix_outputs(source: str, config: Config) -> tuple[str, str]:
    """Where a prefix job on `source` writes: (CSV URL, report folder URL), i.e.
    `<output prefix><prefix below the input prefix>/predictions.csv` and `.../report/`."""
    bucket, prefix = parse_s3_url(source)
    folder = relative(prefix, config).strip("/")
    base = f"{folder}/" if folder else ""
    return (output_url(bucket, f"{base}predictions.csv", config),
            output_url(bucket, f"{base}report/", config))


def score_prefix(source: str, bundle: Bundle, config: Config) -> tuple[str, Tally]:
    """Every image and archive under an s3:// prefix -> one CSV (and one report when labelled)
    at `prefix_outputs(source)`."""
    out, report_dir = prefix_outputs(source, config)
    inputs = sources.iter_inputs([source], SourceStats(), fail_fast=True)
    tally = run_job(inputs, bundle, out, report_dir,
                    options=job_options(config, run_info(source, config)))
    return out, tally
