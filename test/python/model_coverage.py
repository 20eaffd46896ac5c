"""Sends every runtime operation of botocore's AgentCore models to Berth with boto3 and says
what became of each, as JSON lines on stdout (read by test/model-coverage.test.ts):

  served         a 2xx answer, whose parsed output matches the model's output shape
  not-supported  Berth's documented refusal: ValidationException "... is not supported by Berth"
  signing        InvokeAgentRuntime refused for its SigV4 signature (boto3 invoke: another slice)
  failed         anything else (an UnknownOperationException, a wrong shape, an unexpected error)

Inputs are built from the model: required members get fixture values by name (a real runtime,
endpoint and session made first), or model-valid placeholders, so an operation added to a
future model is sent too and shows up here instead of being silently left out.
"""

import datetime
import json
import os
import sys

import botocore.session
from botocore import xform_name
from botocore.eventstream import EventStream
from botocore.exceptions import ClientError
from botocore.response import StreamingBody

from berth_env import client, code_artifact, wait_for_status

SERVICES = ("bedrock-agentcore-control", "bedrock-agentcore")
# Paths of runtime resources; a resource policy or tag names a runtime (or endpoint) by ARN.
RUNTIME_PATHS = ("/runtimes/", "/tags/", "/resourcepolicy/")
NOT_SUPPORTED = "is not supported by Berth"
ROLE = "arn:aws:iam::123456789012:role/agent"
# Phases, so resources exist when used and are deleted last (endpoints before their runtime).
PHASES = ("Create", "Get", "List", "Invoke", "Stop", "Update", "Tag", "Untag", "Put", "Delete")


def runtime_operations(model):
    for name in model.operation_names:
        operation = model.operation_model(name)
        if operation.http["requestUri"].startswith(RUNTIME_PATHS):
            yield operation


def phase(operation):
    name = operation.name
    verb = next((index for index, prefix in enumerate(PHASES) if name.startswith(prefix)), 3)
    # Longer paths first within a phase: an endpoint is deleted before its runtime.
    return (verb, -len(operation.http["requestUri"]))


class Fixtures:
    """A real runtime (the probe agent), a named endpoint and a session id to aim at; and an A2A
    runtime (test/agents/a2a) for GetAgentCard, which only A2A agents answer."""

    def __init__(self, control):
        created = control.create_agent_runtime(
            agentRuntimeName="coverage_%d" % os.getpid(),
            agentRuntimeArtifact=code_artifact("probe"),
            roleArn=ROLE,
            networkConfiguration={"networkMode": "PUBLIC"},
        )
        self.runtime_id = created["agentRuntimeId"]
        self.runtime_arn = created["agentRuntimeArn"]
        status = wait_for_status(control, self.runtime_id)["status"]
        if status != "READY":
            raise AssertionError("the fixture runtime is " + status)
        self.endpoint_name = "coverage"
        control.create_agent_runtime_endpoint(
            agentRuntimeId=self.runtime_id, name=self.endpoint_name
        )
        self.session_id = "coverage-session-%d-%s" % (os.getpid(), "x" * 24)
        a2a = control.create_agent_runtime(
            agentRuntimeName="coverage_a2a_%d" % os.getpid(),
            agentRuntimeArtifact=code_artifact("a2a"),
            roleArn=ROLE,
            networkConfiguration={"networkMode": "PUBLIC"},
            protocolConfiguration={"serverProtocol": "A2A"},
        )
        self.a2a_runtime_arn = a2a["agentRuntimeArn"]
        if wait_for_status(control, a2a["agentRuntimeId"])["status"] != "READY":
            raise AssertionError("the A2A fixture runtime is not READY")

    def value(self, operation, member):
        """The fixture value for a member, by name; None when the model's placeholder will do."""
        by_name = {
            "agentRuntimeId": self.runtime_id,
            "agentRuntimeArn": self.runtime_arn,
            "resourceArn": self.runtime_arn,
            "endpointName": self.endpoint_name,
            "runtimeSessionId": self.session_id,
            "agentRuntimeName": "created_%d" % os.getpid(),
            "agentRuntimeArtifact": code_artifact("probe"),
            "roleArn": ROLE,
            "networkConfiguration": {"networkMode": "PUBLIC"},
            "tags": {"coverage": "yes"},
            "tagKeys": ["coverage"],
            "payload": b'{"action": "recall"}',
            "body": {"command": "echo covered", "timeout": 30},
            "policy": json.dumps({"Version": "2012-10-17", "Statement": []}),
        }
        if operation.name == "CreateAgentRuntimeEndpoint" and member == "name":
            return "created"
        if operation.name == "GetAgentCard" and member == "agentRuntimeArn":
            return self.a2a_runtime_arn
        return by_name.get(member)


def placeholder(shape):
    """A value the model accepts for a shape: its shortest, first or smallest."""
    kind = shape.type_name
    if kind == "string":
        return shape.enum[0] if shape.enum else "x" * max(shape.metadata.get("min", 1), 1)
    if kind in ("integer", "long"):
        return shape.metadata.get("min", 1)
    if kind == "boolean":
        return False
    if kind == "structure":
        return {name: placeholder(shape.members[name]) for name in shape.required_members}
    if kind == "list":
        return [placeholder(shape.member)] * shape.metadata.get("min", 0)
    if kind == "map":
        return {}
    if kind == "blob":
        return b"x"
    if kind == "timestamp":
        return datetime.datetime.now(datetime.timezone.utc)
    return None


