"""The real state machine on a real ASL interpreter: infra/statemachine.asl.json, as the template
substitutes it, executed by moto's Step Functions interpreter, with the real Lambda handler doing
the work against moto's S3 server (over HTTP). What the emulator lacks is shimmed, and only that,
in tests/asl_emulator.py; what it proves and what it cannot is in docs/aws-step-functions.md.

Failures are injected around the real handler (``Invocations``), never inside it: a batch whose
first invocation raises before the handler runs (S3 still throttling after the SDK's retries),
and a merge whose first invocation raises after the handler did all its work (its answer lost,
as when a function times out on its way out). The definition's Retry must recover from both.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.stepfunctions.parser.asl.jsonata import jsonata as asl_jsonata

import scorer.handler
from scorer import s3_jobs
from scorer.bundle import load_bundle

import asl_emulator
from digit_factory import mnist_png, zip_of
from moto_server import _reset_scorer_client, moto_endpoint  # noqa: F401
from test_batch_jobs import handler, keys_under, put_all, read  # noqa: F401
from test_infra import Resolver, definition, function, state_machine, template  # noqa: F401

DIGITS = 300  # objects in the job: several batches, and under the one page the emulator lists
BATCH = 40  # the MaxItemsPerBatch parameter: 8 batches of consecutive keys
HANDLER = "scorer.handler.handler"
FAILING_KEY = 130  # keys[130] is in the 4th batch of 8: that batch fails once
EXECUTION_TIMEOUT_S = 50
BATCH_RETRY_S, MERGE_RETRY_S = 5, 10  # IntervalSeconds of their States.TaskFailed retriers


# ---------------------------------------------------------------- failures around the handler


@dataclass
class Fault:
    """Raise `error` on the first invocation whose event `picks`: before the handler runs, or
    after it returned (`after_the_work`)."""

    picks: Callable[[dict], bool]
    error: Exception
    after_the_work: bool = False
    fired: bool = False


@dataclass
class Call:
    """One invocation: its event, when it started, the fault it raised, the handler's answer."""

    event: dict
    started: float
    error: str | None = None
    result: dict | None = None


@dataclass
class Invocations:
    """The real scorer.handler.handler, recording every invocation, each fault fired once."""

    faults: list[Fault]
    calls: list[Call] = field(default_factory=list)

    def __call__(self, event: dict, context) -> dict:
        call = Call(event, time.monotonic())
        self.calls.append(call)
        fault = next((f for f in self.faults if not f.fired and f.picks(event)), None)
        if fault:
            fault.fired, call.error = True, type(fault.error).__name__
            if not fault.after_the_work:
                raise fault.error
        call.result = scorer.handler.handler(event, context)
        if fault:
            raise fault.error
        return call.result

    def of_batches(self) -> list[Call]:
        return [c for c in self.calls if "Items" in c.event]

    def of_merges(self) -> list[Call]:
        return [c for c in self.calls if "merge" in c.event]


S3_THROTTLED = ClientError(
    {
        "Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."},
        "ResponseMetadata": {"HTTPStatusCode": 503},
    },
    "GetObject",
)


def holds_key(key: str) -> Callable[[dict], bool]:
    return lambda event: key in [item["Key"] for item in event.get("Items", [])]


# ---------------------------------------------------------------- the stack, emulated


def deployed_definition(template: dict, bucket: str, function_arn: str) -> dict:  # noqa: F811
    """The definition as the template substitutes it for a stack whose bucket is `bucket`, with
    the function's ARN for the resolver's ``<ScorerFunction.Arn>`` (known once it exists)."""
    text = json.dumps(definition(template, BucketName=bucket, MaxItemsPerBatch=BATCH))
    assert text.count('"<ScorerFunction.Arn>"') == 2  # the batches and the merge
    return json.loads(text.replace('"<ScorerFunction.Arn>"', json.dumps(function_arn)))


def role_for(service: str) -> str:
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
        ],
    }
    return boto3.client("iam").create_role(
        RoleName=service.split(".")[0], AssumeRolePolicyDocument=json.dumps(trust)
    )["Role"]["Arn"]


def create_function(template: dict, bucket: str) -> str:  # noqa: F811
    """The scorer function as the template configures it (handler, environment, memory,
    timeout); its ARN. The code is the handler in this process (asl_emulator.lambda_in_process)."""
    props = Resolver(template, BucketName=bucket)(function(template))
    environment = {name: str(value) for name, value in props["Environment"]["Variables"].items()}
    return boto3.client("lambda").create_function(
        FunctionName="digits-scorer",
        Runtime=props["Runtime"],
        Handler=props["Handler"],
        Role=role_for("lambda.amazonaws.com"),
        Code={"ZipFile": zip_of({"unused": b""})},
        Timeout=int(props["Timeout"]),
        MemorySize=int(props["MemorySize"]),
        Environment={"Variables": environment},
    )["FunctionArn"]


