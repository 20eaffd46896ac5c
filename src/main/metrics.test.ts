import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import type { RequestOutcome } from "../core/observer.ts";
import type { SessionInfo } from "../core/sessions.ts";
import { BerthMetrics, classifyRequest, type MetricsSources } from "./metrics.ts";

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Prometheus' text format, one sample a line (the label values here hold no quotes or commas). */
function samples(text: string): Sample[] {
  return text
    .split("\n")
    .filter((line) => line !== "" && !line.startsWith("#"))
    .map((line) => {
      const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
      assert.ok(match, `a sample line: ${line}`);
      const labels: Record<string, string> = {};
      for (const pair of (match[2] ?? "").matchAll(/(\w+)="([^"]*)"/g))
        labels[pair[1] ?? ""] = pair[2] ?? "";
      return { name: match[1] ?? "", labels, value: Number(match[3]) };
    });
}

/** The value of the one sample of `name` whose labels include `labels`; undefined if none. */
function valueOf(
  all: Sample[],
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  const found = all.filter(
    (sample) =>
      sample.name === name &&
      Object.entries(labels).every(([key, value]) => sample.labels[key] === value),
  );
  assert.ok(found.length <= 1, `one sample of ${name} ${JSON.stringify(labels)}`);
  return found[0]?.value;
}

function outcome(fields: Partial<RequestOutcome>): RequestOutcome {
  return {
    operation: "InvokeAgentRuntime",
    runtimeId: "agent_one-aaaaaaaaaa",
    endpoint: "DEFAULT",
    status: 200,
    errorCode: undefined,
    durationMs: 20,
    ...fields,
  };
}

function session(fields: Partial<SessionInfo>): SessionInfo {
  return {
    runtimeId: "agent_one-aaaaaaaaaa",
    sessionId: "session-0001-aaaaaaaaaaaaaaaaaaaaaaaaa",
    version: 1,
    state: "running",
    startedAt: "2025-01-01T00:00:00.000Z",
    lastActivityAt: "2025-01-01T00:00:00.000Z",
    activeRequests: 0,
    usage: { memoryBytes: 1000, processes: 3, cpuSeconds: 1.5, storageUsedBytes: 4096 },
    ...fields,
  };
}

function fakeSources(sessions: () => SessionInfo[]): MetricsSources {
  return {
    sessions: () => Promise.resolve(sessions()),
    openConnections: () => Promise.resolve(7),
    heartbeatAgeMs: () => undefined,
    nowMs: () => Date.parse("2025-01-01T00:01:00.000Z"),
  };
}

