"""AWS Lambda entry point: a thin adapter from events to `scorer.s3_jobs`.

Events: S3 notifications (direct, wrapped in SQS messages, or via EventBridge), S3 Batch
Operations (invocation schema 1.0 and 2.0), `{"source": "s3://bucket/prefix/"}`, and the
scale-out job's Distributed Map batches and final merge (`scorer.batch_jobs`).
Corrupt images become CSV rows; S3 errors raise, so SQS retries them (then the dead-letter queue).
"""

from __future__ import annotations

import functools
import json
from urllib.parse import unquote_plus

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes import (
    S3Event,
    S3EventBridgeNotificationEvent,
    SQSRecord,
)
from aws_lambda_powertools.utilities.data_classes.s3_batch_operation_event import (
    S3BatchOperationEvent,
    S3BatchOperationResponse,
)

from scorer import batch_jobs, s3_jobs
from scorer.bundle import Bundle, load_bundle
from scorer.s3client import gone_or_archived_reason, is_gone_or_archived, is_retryable

logger = Logger(service="digits-scorer")
metrics = Metrics(namespace="HandwrittenDigits", service="digits-scorer")
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
TIMEOUT_MARGIN_MS = 60_000  # no new message with less time left than this (one zip takes seconds)


@functools.cache
def bundle_and_config() -> tuple[Bundle, s3_jobs.Config]:
    """The model bundle and the configuration (READ and LENGTH included), loaded once per
    container on the first event; a bad setting raises here, before anything is scored."""
    config = s3_jobs.Config.from_env()
    bundle = load_bundle(config.model_dir)
    s3_jobs.check_bundle(bundle, config)
    return bundle, config


@metrics.log_metrics
@logger.inject_lambda_context
def handler(event: dict, context) -> dict:
    if "Records" in event and event["Records"] and "body" in event["Records"][0]:
        return process_partial_response(event, record_handler=sqs_record, processor=processor,
                                        context=context)
    if "invocationSchemaVersion" in event:
        return batch_operation(S3BatchOperationEvent(event))
    if "BatchInput" in event and "Items" in event:  # a Step Functions Distributed Map batch
        result, tally = batch_jobs.score_batch(event["BatchInput"], event["Items"],
                                               *bundle_and_config())
        record_metrics(tally)
        return result
    if "merge" in event:  # the scale-out job's last step: parts -> one CSV and one report
        return batch_jobs.merge_job(event["merge"], *bundle_and_config())
    if "source" in event and str(event["source"]).startswith("s3://"):
        out, tally = s3_jobs.score_prefix(event["source"], *bundle_and_config())
        record_metrics(tally)
        return {"output": out, **tally.counts(), "accuracy": tally.accuracy}
    return {"outputs": [score_notified(bucket, key) for bucket, key in notified_objects(event)]}


def sqs_record(record: SQSRecord, lambda_context=None) -> None:
    """One SQS message: an S3 notification (or S3's test message) in the body. A failure is
    logged with the message id, then raised for the batch processor to return to the queue.
    Close to the function's timeout no new message is started: it goes back to the queue
    instead of being cut off half-way with the rest of the batch."""
    remaining = lambda_context.get_remaining_time_in_millis() if lambda_context else None
    if remaining is not None and remaining < TIMEOUT_MARGIN_MS:
        logger.warning("message not started: too close to the timeout",
                       extra={"message_id": record.message_id, "remaining_ms": remaining})
        raise TimeoutError(f"{remaining} ms left: returned to the queue")
    try:
        score_message(record)
    except Exception:
        logger.exception("message failed; SQS will deliver it again",
                         extra={"message_id": record.message_id})
        raise


def score_message(record: SQSRecord) -> None:
    body = json.loads(record.body)
    if body.get("Event") == "s3:TestEvent":
        logger.info("acknowledged s3:TestEvent")
        return
    for bucket, key in notified_objects(body):
        score_notified(bucket, key)


def score_notified(bucket: str, key: str) -> str | None:
    """Score a notified object. One deleted before we got to it, or archived, is logged and
    acknowledged: retrying cannot change that, it would only fill the dead-letter queue."""
    try:
        return score_object(bucket, key)
    except Exception as err:
        if not is_gone_or_archived(err, bucket, key):
            raise
        logger.warning("object not scored, not retried", extra={
            "bucket": bucket, "key": key, "reason": gone_or_archived_reason(err)})
        return None