def create_state_machine(emulator, template: dict, asl: dict) -> str:  # noqa: F811
    machine = Resolver(template)(state_machine(template))
    return emulator.create_state_machine(
        asl, name=machine["Name"], type=machine["Type"], roleArn=role_for("states.amazonaws.com")
    )


def run(machine_arn: str, name: str, source: str) -> dict:
    """Start an execution and wait for its end: its description, history and Map runs."""
    sfn = boto3.client("stepfunctions")
    arn = sfn.start_execution(
        stateMachineArn=machine_arn, name=name, input=json.dumps({"source": source})
    )["executionArn"]
    deadline = time.monotonic() + EXECUTION_TIMEOUT_S
    while (described := sfn.describe_execution(executionArn=arn))["status"] == "RUNNING":
        assert time.monotonic() < deadline, f"{name} still running after {EXECUTION_TIMEOUT_S}s"
        time.sleep(0.2)
    described["history"] = sfn.get_execution_history(executionArn=arn)["events"]
    described["map_runs"] = [
        sfn.describe_map_run(mapRunArn=run["mapRunArn"])
        for run in sfn.list_map_runs(executionArn=arn)["mapRuns"]
    ]
    return described


@pytest.fixture
def exam(moto_endpoint, mnist):  # noqa: F811
    """A new bucket with DIGITS MNIST test digits as PNGs under incoming/exam/<label>/, and one
    beside that prefix (incoming/exam-old/) that the job must not list: (bucket, exam keys)."""
    s3, bucket = boto3.client("s3"), f"digits-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    labels = mnist.y_test[:DIGITS].astype(int)
    objects = {
        f"incoming/exam/{labels[i]}/{i:04d}.png": mnist_png(mnist.x_test[i]) for i in range(DIGITS)
    }
    put_all(s3, bucket, {**objects, "incoming/exam-old/0.png": mnist_png(mnist.x_test[0])})
    return bucket, sorted(objects)


@contextlib.contextmanager
def deployed(template: dict, endpoint: str, bucket: str, code: Invocations) -> Iterator[str]:  # noqa: F811
    """The stack's function (its code: `code`) and state machine for `bucket` on the emulator:
    yields the state machine's ARN."""
    with asl_emulator.emulator(endpoint, {HANDLER: code}) as emulator:
        _reset_scorer_client()  # its next client talks to S3 as the emulator set it
        try:
            asl = deployed_definition(template, bucket, create_function(template, bucket))
            yield create_state_machine(emulator, template, asl)
        finally:
            _reset_scorer_client()


# ---------------------------------------------------------------- what the run must show


def test_one_csv_despite_a_failed_batch_and_a_failed_merge(template, moto_endpoint, handler, exam):  # noqa: F811
    """300 images in 8 batches, the 4th failing once before the handler runs, the merge failing
    once after it did its work: both retried by the definition, one CSV and one report, the
    parts gone. (`handler`: test_batch_jobs' fixture, for MODEL_DIR and a fresh bundle cache.)"""
    bucket, keys = exam
    invocations = Invocations(
        [
            Fault(holds_key(keys[FAILING_KEY]), S3_THROTTLED),
            Fault(
                lambda event: "merge" in event,
                TimeoutError("the merge's answer was lost"),
                after_the_work=True,
            ),
        ]
    )
    with deployed(template, moto_endpoint, bucket, invocations) as machine:
        job = run(machine, "exam-1", f"s3://{bucket}/incoming/exam")  # the final "/" is added
    assert job["status"] == "SUCCEEDED", (job.get("error"), job.get("cause"))
    check_batches(invocations, bucket, keys)
    check_retries(job, invocations)
    check_one_csv_and_report(bucket, keys, json.loads(job["output"]), handler.bundle_dir)
    check_nothing_left(bucket, job)


def check_batches(invocations: Invocations, bucket: str, keys: list[str]) -> None:
    """Consecutive runs of the listing (ItemReader, key order), BATCH keys each, each with the
    BatchInput the definition builds from the execution's name and the parsed source."""
    succeeded = [c for c in invocations.of_batches() if c.error is None]
    runs = sorted([item["Key"] for item in c.event["Items"]] for c in succeeded)
    assert runs == [keys[i : i + BATCH] for i in range(0, len(keys), BATCH)]
    for call in invocations.of_batches():
        assert call.event["BatchInput"] == {
            "job_id": "exam-1",
            "source": f"s3://{bucket}/incoming/exam/",
        }
        assert {"Key", "Size"} <= set(call.event["Items"][0])


