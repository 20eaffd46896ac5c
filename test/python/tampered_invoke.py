"""Signs an InvokeAgentRuntime request with botocore, then sends the same signed headers twice:
with the body that was signed, and with another body of the same length.

botocore (boto3, the AWS CLI) sends no x-amz-content-sha256 outside S3, so its signature covers
the SHA-256 of the body, which the server must compute from the bytes it received and check.

As a module: send_signed_then_tampered(...). As a script (same JSON on stdout):
  python3 tampered_invoke.py ENDPOINT AGENT_RUNTIME_ARN SESSION_ID ORIGINAL TAMPERED
with credentials and region from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION.
"""

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


def send_signed_then_tampered(endpoint, agent_runtime_arn, session_id, original, tampered):
    """Returns {"original": answer, "tampered": answer}, each {status, errorType?, body}."""
    url = "%s/runtimes/%s/invocations" % (endpoint, urllib.parse.quote(agent_runtime_arn, safe=""))
    signed = AWSRequest(
        method="POST",
        url=url,
        data=original,
        headers={
            "Content-Type": "application/json",
            "X-Amzn-Bedrock-AgentCore-Runtime-Session-Id": session_id,
        },
    )
    credentials = Credentials(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
    SigV4Auth(credentials, "bedrock-agentcore", os.environ["AWS_DEFAULT_REGION"]).add_auth(signed)
    headers = dict(signed.headers)
    return {"original": _send(url, headers, original), "tampered": _send(url, headers, tampered)}


def _send(url, headers, body):
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request) as response:
            return {"status": response.status, "body": response.read().decode()}
    except urllib.error.HTTPError as error:
        return {
            "status": error.code,
            "errorType": error.headers.get("x-amzn-errortype"),
            "body": error.read().decode(),
        }


if __name__ == "__main__":
    endpoint, arn, session, original, tampered = sys.argv[1:6]
    print(
        json.dumps(
            send_signed_then_tampered(endpoint, arn, session, original.encode(), tampered.encode())
        )
    )
