"""scorer.s3client against moto's S3 server: telling a missing key from a denied one.

S3 answers a GET or HEAD of a missing key with 403 AccessDenied, not 404, when the caller may
not list the bucket, and the function may list only under its prefixes (docs/security.md). moto
does not evaluate IAM, so the 403 is the error botocore raises for it, built here; the listing
that tells the two apart runs on the server for real."""

from __future__ import annotations

import uuid

import boto3
import pytest
from botocore.exceptions import ClientError

from scorer import s3client

from moto_server import moto_endpoint  # noqa: F401


def denied(operation: str = "GetObject") -> ClientError:
    """The error botocore raises for S3's 403 answer to a GET."""
    return ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"},
                        "ResponseMetadata": {"HTTPStatusCode": 403}}, operation)


def test_a_denied_read_of_a_key_that_is_not_listed_is_a_missing_key(moto_endpoint):  # noqa: F811
    s3, bucket = boto3.client("s3"), f"digits-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="predictions/.jobs/j/merged.json.old", Body=b"{}")
    s3.put_object(Bucket=bucket, Key="incoming/7.png", Body=b"x")
    # Missing, though a longer key starts with it: the listing is matched exactly.
    assert s3client.is_missing(denied(), bucket, "predictions/.jobs/j/merged.json")
    assert not s3client.is_missing(denied(), bucket, "incoming/7.png")  # exists: a real 403
    assert not s3client.is_missing(denied(), "no-such-bucket-here", "x")  # cannot tell: real
    assert s3client.is_gone_or_archived(denied(), bucket, "incoming/8.png")
    with pytest.raises(ClientError) as not_found:  # moto answers as to a caller who may list
        s3.get_object(Bucket=bucket, Key="incoming/8.png")
    assert s3client.is_missing(not_found.value, bucket, "incoming/8.png")


def test_get_json_reads_a_missing_key_as_none_under_either_answer(moto_endpoint, monkeypatch):  # noqa: F811
    """The merge's first read of merged.json must see "not yet" whether S3 answers 404 (moto,
    a caller who may list the bucket) or 403 (the function's prefix-conditioned listing)."""
    s3, bucket = boto3.client("s3"), f"digits-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    assert s3client.get_json(bucket, "predictions/.jobs/j/merged.json") is None
    s3client.put_json(bucket, "predictions/.jobs/j/merged.json", {"rows": 3})
    assert s3client.get_json(bucket, "predictions/.jobs/j/merged.json") == {"rows": 3}

    real_client = s3client.client()

    class DeniesMissingKeys:  # S3 as the function sees it: 403 for a key it cannot find
        def get_object(self, Bucket, Key):  # noqa: N803 (boto3's names)
            if not s3client.is_listed(Bucket, Key):
                raise denied()
            return real_client.get_object(Bucket=Bucket, Key=Key)

        def __getattr__(self, name):
            return getattr(real_client, name)

    monkeypatch.setattr(s3client, "client", DeniesMissingKeys)
    assert s3client.get_json(bucket, "predictions/.jobs/other/merged.json") is None
    assert s3client.get_json(bucket, "predictions/.jobs/j/merged.json") == {"rows": 3}


def test_throttling_timeouts_and_server_errors_are_worth_another_try():
    from botocore.exceptions import ReadTimeoutError

    def error(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code},
                            "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")

    assert s3client.is_retryable(error("SlowDown", 503))
    assert s3client.is_retryable(error("InternalError", 500))
    assert s3client.is_retryable(error("", 502))  # a 5xx without a code
    assert s3client.is_retryable(ReadTimeoutError(endpoint_url="http://127.0.0.1"))
    assert not s3client.is_retryable(denied())
    assert not s3client.is_retryable(error("NoSuchKey", 404))
    assert not s3client.is_retryable(ValueError("a bad setting"))