describe("metrics", () => {
  it("classifies answers as AgentCore counts them", () => {
    assert.equal(classifyRequest({ status: 200, errorCode: undefined }), "ok");
    assert.equal(classifyRequest({ status: 101, errorCode: undefined }), "ok");
    assert.equal(classifyRequest({ status: 429, errorCode: "ThrottlingException" }), "throttle");
    assert.equal(
      classifyRequest({ status: 404, errorCode: "ResourceNotFoundException" }),
      "userError",
    );
    assert.equal(classifyRequest({ status: 424, errorCode: "RuntimeClientError" }), "userError");
    assert.equal(
      classifyRequest({ status: 500, errorCode: "InternalServerException" }),
      "systemError",
    );
    // A stream that had begun (200 sent) and then failed counts by its error's status.
    assert.equal(
      classifyRequest({ status: 200, errorCode: "InternalServerException" }),
      "systemError",
    );
    assert.equal(classifyRequest({ status: 101, errorCode: "ThrottlingException" }), "throttle");
  });

  it("counts requests, errors and latency per operation, runtime and endpoint", async () => {
    const metrics = new BerthMetrics({ nodeName: "node-a", maxSessions: 8 });
    const { observer } = metrics;
    observer.requestEnded(outcome({ durationMs: 3 }));
    observer.requestEnded(outcome({ durationMs: 40 }));
    observer.requestEnded(
      outcome({ status: 429, errorCode: "ThrottlingException", durationMs: 1 }),
    );
    observer.requestEnded(outcome({ status: 500, errorCode: "InternalServerException" }));
    observer.requestEnded(
      outcome({ operation: "InvokeAgentRuntimeCommand", endpoint: "prod", durationMs: 2000 }),
    );
    // A runtime that does not exist is no label: the request counts under no runtime.
    observer.requestEnded(
      outcome({
        runtimeId: undefined,
        endpoint: undefined,
        status: 404,
        errorCode: "ResourceNotFoundException",
      }),
    );
    const all = samples(await metrics.scrape());
    const invoke = {
      operation: "InvokeAgentRuntime",
      runtime: "agent_one-aaaaaaaaaa",
      endpoint: "DEFAULT",
    };
    assert.equal(valueOf(all, "berth_invocations_total", invoke), 4);
    assert.equal(valueOf(all, "berth_throttles_total", invoke), 1);
    assert.equal(valueOf(all, "berth_system_errors_total", invoke), 1);
    assert.equal(valueOf(all, "berth_user_errors_total", invoke), undefined);
    const unknown = { operation: "InvokeAgentRuntime", runtime: "", endpoint: "" };
    assert.equal(valueOf(all, "berth_invocations_total", unknown), 1);
    assert.equal(valueOf(all, "berth_user_errors_total", unknown), 1);
    assert.equal(valueOf(all, "berth_latency_seconds_count", invoke), 4);
    assert.equal(valueOf(all, "berth_latency_seconds_bucket", { ...invoke, le: "0.005" }), 2);
    assert.equal(valueOf(all, "berth_latency_seconds_bucket", { ...invoke, le: "0.025" }), 3);
    assert.equal(valueOf(all, "berth_latency_seconds_bucket", { ...invoke, le: "0.05" }), 4);
    const command = { operation: "InvokeAgentRuntimeCommand", endpoint: "prod" };
    assert.equal(valueOf(all, "berth_latency_seconds_bucket", { ...command, le: "1" }), 0);
    assert.equal(valueOf(all, "berth_latency_seconds_bucket", { ...command, le: "2.5" }), 1);
    assert.equal(valueOf(all, "berth_node_info", { node: "node-a" }), 1);
    assert.equal(valueOf(all, "berth_max_sessions"), 8);
    assert.ok(
      all.every(
        (sample) => !("session" in sample.labels) || sample.name.startsWith("berth_session_"),
      ),
      "no request series carries a session id",
    );
  });

  it("counts a request another node forwarded apart, so the cluster counts it once", async () => {
    const metrics = new BerthMetrics({ nodeName: "node-b", maxSessions: 8 });
    const { observer } = metrics;
    // Only a checked signature makes a request forwarded (the handler's forwardedBy), never a
    // header a client may send.
    observer.requestEnded(outcome({ requestId: "from-a", status: 500, forwardedBy: "node-a" }));
    observer.requestEnded(outcome({ requestId: "direct" }));
    const all = samples(await metrics.scrape());
    const invoke = { operation: "InvokeAgentRuntime", runtime: "agent_one-aaaaaaaaaa" };
    assert.equal(valueOf(all, "berth_forwarded_requests_total", invoke), 1);
    assert.equal(valueOf(all, "berth_invocations_total", invoke), 1);
    assert.equal(valueOf(all, "berth_system_errors_total", invoke), undefined);
    assert.equal(valueOf(all, "berth_latency_seconds_count", invoke), 1);
  });

  it("names in docs/observability.md every metric it has, and in its dashboard none it lacks", async () => {
    const metrics = new BerthMetrics({ nodeName: "n", maxSessions: 1 });
    const names = metrics.registry.getMetricsAsArray().map((metric) => metric.name);
    const berthNames = names.filter((name) => name.startsWith("berth_"));
    const doc = readFileSync(new URL("../../docs/observability.md", import.meta.url), "utf8");
    for (const name of berthNames)
      assert.ok(doc.includes(`\`${name}\``), `docs/observability.md lists ${name}`);
    const dashboard = readFileSync(
      new URL("../../deploy/grafana/berth-dashboard.json", import.meta.url),
      "utf8",
    );
    const used = new Set(
      [...dashboard.matchAll(/\b(berth_[a-z_]+|nodejs_[a-z0-9_]+|process_[a-z_]+)/g)].map((match) =>
        (match[1] ?? "").replace(/_(bucket|count|sum)$/, ""),
      ),
    );
    for (const name of used) assert.ok(names.includes(name), `the dashboard's ${name} exists`);
    assert.ok((await metrics.scrape()).length > 0);
  });

  it("times session starts by runtime and outcome, and other steps by name", async () => {
    const metrics = new BerthMetrics({ nodeName: "node-a", maxSessions: 8 });
    const { observer } = metrics;
    const attributes = { runtimeId: "agent_one-aaaaaaaaaa", sessionId: "session-x", version: 1 };
    assert.equal(await observer.step("session.start", attributes, () => Promise.resolve(42)), 42);
    await assert.rejects(
      observer.step("session.start", attributes, () => Promise.reject(new Error("agent exited"))),
      /agent exited/,
    );
    await observer.step("sweep.session-storage", {}, () => Promise.resolve());
    const all = samples(await metrics.scrape());
    const runtime = "agent_one-aaaaaaaaaa";
    assert.equal(
      valueOf(all, "berth_session_start_duration_seconds_count", { runtime, outcome: "ok" }),
      1,
    );
    assert.equal(
      valueOf(all, "berth_session_start_duration_seconds_count", { runtime, outcome: "failed" }),
      1,
    );
    assert.equal(
      valueOf(all, "berth_step_duration_seconds_count", {
        step: "sweep.session-storage",
        outcome: "ok",
      }),
      1,
    );
    assert.ok(all.every((sample) => sample.labels["session"] === undefined));
  });

  it("reads the sessions at each scrape, and forgets those that ended", async () => {
    const metrics = new BerthMetrics({ nodeName: "node-a", maxSessions: 8 });
    let running = [
      session({}),
      session({
        sessionId: "session-0002-bbbbbbbbbbbbbbbbbbbbbbbbb",
        state: "starting",
        usage: { memoryBytes: undefined, processes: undefined, storageUsedBytes: undefined },
      }),
      session({
        runtimeId: "agent_two-bbbbbbbbbb",
        sessionId: "session-0003-ccccccccccccccccccccccccc",
        startedAt: "2025-01-01T00:00:30.000Z",
        checkpoint: { pending: true, durableAt: "2025-01-01T00:00:10.000Z", storedBytes: 512 },
      }),
    ];
    metrics.watch(fakeSources(() => running));
    let all = samples(await metrics.scrape());
    assert.equal(
      valueOf(all, "berth_active_sessions", { runtime: "agent_one-aaaaaaaaaa", state: "running" }),
      1,
    );
    assert.equal(
      valueOf(all, "berth_active_sessions", { runtime: "agent_one-aaaaaaaaaa", state: "starting" }),
      1,
    );
    assert.equal(
      valueOf(all, "berth_active_sessions", { runtime: "agent_two-bbbbbbbbbb", state: "running" }),
      1,
    );
    const first = { session: "session-0001-aaaaaaaaaaaaaaaaaaaaaaaaa" };
    assert.equal(valueOf(all, "berth_session_cpu_seconds_total", first), 1.5);
    assert.equal(valueOf(all, "berth_session_memory_bytes", first), 1000);
    assert.equal(valueOf(all, "berth_session_processes", first), 3);
    assert.equal(valueOf(all, "berth_session_storage_used_bytes", first), 4096);
    assert.equal(valueOf(all, "berth_session_storage_checkpoint_lag_seconds", first), undefined);
    const third = { session: "session-0003-ccccccccccccccccccccccccc" };
    // Changed since its start (00:00:30), later than its last durable checkpoint: 30 s at 00:01.
    assert.equal(valueOf(all, "berth_session_storage_checkpoint_lag_seconds", third), 30);
    assert.equal(valueOf(all, "berth_session_storage_checkpoint_bytes", third), 512);
    // What a sandbox does not tell is left out, not reported as 0.
    const second = { session: "session-0002-bbbbbbbbbbbbbbbbbbbbbbbbb" };
    assert.equal(valueOf(all, "berth_session_memory_bytes", second), undefined);
    assert.equal(valueOf(all, "berth_open_connections"), 7);
    assert.equal(valueOf(all, "berth_cluster_heartbeat_age_seconds"), undefined);

    running = [
      session({
        usage: { memoryBytes: 2000, processes: 4, cpuSeconds: 2.5, storageUsedBytes: 4096 },
      }),
    ];
    all = samples(await metrics.scrape());
    assert.equal(valueOf(all, "berth_session_cpu_seconds_total", first), 2.5);
    assert.equal(valueOf(all, "berth_session_memory_bytes", first), 2000);
    assert.equal(valueOf(all, "berth_session_memory_bytes", third), undefined);
    assert.equal(
      valueOf(all, "berth_active_sessions", { runtime: "agent_two-bbbbbbbbbb" }),
      undefined,
    );
    assert.equal(valueOf(all, "berth_active_sessions", { state: "starting" }), undefined);
  });

  it("keeps Node's process metrics and the event loop's lag", async () => {
    const all = samples(await new BerthMetrics({ nodeName: "n", maxSessions: 1 }).scrape());
    assert.ok(valueOf(all, "process_cpu_seconds_total") !== undefined);
    assert.ok(valueOf(all, "nodejs_eventloop_lag_seconds") !== undefined);
  });
});
