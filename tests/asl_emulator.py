"""Run a state machine definition on moto's Step Functions interpreter, with the few shims it needs.

moto 5.2 carries a port of LocalStack's ASL interpreter (``moto/stepfunctions/parser``), which
executes state machines in this process under ``mock_aws(config={"stepfunctions":
{"execute_state_machine": True}})``. What it lacks for ``infra/statemachine.asl.json`` is shimmed
here, one function each, and nothing else is changed:

- ``ItemBatcher`` is not in its grammar (CreateStateMachine fails with ``mismatched input
  '"ItemBatcher"'``; localstack/localstack#9758 and #10884): ``without_item_batchers`` takes it
  out of the definition and ``batched_map_runs`` re-applies it to the items the ItemReader listed.
- ``ProcessorConfig.ExecutionType`` knows only ``STANDARD`` (its grammar has no ``EXPRESS``);
  both run alike there: ``standard_child_workflows``.
- JSONata states parse, but the evaluator (a JVM bridge in LocalStack) is not wired
  (``'NoneType' object is not callable``): ``jsonata_evaluator`` plugs in jsonata-python.
- Lambda tasks run in Docker only; the Docker-less backend answers every Invoke with its input:
  ``lambda_in_process`` runs the function's Python handler in this process instead, with
  Lambda's error contract.

Known gaps that no shim covers (keep tests within them): the S3 ItemReader reads the first page of
the listing only (1,000 keys) and hands out boto3's entries (``ETag``, not AWS's ``Etag``);
ToleratedFailurePercentage is ignored, and a child workflow that fails for good does not fail
the Map run (as if 100 % were tolerated), so a test must check that every batch succeeded; IAM
policies are not evaluated; the ResultWriter writes a manifest without result files. The shims
rely on moto's internals, hence the pin ``moto[server]>=5.2.5,<5.3`` in pyproject.toml.

S3 stays real: moto's server in a subprocess (tests/moto_server.py), reached over HTTP through
``AWS_ENDPOINT_URL_S3`` by the interpreter (ItemReader, ResultWriter) and by the handler alike;
Step Functions, Lambda and IAM are in-process (``emulator``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import boto3
from moto import mock_aws
from moto.awslambda_simple.models import LambdaSimpleBackend
from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration import (
    distributed_iteration_component as distributed,
)
from moto.stepfunctions.parser.asl.jsonata import jsonata as asl_jsonata
from moto.stepfunctions.parser.asl.utils.encoding import to_json_str
from moto.stepfunctions.parser.asl.utils.json_path import extract_json

Handler = Callable[[dict, Any], Any]
MAX_BATCH_BYTES = 256 * 1024  # a batch is a child's input: AWS caps it at 256 KiB


# ---------------------------------------------------------------- the definition


def without_item_batchers(asl: dict) -> tuple[dict, dict[str, dict]]:
    """The definition without its ItemBatcher fields, and {Map state name: its ItemBatcher}."""
    asl = copy.deepcopy(asl)
    batchers = {}
    for name, state in _states(asl):
        if "ItemBatcher" in state:
            batchers[name] = state.pop("ItemBatcher")
    return asl, batchers


def standard_child_workflows(asl: dict) -> dict:
    """The definition with every Distributed Map's child workflows STANDARD (the emulator's
    grammar has no EXPRESS; it runs both alike)."""
    asl = copy.deepcopy(asl)
    for _, state in _states(asl):
        config = state.get("ItemProcessor", {}).get("ProcessorConfig", {})
        if config.get("ExecutionType") == "EXPRESS":
            config["ExecutionType"] = "STANDARD"
    return asl


def for_the_emulator(asl: dict) -> tuple[dict, dict[str, dict]]:
    """Both rewrites: (the definition to create, the ItemBatchers for ``batched_map_runs``)."""
    asl, batchers = without_item_batchers(asl)
    return standard_child_workflows(asl), batchers


def _states(asl: dict) -> Iterator[tuple[str, dict]]:
    for name, state in asl["States"].items():
        yield name, state
        for nested in ("ItemProcessor", "Iterator"):
            if nested in state:
                yield from _states(state[nested])


# ---------------------------------------------------------------- ItemBatcher, re-applied


def batches(items: list, batcher: dict, state_input: Any, context: dict) -> list[dict]:
    """AWS's ItemBatcher on a Map's items: consecutive runs of at most MaxItemsPerBatch(Path)
    items and at most MaxInputBytesPerBatch(Path) bytes of child input (counted here as the
    JSON of the whole input, BatchInput included: the strict reading), each
    ``{"BatchInput": ..., "Items": [...]}``; BatchInput is a payload template evaluated against
    the Map state's input and the context object ``$$``."""
    most_items = _setting(batcher, "MaxItemsPerBatch", state_input) or len(items) or 1
    most_bytes = _setting(batcher, "MaxInputBytesPerBatch", state_input) or MAX_BATCH_BYTES
    batch_input = _payload(batcher.get("BatchInput"), state_input, context)
    out: list[dict] = []
    for item in items:
        if (
            out
            and len(out[-1]["Items"]) < most_items
            and _size({**out[-1], "Items": [*out[-1]["Items"], item]}) <= most_bytes
        ):
            out[-1]["Items"].append(item)
            continue
        batch = (
            {"Items": [item]}
            if batch_input is None
            else {"BatchInput": batch_input, "Items": [item]}
        )
        if _size(batch) > most_bytes:
            raise ValueError(f"an item alone exceeds MaxInputBytesPerBatch ({most_bytes})")
        out.append(batch)
    return out


