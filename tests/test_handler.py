"""The Lambda handler end to end: real S3 and SQS APIs (moto's server over HTTP), real S3
notifications, and the handler imported from the unzipped `make package` artifact."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import textwrap
import uuid
import zipfile
from pathlib import Path

import boto3
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from digit_factory import zip_of
from moto_server import moto_endpoint  # noqa: F401
from test_field_reader import touching_fields
from test_s3_jobs import check_digits_column, clean_fields, parse_digits

SUFFIXES = (".png", ".jpg", ".zip")

DRIVER = textwrap.dedent("""
    import json, os, sys
    root = sys.argv[1]
    sys.path.insert(0, root)
    import numpy, PIL, ai_edge_litert, aws_lambda_powertools, scorer.handler
    for module in (numpy, PIL, ai_edge_litert, aws_lambda_powertools, scorer.handler):
        assert module.__file__.startswith(root), module.__file__  # from the artifact
    class Context:  # what the Lambda runtime passes
        function_name = "digits-scorer"; memory_limit_in_mb = 1769; aws_request_id = "req-1"
        invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:digits-scorer"
        def get_remaining_time_in_millis(self):
            return int(os.environ.get("TEST_REMAINING_MS", "300000"))
    results = [scorer.handler.handler(event, Context()) for event in json.load(sys.stdin)]
    heavy = {"tensorflow", "keras", "sklearn", "scipy", "matplotlib"} & set(sys.modules)
    assert not heavy, heavy
    print("RESULTS=" + json.dumps(results))
""")


@pytest.fixture(scope="session")
def lambda_root(tmp_path_factory, mnist_bundle) -> Path:
    """`make package LAMBDA_PYTHON=3.11` (this machine's Python), unzipped."""
    return packaged(tmp_path_factory, mnist_bundle)


@pytest.fixture(scope="session")
def lambda_with_field_reader(tmp_path_factory, mnist_fields_bundle) -> Path:
    """The same, with a bundle that holds a field reader."""
    return packaged(tmp_path_factory, mnist_fields_bundle)


def packaged(tmp_path_factory, mnist_bundle: Path) -> Path:
    build = tmp_path_factory.mktemp("lambda")
    archive = build / "lambda.zip"
    done = subprocess.run(
        [sys.executable, "tools/package_lambda.py", "--python-version", "3.11",
         "--model", str(mnist_bundle), "--out", str(archive)],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert archive.stat().st_size <= 50 * 1024 * 1024
    root = build / "root"
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(root)
        unzipped = sum(info.file_size for info in zipped.infolist())
    assert unzipped <= 250 * 1024 * 1024
    return root


def invoke(lambda_root: Path, *events: dict, env: dict | None = None) -> list[dict]:
    """Run the packaged handler in a fresh interpreter, as the Lambda runtime would."""
    return run_handler(lambda_root, *events, env=env)[0]


def run_handler(lambda_root: Path, *events: dict,
                env: dict | None = None) -> tuple[list[dict], list[dict]]:
    """As `invoke`; also returns the handler's structured (JSON) log lines."""
    import os

    environment = {**os.environ, "POWERTOOLS_METRICS_NAMESPACE": "Test", **(env or {})}
    environment.pop("MODEL_DIR", None)  # the bundle packaged with the function
    done = subprocess.run([sys.executable, "-c", DRIVER, str(lambda_root)],
                          input=json.dumps(list(events)), capture_output=True, text=True,
                          timeout=300, env=environment, cwd=lambda_root)
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULTS="))
    logs = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    return json.loads(line[len("RESULTS="):]), logs


def png(digit) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(digit).save(buffer, format="PNG")
    return buffer.getvalue()



@pytest.fixture
def stack(moto_endpoint):  # noqa: F811
    """A bucket whose uploads under incoming/ notify an SQS queue, as infra/template.yaml sets."""
    s3, sqs = boto3.client("s3"), boto3.client("sqs")
    bucket = f"digits-{uuid.uuid4().hex[:12]}"
    queue = sqs.create_queue(QueueName=bucket)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={
        "QueueConfigurations": [
            {"QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"],
             "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "incoming/"},
                                                {"Name": "suffix", "Value": suffix}]}}}
            for suffix in SUFFIXES]})
    return {"s3": s3, "sqs": sqs, "bucket": bucket, "queue": queue, "queue_arn": queue_arn}


