// Idle expiry of many sessions at once: how late each session ends after its idle deadline,
// once with nothing else going on and once while other sessions are starting, against one
// session expiring alone (the floor: the sweep's interval, a /ping and the sandbox's teardown)
// in the same run. Berth runs as its own process (`berth serve`) with a 1 s idle timeout and a
// 50 ms sweep; the client is the official SDK. Lateness is read from Berth's own log: its
// "session ended" record, against the moment the session's last invocation was answered plus
// the idle timeout. Prints JSON. Settings: BENCH_SESSIONS (expiring together, default 200),
// BENCH_STARTING (sessions started while they expire, default 50), BENCH_ALONE (sessions
// expiring one at a time for the baseline, default 5).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  InvokeAgentRuntimeCommand,
  type BedrockAgentCoreClient,
} from "@aws-sdk/client-bedrock-agentcore";
import { agentSources, installAgent, waitFor } from "../test/support/agents.ts";
import { quickLifecycleArgs } from "../test/support/berth.ts";
import { clientsOf, spawnBerth } from "../test/support/berth-process.ts";
import { createReadyRuntime, percentiles, round } from "./support.ts";

const expiringCount = Number(process.env["BENCH_SESSIONS"] ?? 200);
const startingCount = Number(process.env["BENCH_STARTING"] ?? 50);
const aloneCount = Number(process.env["BENCH_ALONE"] ?? 5);
const idleTimeoutMs = 1000;
/** Requests in flight at once while sessions are started or touched. */
const concurrency = 8;

/** Invocations repeated because their session had ended early (see invokeAgain). */
let retried = 0;
/** When each session ended (Unix ms), by session id: see sessionEndings(). */
const endings = new Map<string, number[]>();
let linesRead = 0;
const dataDir = mkdtempSync(join(tmpdir(), "berth-bench-expiry-"));
installAgent(dataDir, agentSources.probe, "probe");
const berth = await spawnBerth(
  [
    "--data-dir",
    dataDir,
    ...quickLifecycleArgs,
    "--sandbox-outbound",
    "none",
    "--max-sessions",
    String(expiringCount + startingCount + 8),
  ],
  {},
  [
    "--bubblewrap-cgroup-parent",
    `berth-bench-expiry-${String(process.pid)}`,
    "--bubblewrap-uid-base",
    String(5_500_000 + (process.pid % 1000) * 1024),
  ],
);
const { control, data } = clientsOf(berth.url, dataDir);

try {
  const arn = await createReadyRuntime(control, "bench_expiry", "probe", {
    lifecycleConfiguration: { idleRuntimeSessionTimeout: idleTimeoutMs / 1000, maxLifetime: 3600 },
  });
  const invoke = (sessionId: string, body: Record<string, unknown>) =>
    invokeProbe(data, arn, sessionId, body);
  // On a loaded machine a busy agent's /ping can outlast agentPingTimeoutMs, which ends its
  // session: the next invocation then answers an error, and a retry starts the session again.
  const invokeAgain: Invoke = (sessionId, body) =>
    invoke(sessionId, body).catch(() => {
      retried += 1;
      return invoke(sessionId, body);
    });

  const alone: number[] = [];
  for (let index = 0; index < aloneCount; index += 1) {
    const [sessionId = ""] = await startBusySessions(invokeAgain, 1, `alone-${index}`);
    const deadlines = await becomeIdle(invokeAgain, [sessionId]);
    alone.push(...(await latenessOf(deadlines)));
  }

  const idleSessions = await startBusySessions(invokeAgain, expiringCount, "idle");
  const idle = await latenessOf(await becomeIdle(invokeAgain, idleSessions));

  const busySessions = await startBusySessions(invokeAgain, expiringCount, "busy");
  const deadlines = await becomeIdle(invokeAgain, busySessions);
  // Start the others as the first deadline passes: they start while the sessions expire.
  const firstDeadline = Math.min(...deadlines.values());
  await new Promise((resolve) => setTimeout(resolve, Math.max(0, firstDeadline - Date.now())));
  const starts = timeStarts(invoke, startingCount);
  const whileStarting = await latenessOf(deadlines);
  // (They expire a second after their start: nothing to stop.)
  const started = await starts;

  console.log(
    JSON.stringify(
      {
        benchmark: "session-expiry",
        node: process.version,
        idleTimeoutMs,
        sweepIntervalMs: 50,
        lateMsAlone: summary(alone),
        expiringTogether: expiringCount,
        lateMsIdle: summary(idle),
        lateMsWhileStarting: summary(whileStarting),
        invocationsRetried: retried,
        startingMeanwhile: {
          sessions: startingCount,
          firstInvokeMs: percentiles(started.durationsMs),
          failed: started.failures,
        },
      },
      null,
      2,
    ),
  );
} finally {
  control.destroy();
  data.destroy();
  berth.child.kill("SIGTERM");
  await berth.exit;
  rmSync(dataDir, { recursive: true, force: true });
}