def _setting(batcher: dict, name: str, state_input: Any) -> int | None:
    value = batcher.get(name)
    if f"{name}Path" in batcher:
        value = extract_json(batcher[f"{name}Path"], state_input)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _payload(template: Any, state_input: Any, context: dict) -> Any:
    """A JSONPath payload template: keys ending in ".$" take the value at their path, "$$..."
    in the context object, "$..." in the state input (intrinsic functions are not supported)."""
    if isinstance(template, list):
        return [_payload(value, state_input, context) for value in template]
    if not isinstance(template, dict):
        return template
    out = {}
    for key, value in template.items():
        if key.endswith(".$"):
            if not str(value).startswith("$"):
                raise ValueError(f"{key}: only paths are supported by this shim, not {value!r}")
            is_context = value.startswith("$$")
            out[key[:-2]] = extract_json(
                value[1:] if is_context else value, context if is_context else state_input
            )
        else:
            out[key] = _payload(value, state_input, context)
    return out


def _size(batch: dict) -> int:
    return len(to_json_str(batch, separators=(",", ":")).encode("utf-8"))


@contextlib.contextmanager
def batched_map_runs(batchers: dict[str, dict]) -> Iterator[None]:
    """Group the items a Distributed Map's ItemReader listed into batches (``batches``) before
    the Map run hands them to its child workflows, for the Map states named in ``batchers``."""
    map_run = distributed.DistributedIterationComponent._map_run

    def batched_map_run(self, env, eval_input) -> None:
        batcher = batchers.get(eval_input.state_name)
        if batcher is not None:
            items = env.stack.pop()
            env.stack.append(
                batches(
                    items,
                    batcher,
                    env.states.get_input(),
                    env.states.context_object.context_object_data,
                )
            )
        map_run(self, env, eval_input)

    with mock.patch.object(distributed.DistributedIterationComponent, "_map_run", batched_map_run):
        yield


# ---------------------------------------------------------------- JSONata


def _evaluate_jsonata(expression: str) -> Any:
    import jsonata

    # A JSON round trip, as the JVM bridge makes: plain dicts and lists (not jsonata's JList).
    return json.loads(json.dumps(jsonata.Jsonata(expression).evaluate(None)))


@contextlib.contextmanager
def jsonata_evaluator() -> Iterator[None]:
    """The interpreter's JSONata evaluator: jsonata-python instead of the missing JVM bridge."""
    with mock.patch.object(asl_jsonata, "_eval_jsonata", _evaluate_jsonata):
        yield


# ---------------------------------------------------------------- Lambda


@dataclass
class LambdaContext:
    """What the Lambda runtime passes a Python handler as ``context``."""

    function_name: str
    memory_limit_in_mb: int
    invoked_function_arn: str
    timeout_s: int
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"

    def get_remaining_time_in_millis(self) -> int:
        return self.timeout_s * 1000  # the emulator has no clock on the function