def check_retries(job: dict, invocations: Invocations) -> None:
    """The failed batch ran again (same keys) after its States.TaskFailed retrier's interval;
    so did the merge, whose failure the parent's history records with the exception's name."""
    failed = [c for c in invocations.of_batches() if c.error]
    assert [c.error for c in failed] == ["ClientError"]
    [again] = [
        c
        for c in invocations.of_batches()
        if c.error is None and c.event["Items"] == failed[0].event["Items"]
    ]
    assert again.started - failed[0].started >= BATCH_RETRY_S
    assert len(invocations.of_batches()) == DIGITS // BATCH + 1 + 1  # 8 batches, 1 retried
    [map_run] = job["map_runs"]
    assert map_run["status"] == "SUCCEEDED"
    assert map_run["executionCounts"]["succeeded"] == DIGITS // BATCH + 1
    assert map_run["executionCounts"]["failed"] == 0

    first, second = invocations.of_merges()
    assert (first.error, second.error) == ("TimeoutError", None)
    assert second.started - first.started >= MERGE_RETRY_S
    failures = [e["taskFailedEventDetails"] for e in job["history"] if e["type"] == "TaskFailed"]
    assert [f["error"] for f in failures] == ["TimeoutError"]
    assert json.loads(failures[0]["cause"])["errorMessage"] == "the merge's answer was lost"
    assert first.result["parts_deleted"] > 0 and second.result["parts_deleted"] == 0
    assert json.loads(job["output"]) == second.result == {**first.result, "parts_deleted": 0}


def check_one_csv_and_report(bucket: str, keys: list[str], result: dict, bundle_dir) -> None:
    """One CSV under predictions/exam/: every object once, in key order, labelled by its folder,
    the bytes one prefix job (one invocation) writes; and its report."""
    s3 = boto3.client("s3")
    assert result["output"] == f"s3://{bucket}/predictions/exam/predictions.csv"
    assert result["report"] == f"s3://{bucket}/predictions/exam/report/"
    assert (result["parts"], result["rows"], result["objects"]) == (
        DIGITS // BATCH + 1,
        DIGITS,
        DIGITS,
    )
    written = keys_under(s3, bucket, "predictions/exam/")
    assert [k for k in written if k.endswith(".csv") and "/report/" not in k] == [
        "predictions/exam/predictions.csv"
    ]
    data = read(s3, bucket, "predictions/exam/predictions.csv")
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
    assert list(rows[0]) == ["source", "prediction", "confidence", "status", "error", "label"]
    assert [r["source"] for r in rows] == [f"s3://{bucket}/{key}" for key in keys]
    assert [r["label"] for r in rows] == [key.split("/")[2] for key in keys]
    assert {r["status"] for r in rows} <= {"ok", "review"} and not any(r["error"] for r in rows)
    correct = sum(r["prediction"] == r["label"] for r in rows)
    assert correct == result["correct"] and correct / DIGITS > 0.9

    report = json.loads(read(s3, bucket, "predictions/exam/report/report.json"))
    assert report["samples"] == DIGITS
    assert (
        report["accuracy"] == pytest.approx(correct / DIGITS) == pytest.approx(result["accuracy"])
    )
    single = s3_jobs.Config(str(bundle_dir), "incoming/", "single/", None)
    s3_jobs.score_prefix(f"s3://{bucket}/incoming/exam/", load_bundle(bundle_dir), single)
    assert read(s3, bucket, "single/exam/predictions.csv") == data


def check_nothing_left(bucket: str, job: dict) -> None:
    """The parts are gone; the merge's record and the Map run's manifest (ResultWriter) stay."""
    s3 = boto3.client("s3")
    jobs = keys_under(s3, bucket, "predictions/.jobs/")
    assert "predictions/.jobs/exam-1/merged.json" in jobs
    assert not [k for k in jobs if k.startswith("predictions/.jobs/exam-1/parts/")]
    [manifest] = [k for k in jobs if k.startswith("predictions/.jobs/map-runs/")]
    assert manifest.endswith("/manifest.json")
    assert json.loads(read(s3, bucket, manifest))["MapRunArn"] == job["map_runs"][0]["mapRunArn"]
    assert len(jobs) == 2


