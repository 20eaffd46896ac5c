import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { placeCodeArtifact } from "./support/artifacts.ts";
import { hostSuite, useTestBerth } from "./support/berth.ts";
import { clientEnvironment, requirePythonClients, runProgram } from "./support/python.ts";

describe("python control plane (a host suite: it tests the real parts, as root)", hostSuite, () => {
  // Python clients build on botocore, which signs and parses on its own (no x-amz-content-sha256,
  // its own paginators, client-side checks of required members): a second real client.
  requirePythonClients();
  const harness = useTestBerth([], (berth) => {
    placeCodeArtifact(berth.dataDir, "agents", "cli");
  });

  /** Runs `aws bedrock-agentcore-control <args>` against the test Berth; parses JSON output. */
  async function awsCli(args: string[]) {
    const finished = await runProgram(
      "aws",
      [
        "bedrock-agentcore-control",
        ...args,
        "--endpoint-url",
        harness().berth.url,
        "--output",
        "json",
      ],
      clientEnvironment(harness()),
    );
    return {
      ...finished,
      json: () => JSON.parse(finished.stdout) as Record<string, unknown>,
    };
  }

  describe("Python clients", () => {
    it("boto3: the control-plane workflow suite (test/python/test_control_plane.py)", async () => {
      const finished = await runProgram(
        "python3",
        ["-m", "unittest", "-v", "test_control_plane"],
        clientEnvironment(harness()),
      );
      assert.equal(finished.code, 0, finished.stderr + finished.stdout);
      assert.match(finished.stderr, /^OK$/m);
    });

    it("AWS CLI: create-agent-runtime, get-agent-runtime, list-agent-runtimes, errors", async () => {
      const name = `aws_cli_${process.pid}`;
      const artifact = {
        codeConfiguration: {
          code: { s3: { bucket: "agents", prefix: "cli" } },
          runtime: "NODE_22",
          entryPoint: ["main.js"],
        },
      };
      const created = await awsCli([
        "create-agent-runtime",
        "--agent-runtime-name",
        name,
        "--agent-runtime-artifact",
        JSON.stringify(artifact),
        "--role-arn",
        "arn:aws:iam::123456789012:role/agent",
        "--network-configuration",
        "networkMode=PUBLIC",
        "--filesystem-configurations",
        JSON.stringify([{ sessionStorage: { mountPath: "/mnt/workspace" } }]),
        "--tags",
        "team=cli",
      ]);
      assert.equal(created.code, 0, created.stderr);
      const { agentRuntimeId, agentRuntimeArn, status } = created.json();
      assert.equal(status, "CREATING");
      assert.match(String(agentRuntimeId), new RegExp(`^${name}-[a-zA-Z0-9]{10}$`));
      await harness().berth.idle();

      const got = await awsCli(["get-agent-runtime", "--agent-runtime-id", String(agentRuntimeId)]);
      assert.equal(got.code, 0, got.stderr);
      assert.equal(got.json()["status"], "READY");
      assert.deepEqual(got.json()["filesystemConfigurations"], [
        { sessionStorage: { mountPath: "/mnt/workspace" } },
      ]);
      assert.deepEqual(got.json()["agentRuntimeArtifact"], artifact);

      // The CLI follows nextToken itself; one item per page makes it follow every one.
      const listed = await awsCli(["list-agent-runtimes", "--page-size", "1"]);
      assert.equal(listed.code, 0, listed.stderr);
      const items = listed.json()["agentRuntimes"] as Record<string, unknown>[];
      assert.ok(items.some((item) => item["agentRuntimeId"] === agentRuntimeId));

      const tags = await awsCli([
        "list-tags-for-resource",
        "--resource-arn",
        String(agentRuntimeArn),
      ]);
      assert.equal(tags.code, 0, tags.stderr);
      assert.deepEqual(tags.json()["tags"], { team: "cli" });

      const missing = await awsCli([
        "get-agent-runtime",
        "--agent-runtime-id",
        "missing-AbCdEf1234",
      ]);
      assert.notEqual(missing.code, 0);
      assert.match(missing.stderr, /ResourceNotFoundException/);
    });
  });
});
