import assert from "node:assert/strict";
import {
  InvokeAgentRuntimeCommand,
  InvokeAgentRuntimeCommandCommand,
  type BedrockAgentCoreClient,
  type InvokeAgentRuntimeCommandCommandOutput,
  type InvokeAgentRuntimeCommandStreamOutput,
} from "@aws-sdk/client-bedrock-agentcore";

export interface FinishedCommand {
  events: InvokeAgentRuntimeCommandStreamOutput[];
  stdout: string;
  stderr: string;
  exitCode: number | undefined;
  status: string | undefined;
}

/** Reads a command's whole event stream. */
export async function collect(
  response: InvokeAgentRuntimeCommandCommandOutput,
): Promise<FinishedCommand> {
  const events: InvokeAgentRuntimeCommandStreamOutput[] = [];
  for await (const event of response.stream ?? []) events.push(event);
  const deltas = events.flatMap((event) => event.chunk?.contentDelta ?? []);
  const stop = events.at(-1)?.chunk?.contentStop;
  return {
    events,
    stdout: deltas.map((delta) => delta.stdout ?? "").join(""),
    stderr: deltas.map((delta) => delta.stderr ?? "").join(""),
    exitCode: stop?.exitCode,
    status: stop?.status,
  };
}

/** Runs a command in a session through the official SDK and reads all it sends. */
export async function runCommand(
  data: BedrockAgentCoreClient,
  agentRuntimeArn: string,
  runtimeSessionId: string,
  command: string,
  timeout?: number,
): Promise<FinishedCommand> {
  return collect(
    await data.send(
      new InvokeAgentRuntimeCommandCommand({
        agentRuntimeArn,
        runtimeSessionId,
        body: { command, ...(timeout === undefined ? {} : { timeout }) },
      }),
    ),
  );
}

/** Invokes the probe agent (test/agents/probe) with a JSON payload and parses its JSON answer. */
export async function invokeProbe(
  data: BedrockAgentCoreClient,
  agentRuntimeArn: string,
  runtimeSessionId: string,
  payload: unknown,
): Promise<Record<string, unknown>> {
  const response = await data.send(
    new InvokeAgentRuntimeCommand({
      agentRuntimeArn,
      runtimeSessionId,
      payload: Buffer.from(JSON.stringify(payload)),
    }),
  );
  const text = (await response.response?.transformToString()) ?? "";
  assert.ok(text.startsWith("{"), `the probe answered JSON: ${text}`);
  return JSON.parse(text) as Record<string, unknown>;
}
