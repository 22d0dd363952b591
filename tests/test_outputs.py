"""scorer.outputs, directly: the predictions CSV (columns, cells, the formula guard, the label
column dropped or kept), publishing it whole or not at all (local files, stdout, FIFOs, S3) and
writing report files as one set."""

from __future__ import annotations

import csv
import io
import os
import stat
import threading
import uuid
from pathlib import Path

import boto3
import numpy as np
import pytest

from scorer import outputs
from scorer.files import UnnamedFile
from scorer.numbers.decode import Digit
from scorer.numbers.reader import Reading
from scorer.outputs import (
    BASE_COLUMNS,
    FORMULA_STARTS,
    LABEL_COLUMN,
    PredictionsCsv,
    copy_without_column,
    csv_header,
    defuse_formula,
    drop_column,
    is_stream_target,
    local_dir_of,
    write_report,
)
from scorer.pipeline import Row

from moto_server import moto_endpoint  # noqa: F401

CLASSES = [str(d) for d in range(10)]
HEADER = "source,prediction,confidence,status,error"


def row(source: str = "a.png", prediction: int | str | None = 7,
        confidence: float | None = 0.996094, status: str = "ok", error: str = "",
        label: int | str | None = None, **more) -> Row:
    return Row(source, prediction, confidence, status, error, label, **more)


def blank_row(source: str = "empty.png", label: int | None = None) -> Row:
    return row(source, None, None, "blank", "blank image: no ink found", label)


def error_row(source: str = "broken.png", label: int | None = None) -> Row:
    return row(source, None, None, "error", "not a readable image: truncated", label)


def written(target: Path, rows: list[Row], **options) -> str:
    """The CSV text a sink on `target` publishes for `rows`."""
    sink = PredictionsCsv(str(target), options.pop("labels", CLASSES),
                          options.pop("with_probabilities", False), **options)
    for each in rows:
        sink.write(each)
    sink.finish()
    return target.read_bytes().decode("utf-8")  # line ends as written


def s3_bucket() -> tuple:
    s3, bucket = boto3.client("s3"), f"digits-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    return s3, bucket


def read(s3, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def keys_under(s3, bucket: str, prefix: str) -> list[str]:
    return [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])]


# --- columns ---------------------------------------------------------------------------------


def test_the_header_puts_label_then_probabilities_then_digits_after_the_base_columns():
    assert csv_header(["0", "1"], False, False) == BASE_COLUMNS == HEADER.split(",")
    assert csv_header(["0", "1"], True, True, fields=True) == \
        [*BASE_COLUMNS, "label", "p0", "p1", "digits"]
    assert csv_header(["0", "1"], True, False)[LABEL_COLUMN] == "label"


def test_without_any_label_the_label_column_is_dropped(tmp_path):
    text = written(tmp_path / "out.csv", [row(), blank_row(), error_row()])
    assert text == (f"{HEADER}\r\n"
                    "a.png,7,0.996094,ok,\r\n"
                    "empty.png,,,blank,blank image: no ink found\r\n"
                    "broken.png,,,error,not a readable image: truncated\r\n")


def test_a_label_on_any_row_keeps_the_label_column_for_every_row(tmp_path):
    """Even on an error row: the reader of the CSV learns which inputs were labelled."""
    text = written(tmp_path / "out.csv", [row(), error_row(label=3)])
    assert text == (f"{HEADER},label\r\n"
                    "a.png,7,0.996094,ok,,\r\n"
                    "broken.png,,,error,not a readable image: truncated,3\r\n")


def test_label_column_true_keeps_an_empty_label_column(tmp_path):
    """The parts of a scale-out job all have the column, so they can be merged."""
    text = written(tmp_path / "out.csv", [row()], label_column=True)
    assert text == f"{HEADER},label\r\na.png,7,0.996094,ok,,\r\n"


def test_labels_and_predictions_are_written_as_class_names(tmp_path):
    text = written(tmp_path / "out.csv", [row(prediction=1, label=0)], labels=["cat", "dog"])
    assert text.splitlines()[1] == "a.png,dog,0.996094,ok,,cat"


def test_probabilities_get_a_column_per_class_and_empty_cells_without_them(tmp_path):
    probabilities = np.array([0.25, 0.75], np.float32)
    text = written(tmp_path / "out.csv", [row(prediction=1, probabilities=probabilities),
                                          blank_row()],
                   labels=["0", "1"], with_probabilities=True)
    assert text.splitlines() == [f"{HEADER},p0,p1", "a.png,1,0.996094,ok,,0.250000,0.750000",
                                 "empty.png,,,blank,blank image: no ink found,,"]


