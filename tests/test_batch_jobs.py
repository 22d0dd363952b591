"""Scale-out prefix jobs without AWS: the Lambda handler, in this process, gets the payloads a
Step Functions Distributed Map would send (batches of ListObjectsV2 items, then the merge), against
moto's S3 server; the merged CSV and report must be what one prefix job writes, byte for byte."""

from __future__ import annotations

import csv
import io
import json
import random
import uuid
from concurrent.futures import ThreadPoolExecutor

import boto3
import numpy as np
import pytest
from PIL import Image

from scorer import batch_jobs, outputs, s3_jobs, sources
from scorer.bundle import load_bundle
from scorer.numbers import Length, NumberMode
from scorer.sources import LabelMatcher

from digit_factory import zip_of
from moto_server import _reset_scorer_client, moto_endpoint, moto_server  # noqa: F401
from test_s3_jobs import check_digits_column, clean_fields, parse_digits

BATCH = 100  # items per batch (the template's MaxItemsPerBatch; smaller here, for more parts)


class Context:  # what the Lambda runtime passes
    function_name = "digits-scorer"
    memory_limit_in_mb = 1769
    aws_request_id = "req-1"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:digits-scorer"


@pytest.fixture
def small_parts(moto_endpoint, monkeypatch):  # noqa: F811
    """A second moto server that accepts multipart parts from 1 KiB (S3's minimum is 5 MiB), so
    that a test-sized CSV goes up in several parts; the scorer is pointed at it."""
    with moto_server({"S3_UPLOAD_PART_MIN_SIZE": "1024"}) as url:
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        _reset_scorer_client()
        try:
            yield url
        finally:
            monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
            _reset_scorer_client()


@pytest.fixture
def handler(mnist_bundle, monkeypatch):
    """scorer.handler.handler with the environment the template sets (defaults otherwise)."""
    import scorer.handler

    monkeypatch.setenv("MODEL_DIR", str(mnist_bundle))
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Test")
    for name in ("INPUT_PREFIX", "OUTPUT_PREFIX", "INPUT_BUCKET", "OUTPUT_BUCKET",
                 "MIN_CONFIDENCE", "READ", "LENGTH"):
        monkeypatch.delenv(name, raising=False)
    scorer.handler.bundle_and_config.cache_clear()

    def call(event):
        return scorer.handler.handler(event, Context())

    call.bundle_dir = mnist_bundle
    yield call
    scorer.handler.bundle_and_config.cache_clear()


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def put_all(s3, bucket: str, objects: dict[str, bytes]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: s3.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]),
                      objects.items()))


def listed_items(s3, bucket: str, prefix: str) -> list[dict]:
    """What the ItemReader (arn:aws:states:::s3:listObjectsV2) hands out, in listing order."""
    items = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        items += [{"Key": o["Key"], "Size": o["Size"], "Etag": o["ETag"],
                   "LastModified": o["LastModified"].isoformat(),
                   "StorageClass": o.get("StorageClass", "STANDARD")}
                  for o in page.get("Contents", [])]
    return items


def batches(job_id: str, source: str, items: list[dict], size: int = BATCH) -> list[dict]:
    """The ItemBatcher's payloads: BatchInput plus consecutive runs of the listing."""
    return [{"BatchInput": {"job_id": job_id, "source": source}, "Items": items[i:i + size]}
            for i in range(0, len(items), size)]


def read(s3, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def keys_under(s3, bucket: str, prefix: str) -> list[str]:
    return [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])]



