import assert from "node:assert/strict";
import {
  CreateAgentRuntimeCommand,
  GetAgentRuntimeCommand,
  UpdateAgentRuntimeCommand,
  type CreateAgentRuntimeCommandInput,
} from "@aws-sdk/client-bedrock-agentcore-control";
import type { BedrockAgentCoreControlClient } from "@aws-sdk/client-bedrock-agentcore-control";
import { waitFor } from "./agents.ts";

let counter = 0;

/** The probe agent (test/agents/probe), installed as s3://agents/probe. */
export const probeArtifact = {
  codeConfiguration: {
    code: { s3: { bucket: "agents", prefix: "probe" } },
    runtime: "NODE_22" as const,
    entryPoint: ["main.js"],
  },
};

/** A runtime's session storage at /mnt/workspace, as CreateAgentRuntime and Update take it. */
export const workspace = {
  filesystemConfigurations: [{ sessionStorage: { mountPath: "/mnt/workspace" } }],
};

/**
 * Makes a new version of a probe runtime with session storage (the same code again) and waits
 * until Berth has prepared it, so that the DEFAULT endpoint serves it.
 */
export async function newProbeVersion(
  berth: { control: BedrockAgentCoreControlClient; berth: { idle(): Promise<void> } },
  runtimeId: string,
): Promise<void> {
  await berth.control.send(
    new UpdateAgentRuntimeCommand({
      agentRuntimeId: runtimeId,
      agentRuntimeArtifact: probeArtifact,
      roleArn: undefined,
      networkConfiguration: { networkMode: "PUBLIC" },
      ...workspace,
    }),
  );
  await berth.berth.idle();
}

/** A session id unique in this test process (AgentCore wants 33 to 256 characters). */
export const newSessionId = (label = "s"): string =>
  `${label}-${process.pid}-${(counter += 1)}-${"x".repeat(33)}`;

/**
 * Creates a runtime from the agent installed at s3://agents/<prefix> and waits until its
 * preparation settled with the expected status.
 */
export async function createRuntime(
  berth: { control: BedrockAgentCoreControlClient },
  prefix: string,
  overrides: Partial<CreateAgentRuntimeCommandInput> = {},
  entry = "main.js",
  expectedStatus = "READY",
) {
  const created = await berth.control.send(
    new CreateAgentRuntimeCommand({
      agentRuntimeName: `${prefix.replace(/[^a-zA-Z0-9]/g, "_")}_${process.pid}_${(counter += 1)}`,
      agentRuntimeArtifact: {
        codeConfiguration: {
          code: { s3: { bucket: "agents", prefix } },
          runtime: entry.endsWith(".py") ? "PYTHON_3_12" : "NODE_22",
          entryPoint: [entry],
        },
      },
      roleArn: undefined,
      ...overrides,
    }),
  );
  const got = await waitFor("the runtime's preparation", async () => {
    const runtime = await berth.control.send(
      new GetAgentRuntimeCommand({ agentRuntimeId: created.agentRuntimeId }),
    );
    return runtime.status === "CREATING" ? undefined : runtime;
  });
  assert.equal(got.status, expectedStatus, got.failureReason);
  return {
    arn: created.agentRuntimeArn ?? "",
    id: created.agentRuntimeId ?? "",
    failureReason: got.failureReason,
  };
}