def test_number_fields_get_a_digits_column_of_cuts_and_confidences(tmp_path):
    reading = Reading([Digit(7, 0.9984, 12, 40), Digit(0, 0.95, 44, 71)], 0.9485, "",
                      np.zeros((28, 80), np.uint8), ((0, 10), (12, 20)))
    text = written(tmp_path / "out.csv", [row(prediction="70", confidence=0.9485,
                                              reading=reading), blank_row()], fields=True)
    assert text.splitlines() == [f"{HEADER},digits",
                                 "a.png,70,0.948500,ok,,7@12-40:0.998 0@44-71:0.950",
                                 "empty.png,,,blank,blank image: no ink found,"]


def test_commas_quotes_and_newlines_in_names_survive_a_round_trip(tmp_path):
    name = 'scans/a, "b"\nc.png'
    text = written(tmp_path / "out.csv", [row(source=name), error_row(source="x\r\ny")])
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert [r[0] for r in rows[1:]] == [name, "x\r\ny"]
    assert all(len(r) == len(BASE_COLUMNS) for r in rows)


# --- spreadsheet formulas --------------------------------------------------------------------


@pytest.mark.parametrize("start", FORMULA_STARTS)
def test_a_formula_start_gets_a_leading_quote(start):
    assert defuse_formula(f"{start}SUM(A1)") == f"'{start}SUM(A1)"


def test_text_that_is_no_formula_is_left_alone():
    assert [defuse_formula(text) for text in ("plain.png", "a=b", "", " =x")] == \
        ["plain.png", "a=b", "", " =x"]


def test_the_formula_guard_covers_sources_errors_and_class_names_unless_off(tmp_path):
    rows = [row(source="=HYPERLINK(1).png", prediction=0, label=1),
            error_row(source="@x.png")._replace(error="-1 is not an image")]
    guarded = written(tmp_path / "guarded.csv", rows, labels=["+a", "b"])
    raw = written(tmp_path / "raw.csv", rows, labels=["+a", "b"], formula_guard=False)
    assert guarded.splitlines()[1:] == ["'=HYPERLINK(1).png,'+a,0.996094,ok,,b",
                                        "'@x.png,,,error,'-1 is not an image,"]
    assert raw.splitlines()[1:] == ["=HYPERLINK(1).png,+a,0.996094,ok,,b",
                                    "@x.png,,,error,-1 is not an image,"]


# --- publishing whole or not at all ----------------------------------------------------------


def test_finish_replaces_the_old_file_whole_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old rows\n" * 1000)
    text = written(target, [row(), row(source="b.png", label=7)])
    assert text == f"{HEADER},label\r\na.png,7,0.996094,ok,,\r\nb.png,7,0.996094,ok,,7\r\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_abort_leaves_the_old_file_and_nothing_else(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    sink = PredictionsCsv(str(target), CLASSES, False)
    for i in range(5000):
        sink.write(row(source=f"{i}.png"))
    sink.abort()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]
    PredictionsCsv(str(tmp_path / "new.csv"), CLASSES, False).abort()
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_check_target_refuses_a_folder_it_cannot_write_in(tmp_path):
    """/proc takes no file, root included: found before scoring, not after the whole run."""
    with pytest.raises(OSError):
        PredictionsCsv.check_target("/proc/out.csv")
    for target in (str(tmp_path / "out.csv"), "-", "s3://bucket/out.csv"):
        PredictionsCsv.check_target(target)
    assert list(tmp_path.iterdir()) == []


def test_stdout_gets_the_whole_csv(capsysbinary):
    sink = PredictionsCsv("-", CLASSES, False)
    sink.write(row())
    sink.finish()
    assert capsysbinary.readouterr().out == f"{HEADER}\r\na.png,7,0.996094,ok,\r\n".encode()


def test_a_fifo_is_written_into_not_replaced(tmp_path):
    fifo = tmp_path / "rows.fifo"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    sink = PredictionsCsv(str(fifo), CLASSES, False)
    sink.write(row())
    sink.finish()
    reader.join(timeout=30)
    assert received == [f"{HEADER}\r\na.png,7,0.996094,ok,\r\n".encode()]
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["rows.fifo"]


def test_devices_and_fifos_are_stream_targets_and_files_are_not(tmp_path):
    fifo, plain = tmp_path / "fifo", tmp_path / "plain.csv"
    os.mkfifo(fifo)
    plain.write_text("x")
    assert is_stream_target("/dev/null") and is_stream_target(str(fifo))
    assert not any(is_stream_target(target) for target in
                   (str(plain), str(tmp_path / "missing.csv"), "-", "s3://bucket/key.csv"))