def sqs_event(stack) -> dict:
    """Drain the queue into the event Lambda's SQS poller would deliver."""
    records = []
    while True:
        batch = stack["sqs"].receive_message(QueueUrl=stack["queue"], MaxNumberOfMessages=10,
                                             WaitTimeSeconds=0).get("Messages", [])
        if not batch:
            return {"Records": records}
        records += [{"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"],
                     "body": m["Body"], "attributes": {}, "messageAttributes": {},
                     "md5OfBody": m["MD5OfBody"], "eventSource": "aws:sqs",
                     "eventSourceARN": stack["queue_arn"], "awsRegion": "us-east-1"}
                    for m in batch]


def outputs(stack) -> dict[str, bytes]:
    s3, bucket = stack["s3"], stack["bucket"]
    listing = s3.list_objects_v2(Bucket=bucket, Prefix="predictions/").get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            for o in listing}


def rows(data: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


def test_uploads_are_scored_once_and_redelivery_changes_nothing(stack, lambda_root,
                                                                 mnist_test_images):
    x, y = mnist_test_images
    s3, bucket = stack["s3"], stack["bucket"]
    s3.put_object(Bucket=bucket, Key=f"incoming/{y[0]}/first.png", Body=png(x[0]))
    s3.put_object(Bucket=bucket, Key="incoming/odd name+ü (1).png", Body=png(x[1]))
    members = {f"{y[i]}/img{i}.png": png(x[i]) for i in range(2, 32)}
    members["notes.txt"] = b"not an image"
    s3.put_object(Bucket=bucket, Key="incoming/batch.zip", Body=zip_of(members))
    s3.put_object(Bucket=bucket, Key="incoming/broken.png", Body=b"\x89PNG\r\n\x1a\ntruncated")
    s3.put_object(Bucket=bucket, Key="elsewhere/ignored.png", Body=png(x[0]))  # not notified
    event = sqs_event(stack)
    assert len(event["Records"]) == 5  # four uploads and S3's s3:TestEvent

    [response] = invoke(lambda_root, event)
    assert response == {"batchItemFailures": []}
    first = outputs(stack)
    assert set(first) == {
        f"predictions/{y[0]}/first.png.csv", "predictions/odd name+ü (1).png.csv",
        "predictions/batch.zip.csv", "predictions/broken.png.csv",
        *(f"predictions/batch.zip.report/{name}" for name in (
            "report.json", "classification_report.txt", "confusion_matrix.csv", "coverage.csv",
            "report.html")),
    }
    [single] = rows(first[f"predictions/{y[0]}/first.png.csv"])
    assert single["source"] == f"s3://{bucket}/incoming/{y[0]}/first.png"
    assert single["status"] == "ok" and single["prediction"] == str(y[0])
    assert single["label"] == str(y[0])
    archive_rows = rows(first["predictions/batch.zip.csv"])
    assert [r["source"] for r in archive_rows] == [
        f"s3://{bucket}/incoming/batch.zip!/{name}" for name in sorted(members)
        if name.endswith(".png")]
    correct = sum(r["prediction"] == r["label"] for r in archive_rows)
    assert correct >= 27  # of 30: the small test model is ~97 % accurate
    report = json.loads(first["predictions/batch.zip.report/report.json"])
    assert report["samples"] == 30 and report["accuracy"] == pytest.approx(correct / 30)
    [broken] = rows(first["predictions/broken.png.csv"])
    assert broken["status"] == "error" and broken["error"] and broken["prediction"] == ""

    invoke(lambda_root, event)  # SQS delivers at least once: the same messages again
    assert outputs(stack) == first


def test_a_key_too_long_for_its_output_keys_is_scored_under_a_shortened_name(
        stack, lambda_root, mnist_test_images):
    """An input key of 1,018 bytes or more made output keys past S3's 1,024-byte limit: the
    message was retried into the dead-letter queue. Its outputs now take a shortened name: its
    first bytes, "~" and a hash of the whole; the row still names the whole key."""
    x, y = mnist_test_images
    s3, bucket = stack["s3"], stack["bucket"]
    key = "incoming/" + "long-folder-name/" * 59 + "digit.png"
    assert 1018 <= len(key.encode()) <= 1024
    s3.put_object(Bucket=bucket, Key=key, Body=png(x[0]))
    [response] = invoke(lambda_root, sqs_event(stack))
    assert response == {"batchItemFailures": []}
    [(name, data)] = outputs(stack).items()
    assert len(name.encode()) <= 1024 - len(".report/classification_report.txt") + len(".csv")
    assert name.startswith("predictions/long-folder-name/") and name.endswith(".csv")
    assert "~" in name
    [row] = rows(data)
    assert row["source"] == f"s3://{bucket}/{key}" and row["status"] == "ok"


def test_objects_in_the_output_prefix_never_trigger_scoring(stack, lambda_root,
                                                            mnist_test_images):
    s3, bucket = stack["s3"], stack["bucket"]
    s3.put_object(Bucket=bucket, Key="predictions/looks-like-input.png",
                  Body=png(mnist_test_images[0][0]))
    event = {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                          "s3": {"bucket": {"name": bucket},
                                 "object": {"key": "predictions/looks-like-input.png"}}}]}
    [response] = invoke(lambda_root, event)
    assert response == {"outputs": [None]}
    assert set(outputs(stack)) == {"predictions/looks-like-input.png"}


