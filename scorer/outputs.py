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

from scorer.files import UnnamedFile, file_mode
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
        # No name until it is complete: a killed run leaves no temporary file behind.
        self.temp = UnnamedFile(local_dir_of(target))
        try:
            self.file = self.temp.open_text()
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
        published = self.temp
        try:
            if not self.any_label and self.label_column is not True:
                published = drop_column(self.temp, LABEL_COLUMN)
            publish_file(published, self.target)
        finally:
            self.temp.close()
            published.close()

    def abort(self) -> None:
        if hasattr(self, "file"):
            self.file.close()
        self.temp.close()


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


def drop_column(csv_file: UnnamedFile, index: int) -> UnnamedFile:
    """A copy of the CSV in `csv_file` without column `index`, in a new temporary file beside
    it (closed if the copy fails)."""
    stripped = UnnamedFile(csv_file.folder)
    try:
        with open(csv_file.path, newline="", encoding="utf-8") as source, \
                stripped.open_text() as out:
            copy_without_column(source, out, index)
    except BaseException:
        stripped.close()
        raise
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


def publish_file(finished: UnnamedFile, target: str) -> None:
    """Put a finished temporary file at a local path (renamed into place), stdout, a device or
    FIFO (copied into it) or S3 (uploaded)."""
    if target == "-":
        with open(finished.path, "rb") as source:
            shutil.copyfileobj(source, sys.stdout.buffer)
        sys.stdout.flush()
    elif is_stream_target(target):
        with open(finished.path, "rb") as source, open(target, "wb") as device:
            shutil.copyfileobj(source, device)
    elif is_s3(target):
        bucket, key = parse_s3_url(target)
        client().upload_file(finished.path, bucket, key, ExtraArgs={"ContentType": "text/csv"})
    else:
        finished.publish(target)


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
