import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import * as data from "@aws-sdk/client-bedrock-agentcore";
import * as control from "@aws-sdk/client-bedrock-agentcore-control";
import { errorCodes } from "../src/core/errors.ts";
import { agentSources, installAgent } from "./support/agents.ts";
import { hostSuite, useTestBerth } from "./support/berth.ts";
import { clientEnvironment, requirePythonClients, runProgram } from "./support/python.ts";

describe("model coverage (a host suite: it tests the real parts, as root)", hostSuite, () => {
  // Every runtime operation of AgentCore's models must reach Berth: served (and answering in the
  // model's shape), or refused with the documented "not supported by Berth" ValidationException.
  // Never an UnknownOperationException, which looks like a wrong endpoint.

  requirePythonClients();

  const harness = useTestBerth(["--sandbox-outbound", "none"], (berth) => {
    installAgent(berth.dataDir, agentSources.probe, "probe");
    installAgent(berth.dataDir, fileURLToPath(new URL("./agents/a2a", import.meta.url)), "a2a");
  });

  const runtimePaths = ["/runtimes/", "/tags/", "/resourcepolicy/", "/capacity-providers"];
  const notSupportedMessage = /is not supported by Berth: /;

  /** The operations docs/api.md says Berth does not serve (its table's first column). */
  function documentedNotSupported(): Set<string> {
    const doc = readFileSync(new URL("../docs/api.md", import.meta.url), "utf8");
    const section = doc.split("### Operations Berth does not serve")[1]?.split("\n#")[0] ?? "";
    const names = section
      .split("\n")
      .filter((line) => line.startsWith("| ") && !line.startsWith("| operation"))
      .flatMap((line) => (line.split("|")[1] ?? "").split(","))
      .map((name) => name.trim());
    assert.ok(names.length > 0, "docs/api.md has the table of operations Berth does not serve");
    return new Set(names);
  }

  interface Outcome {
    service: string;
    operation: string;
    http: string;
    outcome: "served" | "not-supported" | "signing" | "failed";
    detail: string;
  }

  describe("every runtime operation of AgentCore's models", () => {
    it("boto3: each of botocore's is served in the model's shape or documented as not supported", async (context) => {
      const finished = await runProgram(
        "python3",
        ["model_coverage.py"],
        clientEnvironment(harness()),
      );
      assert.equal(finished.code, 0, finished.stderr);
      const outcomes = finished.stdout
        .split("\n")
        .filter(Boolean)
        .map((line) => JSON.parse(line) as Outcome);
      const names = outcomes.map((outcome) => outcome.operation);
      // The selection itself: the operations a runtime user calls are all among those sent.
      for (const expected of [
        "CreateAgentRuntime",
        "ListAgentRuntimeVersions",
        "DeleteAgentRuntimeEndpoint",
        "TagResource",
        "UntagResource",
        "ListTagsForResource",
        "InvokeAgentRuntime",
        "InvokeAgentRuntimeCommand",
        "StopRuntimeSession",
        "GetAgentCard",
        "PutResourcePolicy",
      ]) {
        assert.ok(names.includes(expected), `${expected} was sent`);
      }
      const documented = documentedNotSupported();
      for (const outcome of outcomes) {
        const where = `${outcome.operation} (${outcome.http}): ${outcome.detail}`;
        if (outcome.outcome === "signing") {
          // boto3's invoke signing belongs to the data-plane work, not to this check.
          context.diagnostic(`skipped, signature refused: ${where}`);
          continue;
        }
        assert.ok(["served", "not-supported"].includes(outcome.outcome), where);
        assert.equal(
          documented.has(outcome.operation),
          outcome.outcome === "not-supported",
          `docs/api.md lists exactly the operations Berth does not serve: ${where}`,
        );
      }
    });

    it("JavaScript SDK: each command on a runtime path reaches an operation", async () => {
      const documented = documentedNotSupported();
      const commands = [...runtimeCommands(control), ...runtimeCommands(data)];
      assert.ok(commands.length >= 25, `found ${commands.length} runtime commands in the SDKs`);
      const config = {
        endpoint: harness().berth.url,
        region: harness().settings.region,
        credentials: harness().berth.credentials,
        maxAttempts: 1,
      };
      const clients = {
        control: new control.BedrockAgentCoreControlClient(config),
        data: new data.BedrockAgentCoreClient(config),
      };
      try {
        for (const command of commands) {
          const client = command.service === "control" ? clients.control : clients.data;
          const where = `${command.name} (${command.method} ${command.path})`;
          const error = await sendToNothing(client, command);
          if (error === undefined) {
            // Only a list with nothing to aim at can succeed here; it is served.
            assert.ok(!documented.has(command.name), `${where} succeeded`);
            continue;
          }
          assert.ok(
            (errorCodes as readonly string[]).includes(error.name) &&
              error.name !== "UnknownOperationException",
            `${where} answered ${error.name}: ${error.message}`,
          );
          if (documented.has(command.name)) {
            assert.equal(error.name, "ValidationException", where);
            assert.match(error.message, notSupportedMessage, where);
          } else {
            assert.doesNotMatch(error.message, notSupportedMessage, where);
          }
        }
      } finally {
        clients.control.destroy();
        clients.data.destroy();
      }
    });
  });

  interface RuntimeCommand {
    service: "control" | "data";
    name: string;
    method: string;
    path: string;
    build: (input: Record<string, unknown>) => unknown;
  }

  /** The SDK's commands whose HTTP path is a runtime path, read from each command's schema. */
  function runtimeCommands(sdk: Record<string, unknown>): RuntimeCommand[] {
    const service = sdk === control ? "control" : "data";
    return Object.entries(sdk).flatMap(([exportName, value]) => {
      if (!exportName.endsWith("Command") || typeof value !== "function") return [];
      const Command = value as new (input: Record<string, unknown>) => { schema?: unknown[] };
      const traits = new Command({}).schema?.[3] as { http?: [string, string, number] } | undefined;
      const [method, path] = traits?.http ?? ["", ""];
      if (!runtimePaths.some((prefix) => path.startsWith(prefix))) return [];
      return [
        {
          service,
          name: exportName.slice(0, -"Command".length),
          method,
          path,
          build: (input) => new Command(input),
        },
      ];
    });
  }

  /**
   * Sends a command aimed at resources that do not exist (every path label filled in), so no
   * served operation can change anything. Returns the error it got, whose type says whether Berth
   * routed it, or undefined when it succeeded.
   */
  async function sendToNothing(
    client: { send: (command: never) => Promise<unknown> },
    command: RuntimeCommand,
  ): Promise<Error | undefined> {
    const missingArn =
      "arn:aws:bedrock-agentcore:us-east-1:123456789012:runtime/missing-AbCdEf1234";
    const labels = [...command.path.matchAll(/\{(\w+)\}/g)].map((match) => match[1] ?? "");
    const input = Object.fromEntries(
      labels.map((label) => [label, label.endsWith("Arn") ? missingArn : "missing-AbCdEf1234"]),
    );
    try {
      await client.send(command.build(input) as never);
      return undefined;
    } catch (error) {
      assert.ok(error instanceof Error);
      return error;
    }
  }
});