def test_deleted_and_archived_objects_are_acknowledged_not_retried(stack, lambda_root,
                                                                  mnist_test_images):
    """Retrying cannot bring back a deleted object or thaw an archived one: the message is
    logged and acknowledged instead of failing again and again into the dead-letter queue."""
    s3, bucket = stack["s3"], stack["bucket"]
    s3.put_object(Bucket=bucket, Key="incoming/good.png", Body=png(mnist_test_images[0][0]))
    s3.put_object(Bucket=bucket, Key="incoming/gone.png", Body=png(mnist_test_images[0][1]))
    s3.put_object(Bucket=bucket, Key="incoming/frozen.png", Body=png(mnist_test_images[0][2]),
                  StorageClass="GLACIER")
    s3.put_object(Bucket=bucket, Key="incoming/frozen.zip", StorageClass="DEEP_ARCHIVE",
                  Body=zip_of({"a.png": png(mnist_test_images[0][3])}))
    event = sqs_event(stack)
    s3.delete_object(Bucket=bucket, Key="incoming/gone.png")  # deleted before we got to it
    results, logs = run_handler(lambda_root, event)
    assert results == [{"batchItemFailures": []}]
    assert set(outputs(stack)) == {"predictions/good.png.csv"}
    skipped = {line["key"]: line["reason"] for line in logs
               if line.get("message") == "object not scored, not retried"}
    assert set(skipped) == {"incoming/gone.png", "incoming/frozen.png", "incoming/frozen.zip"}
    assert "deleted" in skipped["incoming/gone.png"]
    assert "archived" in skipped["incoming/frozen.png"]


def test_an_archived_object_in_a_prefix_job_is_an_error_row(stack, lambda_root,
                                                            mnist_test_images):
    x, y = mnist_test_images
    s3, bucket = stack["s3"], stack["bucket"]
    for i in range(3):
        s3.put_object(Bucket=bucket, Key=f"incoming/exam/{y[i]}/{i}.png", Body=png(x[i]))
    s3.put_object(Bucket=bucket, Key="incoming/exam/old.png", Body=png(x[3]),
                  StorageClass="GLACIER")
    s3.put_object(Bucket=bucket, Key="incoming/exam/old.zip", StorageClass="GLACIER",
                  Body=zip_of({"a.png": png(x[4])}))
    [result] = invoke(lambda_root, {"source": f"s3://{bucket}/incoming/exam/"})
    assert result["scored"] == 3 and result["failed"] == 2
    found = rows(outputs(stack)["predictions/exam/predictions.csv"])
    errors = {r["source"]: r["error"] for r in found if r["status"] == "error"}
    assert set(errors) == {f"s3://{bucket}/incoming/exam/old.png",
                           f"s3://{bucket}/incoming/exam/old.zip"}
    assert all("archived" in reason for reason in errors.values())


