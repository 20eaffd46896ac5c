// Sessions: cold start, warm invoke and per-session memory, each against a baseline measured in
// the same run. Berth runs as its own process (`berth serve`); the client is the official SDK.
// Prints JSON. Settings: BENCH_COLD (samples, default 30), BENCH_WARM (default 300),
// BENCH_DENSITY (idle sessions to hold, default 40).
import { spawn } from "node:child_process";
import { sandboxPids } from "../test/support/cgroups.ts";
import { cpSync, mkdirSync, readFileSync } from "node:fs";
import { Agent, request } from "node:http";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  BedrockAgentCoreClient,
  InvokeAgentRuntimeCommand,
  StopRuntimeSessionCommand,
} from "@aws-sdk/client-bedrock-agentcore";
import { BedrockAgentCoreControlClient } from "@aws-sdk/client-bedrock-agentcore-control";
import {
  createReadyRuntime,
  measureInterleaved,
  percentiles,
  round,
  startBenchBerth,
  timeInterleaved,
} from "./support.ts";

const coldSamples = Number(process.env["BENCH_COLD"] ?? 30);
const warmSamples = Number(process.env["BENCH_WARM"] ?? 300);
const densitySessions = Number(process.env["BENCH_DENSITY"] ?? 40);
const agentDir = fileURLToPath(new URL("../examples/node-agent", import.meta.url));
const payload = JSON.stringify({ prompt: "hello" });

const berth = await startBenchBerth({
  args: ["--max-sessions", String(densitySessions + 8)],
  prepare: (dataDir) => {
    mkdirSync(join(dataDir, "artifacts", "agents"), { recursive: true });
    cpSync(agentDir, join(dataDir, "artifacts", "agents", "node-example"), { recursive: true });
  },
});
const { cgroupParent, credentials } = berth;
const clientConfig = {
  endpoint: berth.url,
  region: "us-east-1",
  credentials,
  maxAttempts: 1,
};
const control = new BedrockAgentCoreControlClient(clientConfig);
const data = new BedrockAgentCoreClient(clientConfig);

const arn = await createReadyRuntime(control, "bench_agent", "node-example");
let sessionCounter = 0;
const newSession = () =>
  `bench-session-${String(process.pid)}-${String((sessionCounter += 1))}-${"b".repeat(24)}`;

async function invokeBerth(sessionId: string): Promise<string> {
  const response = await data.send(
    new InvokeAgentRuntimeCommand({
      agentRuntimeArn: arn,
      runtimeSessionId: sessionId,
      payload: Buffer.from(payload),
      contentType: "application/json",
    }),
  );
  return (await response.response?.transformToString()) ?? "";
}

// --- the baseline: the same agent started directly on the host, no sandbox, plain HTTP ---
const keepAlive = new Agent({ keepAlive: true });
function directRequest(
  method: string,
  path: string,
  body?: string,
  agent: Agent | false = keepAlive,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const outgoing = request(
      {
        host: "127.0.0.1",
        port: 8080,
        method,
        path,
        agent,
        headers:
          body === undefined
            ? {}
            : {
                "content-type": "application/json",
                "x-amzn-bedrock-agentcore-runtime-session-id": newSession(),
              },
      },
      (response) => {
        let text = "";
        response.on("data", (chunk: Buffer) => (text += chunk.toString("utf8")));
        response.on("end", () => {
          resolve(text);
        });
      },
    );
    outgoing.on("error", reject);
    outgoing.end(body);
  });
}

/** Start to first answer, not counting the teardown after it. */
async function coldDirect(): Promise<number> {
  const startedAt = performance.now();
  const child = spawn(process.execPath, ["main.js"], {
    cwd: agentDir,
    stdio: "ignore",
    env: { PATH: process.env["PATH"], PORT: "8080" },
  });
  // The same readiness policy Berth uses: poll /ping, backing off from 1 ms to 5 ms.
  for (let attempt = 0; ; attempt += 1) {
    try {
      await directRequest("GET", "/ping", undefined, false);
      break;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, Math.min(5, 1 + attempt)));
    }
  }
  await directRequest("POST", "/invocations", payload, false);
  const elapsed = performance.now() - startedAt;
  child.kill("SIGKILL");
  await new Promise((resolve) => child.once("exit", resolve));
  return elapsed;
}

/** First invoke of a new session, not counting StopRuntimeSession after it. */
async function coldBerth(): Promise<number> {
  const sessionId = newSession();
  const startedAt = performance.now();
  await invokeBerth(sessionId);
  const elapsed = performance.now() - startedAt;
  await data.send(
    new StopRuntimeSessionCommand({ agentRuntimeArn: arn, runtimeSessionId: sessionId }),
  );
  return elapsed;
}

await coldBerth(); // warm the artifact path and the SDK client once
await coldDirect();
const [coldBerthMs, coldDirectMs] = await measureInterleaved(coldSamples, coldBerth, coldDirect);