def test_batches_in_any_order_with_a_retry_merge_into_what_one_prefix_job_writes(
        small_parts, handler, mnist, mnist_bundle, monkeypatch):
    x, y = mnist.x_test[:2000], mnist.y_test[:2000].astype(int)
    s3, bucket = boto3.client("s3"), f"digits-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    objects = {f"incoming/exam/{y[i]}/{i:05d}.png": png(x[i]) for i in range(len(x))}
    objects.update({
        "incoming/exam/": b"",  # a folder marker, as the console makes them
        "incoming/exam/.hidden/1.png": png(x[0]),  # hidden: skipped silently
        "incoming/exam/notes.txt": b"not an image",  # counted as skipped
        "incoming/exam/3/broken.png": b"\x89PNG\r\n\x1a\ntruncated",  # an error row, labelled
        "incoming/exam/blank.png": png(np.zeros((28, 28), np.uint8)),  # blank, unlabelled
        "incoming/exam/7/odd, \"name\" ü.png": png(x[0]),
        "incoming/exam/batch.zip": zip_of({f"{y[i]}/m{i}.png": png(x[i]) for i in range(40)}),
        "incoming/elsewhere/9.png": png(x[1]),  # outside the job's prefix
    })
    put_all(s3, bucket, objects)
    source, job_id = f"s3://{bucket}/incoming/exam/", "exec-2026-11-25"
    items = listed_items(s3, bucket, "incoming/exam/")
    events = batches(job_id, source, items)
    assert len(items) == len(objects) - 1 and len(events) == 21

    order = list(range(len(events)))
    random.Random(7).shuffle(order)  # children finish in any order
    results = [handler(events[i]) for i in order]
    retried = handler(events[order[0]])  # Step Functions retried a batch: same part, same bytes
    assert retried == results[0]
    jobs = f"predictions/.jobs/{job_id}/parts/"
    metas = [k for k in keys_under(s3, bucket, jobs) if k.endswith(".json")
             and not k.endswith(".examples.json")]
    assert len(metas) == len(events)
    assert sum(r["objects"] for r in results) == len(items)
    assert sum(r["skipped"] for r in results) == 1  # notes.txt

    monkeypatch.setattr(outputs, "MULTIPART_CHUNK", 32 * 1024)  # several upload parts
    merged = handler({"merge": {"job_id": job_id, "source": source}})
    assert merged["output"] == f"s3://{bucket}/predictions/exam/predictions.csv"
    assert merged["report"] == f"s3://{bucket}/predictions/exam/report/"
    assert merged["parts"] == len(events) and merged["parts_deleted"] >= 3 * len(events) - 1
    assert keys_under(s3, bucket, jobs) == []  # parts deleted
    etag = s3.head_object(Bucket=bucket, Key="predictions/exam/predictions.csv")["ETag"]
    assert int(etag.strip('"').split("-")[1]) >= 3  # a multipart upload of several parts

    data = read(s3, bucket, "predictions/exam/predictions.csv")
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
    assert list(rows[0]) == ["source", "prediction", "confidence", "status", "error", "label"]
    sources = [r["source"] for r in rows]
    assert len(sources) == len(set(sources)) == 2000 + 40 + 3  # every object once
    keys = [s.removeprefix(f"s3://{bucket}/").split("!/")[0] for s in sources]
    assert keys == sorted(keys)  # key order (zip members in archive order, together)
    assert merged["rows"] == len(rows) and merged["failed"] == 1 and merged["blank"] == 1
    labelled = [r for r in rows if r["label"] and r["prediction"]]
    accuracy = sum(r["label"] == r["prediction"] for r in labelled) / len(labelled)
    report = json.loads(read(s3, bucket, "predictions/exam/report/report.json"))
    assert report["accuracy"] == pytest.approx(accuracy) == pytest.approx(merged["accuracy"])
    assert report["samples"] == len(labelled) == 2040 + 1

    # One prefix job in one invocation, written elsewhere: the same bytes, report included.
    single = s3_jobs.Config(str(mnist_bundle), "incoming/", "single/", None)
    s3_jobs.score_prefix(source, load_bundle(mnist_bundle), single)
    assert read(s3, bucket, "single/exam/predictions.csv") == data
    names = [k.removeprefix("single/exam/report/")
             for k in keys_under(s3, bucket, "single/exam/report/")]
    assert set(names) == {"report.json", "classification_report.txt", "confusion_matrix.csv",
                          "coverage.csv", "report.html"}
    for name in names:
        assert read(s3, bucket, f"predictions/exam/report/{name}") == \
            read(s3, bucket, f"single/exam/report/{name}"), name

    again = handler({"merge": {"job_id": job_id, "source": source}})  # a retried merge
    assert {**again, "parts_deleted": 0} == {**merged, "parts_deleted": 0}
    assert read(s3, bucket, "predictions/exam/predictions.csv") == data