@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_batch_operations_tasks(stack, lambda_root, mnist_test_images, version):
    s3, bucket = stack["s3"], stack["bucket"]
    s3.put_object(Bucket=bucket, Key="incoming/backfill/a b.png",
                  Body=png(mnist_test_images[0][3]))

    def task(key: str, task_id: str) -> dict:
        where = ({"s3BucketArn": f"arn:aws:s3:::{bucket}"} if version == "1.0"
                 else {"s3Bucket": bucket})
        return {"invocationSchemaVersion": version, "invocationId": f"inv-{task_id}",
                "job": {"id": "job-1", **({"userArguments": {}} if version == "2.0" else {})},
                "tasks": [{"taskId": task_id, "s3Key": key, "s3VersionId": None, **where}]}

    ok, missing = invoke(lambda_root, task("incoming/backfill/a+b.png", "t1"),
                         task("incoming/backfill/nope.png", "t2"))
    assert ok["invocationSchemaVersion"] == version and ok["invocationId"] == "inv-t1"
    assert ok["results"] == [{"taskId": "t1", "resultCode": "Succeeded",
                              "resultString": f"s3://{bucket}/predictions/backfill/a b.png.csv"}]
    assert missing["invocationId"] == "inv-t2"
    assert missing["results"][0]["resultCode"] == "PermanentFailure"
    assert "NoSuchKey" in missing["results"][0]["resultString"]
    outside, inside_output = invoke(lambda_root, task("elsewhere/a.png", "t3"),
                                    task("predictions/a.png", "t4"))
    for answer, why in ((outside, "outside the input prefix"),
                        (inside_output, "inside the output prefix")):
        [result] = answer["results"]
        assert result["resultCode"] == "PermanentFailure"  # in the completion report
        assert result["resultString"] == f"not scored: the key is {why}"


def test_prefix_job_and_eventbridge_event(stack, lambda_root, mnist_test_images):
    x, y = mnist_test_images
    s3, bucket = stack["s3"], stack["bucket"]
    for i in range(12):
        s3.put_object(Bucket=bucket, Key=f"incoming/exam/{y[i]}/{i}.png", Body=png(x[i]))
    bridge = {"version": "0", "id": "e1", "detail-type": "Object Created", "source": "aws.s3",
              "account": "123456789012", "time": "2026-11-24T00:00:00Z", "region": "us-east-1",
              "resources": [f"arn:aws:s3:::{bucket}"],
              "detail": {"version": "0", "bucket": {"name": bucket},
                         "object": {"key": f"incoming/exam/{y[0]}/0.png", "size": 1},
                         "reason": "PutObject"}}
    prefix_result, bridge_result = invoke(
        lambda_root, {"source": f"s3://{bucket}/incoming/exam/"}, bridge)
    assert prefix_result["output"] == f"s3://{bucket}/predictions/exam/predictions.csv"
    assert prefix_result["scored"] == 12 and prefix_result["failed"] == 0
    assert bridge_result == {"outputs": [f"s3://{bucket}/predictions/exam/{y[0]}/0.png.csv"]}
    found = outputs(stack)
    assert len(rows(found["predictions/exam/predictions.csv"])) == 12
    assert json.loads(found["predictions/exam/report/report.json"])["samples"] == 12


