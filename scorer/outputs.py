"""Where results go: predictions CSV and report files, to a local path (atomically), stdout or S3.

Rows are streamed into a temporary file; only a complete file is renamed into place or uploaded,
so a crashed or interrupted run never leaves a half-written CSV behind.
"""

from __future__ import annotations

import csv
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from scorer.files import file_mode
from scorer.pipeline import Row
from scorer.s3client import client, is_s3, parse_s3_url

BASE_COLUMNS = ["source", "prediction", "confidence", "status", "error"]
LABEL_COLUMN = len(BASE_COLUMNS)  # index of "label", when there is one
MULTIPART_CHUNK = 8 * 1024 * 1024  # bytes per uploaded part: S3 wants >= 5 MiB (but the last)


# A cell starting with one of these is a formula to a spreadsheet (tab and CR too, as OWASP
# notes): file names and error text are untrusted, so by default such cells get a leading quote.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def defuse_formula(text: str) -> str:
    """Text a spreadsheet shows as text: a leading single quote before a formula start."""
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


DIGITS_COLUMN = "digits"  # number mode: each digit read, with its columns and confidence


def csv_header(labels: list[str], with_label: bool, with_probabilities: bool,
               fields: bool = False) -> list[str]:
    return (BASE_COLUMNS + (["label"] if with_label else [])
            + ([f"p{name}" for name in labels] if with_probabilities else [])
            + ([DIGITS_COLUMN] if fields else []))


def digits_cell(row: Row, labels: list[str]) -> str:
    """Number mode: "7@12-40:0.998 0@44-71:0.951", each digit read, the columns x0-x1 (image
    pixels, end exclusive) where the reader cut it, and its confidence."""
    if row.reading is None:
        return ""
    return " ".join(f"{labels[d.value]}@{d.x0}-{d.x1}:{d.confidence:.3f}"
                    for d in row.reading.digits)


class PredictionsCsv:
    """Streams rows (always with a label column) to a temporary file; `finish` drops the label
    column if no row had a label (unless `label_column` is True), then publishes the file.
    With `formula_guard` (the default), text cells that a spreadsheet would run as formulas
    start with a quote."""

    def __init__(self, target: str, labels: list[str], with_probabilities: bool,
                 label_column: bool | None = None, formula_guard: bool = True,
                 fields: bool = False):
        self.target = target
        self.labels = labels
        self.number_fields = fields
        self.with_probabilities = with_probabilities
        self.label_column = label_column
        self.any_label = False
        self.text = defuse_formula if formula_guard else str
        self.class_cells = [self.text(name) for name in labels]  # once, not once per row
        self.file = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed in finish/abort)
            "w", newline="", encoding="utf-8", suffix=".csv", delete=False,
            dir=local_dir_of(target))
        try:
            self.writer = csv.writer(self.file)  # RFC 4180 quoting of commas, quotes, newlines
            self.writer.writerow(csv_header(labels, True, with_probabilities, fields))
        except BaseException:
            self.abort()
            raise

    @staticmethod
    def is_stream(target: str) -> bool:
        return is_stream_target(target)

    @staticmethod
    def check_target(target: str) -> None:
        """Raise OSError now if a local target's folder cannot take the temporary file."""
        folder = local_dir_of(target)
        if folder is not None:
            tempfile.TemporaryFile(dir=folder).close()

    def write(self, row: Row) -> None:
        self.any_label = self.any_label or row.label is not None
        self.writer.writerow(self.fields(row))

    def fields(self, row: Row) -> list[str]:
        """The row's cells, label column included."""
        classes = self.class_cells
        fields = [
            self.text(row.source),
            self._class_cell(row.prediction),
            "" if row.confidence is None else f"{row.confidence:.6f}",
            row.status,
            self.text(row.error),
            self._class_cell(row.label),
        ]
        if self.with_probabilities:
            probs = row.probabilities
            fields += [""] * len(classes) if probs is None else [f"{p:.6f}" for p in probs]
        if self.number_fields:
            fields.append(digits_cell(row, self.labels))
        return fields

    def _class_cell(self, value: int | str | None) -> str:
        """A class index's name, or a number field's digit string as it is."""
        if value is None:
            return ""
        return self.text(value) if isinstance(value, str) else self.class_cells[value]

    def finish(self) -> None:
        """Publish the rows. Its temporary files go whatever happens here (a full disk, a
        SIGTERM while the label column is dropped)."""
        self.file.close()
        path = self.file.name
        try:
            if not self.any_label and self.label_column is not True:
                path = drop_column(path, LABEL_COLUMN)
            publish_file(path, self.target)
        finally:
            Path(self.file.name).unlink(missing_ok=True)

    def abort(self) -> None:
        self.file.close()
        Path(self.file.name).unlink(missing_ok=True)


def is_stream_target(target: str) -> bool:
    """An existing character device (/dev/null, a terminal) or FIFO: written straight into, as
    a shell redirection would. Renaming a file onto it would replace the device itself."""
    if target == "-" or is_s3(target):
        return False
    try:
        mode = os.stat(target).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def local_dir_of(target: str) -> str | None:
    """A temporary file beside a local target, so the final rename stays on one filesystem
    (None: the system's temporary folder, for stdout, S3, devices and FIFOs)."""
    if target == "-" or is_s3(target) or is_stream_target(target):
        return None
    return str(Path(target).resolve().parent)