/** One invocation of the probe agent (test/agents/probe) through the SDK; its JSON answer. */
async function invokeProbe(
  client: BedrockAgentCoreClient,
  arn: string,
  sessionId: string,
  body: Record<string, unknown>,
): Promise<Record<string, unknown>> {
  const response = await client.send(
    new InvokeAgentRuntimeCommand({
      agentRuntimeArn: arn,
      runtimeSessionId: sessionId,
      payload: Buffer.from(JSON.stringify(body)),
      contentType: "application/json",
    }),
  );
  return JSON.parse((await response.response?.transformToString()) ?? "{}") as Record<
    string,
    unknown
  >;
}

type Invoke = (sessionId: string, body: Record<string, unknown>) => Promise<unknown>;

/**
 * Starts `count` sessions whose agents say HealthyBusy: the sweep counts that as activity, so
 * none expires while the rest are still starting.
 */
async function startBusySessions(invoke: Invoke, count: number, label: string): Promise<string[]> {
  const sessions = Array.from({ length: count }, (_, index) => sessionIdOf(label, index));
  await eachLimited(sessions, (sessionId) => invoke(sessionId, { action: "busy", on: true }));
  return sessions;
}

/**
 * Ends every session's busy spell with one invocation each, as close together as the server
 * answers them; returns each session's idle deadline (Unix ms): its answer plus the timeout.
 */
async function becomeIdle(invoke: Invoke, sessions: string[]): Promise<Map<string, number>> {
  const deadlines = new Map<string, number>();
  await eachLimited(sessions, async (sessionId) => {
    await invoke(sessionId, { action: "busy", on: false });
    deadlines.set(sessionId, Date.now() + idleTimeoutMs);
  });
  return deadlines;
}

/**
 * How late each session ended after its deadline, in ms: Berth's "session ended" record for it
 * that came after it went idle (an earlier one is a session that ended early and was retried).
 */
async function latenessOf(deadlines: Map<string, number>): Promise<number[]> {
  const endedAt = (sessionId: string, deadline: number) =>
    sessionEndings()
      .get(sessionId)
      ?.find((time) => time >= deadline - idleTimeoutMs);
  return waitFor(
    `${deadlines.size} sessions to end`,
    () => {
      const lateness = [...deadlines].map(([sessionId, deadline]) => {
        const ended = endedAt(sessionId, deadline);
        return ended === undefined ? undefined : ended - deadline;
      });
      return lateness.every((late) => late !== undefined) ? lateness : undefined;
    },
    120_000,
  );
}

/** When each session ended (Unix ms), from Berth's log lines read so far. */
function sessionEndings(): Map<string, number[]> {
  for (; linesRead < berth.lines.length; linesRead += 1) {
    const line = berth.lines[linesRead];
    if (line?.["msg"] !== "session ended") continue;
    const sessionId = String(line["sessionId"]);
    endings.set(sessionId, [...(endings.get(sessionId) ?? []), Date.parse(String(line["time"]))]);
  }
  return endings;
}

/** Starts `count` new sessions (their first invocation), timing each, failures counted. */
async function timeStarts(invoke: Invoke, count: number) {
  const sessions = Array.from({ length: count }, (_, index) => sessionIdOf("starting", index));
  const durationsMs: number[] = [];
  const failures: string[] = [];
  await eachLimited(sessions, async (sessionId) => {
    const startedAt = performance.now();
    try {
      await invoke(sessionId, { action: "whoami" });
      durationsMs.push(performance.now() - startedAt);
    } catch (error) {
      failures.push((error as Error).name);
    }
  });
  return { durationsMs, failures };
}

/** Runs `work` for every item, at most `concurrency` at once. */
async function eachLimited<T>(items: T[], work: (item: T) => Promise<unknown>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const item = items[next] as T;
      next += 1;
      await work(item);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker));
}

function sessionIdOf(label: string, index: number): string {
  return `expiry-${label}-${String(process.pid)}-${String(index)}-${"e".repeat(24)}`;
}

function summary(latenessMs: number[]) {
  const sorted = [...latenessMs].sort((first, second) => first - second);
  const at = (fraction: number) =>
    round(sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))] ?? NaN);
  return {
    p50: at(0.5),
    p95: at(0.95),
    max: round(sorted.at(-1) ?? NaN),
    min: round(sorted[0] ?? NaN),
    samples: sorted.length,
  };
}