def test_the_temporary_file_goes_beside_a_local_target_only(tmp_path, monkeypatch):
    """Beside it, so the final rename stays on one file system."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    monkeypatch.chdir(tmp_path)
    assert local_dir_of("sub/../out.csv") == str(tmp_path.resolve())
    assert [local_dir_of(target) for target in ("-", "s3://bucket/out.csv", str(fifo))] == \
        [None, None, None]


def test_drop_column_copies_the_csv_without_one_column(tmp_path):
    source = UnnamedFile(str(tmp_path))
    with source.open_text() as text:
        csv.writer(text).writerows([["a", "b", "c"], ['1,"one"', "2", "line\nbreak"]])
    stripped = drop_column(source, 1)
    source.close()
    with open(stripped.path, encoding="utf-8", newline="") as again:
        assert list(csv.reader(again)) == [["a", "c"], ['1,"one"', "line\nbreak"]]
    stripped.close()
    assert list(tmp_path.iterdir()) == []


def test_copy_without_column_keeps_rfc_4180_quoting():
    out = io.StringIO(newline="")
    copy_without_column(io.StringIO('x,"y,z",w\r\n', newline=""), out, 2)
    assert out.getvalue() == 'x,"y,z"\r\n'


# --- report files as one set -----------------------------------------------------------------


def test_report_files_go_into_a_new_folder_with_no_staging_left(tmp_path):
    folder = tmp_path / "a" / "report"
    write_report({"report.json": b"{}", "report.html": b"<html></html>"}, str(folder))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == \
        {"report.json": b"{}", "report.html": b"<html></html>"}


def test_a_report_that_fails_midway_leaves_the_previous_one_whole(tmp_path):
    """The second file cannot be written (its folder does not exist): the first, already
    written, must not replace its old copy either."""
    folder = tmp_path / "report"
    write_report({"report.json": b"old", "report.html": b"old"}, str(folder))
    with pytest.raises(FileNotFoundError):
        write_report({"report.json": b"new", "missing/report.html": b"new"}, str(folder))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == \
        {"report.json": b"old", "report.html": b"old"}


# --- S3 --------------------------------------------------------------------------------------


def test_a_csv_on_s3_is_uploaded_whole(moto_endpoint, tmp_path):  # noqa: F811
    s3, bucket = s3_bucket()
    sink = PredictionsCsv(f"s3://{bucket}/out/predictions.csv", CLASSES, False)
    sink.write(row(label=7))
    sink.finish()
    assert read(s3, bucket, "out/predictions.csv") == \
        f"{HEADER},label\r\na.png,7,0.996094,ok,,7\r\n".encode()
    head = s3.head_object(Bucket=bucket, Key="out/predictions.csv")
    assert head["ContentType"] == "text/csv"
    aborted = PredictionsCsv(f"s3://{bucket}/out/aborted.csv", CLASSES, False)
    aborted.write(row())
    aborted.abort()
    assert keys_under(s3, bucket, "out/") == ["out/predictions.csv"]


def test_report_files_on_s3_get_their_content_types(moto_endpoint):  # noqa: F811
    s3, bucket = s3_bucket()
    write_report({"report.json": b"{}", "report.html": b"<html></html>", "notes.bin": b"\0"},
                 f"s3://{bucket}/job/report")  # no trailing slash: still a folder
    assert sorted(keys_under(s3, bucket, "job/")) == \
        ["job/report/notes.bin", "job/report/report.html", "job/report/report.json"]
    types = {key: s3.head_object(Bucket=bucket, Key=key)["ContentType"]
             for key in keys_under(s3, bucket, "job/")}
    assert types == {"job/report/notes.bin": "application/octet-stream",
                     "job/report/report.html": "text/html; charset=utf-8",
                     "job/report/report.json": "application/json"}


def test_upload_parts_are_of_the_real_minimum_size_and_abort_leaves_nothing(moto_endpoint):  # noqa: F811
    s3, bucket = boto3.client("s3"), f"digits-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    payload = bytes(range(256)) * (48 * 1024)  # 12 MiB
    upload = outputs.S3Upload(f"s3://{bucket}/big.csv", part_size=5 * 1024 * 1024)
    for start in range(0, len(payload), 1_000_000):
        upload.write(payload[start:start + 1_000_000])
    upload.finish()
    assert read(s3, bucket, "big.csv") == payload
    assert s3.head_object(Bucket=bucket, Key="big.csv")["ETag"].strip('"').endswith("-3")

    small = outputs.S3Upload(f"s3://{bucket}/small.csv")
    small.write(b"a,b\r\n")
    small.finish()  # less than a part: one PUT
    assert read(s3, bucket, "small.csv") == b"a,b\r\n"

    failed = outputs.S3Upload(f"s3://{bucket}/failed.csv", part_size=5 * 1024 * 1024)
    failed.write(payload[:6 * 1024 * 1024])
    failed.abort()
    assert keys_under(s3, bucket, "failed") == []
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
