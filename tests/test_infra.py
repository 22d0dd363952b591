"""The SAM template: lint-clean, SAM-translatable, least-privilege, with no recursive trigger.

Intrinsic functions are evaluated by a small resolver (Ref, Fn::Sub, Fn::GetAtt, Fn::If,
Fn::FindInMap, Fn::Equals, Fn::Not) for given parameter values, so the checks below look at the
concrete ARNs, prefixes and numbers CloudFormation would deploy.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import boto3
import cfnlint.decode as cfnlint_decode
import pytest
import samtranslator.parser.parser as parser
import samtranslator.translator.translator as translator

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "infra" / "template.yaml"
DEFINITION = ROOT / "infra" / "statemachine.asl.json"
LAMBDA_ERRORS = {"Lambda.TooManyRequestsException", "Lambda.ServiceException",
                 "Lambda.SdkClientException", "Lambda.AWSLambdaException"}

IMAGE_SUFFIXES = [".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".zip"]
PSEUDO = {
    "AWS::Partition": "aws",
    "AWS::Region": "eu-west-1",
    "AWS::AccountId": "123456789012",
    "AWS::StackName": "digits",
    "AWS::NoValue": None,
}
S3_OBJECT_ACTIONS = {"s3:GetObject", "s3:GetObjectVersion", "s3:PutObject", "s3:DeleteObject",
                     "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"}


@pytest.fixture(scope="module")
def template() -> dict:
    tpl, matches = cfnlint_decode.decode(str(TEMPLATE))
    assert not matches, [str(m) for m in matches]
    return tpl


class Resolver:
    """Evaluates the template's intrinsic functions for given parameter values."""

    def __init__(self, template: dict, **overrides: str):
        self.t = template
        self.params = {k: str(v.get("Default", "")) for k, v in template["Parameters"].items()}
        unknown = set(overrides) - set(self.params)
        assert not unknown, unknown
        self.params.update({k: str(v) for k, v in overrides.items()})

    def condition(self, name: str) -> bool:
        return bool(self(self.t["Conditions"][name]))

    def bucket_name(self) -> str:
        return self(self.t["Resources"]["Bucket"]["Properties"]["BucketName"])

    def ref(self, name: str):
        if name in self.params:
            return self.params[name]
        if name in PSEUDO:
            return PSEUDO[name]
        if name == "Bucket":
            return self.bucket_name()
        assert name in self.t["Resources"], f"Ref to unknown {name}"
        return f"<{name}>"

    def getatt(self, name: str, attr: str) -> str:
        assert name in self.t["Resources"], f"GetAtt of unknown {name}"
        if name == "Bucket" and attr == "Arn":
            return f"arn:aws:s3:::{self.bucket_name()}"
        return f"<{name}.{attr}>"

    def sub(self, text: str, variables: dict) -> str:
        def one(m: re.Match) -> str:
            key = m.group(1)
            if key in variables:
                return str(variables[key])
            if "." in key and key.split(".")[0] in self.t["Resources"]:
                return self.getatt(*key.split(".", 1))
            return str(self.ref(key))

        return re.sub(r"\$\{([^}!]+)\}", one, text)

    def __call__(self, node):
        if isinstance(node, list):
            return [self(n) for n in node]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, value), = node.items()
            if key == "Ref":
                return self.ref(value)
            if key == "Fn::GetAtt":
                name, attr = value if isinstance(value, list) else value.split(".", 1)
                return self.getatt(name, attr)
            if key == "Fn::Sub":
                if isinstance(value, str):
                    return self.sub(value, {})
                return self.sub(value[0], {k: self(v) for k, v in value[1].items()})
            if key == "Fn::If":
                name, yes, no = value
                return self(yes) if self.condition(name) else self(no)
            if key == "Fn::FindInMap":
                m, k1, k2 = (str(self(v)) for v in value)
                return self.t["Mappings"][m][k1][k2]
            if key == "Fn::Equals":
                a, b = (self(v) for v in value)
                return str(a) == str(b)
            if key == "Fn::Not":
                return not self(value[0])
            if key == "Condition":
                return self.condition(value)
            assert not key.startswith("Fn::"), f"resolver lacks {key}"
        return {k: self(v) for k, v in node.items()}


def resources_of_type(template: dict, type_: str) -> dict:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == type_}


def function(template: dict) -> dict:
    (fn,) = resources_of_type(template, "AWS::Serverless::Function").values()
    return fn["Properties"]


def state_machine(template: dict) -> dict:
    (machine,) = resources_of_type(template, "AWS::Serverless::StateMachine").values()
    return machine["Properties"]


def iam_statements(template: dict, r: Resolver) -> list[dict]:
    """Every identity-policy statement in the template, resolved (function, state machine and
    IAM roles)."""
    statements = []
    assert "Policies" not in function(template), "the function's statements are in ScorerRole"
    for policy in state_machine(template)["Policies"]:
        assert "Statement" in policy, f"only inline statements are allowed, not {policy}"
        statements += policy["Statement"]
    for role in resources_of_type(template, "AWS::IAM::Role").values():
        assert not role["Properties"].get("ManagedPolicyArns"), "no managed policies on roles"
        for policy in role["Properties"].get("Policies", []):
            statements += policy["PolicyDocument"]["Statement"]
    return [r(s) for s in statements]


