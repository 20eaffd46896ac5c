"""The Berth a Node test started, as boto3 sees it: clients, code upload, bounded waits.

The Node test passes the server through the environment a user would set:
BERTH_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION.
"""

import io
import os
import tarfile
import time
import urllib.parse

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.httpsession import URLLib3Session

ENDPOINT = os.environ["BERTH_ENDPOINT"]
REGION = os.environ["AWS_REGION"]

# One attempt: a retried request would hide the first answer, which is what the tests check.
_CONFIG = Config(retries={"total_max_attempts": 1, "mode": "standard"})


def client(service, validate=True):
    """A boto3 client pointed at Berth. validate=False lets a test send what botocore would
    refuse before sending (a missing required member), to see the server's own answer."""
    config = _CONFIG.merge(Config(parameter_validation=validate))
    return boto3.client(service, endpoint_url=ENDPOINT, region_name=REGION, config=config)


def upload_code(bucket, prefix, files):
    """Uploads {name: text} as a .tar.gz to Berth's artifact store (PUT /berth/v1/artifacts),
    signed like any other request, so CreateAgentRuntime can use s3://bucket/prefix."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    path = "/berth/v1/artifacts/%s/%s" % (
        urllib.parse.quote(bucket, safe=""),
        urllib.parse.quote(prefix, safe=""),
    )
    request = AWSRequest(
        method="PUT",
        url=ENDPOINT + path,
        data=archive.getvalue(),
        headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"},
    )
    credentials = Credentials(
        os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    )
    SigV4Auth(credentials, "bedrock-agentcore", REGION).add_auth(request)
    response = URLLib3Session().send(request.prepare())
    if response.status_code != 200:
        raise AssertionError(
            "upload failed: %s %s" % (response.status_code, response.text)
        )


def wait_until(what, check, timeout_seconds=30.0):
    """Re-checks a condition until it holds, for state with no event to wait on."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.05)


def wait_for_status(control, runtime_id, settled=("READY", "CREATE_FAILED", "UPDATE_FAILED")):
    """Waits until the runtime's latest version has settled; returns GetAgentRuntime's answer."""

    def settled_runtime():
        runtime = control.get_agent_runtime(agentRuntimeId=runtime_id)
        return runtime if runtime["status"] in settled else None

    return wait_until("runtime %s to settle" % runtime_id, settled_runtime)


def code_artifact(prefix):
    """An agentRuntimeArtifact for Node code uploaded to s3://agents/<prefix> (see upload_code)."""
    return {
        "codeConfiguration": {
            "code": {"s3": {"bucket": "agents", "prefix": prefix}},
            "runtime": "NODE_22",
            "entryPoint": ["main.js"],
        }
    }
