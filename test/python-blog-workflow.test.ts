import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { hostSuite, removeDir, useTestBerth } from "./support/berth.ts";
import { clientEnvironment, requirePythonClients, runProgram } from "./support/python.ts";

describe("python blog workflow (a host suite: it tests the real parts, as root)", hostSuite, () => {
  // The workflow of AWS's blog post announcing session storage and execute command, with only the
  // endpoint and the credentials changed: its boto3 snippets (test/python/test_blog_workflow.py)
  // and its AWS CLI calls, on a Starlette agent zipped with its dependencies as a user would.

  requirePythonClients();

  const packageScript = fileURLToPath(
    new URL("../examples/python-starlette-agent/package.sh", import.meta.url),
  );
  const agentZip = "python-starlette-agent.zip";
  const readmePath = fileURLToPath(new URL("../README.md", import.meta.url));

  const harness = useTestBerth([
    "--sandbox-outbound",
    "none",
    "--session-storage-bytes",
    String(64 * 2 ** 20),
  ]);

  let cliDir = "";

  /** The Python block of the README's section on boto3. */
  function readmePythonBlock(): string {
    const readme = readFileSync(readmePath, "utf8");
    const section = readme.split("## From Python (boto3) and the AWS CLI")[1] ?? "";
    const block = /```python\n([\s\S]*?)```/.exec(section)?.[1];
    assert.ok(block !== undefined, "the README has a Python block in its section on boto3");
    return block;
  }

  /** Runs `aws <service> <args>` against the test Berth in cliDir; parses its JSON output. */
  async function aws(service: string, args: string[]) {
    const finished = await runProgram(
      "aws",
      [service, ...args, "--endpoint-url", harness().berth.url, "--output", "json"],
      clientEnvironment(harness()),
      cliDir,
    );
    assert.equal(finished.code, 0, finished.stderr);
    return JSON.parse(finished.stdout) as Record<string, unknown>;
  }

  /** `aws bedrock-agentcore invoke-agent-runtime`, the answer saved to an outfile as the CLI does. */
  async function invokeWithCli(
    arn: string,
    session: string,
    payload: unknown,
    extra: string[] = [],
  ) {
    writeFileSync(join(cliDir, "payload.json"), JSON.stringify(payload));
    // fileb:// hands the blob over as it is, in AWS CLI v1 and v2 alike (v2 reads an inline
    // --payload as base64 unless given --cli-binary-format raw-in-base64-out).
    const output = await aws("bedrock-agentcore", [
      "invoke-agent-runtime",
      "--agent-runtime-arn",
      arn,
      "--runtime-session-id",
      session,
      "--content-type",
      "application/json",
      "--payload",
      "fileb://payload.json",
      ...extra,
      "answer.out",
    ]);
    return { output, answer: readFileSync(join(cliDir, "answer.out"), "utf8") };
  }

  describe("the blog post's workflow from Python and the AWS CLI", () => {
    before(async () => {
      // Built straight into the artifact store, where s3://agents/<agentZip> is read from.
      const packaged = await runProgram(
        "bash",
        [packageScript, join(harness().dataDir, "artifacts", "agents", agentZip)],
        // With no network, pip goes on to the machine's local mirror at once instead of retrying
        // the public index for a minute.
        { ...process.env, PIP_RETRIES: "0" },
      );
      assert.equal(packaged.code, 0, packaged.stderr);
      cliDir = mkdtempSync(join(tmpdir(), "berth-aws-cli-"));
    });
    after(() => {
      removeDir(cliDir);
    });

    it("boto3: the blog's snippets (test/python/test_blog_workflow.py)", async () => {
      const finished = await runProgram("python3", ["-m", "unittest", "-v", "test_blog_workflow"], {
        ...clientEnvironment(harness()),
        BLOG_AGENT_PREFIX: agentZip,
      });
      assert.equal(finished.code, 0, finished.stderr + finished.stdout);
      assert.match(finished.stderr, /^OK$/m);
    });

    it("the README's boto3 example runs as written", async () => {
      const finished = await runProgram(
        "python3",
        ["-c", readmePythonBlock()],
        clientEnvironment(harness()),
      );
      assert.equal(finished.code, 0, finished.stderr);
      const lines = finished.stdout.split("\n");
      assert.match(lines[0] ?? "", /^application\/json \{'reply': 'turn 1: you said "hello"'/);
      assert.deepEqual(lines.slice(1, 4), [
        "2",
        "exit code 0 COMPLETED",
        "exit code 143 TIMED_OUT",
      ]);
      assert.equal(lines[4], "app.py", "after the stop, the file written before it");
      assert.match(lines[5] ?? "", /^[0-9a-f]{7,} first commit$/);
      assert.equal(lines[6], "exit code 0 COMPLETED");
    });

    it("AWS CLI: create-agent-runtime, invoke-agent-runtime to an outfile, stop-runtime-session", async () => {
      const created = await aws("bedrock-agentcore-control", [
        "create-agent-runtime",
        "--agent-runtime-name",
        `blog_cli_${process.pid}`,
        "--agent-runtime-artifact",
        JSON.stringify({
          codeConfiguration: {
            code: { s3: { bucket: "agents", prefix: agentZip } },
            runtime: "PYTHON_3_11",
            entryPoint: ["main.py"],
          },
        }),
        "--role-arn",
        "arn:aws:iam::123456789012:role/AgentRuntimeRole",
        "--network-configuration",
        "networkMode=PUBLIC",
        "--filesystem-configurations",
        JSON.stringify([{ sessionStorage: { mountPath: "/mnt/workspace" } }]),
      ]);
      await harness().berth.idle();
      const runtime = await aws("bedrock-agentcore-control", [
        "get-agent-runtime",
        "--agent-runtime-id",
        String(created["agentRuntimeId"]),
      ]);
      assert.equal(runtime["status"], "READY", String(runtime["failureReason"]));
      const arn = String(created["agentRuntimeArn"]);
      const session = `blog-cli-session-${process.pid}-${"0".repeat(24)}`;

      const json = await invokeWithCli(arn, session, { prompt: "Hello from the CLI" });
      assert.equal(json.output["contentType"], "application/json");
      assert.equal(json.output["runtimeSessionId"], session);
      const answer = JSON.parse(json.answer) as Record<string, unknown>;
      assert.equal(answer["reply"], 'turn 1: you said "Hello from the CLI"');

      const streamed = await invokeWithCli(arn, session, { prompt: "stream it" }, [
        "--accept",
        "text/event-stream",
      ]);
      assert.match(String(streamed.output["contentType"]), /^text\/event-stream/);
      const frames = streamed.answer.split("\n\n").filter(Boolean);
      assert.ok(
        frames.every((frame) => frame.startsWith("data: ")),
        streamed.answer,
      );
      const last = JSON.parse(frames.at(-1)?.slice("data: ".length) ?? "") as Record<
        string,
        unknown
      >;
      assert.deepEqual([last["done"], last["turns"]], [true, 2]);

      const stopped = await aws("bedrock-agentcore", [
        "stop-runtime-session",
        "--agent-runtime-arn",
        arn,
        "--runtime-session-id",
        session,
      ]);
      assert.equal(stopped["runtimeSessionId"], session);
      const resumed = await invokeWithCli(arn, session, { prompt: "again" });
      const fresh = JSON.parse(resumed.answer) as Record<string, unknown>;
      assert.equal(fresh["turns"], 1, "the stop ended the session's agent; a new one answers");
    });
  });
});