def test_without_labels_the_merged_csv_has_no_label_column(small_parts, handler, mnist,
                                                           mnist_bundle):
    s3, bucket = boto3.client("s3"), f"digits-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    put_all(s3, bucket, {f"incoming/forms/{i:04d}.png": png(mnist.x_test[i])
                         for i in range(150)})
    source = f"s3://{bucket}/incoming/forms/"
    for event in reversed(batches("job-1", source, listed_items(s3, bucket, "incoming/forms/"))):
        handler(event)
    merged = handler({"merge": {"job_id": "job-1", "source": source}})
    assert merged["report"] is None and merged["labelled"] == 0 and merged["scored"] == 150
    data = read(s3, bucket, "predictions/forms/predictions.csv")
    assert data.startswith(b"source,prediction,confidence,status,error\r\n")
    s3_jobs.score_prefix(source, load_bundle(mnist_bundle),
                         s3_jobs.Config(str(mnist_bundle), "incoming/", "single/", None))
    assert read(s3, bucket, "single/forms/predictions.csv") == data
    assert keys_under(s3, bucket, "predictions/forms/report/") == []


def test_the_merged_csv_streams_in_bounded_memory(moto_endpoint, monkeypatch):  # noqa: F811
    """The merge holds at most FETCH_AHEAD_BYTES of part bodies ahead plus the one it writes,
    in pieces (it used to hold 32 bodies and several copies of each: one 103 MB part added
    550 MB). Rows arrive whole, in order, without the label column when no row has a label."""
    import tracemalloc

    from scorer import s3client

    s3, bucket = boto3.client("s3"), f"digits-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    monkeypatch.setattr(s3client, "FETCH_AHEAD_BYTES", 4 * 2**20)
    header = "source,prediction,confidence,status,error,label\r\n"

    def part_rows(part: int, count: int) -> list[str]:  # about 60 bytes a row, a quoted name
        return [f'"s3://{bucket}/in/{part:02d}/{i:06d},\n.png",7,0.99,ok,,\r\n'
                for i in range(count)]

    parts, expected = [], [header.replace(",label", "")]
    for number, count in enumerate([40_000] * 8 + [200_000]):  # 8 of 2.4 MB, one of 12 MB
        rows = part_rows(number, count)
        key = f"parts/{number}.csv"
        s3.put_object(Bucket=bucket, Key=key, Body=(header + "".join(rows)).encode())
        parts.append({"csv": key, "csv_bytes": len(header) + sum(map(len, rows))})
        expected += [row.replace(",,\r\n", ",\r\n") for row in rows]
    tracemalloc.start()
    try:
        batch_jobs.write_csv(bucket, parts, f"s3://{bucket}/merged.csv", ["0"] * 10, False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert read(s3, bucket, "merged.csv").decode() == "".join(expected)
    # The largest body, twice while botocore reads it; what is fetched ahead; the upload's
    # buffer and the part it sends; a few MB of pieces and HTTP buffers.
    largest = max(part["csv_bytes"] for part in parts)
    bound = 2 * largest + 4 * 2**20 + 2 * outputs.MULTIPART_CHUNK + 4 * 2**20
    print(f"merge peak {peak / 2**20:.1f} MB (bound {bound / 2**20:.1f} MB)")
    assert peak < bound, (peak / 2**20, bound / 2**20)


def test_sources_outside_the_input_prefix_and_bad_job_ids_are_refused(mnist_bundle):
    config = s3_jobs.Config(str(mnist_bundle), "incoming/", "predictions/", None)
    assert batch_jobs.job_source("s3://b/incoming/exam", config) == ("b", "incoming/exam/")
    for source in ("s3://b/other/", "s3://b/", "s3://b/incoming-old/x/"):
        with pytest.raises(ValueError, match="under"):
            batch_jobs.job_source(source, config)
    for job_id in ("", "../x", "a/b", ".hidden", "x" * 81):
        with pytest.raises(ValueError, match="job_id"):
            batch_jobs.job_prefix(job_id, config)
    assert batch_jobs.job_prefix("exec-1", config) == "predictions/.jobs/exec-1/"
    pinned = s3_jobs.Config(str(mnist_bundle), "incoming/", "predictions/", None,
                            input_bucket="uploads")
    assert batch_jobs.job_source("s3://uploads/incoming/x/", pinned) == ("uploads", "incoming/x/")
    with pytest.raises(ValueError, match=r"must lie in s3://uploads/incoming/"):
        batch_jobs.job_source("s3://other-bucket/incoming/x/", pinned)


def test_part_ids_of_keys_holding_newlines_do_not_collide():
    """S3 keys may hold "\n": joined with it, batches [x, y] and [z] hashed alike, and the
    merge kept one part's row for three objects."""
    x = "incoming/job/1.png"
    y = x + "\n0.png"
    z = x + "\n" + y
    assert batch_jobs.part_id([x, y]) != batch_jobs.part_id([z])
    assert batch_jobs.part_id(["a\nb"]) != batch_jobs.part_id(["a", "b"])


def test_job_ids_and_part_names_are_matched_whole():
    """`$` also matches before a final newline: a job id or part name ending in one is not
    one."""
    config = s3_jobs.Config("model", "incoming/", "predictions/", None)
    with pytest.raises(ValueError, match="job_id"):
        batch_jobs.job_prefix("exec-1\n", config)
    assert batch_jobs.PART_META.fullmatch("0" * 32 + ".json")
    assert not batch_jobs.PART_META.fullmatch("0" * 32 + ".json\n")


def test_part_ids_depend_on_the_keys_only_and_overlapping_parts_are_refused():
    assert batch_jobs.part_id(["b", "a"]) == batch_jobs.part_id(["a", "b", "a"])
    assert batch_jobs.part_id(["a"]) != batch_jobs.part_id(["a", "b"])

    def part(name, first, last):
        return {"part": name, "first_key": first, "last_key": last}

    ordered = batch_jobs.in_key_order([part("2", "k3", "k4"), part("0", None, None),
                                       part("1", "k1", "k2")])
    assert [p["part"] for p in ordered] == ["1", "2", "0"]
    with pytest.raises(ValueError, match="overlap"):
        batch_jobs.in_key_order([part("1", "k1", "k3"), part("2", "k2", "k4")])


def test_an_object_deleted_after_listing_is_an_error_row_not_a_failed_batch(
        moto_endpoint, handler, mnist, mnist_bundle):  # noqa: F811
    """A deleted object is permanent (no retry can bring it back): its batch completes with an
    error row for it, so the job is not held up by retries; running the batch again changes
    nothing."""
    s3, bucket = boto3.client("s3"), f"digits-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    objects = {f"incoming/scan/{i:04d}.png": png(mnist.x_test[i]) for i in range(120)}
    put_all(s3, bucket, objects)
    source = f"s3://{bucket}/incoming/scan/"
    first, second = batches("job-2", source, listed_items(s3, bucket, "incoming/scan/"))
    s3.delete_object(Bucket=bucket, Key="incoming/scan/0110.png")  # gone after the listing
    handler(first)
    handler(second)
    handler(second)  # a retried batch overwrites its own part
    parts = keys_under(s3, bucket, "predictions/.jobs/job-2/parts/")
    assert sum(k.endswith(".json") and not k.endswith(".examples.json") for k in parts) == 2
    merged = handler({"merge": {"job_id": "job-2", "source": source}})
    assert merged["rows"] == 120 and merged["failed"] == 1
    rows = list(csv.DictReader(io.StringIO(
        read(s3, bucket, "predictions/scan/predictions.csv").decode("utf-8"), newline="")))
    assert [r["source"] for r in rows] == [f"s3://{bucket}/{k}" for k in sorted(objects)]
    [gone] = [r for r in rows if r["status"] == "error"]
    assert gone["source"].endswith("0110.png") and "no longer exists" in gone["error"]
    assert keys_under(s3, bucket, "predictions/.jobs/job-2/parts/") == []


def test_merging_a_job_without_parts_is_an_error(moto_endpoint, handler):  # noqa: F811
    s3, bucket = boto3.client("s3"), f"digits-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    with pytest.raises(ValueError, match="no parts"):
        handler({"merge": {"job_id": "never-ran", "source": f"s3://{bucket}/incoming/x/"}})
    assert keys_under(s3, bucket, "") == []


# ---------------------------------------------------------------- number mode (READ=number)


def read_as(monkeypatch, read: str | None = None, length: str | None = None) -> None:
    """Set the function's READ and LENGTH (None: unset), as a new deployment would."""
    import scorer.handler

    for name, value in (("READ", read), ("LENGTH", length)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    scorer.handler.bundle_and_config.cache_clear()


def with_labels(monkeypatch, labels: dict[str, str]) -> None:
    """Give number fields true readings. S3 jobs have no labels CSV (folder names are never a
    field's label), so this is the only way labels reach them: the real listings, with a
    LabelMatcher applied as `digits-score --labels` applies it, for the scale-out batches
    (iter_listed) and the one-invocation prefix job (iter_inputs) alike."""
    listed, inputs = sources.iter_listed, sources.iter_inputs
    monkeypatch.setattr(sources, "iter_listed",
                        lambda *a, **k: LabelMatcher(labels).apply(listed(*a, **k)))
    monkeypatch.setattr(sources, "iter_inputs",
                        lambda *a, **k: LabelMatcher(labels).apply(inputs(*a, **k)))


def field_objects(bucket: str, prefix: str, fields: list) -> tuple[dict[str, bytes], dict]:
    """The fields under `prefix`, some in folders named like digits (never a field's label), a
    zip of the last four, and what every prefix holds: a blank scan, a broken file, a note.
    Returns the objects to upload and {the CSV's source of each field: the field}."""
    objects, where = {}, {}
    for i, field in enumerate(fields[:-4]):
        key = f"{prefix}{i % 3}/{i:03d}.png" if i % 4 == 0 else f"{prefix}f{i:03d}.png"
        objects[key] = field.png
        where[f"s3://{bucket}/{key}"] = field
    members = {f"7/m{i}.png": field for i, field in enumerate(fields[-4:])}
    objects[f"{prefix}bundle.zip"] = zip_of({name: f.png for name, f in members.items()})
    where.update({f"s3://{bucket}/{prefix}bundle.zip!/{name}": field
                  for name, field in members.items()})
    objects[f"{prefix}blank.png"] = png(np.full((60, 200), 255, np.uint8))
    objects[f"{prefix}broken.png"] = b"\x89PNG\r\n\x1a\ntruncated"
    objects[f"{prefix}notes.txt"] = b"not an image"
    return objects, where


def score_in_batches(handler, s3, bucket: str, prefix: str, job_id: str, size: int) -> dict:
    """Every batch of the listing (in any order), then the merge event (returned, not sent)."""
    source = f"s3://{bucket}/{prefix}"
    events = batches(job_id, source, listed_items(s3, bucket, prefix), size)
    order = list(range(len(events)))
    random.Random(11).shuffle(order)
    for i in order:
        handler(events[i])
    return {"merge": {"job_id": job_id, "source": source}}


LENGTHS = [5, 3, 6, 4, 5, 2, 7, 5, 3, 4, 6, 5, 4, 5, 3, 5]  # 16 fields, the last 4 in a zip


def uploaded_fields(bundle_dir, mnist_test_images, prefix: str):
    """A new bucket holding fields of LENGTHS clean digits under `prefix` (field_objects):
    (s3 client, bucket, {source URL: Field})."""
    x, y = mnist_test_images
    s3, bucket = boto3.client("s3"), f"digits-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    objects, where = field_objects(bucket, prefix, clean_fields(bundle_dir, x, y, LENGTHS))
    put_all(s3, bucket, objects)
    return s3, bucket, where


def test_number_mode_batches_merge_into_what_one_prefix_job_writes(
        moto_endpoint, handler, mnist_test_images, mnist_bundle, monkeypatch):  # noqa: F811
    """READ=number, no LENGTH: every object is a field read into a digit string; no labels (S3
    jobs have none), so a CSV with a digits column and no report, the same bytes either way."""
    s3, bucket, expected = uploaded_fields(mnist_bundle, mnist_test_images, "incoming/meters/")
    read_as(monkeypatch, "number")

    merged = handler(score_in_batches(handler, s3, bucket, "incoming/meters/", "meters-1", 4))
    assert merged["parts"] == 4 and merged["rows"] == 16 + 2 and merged["skipped"] == 1
    assert (merged["scored"], merged["blank"], merged["failed"]) == (16, 1, 1)
    assert merged["report"] is None and merged["labelled"] == 0 and merged["accuracy"] is None
    data = read(s3, bucket, "predictions/meters/predictions.csv")
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
    assert list(rows[0]) == ["source", "prediction", "confidence", "status", "error", "digits"]
    by_source = {r["source"]: r for r in rows}
    assert set(by_source) - set(expected) == {f"s3://{bucket}/incoming/meters/blank.png",
                                              f"s3://{bucket}/incoming/meters/broken.png"}
    for name, field in expected.items():  # each read as as many digits as were written
        row = by_source[name]
        assert row["status"] == "ok" and len(row["prediction"]) == len(field.text), row
        assert len(parse_digits(row["digits"])) == len(field.text)
    read_right = [name for name, field in expected.items()
                  if by_source[name]["prediction"] == field.text]
    assert len(read_right) >= 14, [(by_source[n]["prediction"], f.text)
                                   for n, f in expected.items()]
    for name in list(expected)[:2] + list(expected)[-1:]:  # a field in a folder, in the zip
        check_digits_column(by_source[name], expected[name])
    blank = by_source[f"s3://{bucket}/incoming/meters/blank.png"]
    assert (blank["status"], blank["prediction"], blank["digits"]) == ("blank", "", "")
    assert by_source[f"s3://{bucket}/incoming/meters/broken.png"]["status"] == "error"

    single = s3_jobs.Config(str(mnist_bundle), "incoming/", "single/", None,
                            numbers=NumberMode(None))
    _, tally = s3_jobs.score_prefix(f"s3://{bucket}/incoming/meters/", load_bundle(mnist_bundle),
                                    single)
    assert tally.fields and tally.scored == 16
    assert read(s3, bucket, "single/meters/predictions.csv") == data
    assert keys_under(s3, bucket, "predictions/meters/report/") == []
    assert keys_under(s3, bucket, "single/meters/report/") == []
    assert keys_under(s3, bucket, "predictions/.jobs/meters-1/parts/") == []


def test_labelled_number_fields_merge_into_the_number_report_a_prefix_job_writes(
        moto_endpoint, handler, mnist_test_images, mnist_bundle, monkeypatch):  # noqa: F811
    """With true readings (see with_labels) and LENGTH=3-6: the label column, the field metrics
    and the report's thumbnails with their cuts, byte for byte as one prefix job writes them."""
    s3, bucket, where = uploaded_fields(mnist_bundle, mnist_test_images, "incoming/zip-codes/")
    truth = {name: field.text for name, field in where.items()}
    wrong = sorted(truth)[:3]
    for name in wrong:  # mislabelled: misread fields for the report to show
        truth[name] = "0" + truth[name][1:] if truth[name][0] != "0" else "1" + truth[name][1:]
    truth[f"s3://{bucket}/incoming/zip-codes/broken.png"] = "123"  # labelled, but unreadable
    with_labels(monkeypatch, truth)
    read_as(monkeypatch, "number", "3-6")

    merge = score_in_batches(handler, s3, bucket, "incoming/zip-codes/", "zips-1", 5)
    config = s3_jobs.Config(str(mnist_bundle), "incoming/", "single/", None,
                            numbers=NumberMode(Length(3, 6)))
    _, single = s3_jobs.score_prefix(f"s3://{bucket}/incoming/zip-codes/",
                                     load_bundle(mnist_bundle), config)

    # The parts hold the labelled readings exactly (strings, and float64 field confidences: a
    # product of float32 digit confidences), and their examples the digits' cuts.
    parts = batch_jobs.in_key_order(batch_jobs.read_parts(
        bucket, "predictions/.jobs/zips-1/parts/"))
    assert len(parts) == 4 and {(p["read"], p["length"]) for p in parts} == {("number", "3-6")}
    y_true, y_pred, confidence = batch_jobs._unpack_labelled(parts, fields=True)
    assert (y_true, y_pred) == (single.y_true, single.y_pred)
    assert confidence.dtype == np.float64 and confidence.tolist() == single.confidence
    assert any(c != float(np.float32(c)) for c in single.confidence)  # float32 would round
    examples = [e for p in parts if p["examples"]
                for e in json.loads(read(s3, bucket, p["examples"]))["examples"]]
    assert len(examples) == 16  # a handful of rows a part: every one is a candidate
    assert all(len(e["cuts"]) == len(e["prediction"]) and isinstance(e["label"], str)
               for e in examples)

    merged = handler(merge)
    assert merged["report"] == f"s3://{bucket}/predictions/zip-codes/report/"
    assert merged["labelled"] == 16 and merged["correct"] == single.correct <= 13
    data = read(s3, bucket, "predictions/zip-codes/predictions.csv")
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
    assert list(rows[0]) == ["source", "prediction", "confidence", "status", "error", "label",
                             "digits"]
    by_source = {r["source"]: r for r in rows}
    assert all(by_source[name]["label"] == text for name, text in truth.items())  # "054" too
    [seven] = [r for r in rows if len(r["label"]) == 7]  # LENGTH=3-6: for review
    assert seven["status"] == "review" and seven["error"] == "read 7 digits, expected 3-6"
    [two] = [r for r in rows if len(r["label"]) == 2]  # two clear digits are not cut to fit
    assert two["status"] == "review" and two["error"] == "read 2 digits, expected 3-6"
    assert two["prediction"] == two["label"]
    report = json.loads(read(s3, bucket, "predictions/zip-codes/report/report.json"))
    assert report["mode"] == "number" and report["fields"] == 16
    assert report["exact_match"] == pytest.approx(merged["accuracy"])
    assert report["run"]["read"] == "number" and report["run"]["length"] == "3-6"
    assert report["run"]["source"] == f"s3://{bucket}/incoming/zip-codes/"

    assert read(s3, bucket, "single/zip-codes/predictions.csv") == data
    names = [k.removeprefix("single/zip-codes/report/")
             for k in keys_under(s3, bucket, "single/zip-codes/report/")]
    assert {"report.json", "classification_report.txt", "coverage.csv", "report.html"} <= \
        set(names)
    for name in names:
        assert read(s3, bucket, f"predictions/zip-codes/report/{name}") == \
            read(s3, bucket, f"single/zip-codes/report/{name}"), name
    html = read(s3, bucket, "predictions/zip-codes/report/report.html").decode("utf-8")
    for name in wrong:  # the misread fields are shown (their names, escaped, in the page)
        assert name.rsplit("/", 1)[1] in html


def test_a_merge_refuses_parts_of_another_model(
        moto_endpoint, handler, mnist, digits_bundle, monkeypatch):  # noqa: F811
    """A deploy during a long job: parts scored by two bundles would make one CSV of two
    models' answers. Each part records its model's SHA-256 and classes; the merge refuses
    parts of different models, or of a model the function no longer has."""
    import scorer.handler

    s3, bucket = boto3.client("s3"), f"digits-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    put_all(s3, bucket, {f"incoming/deploy/{i:02d}.png": png(mnist.x_test[i]) for i in range(8)})
    source = f"s3://{bucket}/incoming/deploy/"
    first, second = batches("deploy-1", source, listed_items(s3, bucket, "incoming/deploy/"), 4)
    handler(first)  # the MNIST bundle
    monkeypatch.setenv("MODEL_DIR", str(digits_bundle))  # redeployed with another bundle
    scorer.handler.bundle_and_config.cache_clear()
    handler(second)
    merge = {"merge": {"job_id": "deploy-1", "source": source}}
    with pytest.raises(ValueError, match=r"scored by different models \(1 by model "):
        handler(merge)
    assert keys_under(s3, bucket, "predictions/deploy/") == []  # no CSV

    handler(first)  # both parts by the new bundle now, but merged by the old one
    monkeypatch.setenv("MODEL_DIR", str(handler.bundle_dir))
    scorer.handler.bundle_and_config.cache_clear()
    with pytest.raises(ValueError, match="but the function now has model "):
        handler(merge)


def test_a_merge_refuses_parts_of_another_read_mode(
        moto_endpoint, handler, mnist, monkeypatch):  # noqa: F811
    """A job whose READ or LENGTH changed half-way (a redeploy) has parts of two kinds: their
    rows and arrays cannot make one CSV. The merge says so and writes nothing."""
    s3, bucket = boto3.client("s3"), f"digits-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    put_all(s3, bucket, {f"incoming/mixed/{i:02d}.png": png(mnist.x_test[i]) for i in range(12)})
    source = f"s3://{bucket}/incoming/mixed/"
    first, second, third = batches("mixed-1", source,
                                   listed_items(s3, bucket, "incoming/mixed/"), 4)
    handler(first)  # READ unset: digits
    read_as(monkeypatch, "number", "1")
    handler(second)
    jobs = "predictions/.jobs/mixed-1/parts/"
    metas = [json.loads(read(s3, bucket, k)) for k in keys_under(s3, bucket, jobs)
             if k.endswith(".json") and not k.endswith(".examples.json")]
    assert sorted((m["read"], m.get("length")) for m in metas) == [("digit", None),
                                                                   ("number", "1")]
    assert {type(m["y_true"]) for m in metas} == {str, list}  # base64 int8, or digit strings
    merge = {"merge": {"job_id": "mixed-1", "source": source}}
    with pytest.raises(ValueError, match=r"different read modes \(1 with READ=digit, 1 with "
                                         r"READ=number LENGTH=1\)"):
        handler(merge)
    assert keys_under(s3, bucket, "predictions/mixed/") == []  # no CSV
    assert len(keys_under(s3, bucket, jobs)) == 4  # both parts (CSV, .json) stay for a redo

    read_as(monkeypatch)  # back to digits: the third batch, and a redo of the second
    handler(third)
    handler(second)  # the same keys: the same part, now scored as digits
    read_as(monkeypatch, "number")
    with pytest.raises(ValueError, match="scored with READ=digit but the function now has "
                                         r"READ=number LENGTH=\(any\)"):
        handler(merge)
    read_as(monkeypatch, "digit", "")  # as the template sets it: digits, no length
    merged = handler(merge)
    assert merged["rows"] == 12 and merged["parts"] == 3
    assert read(s3, bucket, "predictions/mixed/predictions.csv").startswith(
        b"source,prediction,confidence,status,error\r\n")


def test_number_parts_must_match_the_length_too(
        moto_endpoint, handler, mnist_test_images, mnist_bundle, monkeypatch):  # noqa: F811
    x, y = mnist_test_images
    s3, bucket = boto3.client("s3"), f"digits-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    fields = clean_fields(mnist_bundle, x, y, [5, 5, 5])
    put_all(s3, bucket, {f"incoming/five/{i}.png": f.png for i, f in enumerate(fields)})
    source = f"s3://{bucket}/incoming/five/"
    read_as(monkeypatch, "number", "5")
    for event in batches("five-1", source, listed_items(s3, bucket, "incoming/five/"), 2):
        handler(event)
    read_as(monkeypatch, "number", "4-6")
    merge = {"merge": {"job_id": "five-1", "source": source}}
    with pytest.raises(ValueError, match=r"READ=number LENGTH=5 but the function now has "
                                         r"READ=number LENGTH=4-6"):
        handler(merge)
    assert keys_under(s3, bucket, "predictions/five/") == []  # nothing written
    read_as(monkeypatch, "number", "5")
    merged = handler(merge)
    rows = list(csv.DictReader(io.StringIO(
        read(s3, bucket, "predictions/five/predictions.csv").decode("utf-8"), newline="")))
    assert [r["prediction"] for r in rows] == [f.text for f in fields]
    assert merged["scored"] == 3 and merged["review"] == 0