def minimal_input(operation, fixtures):
    shape = operation.input_shape
    params = {}
    for member in shape.required_members if shape is not None else []:
        value = fixtures.value(operation, member)
        params[member] = value if value is not None else placeholder(shape.members[member])
    # One session for every data-plane call (invoke and command start it, stop ends it).
    if shape is not None and "runtimeSessionId" in shape.members:
        params["runtimeSessionId"] = fixtures.session_id
    return params


def shape_problems(shape, value, path):
    """Where a parsed value breaks its shape: missing required members, wrong types, lengths."""
    if shape.type_name == "structure":
        if not isinstance(value, dict):
            return ["%s: expected an object, got %r" % (path, value)]
        problems = []
        for name in shape.required_members:
            member = shape.members[name]
            if member.serialization.get("location") == "statusCode":
                continue
            if name not in value:
                problems.append("%s.%s: required, missing" % (path, name))
        for name, member in shape.members.items():
            if name in value:
                required = name in shape.required_members
                problems += member_problems(member, value[name], "%s.%s" % (path, name), required)
        return problems
    return member_problems(shape, value, path)


def member_problems(shape, value, path, required=False):
    kind = shape.type_name
    if kind == "structure" and shape.serialization.get("eventstream"):
        return event_stream_problems(shape, value, path)
    if kind == "structure":
        return shape_problems(shape, value, path)
    if kind == "list":
        if not isinstance(value, list):
            return ["%s: expected a list" % path]
        problems = length_problems(shape, len(value), path)
        for index, item in enumerate(value):
            problems += member_problems(shape.member, item, "%s[%d]" % (path, index))
        return problems
    if kind == "map":
        if not isinstance(value, dict):
            return ["%s: expected a map" % path]
        problems = length_problems(shape, len(value), path)
        for key, item in value.items():
            problems += member_problems(shape.key, key, "%s key" % path)
            problems += member_problems(shape.value, item, "%s[%r]" % (path, key))
        return problems
    if kind == "string":
        if not isinstance(value, str):
            return ["%s: expected a string, got %r" % (path, value)]
        if shape.enum and value not in shape.enum:
            return ["%s: %r is not one of %s" % (path, value, shape.enum)]
        if required and value == "":
            return []  # a required member with nothing to say (a runtime with no description)
        return length_problems(shape, len(value), path)
    expected = {
        "integer": int,
        "long": int,
        "boolean": bool,
        "timestamp": datetime.datetime,
        "double": (int, float),
        "float": (int, float),
        "blob": (bytes, StreamingBody),
    }.get(kind)
    if expected is not None and not isinstance(value, expected):
        return ["%s: expected %s, got %r" % (path, kind, value)]
    return []


def length_problems(shape, length, path):
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    if (low is not None and length < low) or (high is not None and length > high):
        return ["%s: length %d outside %s..%s" % (path, length, low, high)]
    return []


def event_stream_problems(shape, stream, path):
    if not isinstance(stream, EventStream):
        return ["%s: expected an event stream" % path]
    problems, events = [], 0
    for event in stream:
        events += 1
        for name, body in event.items():
            member = shape.members.get(name)
            if member is None:
                problems.append("%s: unmodeled event %s" % (path, name))
            else:
                problems += shape_problems(member, body, "%s.%s" % (path, name))
    if events == 0:
        problems.append("%s: no events" % path)
    return problems


def classify(service, operation, fixtures):
    api = client(service)
    params = minimal_input(operation, fixtures)
    try:
        answer = getattr(api, xform_name(operation.name))(**params)
    except ClientError as error:
        return classify_error(operation, error)
    problems = shape_problems(operation.output_shape, answer, operation.name)
    if isinstance(answer.get("response"), StreamingBody):
        answer["response"].read()
    if problems:
        return "failed", "; ".join(problems)
    return "served", "HTTP %d" % answer["ResponseMetadata"]["HTTPStatusCode"]


def classify_error(operation, error):
    code = error.response["Error"]["Code"]
    message = error.response["Error"].get("Message", "")
    status = error.response["ResponseMetadata"]["HTTPStatusCode"]
    detail = "%s (HTTP %d): %s" % (code, status, message)
    if code == "ValidationException" and NOT_SUPPORTED in message:
        # Berth's refusal must itself be the modeled ValidationException, with its members.
        if "ValidationException" not in [shape.name for shape in operation.error_shapes]:
            return "failed", "ValidationException is not modeled for this operation: " + detail
        if not error.response.get("reason"):
            return "failed", "the refusal has no reason member: " + detail
        return "not-supported", detail
    if operation.name == "InvokeAgentRuntime" and code in (
        "IncompleteSignatureException",
        "InvalidSignatureException",
    ):
        return "signing", detail
    return "failed", detail


def main():
    control = client("bedrock-agentcore-control")
    fixtures = Fixtures(control)
    session = botocore.session.get_session()
    operations = sorted(
        (
            (service, operation)
            for service in SERVICES
            for operation in runtime_operations(session.get_service_model(service))
        ),
        key=lambda pair: phase(pair[1]),
    )
    for service, operation in operations:
        outcome, detail = classify(service, operation, fixtures)
        line = {
            "service": service,
            "operation": operation.name,
            "http": "%s %s" % (operation.http["method"], operation.http["requestUri"]),
            "outcome": outcome,
            "detail": detail,
        }
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