def drop_column(path: str, index: int) -> str:
    """A copy of the CSV at `path` without column `index` (a new temporary file beside it; the
    original is removed once the copy is complete, and the copy if it is not)."""
    fd, stripped = tempfile.mkstemp(suffix=".csv", dir=os.path.dirname(path))
    try:
        with open(path, newline="", encoding="utf-8") as source, \
                os.fdopen(fd, "w", newline="", encoding="utf-8") as out:
            copy_without_column(source, out, index)
    except BaseException:
        Path(stripped).unlink(missing_ok=True)
        raise
    os.unlink(path)
    return stripped


def copy_without_column(source: TextIO, out: TextIO, index: int) -> None:
    """CSV text from `source` to `out` (RFC 4180 quoting kept), without column `index`."""
    writer = csv.writer(out)
    for fields in csv.reader(source):
        writer.writerow(fields[:index] + fields[index + 1 :])


class S3Upload:
    """Bytes streamed into one S3 object through a multipart upload, `part_size` bytes per part,
    so that a file of any size never sits in memory. Nothing appears at the key until `finish`;
    `abort` (or an error) discards the parts. Less than one part in all is a single PUT."""

    def __init__(self, url: str, content_type: str = "text/csv", part_size: int | None = None):
        self.bucket, self.key = parse_s3_url(url)
        self.content_type = content_type
        self.part_size = part_size or MULTIPART_CHUNK
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict] = []

    def write(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= self.part_size:
            with memoryview(self.buffer) as view:  # one copy of the part, not two
                part = bytes(view[: self.part_size])
            self._upload_part(part)
            del self.buffer[: self.part_size]

    def _upload_part(self, data: bytes) -> None:
        if self.upload_id is None:
            self.upload_id = client().create_multipart_upload(
                Bucket=self.bucket, Key=self.key, ContentType=self.content_type)["UploadId"]
        number = len(self.parts) + 1
        etag = client().upload_part(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                                    PartNumber=number, Body=data)["ETag"]
        self.parts.append({"PartNumber": number, "ETag": etag})

    def finish(self) -> None:
        try:
            if self.upload_id is None:
                client().put_object(Bucket=self.bucket, Key=self.key, Body=bytes(self.buffer),
                                    ContentType=self.content_type)
                return
            if self.buffer:
                self._upload_part(bytes(self.buffer))
            client().complete_multipart_upload(Bucket=self.bucket, Key=self.key,
                                               UploadId=self.upload_id,
                                               MultipartUpload={"Parts": self.parts})
        except BaseException:
            self.abort()
            raise
        self.buffer.clear()

    def abort(self) -> None:
        """Discard what was uploaded (the bucket's lifecycle rule catches what this misses)."""
        self.buffer.clear()
        if self.upload_id is not None:
            upload_id, self.upload_id = self.upload_id, None
            client().abort_multipart_upload(Bucket=self.bucket, Key=self.key,
                                            UploadId=upload_id)


def publish_file(path: str, target: str) -> None:
    """Move a finished temporary file to a local path, stdout or S3; the temp file is removed."""
    try:
        if target == "-":
            with open(path, "rb") as finished:
                shutil.copyfileobj(finished, sys.stdout.buffer)
            sys.stdout.flush()
        elif is_stream_target(target):
            with open(path, "rb") as finished, open(target, "wb") as device:
                shutil.copyfileobj(finished, device)
        elif is_s3(target):
            bucket, key = parse_s3_url(target)
            client().upload_file(path, bucket, key, ExtraArgs={"ContentType": "text/csv"})
        else:
            os.chmod(path, file_mode())
            os.replace(path, target)
    finally:
        Path(path).unlink(missing_ok=True)


CONTENT_TYPES = {".json": "application/json", ".txt": "text/plain; charset=utf-8",
                 ".csv": "text/csv", ".html": "text/html; charset=utf-8", ".png": "image/png"}


def write_report(files: dict[str, bytes], target: str) -> None:
    """Report files into a local folder, as one set, or under an S3 prefix."""
    if is_s3(target):
        bucket, prefix = parse_s3_url(target)
        prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        for name, data in files.items():
            client().put_object(Bucket=bucket, Key=prefix + name, Body=data,
                                   ContentType=CONTENT_TYPES.get(Path(name).suffix,
                                                                 "application/octet-stream"))
        return
    folder = Path(target)
    folder.mkdir(parents=True, exist_ok=True)
    # Every file is written first, into a temporary folder inside the target, then each is
    # renamed into place (renames take no space): a full disk or a stop while writing leaves
    # the previous report whole, never a mix of two runs' files.
    with tempfile.TemporaryDirectory(dir=folder, prefix=".report-") as staging:
        for name, data in files.items():
            (Path(staging) / name).write_bytes(data)
            os.chmod(Path(staging) / name, file_mode())
        for name in files:
            os.replace(Path(staging) / name, folder / name)