def test_a_source_outside_the_input_prefix_fails_through_the_fail_state(template, moto_endpoint):  # noqa: F811
    """Another prefix of the stack's bucket, or another bucket: the execution fails with
    SourceOutsideInputPrefix before anything is listed or invoked."""
    bucket = f"digits-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    invocations = Invocations([])
    with deployed(template, moto_endpoint, bucket, invocations) as machine:
        outside = [
            run(machine, f"outside-{i}", source)
            for i, source in enumerate(
                [f"s3://{bucket}/predictions/exam/", "s3://another-bucket/incoming/exam/"]
            )
        ]
    for execution in outside:
        assert execution["status"] == "FAILED"
        assert execution["error"] == "SourceOutsideInputPrefix"
        assert f"s3://{bucket}/incoming/<folder>/" in execution["cause"]
        entered = [
            e["stateEnteredEventDetails"]["name"]
            for e in execution["history"]
            if "stateEnteredEventDetails" in e
        ]
        assert entered == ["ParseSource", "CheckSource", "SourceOutsideInputPrefix"]
    assert invocations.calls == []


# ---------------------------------------------------------------- the shims themselves


def test_the_emulator_runs_the_definition_with_two_fields_rewritten(template):  # noqa: F811
    """The definition the emulator runs differs from the deployed one in the two fields moto
    cannot parse, and moto still refuses each of them (when it stops, drop that shim)."""
    asl = definition(template)
    adapted, batchers = asl_emulator.for_the_emulator(asl)
    scoring = copy.deepcopy(asl["States"]["ScoreBatches"])
    assert batchers == {"ScoreBatches": scoring.pop("ItemBatcher")}
    scoring["ItemProcessor"]["ProcessorConfig"]["ExecutionType"] = "STANDARD"
    assert adapted == {**asl, "States": {**asl["States"], "ScoreBatches": scoring}}

    express_only, _ = asl_emulator.without_item_batchers(asl)
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        sfn = boto3.client(
            "stepfunctions",
            region_name="us-east-1",
            endpoint_url="https://states.us-east-1.amazonaws.com",
        )
        for refused, field_name in ((asl, '"ItemBatcher"'), (express_only, '"EXPRESS"')):
            with pytest.raises(ClientError, match=f"at {field_name}, mismatched input"):
                sfn.create_state_machine(
                    name="refused",
                    definition=json.dumps(refused),
                    roleArn="arn:aws:iam::123456789012:role/states",
                )
        sfn.create_state_machine(
            name="adapted",
            definition=json.dumps(adapted),
            roleArn="arn:aws:iam::123456789012:role/states",
        )


def test_the_jsonata_evaluator_is_plugged_in_only_by_the_shim():
    expression = "($settings := {'n': 40}; [$settings.n, $substringAfter('s3://b/k', 's3://')])"
    with pytest.raises(TypeError, match="'NoneType' object is not callable"):
        asl_jsonata.eval_jsonata_expression(expression)
    with asl_emulator.jsonata_evaluator():
        assert asl_jsonata.eval_jsonata_expression(expression) == [40, "b/k"]


def test_batches_are_cut_by_items_and_bytes_with_the_batch_input_evaluated():
    items = [{"Key": f"incoming/x/{i:03d}.png", "Size": 100 + i} for i in range(10)]
    batcher = {
        "MaxItemsPerBatchPath": "$.settings.n",
        "BatchInput": {"job_id.$": "$$.Execution.Name", "source.$": "$.source", "fixed": [1]},
    }
    state_input, context = (
        {"settings": {"n": 4}, "source": "s3://b/x/"},
        {"Execution": {"Name": "exec-1"}},
    )
    out = asl_emulator.batches(items, batcher, state_input, context)
    assert [b["Items"] for b in out] == [items[0:4], items[4:8], items[8:10]]
    assert all(
        b["BatchInput"] == {"job_id": "exec-1", "source": "s3://b/x/", "fixed": [1]} for b in out
    )

    three = len(json.dumps(out[0] | {"Items": items[:3]}, separators=(",", ":")))
    by_bytes = asl_emulator.batches(
        items, {**batcher, "MaxInputBytesPerBatch": three}, state_input, context
    )
    assert [len(b["Items"]) for b in by_bytes] == [3, 3, 3, 1]  # 4 allowed, 3 fit the bytes
    assert [i for b in by_bytes for i in b["Items"]] == items
    with pytest.raises(ValueError, match="MaxItemsPerBatch must be a positive integer"):
        asl_emulator.batches(items, batcher, {**state_input, "settings": {"n": 0}}, context)