def test_output_bucket_and_prefixes_come_from_the_environment(stack, lambda_root,
                                                              mnist_test_images):
    s3, bucket = stack["s3"], stack["bucket"]
    target = f"{bucket}-out"
    s3.create_bucket(Bucket=target)
    s3.put_object(Bucket=bucket, Key="uploads/d.png", Body=png(mnist_test_images[0][5]))
    event = {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                          "s3": {"bucket": {"name": bucket}, "object": {"key": "uploads/d.png"}}}]}
    [response] = invoke(lambda_root, event, env={"INPUT_PREFIX": "uploads/",
                                                 "OUTPUT_PREFIX": "scored/",
                                                 "OUTPUT_BUCKET": target})
    assert response == {"outputs": [f"s3://{target}/scored/d.png.csv"]}
    assert s3.list_objects_v2(Bucket=target)["KeyCount"] == 1


def test_min_confidence_from_the_environment_marks_rows_for_review(stack, lambda_root,
                                                                    mnist_test_images):
    x, y = mnist_test_images
    s3, bucket = stack["s3"], stack["bucket"]
    for i in range(10):
        s3.put_object(Bucket=bucket, Key=f"incoming/review/{y[i]}/{i}.png", Body=png(x[i]))
    s3.put_object(Bucket=bucket, Key="incoming/review/empty.png",
                  Body=png(np.zeros((28, 28), np.uint8)))
    [result] = invoke(lambda_root, {"source": f"s3://{bucket}/incoming/review/"},
                      env={"MIN_CONFIDENCE": "1.0"})  # nothing is that sure: all for review
    assert (result["scored"], result["review"], result["blank"], result["failed"]) == \
        (10, 10, 1, 0)
    found = rows(outputs(stack)["predictions/review/predictions.csv"])
    assert sorted(r["status"] for r in found) == ["blank"] + ["review"] * 10
    assert all(r["prediction"] for r in found if r["status"] == "review")


@pytest.mark.parametrize("value", ["2", "-1", "sure"])
def test_bad_min_confidence_is_refused_at_start(value, monkeypatch):
    from scorer.s3_jobs import Config

    monkeypatch.setenv("MIN_CONFIDENCE", value)
    with pytest.raises(ValueError, match="MIN_CONFIDENCE"):
        Config.from_env()


def test_eventbridge_object_deleted_is_not_scored(stack, lambda_root, mnist_test_images):
    s3, bucket = stack["s3"], stack["bucket"]
    s3.put_object(Bucket=bucket, Key="incoming/still-here.png", Body=png(mnist_test_images[0][0]))
    deleted = {"version": "0", "id": "e2", "detail-type": "Object Deleted", "source": "aws.s3",
               "account": "123456789012", "time": "2026-11-24T00:00:00Z", "region": "us-east-1",
               "resources": [f"arn:aws:s3:::{bucket}"],
               "detail": {"version": "0", "bucket": {"name": bucket},
                          "object": {"key": "incoming/still-here.png"},
                          "reason": "DeleteObject", "deletion-type": "Permanently Deleted"}}
    assert invoke(lambda_root, deleted) == [{"outputs": []}]
    assert outputs(stack) == {}


def test_a_failed_message_is_logged_with_its_id_and_returned_to_the_queue(stack, lambda_root):
    event = {"Records": [{"messageId": "m-broken", "receiptHandle": "r", "body": "{not json",
                          "attributes": {}, "messageAttributes": {}, "md5OfBody": "",
                          "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:x:1:q",
                          "awsRegion": "us-east-1"}]}
    [response], logs = run_handler(lambda_root, event)
    assert response == {"batchItemFailures": [{"itemIdentifier": "m-broken"}]}
    failed = [entry for entry in logs if "message failed" in str(entry.get("message", ""))]
    assert len(failed) == 1 and failed[0]["message_id"] == "m-broken"
    assert failed[0]["level"] == "ERROR" and "JSONDecodeError" in str(failed[0]["exception"])


def test_messages_close_to_the_timeout_go_back_to_the_queue_unstarted(stack, lambda_root):
    event = {"Records": [
        {"messageId": f"m{i}", "receiptHandle": "r", "body": "{\"Records\": []}", "attributes": {},
         "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
         "eventSourceARN": "arn:aws:sqs:x:1:q", "awsRegion": "us-east-1"} for i in range(2)]}
    [plenty] = invoke(lambda_root, event)
    assert plenty == {"batchItemFailures": []}  # an empty notification: nothing to do
    [late], logs = run_handler(lambda_root, event, env={"TEST_REMAINING_MS": "30000"})
    assert late == {"batchItemFailures": [{"itemIdentifier": "m0"}, {"itemIdentifier": "m1"}]}
    assert [entry["message_id"] for entry in logs
            if entry.get("message") == "message not started: too close to the timeout"] == \
        ["m0", "m1"]



