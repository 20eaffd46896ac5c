import { spawn } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { once } from "node:events";
import { createInterface } from "node:readline";
import {
  BedrockAgentCoreClient,
  InvokeAgentRuntimeCommandCommand,
} from "@aws-sdk/client-bedrock-agentcore";
import {
  BedrockAgentCoreControlClient,
  CreateAgentRuntimeCommand,
  GetAgentRuntimeCommand,
  type CreateAgentRuntimeCommandInput,
} from "@aws-sdk/client-bedrock-agentcore-control";

export interface Percentiles {
  p50: number;
  p90: number;
  p99: number;
  mean: number;
  samples: number;
}

export function percentiles(samplesMs: number[]): Percentiles {
  const sorted = [...samplesMs].sort((a, b) => a - b);
  const at = (fraction: number): number =>
    round(sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))] ?? NaN);
  return {
    p50: at(0.5),
    p90: at(0.9),
    p99: at(0.99),
    mean: round(sorted.reduce((sum, value) => sum + value, 0) / sorted.length),
    samples: sorted.length,
  };
}

export function round(value: number): number {
  return Math.round(value * 1000) / 1000;
}

export async function timeEach(
  count: number,
  run: (index: number) => Promise<unknown>,
): Promise<number[]> {
  const samples: number[] = [];
  for (let index = 0; index < count; index += 1) {
    const started = performance.now();
    await run(index);
    samples.push(performance.now() - started);
  }
  return samples;
}

/** Alternates the two runs sample by sample, so machine noise falls on both alike. */
export function timeInterleaved(
  count: number,
  first: () => Promise<unknown>,
  second: () => Promise<unknown>,
): Promise<[number[], number[]]> {
  const timed = (run: () => Promise<unknown>) => async () => {
    const started = performance.now();
    await run();
    return performance.now() - started;
  };
  return measureInterleaved(count, timed(first), timed(second));
}

/**
 * Like timeInterleaved, for runs that time only part of their work (e.g. not their teardown):
 * each run returns the milliseconds that count.
 */
export async function measureInterleaved(
  count: number,
  first: () => Promise<number>,
  second: () => Promise<number>,
): Promise<[number[], number[]]> {
  const firstSamples: number[] = [];
  const secondSamples: number[] = [];
  for (let index = 0; index < count; index += 1) {
    firstSamples.push(await first());
    secondSamples.push(await second());
  }
  return [firstSamples, secondSamples];
}

/** Starts a server process and resolves with the first JSON line on stdout whose msg matches. */
export async function startProcess(command: string, args: string[], readyMessage: string) {
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "inherit"] });
  const lines = createInterface({ input: child.stdout });
  const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
    lines.on("line", (text) => {
      const line = JSON.parse(text) as Record<string, unknown>;
      if (line["msg"] === readyMessage) resolve(line);
    });
    child.once("exit", (code) => {
      reject(new Error(`${command} exited (${String(code)}) before it was ready`));
    });
  });
  // Once ready, only drain the server's log: parsing it would cost the measuring process CPU.
  lines.close();
  child.stdout.resume();
  return {
    ready,
    pid: child.pid,
    stop: async () => {
      // Stopping one already stopped is done (an exit event would never come again).
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      await once(child, "exit");
    },
  };
}

export interface BenchBerth {
  url: string;
  pid: number;
  dataDir: string;
  /** The cgroup parent its sandboxes live under, for per-process measurements. */
  cgroupParent: string;
  credentials: { accessKeyId: string; secretAccessKey: string };
  stop(): Promise<void>;
}

/**
 * Runs `berth serve` as its own process on a fresh data directory, with a cgroup parent and uid
 * range of its own so it never touches another server on the host. `prepare` fills the data
 * directory (artifacts) before start.
 */