ACCEPTED_EVENTS = ('an SQS batch of S3 notifications, an S3 notification {"Records": [{"s3": '
                   '...}]}, an EventBridge "Object Created" event from S3, an S3 Batch '
                   'Operations job, {"source": "s3://bucket/prefix/"}, or a scale-out job\'s '
                   '{"BatchInput": ..., "Items": [...]} and {"merge": ...}')


class UnsupportedEvent(ValueError):
    """An event of a shape the handler does not serve (a Step Functions error object, a
    scheduled event, {}): said at once, not as a KeyError from inside a parser."""

    def __init__(self, event: object):
        keys = sorted(event)[:8] if isinstance(event, dict) else type(event).__name__
        super().__init__(f"unsupported event (keys: {keys}); the function accepts "
                         f"{ACCEPTED_EVENTS}")


def notified_objects(event: dict) -> list[tuple[str, str]]:
    """(bucket, key) of each created object in an S3 or EventBridge notification."""
    if not is_s3_notification(event):
        raise UnsupportedEvent(event)
    if event.get("source") == "aws.s3" and "detail" in event:
        if event.get("detail-type") != "Object Created":  # e.g. "Object Deleted"
            return []
        detail = S3EventBridgeNotificationEvent(event).detail
        return [(detail.bucket.name, detail.object.key)]  # the key comes URL-decoded
    return [(record.s3.bucket.name, unquote_plus(record.s3.get_object.key))
            for record in S3Event(event).records
            if record.event_name.startswith("ObjectCreated")]


def score_object(bucket: str, key: str) -> str | None:
    bundle, config = bundle_and_config()
    reason = s3_jobs.ignore_reason(key, config)
    if reason:
        logger.info("ignored object", extra={"bucket": bucket, "key": key, "reason": reason})
        return None
    out, tally = s3_jobs.score_object(bucket, key, bundle, config)
    record_metrics(tally)
    logger.info("scored object", extra={"bucket": bucket, "key": key, "output": out,
                                         **tally.counts()})
    return out


def record_metrics(tally) -> None:
    metrics.add_metric(name="ImagesScored", unit=MetricUnit.Count, value=tally.scored)
    metrics.add_metric(name="ImagesForReview", unit=MetricUnit.Count, value=tally.review)
    metrics.add_metric(name="BlankImages", unit=MetricUnit.Count, value=tally.blank)
    metrics.add_metric(name="ImageErrors", unit=MetricUnit.Count, value=tally.failed)
    metrics.add_metric(name="ScoringLatency", unit=MetricUnit.Milliseconds,
                       value=round(1000 * tally.seconds, 1))


def batch_operation(event: S3BatchOperationEvent) -> dict:
    """S3 Batch Operations: one task per invocation, answered in its own response format."""
    task = event.task
    response = S3BatchOperationResponse(event.invocation_schema_version, event.invocation_id,
                                        "PermanentFailure")
    bundle_config = bundle_and_config()
    reason = s3_jobs.ignore_reason(task.s3_key, bundle_config[1])
    if reason:  # a failed task shows up in the job's completion report; "ignored" would not
        logger.warning("batch operation task refused", extra={"key": task.s3_key,
                                                               "reason": reason})
        response.add_result(task.build_task_batch_response(
            "PermanentFailure", f"not scored: the key is {reason}"))
        return response.asdict()
    try:
        out = score_object(task.s3_bucket, task.s3_key)
        result = task.build_task_batch_response("Succeeded", out)
    except Exception as err:  # noqa: BLE001 (every failure must become a task result)
        code = "TemporaryFailure" if is_retryable(err) else "PermanentFailure"
        logger.exception("batch operation task failed", extra={"key": task.s3_key})
        result = task.build_task_batch_response(code, f"{type(err).__name__}: {err}"[:500])
    response.add_result(result)
    return response.asdict()


def is_s3_notification(event: object) -> bool:
    """An S3 notification (records that each hold an "s3" object) or an EventBridge event
    from S3."""
    if not isinstance(event, dict):
        return False
    if event.get("source") == "aws.s3":
        return isinstance(event.get("detail"), dict)
    records = event.get("Records")
    return isinstance(records, list) and \
        all(isinstance(record, dict) and isinstance(record.get("s3"), dict) for record in records)