NUMBER_COLUMNS = ["source", "prediction", "confidence", "status", "error", "digits"]


def test_read_number_reads_each_upload_as_one_number(stack, lambda_root, mnist_test_images,
                                                      mnist_bundle):
    """READ=number: an uploaded image, and each member of an uploaded zip, is one field read
    into a digit string, with the digits column. Folder names are no field's label, and without
    labels there is no report."""
    x, y = mnist_test_images
    fields = clean_fields(mnist_bundle, x, y, [5, 4, 6, 3])
    s3, bucket = stack["s3"], stack["bucket"]
    s3.put_object(Bucket=bucket, Key="incoming/7/meter.png", Body=fields[0].png)
    members = {"3/a.png": fields[1].png, "b.png": fields[2].png, "c d.png": fields[3].png,
               "empty.png": png(np.full((60, 200), 255, np.uint8)), "notes.txt": b"text"}
    s3.put_object(Bucket=bucket, Key="incoming/forms.zip", Body=zip_of(members))
    [response] = invoke(lambda_root, sqs_event(stack), env={"READ": "number", "LENGTH": ""})
    assert response == {"batchItemFailures": []}
    found = outputs(stack)
    assert set(found) == {"predictions/7/meter.png.csv", "predictions/forms.zip.csv"}

    text = found["predictions/7/meter.png.csv"].decode("utf-8")
    assert text.splitlines()[0] == ",".join(NUMBER_COLUMNS)
    [single] = rows(found["predictions/7/meter.png.csv"])
    assert single["source"] == f"s3://{bucket}/incoming/7/meter.png"
    assert single["status"] == "ok" and single["error"] == ""
    check_digits_column(single, fields[0])  # the reading, digit by digit, where it was written

    archive = rows(found["predictions/forms.zip.csv"])
    assert list(archive[0]) == NUMBER_COLUMNS
    by_member = {r["source"].rsplit("!/", 1)[1]: r for r in archive}
    assert list(by_member) == ["3/a.png", "b.png", "c d.png", "empty.png"]  # archive order
    for name, field in zip(["3/a.png", "b.png", "c d.png"], fields[1:], strict=True):
        row = by_member[name]
        assert row["status"] == "ok" and len(parse_digits(row["digits"])) == len(field.text)
        assert row["prediction"] == field.text  # 4, 6 and 3 digits: no LENGTH, any number
    check_digits_column(by_member["b.png"], fields[2])
    empty = by_member["empty.png"]
    assert (empty["status"], empty["prediction"], empty["digits"]) == ("blank", "", "")


def test_read_number_uses_the_packaged_field_reader(stack, lambda_with_field_reader, mnist,
                                                    mnist_fields_bundle):
    """The zip carries the bundle's field reader and the handler reads with it: touching
    digits the cuts alone misread are read right (the fields of test_field_reader's test)."""
    assert (lambda_with_field_reader / "model" / "field_reader.tflite").read_bytes() == \
        (mnist_fields_bundle / "field_reader.tflite").read_bytes()
    fields = touching_fields(mnist, 40)
    s3, bucket = stack["s3"], stack["bucket"]
    s3.put_object(Bucket=bucket, Key="incoming/touching.zip",
                  Body=zip_of({f"{k:02d}.png": data for k, (data, _) in enumerate(fields)}))
    [response] = invoke(lambda_with_field_reader, sqs_event(stack), env={"READ": "number"})
    assert response == {"batchItemFailures": []}
    found = rows(outputs(stack)["predictions/touching.zip.csv"])
    right = sum(row["prediction"] == text for row, (_, text) in zip(found, fields, strict=True))
    assert right >= 6, f"{right} of 40 read right; by cuts alone 3, locally with both 10"