export async function startBenchBerth(
  options: { args?: string[]; prepare?: (dataDir: string) => void } = {},
): Promise<BenchBerth> {
  const dataDir = mkdtempSync(join(tmpdir(), "berth-bench-"));
  options.prepare?.(dataDir);
  const cgroupParent = `berth-bench-${String(process.pid)}`;
  const uidBase = 5_000_000 + (process.pid % 1000) * 128;
  const berthBin = fileURLToPath(new URL("../bin/berth.ts", import.meta.url));
  const server = await startProcess(
    process.execPath,
    [
      berthBin,
      "serve",
      "--port",
      "0",
      "--data-dir",
      dataDir,
      "--bubblewrap-cgroup-parent",
      cgroupParent,
      "--bubblewrap-uid-base",
      String(uidBase),
      ...(options.args ?? []),
    ],
    "berth listening",
  );
  const credentials = JSON.parse(
    readFileSync(join(dataDir, "credentials.json"), "utf8"),
  ) as BenchBerth["credentials"];
  return {
    url: String(server.ready["url"]),
    pid: server.pid ?? 0,
    dataDir,
    cgroupParent,
    credentials,
    stop: async () => {
      await server.stop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** Official SDK clients for a bench server, one attempt per call (no retries to hide costs). */
export function sdkClients(berth: BenchBerth) {
  const config = {
    endpoint: berth.url,
    region: "us-east-1",
    credentials: berth.credentials,
    maxAttempts: 1,
  };
  return {
    config,
    control: new BedrockAgentCoreControlClient(config),
    data: new BedrockAgentCoreClient(config),
  };
}

/** Copies examples/node-agent into a data directory's artifact store as s3://agents/node-example. */
export function installExampleAgent(dataDir: string): string {
  const target = join(dataDir, "artifacts", "agents", "node-example");
  mkdirSync(join(target, ".."), { recursive: true });
  cpSync(fileURLToPath(new URL("../examples/node-agent", import.meta.url)), target, {
    recursive: true,
  });
  return target;
}

/** Creates a NODE_22 runtime from s3://agents/<prefix> and waits until it is READY; its ARN. */
export async function createReadyRuntime(
  control: BedrockAgentCoreControlClient,
  name: string,
  prefix: string,
  overrides: Partial<CreateAgentRuntimeCommandInput> = {},
): Promise<string> {
  const created = await control.send(
    new CreateAgentRuntimeCommand({
      agentRuntimeName: name,
      agentRuntimeArtifact: {
        codeConfiguration: {
          code: { s3: { bucket: "agents", prefix } },
          runtime: "NODE_22",
          entryPoint: ["main.js"],
        },
      },
      roleArn: undefined,
      ...overrides,
    }),
  );
  for (;;) {
    const got = await control.send(
      new GetAgentRuntimeCommand({ agentRuntimeId: created.agentRuntimeId }),
    );
    if (got.status === "READY") return created.agentRuntimeArn ?? "";
    if (got.status !== "CREATING")
      throw new Error(`runtime ${String(got.status)}: ${String(got.failureReason)}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Runs a command in a session and returns its stdout; throws with its output if it fails. */
export async function commandStdout(
  data: BedrockAgentCoreClient,
  arn: string,
  sessionId: string,
  text: string,
  timeoutSeconds = 600,
): Promise<string> {
  const response = await data.send(
    new InvokeAgentRuntimeCommandCommand({
      agentRuntimeArn: arn,
      runtimeSessionId: sessionId,
      body: { command: text, timeout: timeoutSeconds },
    }),
  );
  let stdout = "";
  let stderr = "";
  for await (const event of response.stream ?? []) {
    stdout += event.chunk?.contentDelta?.stdout ?? "";
    stderr += event.chunk?.contentDelta?.stderr ?? "";
    if (event.chunk?.contentStop !== undefined && event.chunk.contentStop.exitCode !== 0)
      throw new Error(`${text} failed: ${stdout}${stderr}`);
  }
  return stdout;
}
