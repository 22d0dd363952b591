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

from scorer import batch_jobs, outputs, s3_jobs
from scorer.bundle import load_bundle

from digit_factory import zip_of
from moto_server import _reset_scorer_client, moto_endpoint, moto_server  # noqa: F401

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
    for name in ("INPUT_PREFIX", "OUTPUT_PREFIX", "OUTPUT_BUCKET", "MIN_CONFIDENCE"):
        monkeypatch.delenv(name, raising=False)
    scorer.handler.bundle_and_config.cache_clear()
    yield lambda event: scorer.handler.handler(event, Context())
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


def batches(job_id: str, source: str, items: list[dict]) -> list[dict]:
    """The ItemBatcher's payloads: BatchInput plus consecutive runs of the listing."""
    return [{"BatchInput": {"job_id": job_id, "source": source}, "Items": items[i:i + BATCH]}
            for i in range(0, len(items), BATCH)]


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