def as_list(x) -> list:
    return x if isinstance(x, list) else [x]


def statements_with(statements: list[dict], action: str) -> list[dict]:
    return [s for s in statements if action in as_list(s["Action"])]


def cfn_lint(*args: str) -> subprocess.CompletedProcess:
    """Run cfn-lint (its console entry point) with this interpreter."""
    entry = "import sys; from cfnlint.runner import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", entry, *args], capture_output=True, text=True, timeout=300
    )


# ---------------------------------------------------------------- lint and SAM transform


def test_cfn_lint_reports_nothing_including_informational_rules():
    done = cfn_lint("--include-checks", "I", "--", str(TEMPLATE))
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


@pytest.mark.parametrize("good, bad, finding", [
    ("Runtime: python3.12", "Runtime: python3.7", "E2531"),
    ("SSEAlgorithm: AES256", "SSEAlgorithm: AES512", "E3030"),
])
def test_cfn_lint_catches_a_broken_template(tmp_path, good, bad, finding):
    """The lint test above can fail: a retired runtime or a bad enum value is a finding."""
    text = TEMPLATE.read_text()
    assert good in text
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace(good, bad))
    done = cfn_lint("--", str(broken))
    assert done.returncode != 0 and finding in done.stdout, done.stdout + done.stderr


@pytest.fixture(scope="module")
def translated(template) -> dict:
    """The template after the SAM transform, as CloudFormation would run it."""
    sam = copy.deepcopy(template)
    # `sam deploy` uploads the local zip and rewrites CodeUri to its S3 location.
    sam["Resources"]["ScorerFunction"]["Properties"]["CodeUri"] = "s3://deploy-bucket/lambda.zip"
    # ... and the state machine's DefinitionUri likewise; inline, cfn-lint checks it as well.
    machine = sam["Resources"]["ScaleOutStateMachine"]["Properties"]
    assert machine.pop("DefinitionUri") == DEFINITION.name
    machine["Definition"] = json.loads(DEFINITION.read_text())
    managed = {
        name: f"arn:aws:iam::aws:policy/service-role/{name}"
        for name in ("AWSLambdaBasicExecutionRole", "AWSLambdaSQSQueueExecutionRole")
    }
    return translator.Translator(
        managed_policy_map=managed,
        sam_parser=parser.Parser(),
        boto_session=boto3.session.Session(region_name=PSEUDO["AWS::Region"]),
    ).translate(json.loads(json.dumps(sam)), parameter_values={},
                get_managed_policy_map=lambda: managed)


def test_sam_transform_output_is_cfn_lint_clean(translated, tmp_path):
    assert "Transform" not in translated
    types = {v["Type"] for v in translated["Resources"].values()}
    assert {"AWS::Lambda::Function", "AWS::IAM::Role", "AWS::Lambda::EventSourceMapping",
            "AWS::StepFunctions::StateMachine"} <= types
    out = tmp_path / "translated.json"
    out.write_text(json.dumps(translated, indent=1))
    done = cfn_lint("--include-checks", "I", "--", str(out))
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_transformed_function_runs_as_its_own_role_without_managed_policies(translated):
    """No AWSLambdaBasicExecutionRole (logs on "*") and no SQS managed policy (any queue)."""
    resources = translated["Resources"]
    (fn,) = [v for v in resources.values() if v["Type"] == "AWS::Lambda::Function"]
    assert fn["Properties"]["Role"] == {"Fn::GetAtt": ["ScorerRole", "Arn"]}
    assert "ScorerFunctionRole" not in resources, "SAM must not create a role of its own"
    for name, resource in resources.items():
        if resource["Type"] == "AWS::IAM::Role":
            assert not resource["Properties"].get("ManagedPolicyArns"), name


def scorer_role_statements(template: dict, r: Resolver) -> list[dict]:
    role = template["Resources"]["ScorerRole"]["Properties"]
    return [r(s) for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]


def test_function_writes_logs_only_to_its_own_log_group(template):
    r = Resolver(template)
    assert function(template)["Role"] == {"Fn::GetAtt": ["ScorerRole", "Arn"]}
    assert "Policies" not in function(template), "ignored by SAM once Role is set"
    trust = template["Resources"]["ScorerRole"]["Properties"]["AssumeRolePolicyDocument"]
    assert [s["Principal"] for s in trust["Statement"]] == [{"Service": "lambda.amazonaws.com"}]
    statements = scorer_role_statements(template, r)
    logs = [s for s in statements if any(a.startswith("logs:") for a in as_list(s["Action"]))]
    (write,) = logs
    assert set(as_list(write["Action"])) == {"logs:CreateLogStream", "logs:PutLogEvents"}
    # Ref of a log group is its name: the ARN of the streams in the function's LoggingConfig group
    assert write["Resource"] == (
        "arn:aws:logs:eu-west-1:123456789012:log-group:<FunctionLogGroup>:log-stream:*")
    assert function(template)["LoggingConfig"]["LogGroup"] == {"Ref": "FunctionLogGroup"}
    all_actions = {a for s in iam_statements(template, r) for a in as_list(s["Action"])}
    assert "logs:CreateLogGroup" not in all_actions


