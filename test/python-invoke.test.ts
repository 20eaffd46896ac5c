import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { describe, it } from "node:test";
import { promisify } from "node:util";
import { agentSources, installAgent } from "./support/agents.ts";
import { hostSuite, useTestBerth } from "./support/berth.ts";
import { invokeProbe } from "./support/commands.ts";
import { pythonTestDir } from "./support/python.ts";
import { createRuntime, newSessionId } from "./support/runtimes.ts";

describe("python invoke (a host suite: it tests the real parts, as root)", hostSuite, () => {
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

  /**
   * Runs Python (`-c SCRIPT` or a file of test/python) against the test's Berth, its endpoint as
   * the first argument and its credentials set as a user would set them.
   */
  async function runPython<Output>(program: string[], args: string[]): Promise<Output> {
    const { berth, settings } = harness();
    // Asynchronously: Berth runs in this process and must keep answering meanwhile.
    const { stdout } = await promisify(execFile)("python3", [...program, berth.url, ...args], {
      cwd: pythonTestDir,
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
      const result = await runPython<{ sessionId: string; answer: string }>(
        ["-c", invokeWithBoto3],
        [runtime.arn, session],
      );
      assert.equal(result.sessionId, session);
      const answer = JSON.parse(result.answer) as Record<string, unknown>;
      assert.equal(answer["turns"], 1);
      assert.match(String(answer["reply"]), /you said "hello from boto3"/);
    });

    it("refuses a body changed after botocore signed it, and the agent never sees it", async () => {
      const runtime = await createRuntime(harness(), "probe");
      const session = newSessionId("botocore");
      // Signs with botocore, then sends the same headers with another body of the same length.
      const { original, tampered } = await runPython<Record<"original" | "tampered", SentAnswer>>(
        ["tampered_invoke.py"],
        [
          runtime.arn,
          session,
          JSON.stringify({ action: "remember", value: "original" }),
          JSON.stringify({ action: "remember", value: "tampered" }),
        ],
      );
      assert.equal(original.status, 200, original.body);
      assert.equal(tampered.status, 403);
      assert.equal(tampered.errorType, "InvalidSignatureException");
      const seen = await invokeProbe(harness().data, runtime.arn, session, { action: "recall" });
      assert.deepEqual(seen["memory"], ["original"], "the agent never saw the tampered payload");
    });
  });
});
