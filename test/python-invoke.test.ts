import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { describe, it } from "node:test";
import { promisify } from "node:util";
import { agentSources, installAgent } from "./support/agents.ts";
import { useTestBerth } from "./support/berth.ts";
import { invokeProbe } from "./support/commands.ts";
import { createRuntime, newSessionId } from "./support/runtimes.ts";

// botocore (boto3, the AWS CLI) sends no x-amz-content-sha256 outside S3: its signature covers
// the SHA-256 of the body, which Berth must compute and check itself.

const harness = useTestBerth([], (berth) => {
  installAgent(berth.dataDir, agentSources.probe, "probe");
  installAgent(berth.dataDir, agentSources.nodeExample, "node-example");
});

const invokeWithBoto3 = `
import json, sys, boto3
from botocore.config import Config
client = boto3.client("bedrock-agentcore", endpoint_url=sys.argv[1], config=Config(retries={"max_attempts": 1}))
response = client.invoke_agent_runtime(
    agentRuntimeArn=sys.argv[2],
    runtimeSessionId=sys.argv[3],
    payload=json.dumps({"prompt": "hello from boto3"}).encode(),
    contentType="application/json",
)
print(json.dumps({"sessionId": response["runtimeSessionId"], "answer": response["response"].read().decode()}))
`;

/** Signs with botocore, then sends the same headers with another body of the same length. */
const tamperWithBotocore = `
import json, os, sys, urllib.error, urllib.parse, urllib.request
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
endpoint, arn, session = sys.argv[1:4]
url = f"{endpoint}/runtimes/{urllib.parse.quote(arn, safe='')}/invocations"
original = json.dumps({"action": "remember", "value": "original"}).encode()
tampered = json.dumps({"action": "remember", "value": "tampered"}).encode()
signed = AWSRequest(method="POST", url=url, data=original, headers={
    "Content-Type": "application/json",
    "X-Amzn-Bedrock-AgentCore-Runtime-Session-Id": session,
})
credentials = Credentials(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
SigV4Auth(credentials, "bedrock-agentcore", os.environ["AWS_DEFAULT_REGION"]).add_auth(signed)
def send(body):
    request = urllib.request.Request(url, data=body, method="POST", headers=dict(signed.headers))
    try:
        with urllib.request.urlopen(request) as response:
            return {"status": response.status, "body": response.read().decode()}
    except urllib.error.HTTPError as error:
        return {"status": error.code, "errorType": error.headers.get("x-amzn-errortype"), "body": error.read().decode()}
print(json.dumps({"original": send(original), "tampered": send(tampered)}))
`;

/** Runs a Python script against the test's Berth, with its credentials as a user would set them. */
async function runPython<Output>(script: string, args: string[]): Promise<Output> {
  const { berth, settings } = harness();
  // Asynchronously: Berth runs in this process and must keep answering meanwhile.
  const { stdout } = await promisify(execFile)("python3", ["-c", script, berth.url, ...args], {
    env: {
      PATH: process.env["PATH"],
      AWS_ACCESS_KEY_ID: berth.credentials.accessKeyId,
      AWS_SECRET_ACCESS_KEY: berth.credentials.secretAccessKey,
      AWS_DEFAULT_REGION: settings.region,
      AWS_CONFIG_FILE: "/dev/null",
      AWS_SHARED_CREDENTIALS_FILE: "/dev/null",
      AWS_EC2_METADATA_DISABLED: "true",
    },
  });
  return JSON.parse(stdout) as Output;
}

/** What the tampering script reports of each answer. */
interface SentAnswer {
  status: number;
  errorType?: string;
  body: string;
}

describe("invoking from Python with boto3 (no x-amz-content-sha256)", () => {
  it("invokes an agent, the body checked against the signature's hash of it", async () => {
    const runtime = await createRuntime(harness(), "node-example");
    const session = newSessionId("boto3");
    const result = await runPython<{ sessionId: string; answer: string }>(invokeWithBoto3, [
      runtime.arn,
      session,
    ]);
    assert.equal(result.sessionId, session);
    const answer = JSON.parse(result.answer) as Record<string, unknown>;
    assert.equal(answer["turns"], 1);
    assert.match(String(answer["reply"]), /you said "hello from boto3"/);
  });

  it("refuses a body changed after botocore signed it, and the agent never sees it", async () => {
    const runtime = await createRuntime(harness(), "probe");
    const session = newSessionId("botocore");
    const { original, tampered } = await runPython<Record<"original" | "tampered", SentAnswer>>(
      tamperWithBotocore,
      [runtime.arn, session],
    );
    assert.equal(original.status, 200, original.body);
    assert.equal(tampered.status, 403);
    assert.equal(tampered.errorType, "InvalidSignatureException");
    const seen = await invokeProbe(harness().data, runtime.arn, session, { action: "recall" });
    assert.deepEqual(seen["memory"], ["original"], "the agent never saw the tampered payload");
  });
});