# ---------------------------------------------------------------- IAM least privilege


@pytest.mark.parametrize("prefixes", [{}, {"InputPrefix": "uploads/", "OutputPrefix": "out/"}])
def test_every_statement_is_scoped(template, prefixes):
    r = Resolver(template, **prefixes)
    bucket_arn = f"arn:aws:s3:::{r.bucket_name()}"
    statements = iam_statements(template, r)
    assert statements
    for s in statements:
        assert s["Effect"] == "Allow"
        actions = as_list(s["Action"])
        assert not any("*" in a for a in actions), s
        for resource in as_list(s["Resource"]):
            assert resource != "*", s
            # a log group's streams are named by Lambda: the one wildcard allowed after ":"
            assert not resource.endswith(":*") or resource.endswith(
                ":log-group:<FunctionLogGroup>:log-stream:*"), s
            if set(actions) & S3_OBJECT_ACTIONS:
                # Object actions only on keys under a prefix, never the whole bucket.
                assert resource.startswith(bucket_arn + "/"), s
                key = resource[len(bucket_arn) + 1:]
                assert key.endswith("/*") and "*" not in key[:-1], s
            elif resource.startswith("arn:aws:s3:::"):
                assert resource == bucket_arn, s


@pytest.mark.parametrize("prefixes", [{}, {"InputPrefix": "uploads/", "OutputPrefix": "out/"}])
def test_function_reads_only_inputs_and_writes_only_predictions(template, prefixes):
    r = Resolver(template, **prefixes)
    bucket_arn = f"arn:aws:s3:::{r.bucket_name()}"
    inp, out = r.params["InputPrefix"], r.params["OutputPrefix"]
    statements = [s for s in scorer_role_statements(template, r)
                  if not s["Sid"].startswith("WriteOwnLogs")]
    jobs = f"{bucket_arn}/{out}.jobs/*"  # scale-out jobs' parts, under the output prefix
    read, parts = statements_with(statements, "s3:GetObject")
    assert as_list(read["Resource"]) == [f"{bucket_arn}/{inp}*"]
    assert as_list(read["Action"]) == ["s3:GetObject"]
    assert as_list(parts["Resource"]) == [jobs]
    assert set(as_list(parts["Action"])) == {"s3:GetObject", "s3:DeleteObject"}
    (put,) = statements_with(statements, "s3:PutObject")
    assert as_list(put["Resource"]) == [f"{bucket_arn}/{out}*"]
    assert as_list(put["Action"]) == ["s3:PutObject"]
    inputs, listed_parts = statements_with(statements, "s3:ListBucket")
    assert as_list(inputs["Resource"]) == as_list(listed_parts["Resource"]) == [bucket_arn]
    assert inputs["Condition"] == {"StringLike": {"s3:prefix": f"{inp}*"}}
    assert listed_parts["Condition"] == {"StringLike": {"s3:prefix": f"{out}.jobs/*"}}
    (abort,) = statements_with(statements, "s3:AbortMultipartUpload")
    assert as_list(abort["Resource"]) == [f"{bucket_arn}/{out}*"]
    for s in statements_with(statements, "s3:DeleteObject"):
        assert as_list(s["Resource"]) == [jobs]  # never an upload, never a prediction
    actions = {a for s in statements for a in as_list(s["Action"])}
    assert not {"s3:PutObjectAcl", "s3:GetObjectVersion"} & actions
    (consume,) = statements_with(statements, "sqs:ReceiveMessage")
    assert consume["Resource"] == "<Queue.Arn>"
    assert set(consume["Action"]) == {"sqs:ReceiveMessage", "sqs:DeleteMessage",
                                      "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes"}


def test_batch_operations_role_can_invoke_only_the_scorer(template):
    r = Resolver(template)
    role = template["Resources"]["BatchOperationsRole"]["Properties"]
    trust = role["AssumeRolePolicyDocument"]["Statement"]
    assert [s["Principal"] for s in trust] == [{"Service": "batchoperations.s3.amazonaws.com"}]
    statements = [r(s) for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]
    (invoke,) = statements_with(statements, "lambda:InvokeFunction")
    assert invoke["Resource"] == "<ScorerFunction.Arn>"
    bucket_arn = f"arn:aws:s3:::{r.bucket_name()}"
    for s in statements_with(statements, "s3:PutObject"):
        assert s["Resource"] == f"{bucket_arn}/batch-operations/reports/*"


# ---------------------------------------------------------------- event flow


def test_notifications_cover_every_suffix_under_the_input_prefix(template):
    r = Resolver(template, InputPrefix="uploads/")
    configs = r(template["Resources"]["Bucket"]["Properties"]["NotificationConfiguration"])
    assert set(configs) == {"QueueConfigurations"}, "only the queue is notified"
    seen = []
    for c in configs["QueueConfigurations"]:
        assert c["Event"] == "s3:ObjectCreated:*"
        assert c["Queue"] == "<Queue.Arn>"
        rules = {rule["Name"]: rule["Value"] for rule in c["Filter"]["S3Key"]["Rules"]}
        assert rules["prefix"] == "uploads/", c
        seen.append(rules["suffix"])
    assert len(seen) == len(set(seen))
    for suffix in IMAGE_SUFFIXES:
        assert suffix in seen and suffix.upper() in seen, suffix
    assert set(seen) == set(IMAGE_SUFFIXES) | {s.upper() for s in IMAGE_SUFFIXES}