@contextlib.contextmanager
def _environment(variables: dict[str, str | None]) -> Iterator[None]:
    """Environment variables set (None: unset) for the duration, then restored."""
    saved = {name: os.environ.get(name) for name in variables}
    try:
        for name, value in variables.items():
            _set(name, value)
        yield
    finally:
        for name, value in saved.items():
            _set(name, value)


def _set(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _invoke(function, event: Any, handler: Handler) -> tuple[bytes, str | None]:
    """One invocation as Lambda makes it: the response payload, and the function error
    ("Unhandled", with errorType = the exception's class name) if the handler raised."""
    context = LambdaContext(
        function.function_name,
        int(function.memory_size),
        function.function_arn,
        int(function.timeout),
    )
    with _environment(function.environment_vars):
        try:
            return json.dumps(handler(event, context)).encode("utf-8"), None
        except Exception as err:  # every error becomes Lambda's error payload
            payload = {
                "errorMessage": str(err),
                "errorType": type(err).__name__,
                "requestId": context.aws_request_id,
                "stackTrace": traceback.format_tb(err.__traceback__),
            }
            return json.dumps(payload).encode("utf-8"), "Unhandled"


@contextlib.contextmanager
def lambda_in_process(handlers: dict[str, Handler]) -> Iterator[None]:
    """Invoke of the Docker-less Lambda backend runs the handler named by the function's
    ``Handler`` setting (``handlers[that name]``) in this process, with the function's
    environment variables set. As on Lambda, an exception becomes a 200 response with
    ``X-Amz-Function-Error: Unhandled`` and ``{"errorType", "errorMessage", ...}``, so Retry
    and Catch see the exception's class name as the error. One invocation runs at a time, as in
    one execution environment: the handler's module state (cached bundle, metrics) is not
    meant to be shared by concurrent invocations."""
    one_at_a_time = threading.Lock()

    def invoke(self, function_name, qualifier, body, headers, response_headers):
        function = self.get_function(function_name, qualifier)
        handler = handlers[function.handler]
        with one_at_a_time:
            payload, error = _invoke(function, json.loads(body or "{}"), handler)
        if error:
            response_headers["x-amz-function-error"] = error
        return payload

    with mock.patch.object(LambdaSimpleBackend, "invoke", invoke):
        yield


# ---------------------------------------------------------------- all together


class Emulator:
    """Creates state machines on the interpreter, rewritten for it (``for_the_emulator``); their
    ItemBatchers are re-applied by ``batched_map_runs``."""

    def __init__(self) -> None:
        self.batchers: dict[str, dict] = {}

    def create_state_machine(self, asl: dict, **arguments: Any) -> str:
        """CreateStateMachine of `asl` with `arguments` (name, roleArn, type, ...); its ARN."""
        adapted, batchers = for_the_emulator(asl)
        for name, batcher in batchers.items():  # Map state names key the batchers
            assert self.batchers.setdefault(name, batcher) == batcher, f"two Map states {name}"
        return boto3.client("stepfunctions").create_state_machine(
            definition=json.dumps(adapted), **arguments
        )["stateMachineArn"]


@contextlib.contextmanager
def emulator(s3_endpoint: str, handlers: dict[str, Handler]) -> Iterator[Emulator]:
    """Step Functions (executing), Lambda (Docker-less, ``lambda_in_process``) and IAM in this
    process; S3 on the moto server at `s3_endpoint`, which the interpreter's and the handler's
    boto3 clients reach over HTTP (``AWS_ENDPOINT_URL_S3``; the other services keep their AWS
    addresses, which ``mock_aws`` intercepts). Callers reset any S3 client they cached."""
    config = {
        "stepfunctions": {"execute_state_machine": True},
        "lambda": {"use_docker": False},
        "core": {"passthrough": {"urls": [re.escape(s3_endpoint) + ".*"]}},
    }
    emulated = Emulator()
    with (
        _environment({"AWS_ENDPOINT_URL_S3": s3_endpoint, "AWS_ENDPOINT_URL": None}),
        mock_aws(config=config),
        jsonata_evaluator(),
        batched_map_runs(emulated.batchers),
        lambda_in_process(handlers),
    ):
        yield emulated