// --- warm invoke: one long-lived session against one long-lived direct agent ---
const warmSession = newSession();
await invokeBerth(warmSession);
const direct = spawn(process.execPath, ["main.js"], {
  cwd: agentDir,
  stdio: "ignore",
  env: { PATH: process.env["PATH"], PORT: "8080" },
});
for (;;) {
  try {
    await directRequest("GET", "/ping");
    break;
  } catch {
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
for (let index = 0; index < 30; index += 1) {
  await invokeBerth(warmSession);
  await directRequest("POST", "/invocations", payload);
}
const [warmBerthMs, warmDirectMs] = await timeInterleaved(
  warmSamples,
  () => invokeBerth(warmSession),
  () => directRequest("POST", "/invocations", payload),
);
direct.kill("SIGKILL");
await data.send(
  new StopRuntimeSessionCommand({ agentRuntimeArn: arn, runtimeSessionId: warmSession }),
);

// --- density: what each idle session costs beyond its agent's own process ---
const berthRssBefore = rssBytes(berth.pid);
const idleSessions = Array.from({ length: densitySessions }, () => newSession());
for (const sessionId of idleSessions) await invokeBerth(sessionId);
await new Promise((resolve) => setTimeout(resolve, 500)); // let start-up garbage be collected
const berthRssAfter = rssBytes(berth.pid);
const sandboxProcesses = sandboxPids(cgroupParent).map((pid) => ({
  pid,
  command: commandOf(pid),
  pss: pssBytes(pid),
}));
// Berth's own processes in a sandbox; everything else is the agent's (Node names its main thread
// "MainThread", so the agent is recognised by not being a helper).
// berth-bridge runs as /run/berth/bridge, so its comm is "bridge".
const helperCommands = new Set(["bwrap", "bridge", "slirp4netns"]);
const isHelper = (process: { command: string }) => helperCommands.has(process.command);
const agentPss = sum(
  sandboxProcesses.filter((process) => !isHelper(process)).map((process) => process.pss),
);
const helperPss = sum(sandboxProcesses.filter(isHelper).map((process) => process.pss));
const helperBytesByCommand: Record<string, number> = {};
for (const process of sandboxProcesses.filter(isHelper)) {
  helperBytesByCommand[process.command] =
    (helperBytesByCommand[process.command] ?? 0) + process.pss;
}
const helperByCommand = Object.fromEntries(
  Object.entries(helperBytesByCommand).map(([command, bytes]) => [
    command,
    round(bytes / densitySessions / 2 ** 20),
  ]),
);
const berthAddedPerSession = (berthRssAfter - berthRssBefore) / densitySessions;
const overheadPerSession = berthAddedPerSession + helperPss / densitySessions;
const perSessionTotal = overheadPerSession + agentPss / densitySessions;
const memAvailable =
  Number(/MemAvailable:\s+(\d+)/.exec(readFileSync("/proc/meminfo", "utf8"))?.[1] ?? 0) * 1024;

const coldBerthStats = percentiles(coldBerthMs);
const coldDirectStats = percentiles(coldDirectMs);
const warmBerthStats = percentiles(warmBerthMs);
const warmDirectStats = percentiles(warmDirectMs);
console.log(
  JSON.stringify(
    {
      benchmark: "sessions",
      node: process.version,
      coldStart: {
        berthFirstInvoke: coldBerthStats,
        directStartAndRequest: coldDirectStats,
        addedP50Ms: round(coldBerthStats.p50 - coldDirectStats.p50),
        target: "at most 15 ms added at p50",
      },
      warmInvoke: {
        berthSdk: warmBerthStats,
        directHttp: warmDirectStats,
        addedP50Ms: round(warmBerthStats.p50 - warmDirectStats.p50),
        target: "at most 2 ms added at p50",
      },
      density: {
        idleSessions: densitySessions,
        berthRssAddedPerSessionMiB: round(berthAddedPerSession / 2 ** 20),
        sandboxHelpersPssPerSessionMiB: round(helperPss / densitySessions / 2 ** 20),
        helpersByCommandMiB: helperByCommand,
        overheadPerSessionMiB: round(overheadPerSession / 2 ** 20),
        agentPssPerSessionMiB: round(agentPss / densitySessions / 2 ** 20),
        target: "overhead at most 8 MB per idle session",
        memAvailableMiB: round(memAvailable / 2 ** 20),
        idleSessionsThisMachineHoldsEstimate: Math.floor(memAvailable / perSessionTotal),
      },
    },
    null,
    2,
  ),
);

control.destroy();
data.destroy();
keepAlive.destroy();
await berth.stop();

function commandOf(pid: number): string {
  return readFileSync(`/proc/${String(pid)}/comm`, "utf8").trim();
}

function pssBytes(pid: number): number {
  const text = readFileSync(`/proc/${String(pid)}/smaps_rollup`, "utf8");
  return Number(/^Pss:\s+(\d+) kB/m.exec(text)?.[1] ?? 0) * 1024;
}

function rssBytes(pid: number): number {
  return (
    Number(
      /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${String(pid)}/status`, "utf8"))?.[1] ?? 0,
    ) * 1024
  );
}

function sum(values: number[]): number {
  return values.reduce((total, value) => total + value, 0);
}