def test_event_source_mapping_reports_batch_item_failures(template):
    r = Resolver(template)
    assert "Events" not in function(template), "the SQS trigger is the explicit mapping"
    (esm,) = resources_of_type(template, "AWS::Lambda::EventSourceMapping").values()
    p = r(esm["Properties"])
    assert p["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert p["EventSourceArn"] == "<Queue.Arn>" and p["FunctionName"] == "<ScorerFunction>"
    assert p["BatchSize"] == "10" and p["MaximumBatchingWindowInSeconds"] == "5"
    assert p["ScalingConfig"]["MaximumConcurrency"] == r(
        function(template)["ReservedConcurrentExecutions"])


def test_queue_is_encrypted_and_redrives_to_a_dead_letter_queue(template):
    r = Resolver(template)
    queue = r(template["Resources"]["Queue"]["Properties"])
    assert queue["SqsManagedSseEnabled"] is True
    assert queue["RedrivePolicy"] == {"deadLetterTargetArn": "<DeadLetterQueue.Arn>",
                                      "maxReceiveCount": "3"}
    dlq = template["Resources"]["DeadLetterQueue"]["Properties"]
    assert dlq["SqsManagedSseEnabled"] is True
    assert dlq["MessageRetentionPeriod"] == 14 * 24 * 3600
    assert dlq["MessageRetentionPeriod"] > queue["MessageRetentionPeriod"]


def test_visibility_timeout_is_six_times_the_function_timeout(template):
    allowed = template["Parameters"]["Timeout"]["AllowedValues"]
    assert max(allowed) <= 900 and template["Parameters"]["Timeout"]["Default"] == 300
    for timeout in allowed:
        r = Resolver(template, Timeout=timeout)
        visibility = r(template["Resources"]["Queue"]["Properties"]["VisibilityTimeout"])
        assert visibility >= 6 * timeout, timeout
        assert r(function(template)["Timeout"]) == str(timeout)


def test_queue_policy_admits_only_this_bucket_of_this_account(template):
    for overrides in ({}, {"BucketName": "my-digits-bucket"}):
        r = Resolver(template, **overrides)
        policy = r(template["Resources"]["QueuePolicy"]["Properties"])
        assert policy["Queues"] == ["<Queue>"]
        (allow,) = [s for s in policy["PolicyDocument"]["Statement"] if s["Effect"] == "Allow"]
        assert allow["Principal"] == {"Service": "s3.amazonaws.com"}
        assert allow["Action"] == "sqs:SendMessage"
        assert allow["Condition"]["ArnEquals"]["aws:SourceArn"] == (
            f"arn:aws:s3:::{r.bucket_name()}")
        assert allow["Condition"]["StringEquals"]["aws:SourceAccount"] == "123456789012"
    assert r.bucket_name() == "my-digits-bucket"
    assert Resolver(template).bucket_name() == "digits-123456789012-eu-west-1"
    # S3 validates the destination when it writes the notification configuration.
    assert "QueuePolicy" in as_list(template["Resources"]["Bucket"]["DependsOn"])


# ---------------------------------------------------------------- bucket


def test_bucket_is_private_encrypted_and_tls_only(template):
    r = Resolver(template)
    b = template["Resources"]["Bucket"]["Properties"]
    assert b["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "BlockPublicPolicy": True,
        "IgnorePublicAcls": True, "RestrictPublicBuckets": True,
    }
    assert b["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    (sse,) = b["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    policy = r(template["Resources"]["BucketPolicy"]["Properties"])
    assert policy["Bucket"] == r.bucket_name()
    (deny,) = [s for s in policy["PolicyDocument"]["Statement"]
               if s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}]
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*" and deny["Action"] == "s3:*"
    arn = f"arn:aws:s3:::{r.bucket_name()}"
    assert sorted(deny["Resource"]) == [arn, f"{arn}/*"]


# ---------------------------------------------------------------- function


def test_function_runtime_handler_and_environment(template):
    r = Resolver(template)
    fn = function(template)
    m = re.fullmatch(r"python3\.(\d+)", fn["Runtime"])
    assert m and int(m.group(1)) >= 12, "ai-edge-litert 2.x needs Amazon Linux 2023 (glibc 2.27+)"
    assert fn["Architectures"] == ["x86_64"]
    assert fn["Handler"] == "scorer.handler.handler"
    assert fn["CodeUri"] == "../build/lambda.zip"
    assert (TEMPLATE.parent / fn["CodeUri"]).resolve() == ROOT / "build" / "lambda.zip"
    assert r(fn["MemorySize"]) == "1769" and r(fn["ReservedConcurrentExecutions"]) == "10"
    # /tmp holds zip objects while they are expanded; the scorer refuses those over 80 % of it
    assert r(fn["EphemeralStorage"]["Size"]) == "1024"
    assert r(fn["Environment"]["Variables"])["MIN_CONFIDENCE"] == ""  # review is opt-in
    env = r(fn["Environment"]["Variables"])
    assert "MODEL_DIR" not in env, "the handler defaults to the bundle packaged at model/"
    assert env["INPUT_PREFIX"] == "incoming/" and env["OUTPUT_PREFIX"] == "predictions/"
    assert env["OUTPUT_BUCKET"] == env["INPUT_BUCKET"] == r.bucket_name()
    for key in ("POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE",
                "POWERTOOLS_LOG_LEVEL"):
        assert env[key], key


def test_read_and_length_parameters_reach_the_function_as_read_and_length(template):
    params = template["Parameters"]
    assert params["Read"]["Type"] == "String" and params["Read"]["Default"] == "digit"
    assert params["Read"]["AllowedValues"] == ["digit", "number"]
    assert params["Length"]["Type"] == "String" and params["Length"]["Default"] == ""
    for name in ("Read", "Length"):
        assert "number" in params[name]["Description"]
    groups = template["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
    assert sum(g["Parameters"] == ["Read", "Length"] for g in groups) == 1
    variables = function(template)["Environment"]["Variables"]
    assert variables["READ"] == {"Ref": "Read"} and variables["LENGTH"] == {"Ref": "Length"}
    assert {k: v for k, v in Resolver(template)(variables).items()
            if k in ("READ", "LENGTH")} == {"READ": "digit", "LENGTH": ""}  # as before: digits
    custom = Resolver(template, Read="number", Length="4-6")(variables)
    assert (custom["READ"], custom["LENGTH"]) == ("number", "4-6")


def test_length_pattern_admits_what_the_function_accepts(template):
    """Every Length the template admits starts the function (with Read=number), except MIN
    above MAX, which a pattern cannot see; everything else is refused at deploy time."""
    from scorer.s3_jobs import parse_read

    pattern = re.compile(template["Parameters"]["Length"]["AllowedPattern"])
    for good in ("", "5", "4-6", "1", "40", "1-40", "12-12"):
        assert pattern.fullmatch(good), good
    for bad in ("0", "41", "4-", "-4", "4-6-8", " 5", "five", "05", "4 - 6", "4..6", "5,6"):
        assert not pattern.fullmatch(bad), bad
    numbers = [str(n) for n in range(0, 43)] + ["05", "007", "100"]
    for text in ["", *numbers, *(f"{a}-{b}" for a in numbers for b in numbers)]:
        low, _, high = text.partition("-")
        ordered = not high or int(low) <= int(high)
        try:
            parse_read("number", text)
            accepted = True
        except ValueError:
            accepted = False
        if pattern.fullmatch(text):
            assert accepted == ordered, text
        else:  # refused at deploy time; the function would take only a leading zero ("05")
            padded = any(len(part) > 1 and part.startswith("0") for part in text.split("-"))
            assert not accepted or padded, text


def test_rules_refuse_a_length_without_number_mode(template):
    rule = template["Rules"]["LengthNeedsNumberMode"]
    for values, applies, holds in (({}, False, False),
                                   ({"Read": "number"}, False, True),
                                   ({"Read": "number", "Length": "5"}, True, True),
                                   ({"Read": "digit", "Length": "5"}, True, False)):
        r = Resolver(template, **values)
        assert r(rule["RuleCondition"]) is applies, values
        [assertion] = rule["Assertions"]
        assert r(assertion["Assert"]) is holds, values
    assert "Read=number" in assertion["AssertDescription"]


def test_handler_module_defines_handler():
    import ast

    path = ROOT / "scorer" / "handler.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
              if isinstance(t, ast.Name)}
    assert "handler" in names


def test_function_logs_to_a_log_group_with_retention(template):
    r = Resolver(template)
    fn = function(template)
    assert fn["LoggingConfig"]["LogGroup"] == {"Ref": "FunctionLogGroup"}
    group = r(template["Resources"]["FunctionLogGroup"]["Properties"])
    assert group["LogGroupName"].startswith("/aws/lambda/")
    assert group["RetentionInDays"] == "30"


def test_dead_letter_alarm_fires_on_any_message(template):
    r = Resolver(template)
    alarm = template["Resources"]["DeadLetterAlarm"]
    p = r(alarm["Properties"])
    assert p["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert p["Dimensions"] == [{"Name": "QueueName", "Value": "<DeadLetterQueue.QueueName>"}]
    assert p["ComparisonOperator"] == "GreaterThanThreshold" and p["Threshold"] == 0
    assert p["AlarmActions"] is None  # no topic by default
    with_topic = Resolver(template, AlarmTopicArn="arn:aws:sns:eu-west-1:123456789012:ops")
    assert with_topic(alarm["Properties"])["AlarmActions"] == [
        "arn:aws:sns:eu-west-1:123456789012:ops"]


def test_alarms_on_function_errors_throttles_and_queue_age(template):
    r = Resolver(template)
    alarms = {name: r(res["Properties"]) for name, res in
              resources_of_type(template, "AWS::CloudWatch::Alarm").items()}
    watched = {(p["Namespace"], p["MetricName"]): p for p in alarms.values()}
    assert set(watched) == {("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
                            ("AWS/Lambda", "Errors"), ("AWS/Lambda", "Throttles"),
                            ("AWS/SQS", "ApproximateAgeOfOldestMessage")}
    for metric in ("Errors", "Throttles"):
        p = watched[("AWS/Lambda", metric)]
        assert p["Dimensions"] == [{"Name": "FunctionName", "Value": "<ScorerFunction>"}]
        assert p["Statistic"] == "Sum" and p["Threshold"] == 0
    age = watched[("AWS/SQS", "ApproximateAgeOfOldestMessage")]
    assert age["Dimensions"] == [{"Name": "QueueName", "Value": "<Queue.QueueName>"}]
    assert 0 < age["Threshold"] <= 3600
    with_topic = Resolver(template, AlarmTopicArn="arn:aws:sns:eu-west-1:123456789012:ops")
    for res in resources_of_type(template, "AWS::CloudWatch::Alarm").values():
        assert with_topic(res["Properties"])["AlarmActions"] == [
            "arn:aws:sns:eu-west-1:123456789012:ops"]


def test_both_queues_refuse_requests_without_tls(template):
    r = Resolver(template)
    denied = set()
    for policy in resources_of_type(template, "AWS::SQS::QueuePolicy").values():
        p = r(policy["Properties"])
        for statement in p["PolicyDocument"]["Statement"]:
            if statement["Effect"] == "Deny" and statement["Condition"] == {
                    "Bool": {"aws:SecureTransport": "false"}}:
                assert statement["Action"] == "sqs:*" and statement["Principal"] == "*"
                denied.add(statement["Resource"])
    assert denied == {"<Queue.Arn>", "<DeadLetterQueue.Arn>"}


def test_outputs(template):
    assert {"BucketName", "QueueUrl", "DeadLetterQueueUrl", "FunctionArn",
            "BatchOperationsRoleArn", "StateMachineArn"} <= set(template["Outputs"])
    assert template["Outputs"]["StateMachineArn"]["Value"] == {"Ref": "ScaleOutStateMachine"}


# ---------------------------------------------------------------- no recursive trigger


def prefix_pattern(template: dict, name: str) -> re.Pattern:
    return re.compile(template["Parameters"][name]["AllowedPattern"])


def test_prefix_parameters_are_one_path_segment(template):
    for name in ("InputPrefix", "OutputPrefix"):
        pattern = prefix_pattern(template, name)
        assert pattern.fullmatch(template["Parameters"][name]["Default"])
        for good in ("incoming/", "predictions/", "in-2024_v1.x/"):
            assert pattern.fullmatch(good), good
        for bad in ("", "/", "incoming", "/incoming/", "a/b/", "*/", "in coming/", "../"):
            assert not pattern.fullmatch(bad), bad


def test_allowed_prefixes_overlap_only_when_equal(template):
    """S3 would re-trigger the function if its output keys started with the input prefix."""
    pattern = prefix_pattern(template, "InputPrefix")
    candidates = ["a/", "ab/", "a.b/", "incoming/", "incoming-old/", "predictions/", "in/",
                  "a/b/", "", "incoming", "in", "incoming/predictions/"]
    allowed = [c for c in candidates if pattern.fullmatch(c)]
    assert len(allowed) >= 6
    for a in allowed:
        for b in allowed:
            overlap = a.startswith(b) or b.startswith(a)
            assert overlap == (a == b), (a, b)


def test_rules_forbid_equal_prefixes(template):
    assertions = [a["Assert"] for rule in template["Rules"].values() for a in rule["Assertions"]]
    expected = {"Fn::Not": [{"Fn::Equals": [{"Ref": "InputPrefix"}, {"Ref": "OutputPrefix"}]}]}
    assert expected in assertions
    r = Resolver(template, InputPrefix="same/", OutputPrefix="same/")
    assert not r(expected)
    assert Resolver(template)(expected)


def test_function_cannot_write_where_uploads_trigger_it(template):
    """Defaults and a custom pair: no PutObject resource matches a notified key."""
    for overrides in ({}, {"InputPrefix": "uploads/", "OutputPrefix": "results/"}):
        r = Resolver(template, **overrides)
        bucket_arn = f"arn:aws:s3:::{r.bucket_name()}"
        configs = r(template["Resources"]["Bucket"]["Properties"]["NotificationConfiguration"])
        notified = {rule["Value"] for c in configs["QueueConfigurations"]
                    for rule in c["Filter"]["S3Key"]["Rules"] if rule["Name"] == "prefix"}
        writable = [res[len(bucket_arn) + 1:-1]
                    for s in statements_with(iam_statements(template, r), "s3:PutObject")
                    for res in as_list(s["Resource"])]
        for key_prefix in writable:
            for n in notified:
                assert not key_prefix.startswith(n) and not n.startswith(key_prefix), (
                    key_prefix, n)


# ---------------------------------------------------------------- scale-out state machine


def definition(template: dict, **overrides: str) -> dict:
    """infra/statemachine.asl.json with DefinitionSubstitutions applied, as deployed."""
    r = Resolver(template, **overrides)
    machine = state_machine(template)
    assert machine["DefinitionUri"] == DEFINITION.name
    subs = {k: str(v) for k, v in r(machine["DefinitionSubstitutions"]).items()}
    text = DEFINITION.read_text()
    json.loads(text)  # valid JSON before substitution too (the file as written)
    placeholders = set(re.findall(r"\$\{(\w+)\}", text))
    assert placeholders == set(subs), placeholders ^ set(subs)
    return json.loads(re.sub(r"\$\{(\w+)\}", lambda m: subs[m.group(1)], text))


def parse_source(asl: dict, source) -> dict:
    """Evaluate the ParseSource state's JSONata on an execution input (as Step Functions does)."""
    import jsonata

    state = asl["States"]["ParseSource"]
    assert state["QueryLanguage"] == "JSONata"
    expression = state["Output"]
    assert expression.startswith("{%") and expression.endswith("%}")
    evaluator = jsonata.Jsonata(expression[2:-2])
    evaluator.assign("states", {"input": {"source": source}})
    return evaluator.evaluate(None)


def retriers(state: dict) -> dict[str, dict]:
    return {error: retry for retry in state["Retry"] for error in retry["ErrorEquals"]}


def test_state_machine_lists_the_source_and_batches_it_to_the_function(template):
    asl = definition(template)
    machine = state_machine(template)
    assert machine["Type"] == "STANDARD"
    assert asl["StartAt"] == "ParseSource"
    assert asl["States"]["ParseSource"]["Next"] == "CheckSource"
    check = asl["States"]["CheckSource"]
    assert check["Choices"] == [{"Variable": "$.valid", "BooleanEquals": True,
                                 "Next": "ScoreBatches"}]
    assert asl["States"][check["Default"]]["Type"] == "Fail"

    scoring = asl["States"]["ScoreBatches"]
    assert scoring["Type"] == "Map" and scoring["Next"] == "Merge"
    assert scoring["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED"
    assert scoring["ItemReader"] == {"Resource": "arn:aws:states:::s3:listObjectsV2",
                                     "Parameters": {"Bucket.$": "$.bucket",
                                                    "Prefix.$": "$.prefix"}}
    batcher = scoring["ItemBatcher"]
    assert batcher["BatchInput"] == {"job_id.$": "$$.Execution.Name", "source.$": "$.source"}
    assert batcher["MaxItemsPerBatchPath"] == "$.settings.max_items_per_batch"
    assert batcher["MaxInputBytesPerBatch"] <= 256 * 1024
    assert scoring["MaxConcurrencyPath"] == "$.settings.max_concurrency"
    assert scoring["ToleratedFailurePercentagePath"] == "$.settings.tolerated_failure_percentage"
    assert scoring["ResultWriter"]["Parameters"] == {"Bucket": "digits-123456789012-eu-west-1",
                                                     "Prefix": "predictions/.jobs/map-runs"}
    assert scoring["ResultPath"] == "$.map_run"  # the input's source stays for the merge

    children = scoring["ItemProcessor"]["States"]
    (batch,) = children.values()
    assert batch["Resource"] == "arn:aws:states:::lambda:invoke" and batch["End"] is True
    assert batch["Parameters"] == {"FunctionName": "<ScorerFunction.Arn>", "Payload.$": "$"}
    merge = asl["States"]["Merge"]
    assert merge["Resource"] == "arn:aws:states:::lambda:invoke" and merge["End"] is True
    assert merge["Parameters"] == {"FunctionName": "<ScorerFunction.Arn>", "Payload": {
        "merge": {"job_id.$": "$$.Execution.Name", "source.$": "$.source"}}}
    for state in (batch, merge):
        retry = retriers(state)
        assert set(retry) >= LAMBDA_ERRORS
        for error in LAMBDA_ERRORS:
            assert retry[error]["BackoffRate"] > 1 and retry[error]["MaxAttempts"] >= 3
        assert retry["States.TaskFailed"]["MaxAttempts"] >= 1


def test_state_machine_settings_come_from_the_parameters(template):
    defaults = parse_source(definition(template), "s3://digits-123456789012-eu-west-1/incoming/x/")
    assert defaults["settings"] == {"max_items_per_batch": 500, "max_concurrency": 8,
                                    "tolerated_failure_percentage": 0}
    custom = definition(template, MaxItemsPerBatch=50, MaxConcurrency=100,
                        ToleratedFailurePercentage=5)
    assert parse_source(custom, "s3://digits-123456789012-eu-west-1/incoming/x/")[
        "settings"] == {"max_items_per_batch": 50, "max_concurrency": 100,
                        "tolerated_failure_percentage": 5}


@pytest.mark.parametrize("source, bucket, prefix", [
    ("s3://B/incoming/exam/", "B", "incoming/exam/"),
    ("s3://B/incoming/exam", "B", "incoming/exam/"),  # a final "/" is added
    ("s3://B/incoming/", "B", "incoming/"),
    ("s3://B/incoming/2026 exams/ü,1/", "B", "incoming/2026 exams/ü,1/"),
    ("s3://B/incoming/a/b/c/d/", "B", "incoming/a/b/c/d/"),
])
def test_the_source_url_is_split_into_bucket_and_prefix(template, source, bucket, prefix):
    name = Resolver(template).bucket_name()
    out = parse_source(definition(template), source.replace("B", name, 1))
    assert (out["bucket"], out["prefix"], out["valid"]) == (name, prefix, True)
    assert out["source"] == f"s3://{name}/{prefix}"


@pytest.mark.parametrize("source", [
    "s3://other-bucket/incoming/exam/", "s3://B/predictions/exam/", "s3://B/incoming-old/x/",
    "s3://B/", "s3://B", "B/incoming/exam/", "https://B/incoming/exam/",
])
def test_sources_outside_the_input_prefix_fail_the_execution(template, source):
    name = Resolver(template).bucket_name()
    assert parse_source(definition(template), source.replace("B", name, 1))["valid"] is False


def test_state_machine_role_invokes_only_the_scorer_and_lists_only_inputs(template):
    for prefixes in ({}, {"InputPrefix": "uploads/", "OutputPrefix": "out/"}):
        r = Resolver(template, **prefixes)
        bucket_arn = f"arn:aws:s3:::{r.bucket_name()}"
        inp, out = r.params["InputPrefix"], r.params["OutputPrefix"]
        statements = [r(s) for p in state_machine(template)["Policies"] for s in p["Statement"]]
        (invoke,) = statements_with(statements, "lambda:InvokeFunction")
        assert invoke["Resource"] == "<ScorerFunction.Arn>"
        (listing,) = statements_with(statements, "s3:ListBucket")
        assert listing["Resource"] == bucket_arn
        assert listing["Condition"] == {"StringLike": {"s3:prefix": f"{inp}*"}}
        name = r(state_machine(template)["Name"])
        (start,) = statements_with(statements, "states:StartExecution")
        assert start["Resource"] == f"arn:aws:states:eu-west-1:123456789012:stateMachine:{name}"
        (watch,) = statements_with(statements, "states:DescribeExecution")
        assert watch["Resource"] == f"arn:aws:states:eu-west-1:123456789012:execution:{name}/*"
        for s in statements:
            for action in as_list(s["Action"]):
                if action.startswith("s3:") and action != "s3:ListBucket":
                    assert as_list(s["Resource"]) == [f"{bucket_arn}/{out}.jobs/*"], s
        assert {a.split(":")[0] for s in statements for a in as_list(s["Action"])} == {
            "lambda", "s3", "states"}


def test_transformed_state_machine_role_has_no_managed_policies(translated):
    machines = resources_of_type(translated, "AWS::StepFunctions::StateMachine")
    (machine,) = machines.values()
    role = translated["Resources"][machine["Properties"]["RoleArn"]["Fn::GetAtt"][0]]
    assert not role["Properties"].get("ManagedPolicyArns")
    assert "DefinitionSubstitutions" in machine["Properties"]


def test_scale_out_parts_expire_if_a_job_is_abandoned(template):
    r = Resolver(template, OutputPrefix="out/")
    rules = r(template["Resources"]["Bucket"]["Properties"]["LifecycleConfiguration"]["Rules"])
    (rule,) = [rule for rule in rules if rule.get("Prefix") == "out/.jobs/"]
    assert rule["Status"] == "Enabled" and rule["ExpirationInDays"] >= 7


def machine_template(asl: dict) -> dict:
    """A plain CloudFormation state machine holding the definition inline, which cfn-lint checks
    against the States Language schema (the SAM template only points at the file)."""
    trust = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "states.amazonaws.com"},
        "Action": "sts:AssumeRole"}]}
    return {"AWSTemplateFormatVersion": "2010-09-09", "Resources": {
        "Role": {"Type": "AWS::IAM::Role", "Properties": {"AssumeRolePolicyDocument": trust}},
        "Machine": {"Type": "AWS::StepFunctions::StateMachine", "Properties": {
            "RoleArn": {"Fn::GetAtt": ["Role", "Arn"]}, "Definition": asl,
            "DefinitionSubstitutions": {name: "1" for name in set(re.findall(
                r"\$\{(\w+)\}", json.dumps(asl)))}}}}}


def test_definition_is_cfn_lint_clean_and_every_transition_exists(tmp_path):
    asl = json.loads(DEFINITION.read_text())
    out = tmp_path / "machine.json"
    out.write_text(json.dumps(machine_template(asl)))
    done = cfn_lint("--include-checks", "I", "--", str(out))
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr

    def targets(states: dict) -> None:
        for state in states.values():
            nexts = [state.get("Next"), state.get("Default")] + [
                c["Next"] for c in state.get("Choices", [])]
            assert all(n in states for n in nexts if n), state
            if "ItemProcessor" in state:
                targets(state["ItemProcessor"]["States"])

    targets(asl["States"])
    broken = copy.deepcopy(asl)
    broken["States"]["Merge"]["Type"] = "Taskk"
    out.write_text(json.dumps(machine_template(broken)))
    done = cfn_lint("--", str(out))
    assert done.returncode != 0 and "E3601" in done.stdout, done.stdout