def test_length_from_the_environment_sends_other_lengths_to_review(
        stack, lambda_root, mnist_test_images, mnist_bundle):
    x, y = mnist_test_images
    fields = clean_fields(mnist_bundle, x, y, [5, 7, 5])
    s3, bucket = stack["s3"], stack["bucket"]
    for i, field in enumerate(fields):
        s3.put_object(Bucket=bucket, Key=f"incoming/zip-codes/{i}.png", Body=field.png)
    [result] = invoke(lambda_root, {"source": f"s3://{bucket}/incoming/zip-codes/"},
                      env={"READ": "number", "LENGTH": "5"})
    assert (result["scored"], result["review"], result["failed"]) == (3, 1, 0)
    assert result["accuracy"] is None  # no labels
    found = outputs(stack)
    assert set(found) == {"predictions/zip-codes/predictions.csv"}  # no report without labels
    first, seven, last = rows(found["predictions/zip-codes/predictions.csv"])
    assert list(first) == NUMBER_COLUMNS
    assert (first["prediction"], first["status"]) == (fields[0].text, "ok")
    assert (last["prediction"], last["status"]) == (fields[2].text, "ok")
    assert seven["status"] == "review" and seven["error"] == "read 7 digits, expected 5"
    assert len(parse_digits(seven["digits"])) == 7


@pytest.mark.parametrize("env, message", [
    ({"READ": "numbers"}, "READ must be digit or number, got 'numbers'"),
    ({"READ": "digit", "LENGTH": "5"}, "LENGTH '5' needs READ=number"),
    ({"READ": "number", "LENGTH": "6-4"}, "LENGTH: '6-4': need 1 <= MIN <= MAX <= 40"),
])
def test_a_bad_read_or_length_fails_the_message_before_scoring(stack, lambda_root,
                                                               mnist_test_images, env, message):
    """The settings are read with the bundle when the first upload is scored: its message fails
    (back to the queue, then to the dead-letter queue, where the alarm sees it), and nothing is
    scored in a mode nobody asked for."""
    s3, bucket = stack["s3"], stack["bucket"]
    s3.put_object(Bucket=bucket, Key="incoming/one.png", Body=png(mnist_test_images[0][0]))
    event = sqs_event(stack)
    [upload] = [r["messageId"] for r in event["Records"] if "Records" in json.loads(r["body"])]
    [response], logs = run_handler(lambda_root, event, env=env)
    assert response == {"batchItemFailures": [{"itemIdentifier": upload}]}  # not s3:TestEvent
    [failed] = [line for line in logs
                if line.get("message") == "message failed; SQS will deliver it again"]
    assert failed["message_id"] == upload and message in str(failed["exception"])
    assert outputs(stack) == {}


@pytest.mark.parametrize("event", [
    {},
    {"Error": "States.TaskFailed", "Cause": "{\"errorMessage\": \"boom\"}"},  # a Catch's output
    {"version": "0", "id": "e3", "detail-type": "Scheduled Event", "source": "aws.events",
     "resources": ["arn:aws:events:us-east-1:123456789012:rule/every-hour"], "detail": {}},
    {"Records": [{"EventSource": "aws:sns", "Sns": {"Message": "hello"}}]},
], ids=["empty", "step-functions-error", "scheduled", "sns"])
def test_an_event_of_another_shape_is_refused_with_the_shapes_accepted(event, monkeypatch):
    """Not a KeyError: 'Records' from inside Powertools' parsers, but one message that names
    the event's keys and every shape the function serves."""
    import scorer.handler

    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Test")

    class Context:
        function_name = "digits-scorer"
        memory_limit_in_mb = 1769
        aws_request_id = "req-1"
        invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:digits-scorer"

    with pytest.raises(scorer.handler.UnsupportedEvent) as refused:
        scorer.handler.handler(event, Context())
    message = str(refused.value)
    assert message.startswith(f"unsupported event (keys: {sorted(event)}")
    for shape in ("S3 notification", "EventBridge", "Batch Operations", '{"source"', "merge"):
        assert shape in message
