import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { connect } from "node:net";
import { after, before, describe, it } from "node:test";
import { InvokeAgentRuntimeCommand } from "@aws-sdk/client-bedrock-agentcore";
import { agentSources, installAgent, waitFor } from "./support/agents.ts";
import {
  hostSuite,
  makeDataDir,
  removeDir,
  startTestBerth,
  useTestBerth,
} from "./support/berth.ts";
import { freePort } from "./support/ports.ts";
import { invokeProbe, runCommand } from "./support/commands.ts";
import { prometheusMissing, startPrometheus, type TestPrometheus } from "./support/prometheus.ts";
import { createRuntime, newSessionId, workspace } from "./support/runtimes.ts";

const missing = prometheusMissing();
const dashboardPath = new URL("../deploy/grafana/berth-dashboard.json", import.meta.url);

describe(
  "Prometheus scraping Berth's metrics",
  { ...hostSuite, ...(missing ? { skip: missing } : {}) },
  () => {
    const harness = useTestBerth(
      // One held body fills the unauthenticated buffer: the next one is throttled (429).
      ["--metrics-port", "0", "--max-unauthenticated-buffer-bytes", "65536"],
      (berth) => {
        installAgent(berth.dataDir, agentSources.probe, "probe");
      },
    );
    let prometheus: TestPrometheus | undefined;
    before(async () => {
      const target = harness().berth.metricsUrl;
      assert.ok(target !== undefined, "metrics are on");
      prometheus = await startPrometheus(target);
    });
    after(async () => {
      await prometheus?.stop();
    });

    /** The value of the one series `promql` selects, once Prometheus has it and `wanted` holds. */
    async function untilValue(promql: string, wanted: (value: number) => boolean): Promise<number> {
      let last: unknown;
      try {
        return await waitFor(
          promql,
          async () => {
            const result = (await prometheus?.query(promql)) ?? [];
            last = result;
            if (result.length !== 1) return undefined;
            const value = result[0]?.value ?? Number.NaN;
            return wanted(value) ? value : undefined;
          },
          30_000,
        );
      } catch (error) {
        throw new Error(`${promql}: last answer ${JSON.stringify(last)}`, { cause: error });
      }
    }
    const equals = (expected: number) => (value: number) => value === expected;

    it("counts invocations, commands and errors per runtime and endpoint, with latency histograms", async () => {
      const berth = harness();
      const runtime = await createRuntime(berth, "probe", workspace);
      const sessionId = newSessionId("metrics");
      for (let count = 0; count < 3; count += 1)
        await invokeProbe(berth.data, runtime.arn, sessionId, { action: "whoami" });
      // Burns half a second of CPU in the session, where its cgroup counts it.
      const burnt = await runCommand(
        berth.data,
        runtime.arn,
        sessionId,
        "node -e 'const end = Date.now() + 500; while (Date.now() < end);' && echo burnt",
      );
      assert.equal(burnt.stdout, "burnt\n");
      await assert.rejects(
        berth.data.send(
          new InvokeAgentRuntimeCommand({
            agentRuntimeArn: runtime.arn.replace(/[^/]+$/, "absent_runtime-aaaaaaaaaa"),
            runtimeSessionId: newSessionId("absent"),
            payload: Buffer.from("{}"),
          }),
        ),
        { name: "ResourceNotFoundException" },
      );
      assert.equal(
        await throttledRequest(berth.berth.url, berth.berth.credentials.accessKeyId),
        429,
      );

      const invoke = `operation="InvokeAgentRuntime",runtime="${runtime.id}",endpoint="DEFAULT"`;
      const command = `operation="InvokeAgentRuntimeCommand",runtime="${runtime.id}",endpoint="DEFAULT"`;
      await untilValue(`berth_invocations_total{${invoke}}`, equals(3));
      await untilValue(`berth_invocations_total{${command}}`, equals(1));
      await untilValue(`berth_latency_seconds_count{${invoke}}`, equals(3));
      await untilValue(`berth_latency_seconds_bucket{${invoke},le="+Inf"}`, equals(3));
      // The command took its half second of CPU: above the 0.25 s bucket, within the 10 s one.
      await untilValue(`berth_latency_seconds_bucket{${command},le="0.25"}`, equals(0));
      await untilValue(`berth_latency_seconds_bucket{${command},le="10"}`, equals(1));
      const p99 = await untilValue(
        `histogram_quantile(0.99, sum by (le) (berth_latency_seconds_bucket{${command}}))`,
        (value) => value > 0.25,
      );
      assert.ok(p99 <= 10, `p99 of one command within its bucket: ${p99}`);
      // A runtime that does not exist is no label: it counts under an empty runtime.
      await untilValue(
        `berth_user_errors_total{operation="InvokeAgentRuntime",runtime="",endpoint=""}`,
        equals(1),
      );
      // POST /runtimes/ is ListAgentRuntimes (as on AgentCore).
      await untilValue(`berth_throttles_total{operation="ListAgentRuntimes"}`, equals(1));
      // The scrapes above saw every request: none was Berth's fault.
      assert.deepEqual(await prometheus?.query("berth_system_errors_total"), []);

      await untilValue(
        `berth_session_start_duration_seconds_count{runtime="${runtime.id}",outcome="ok"}`,
        equals(1),
      );
      await untilValue(`berth_active_sessions{runtime="${runtime.id}",state="running"}`, equals(1));
      const session = `runtime="${runtime.id}",session="${sessionId}"`;
      await untilValue(`berth_session_cpu_seconds_total{${session}}`, (seconds) => seconds >= 0.4);
      await untilValue(`berth_session_memory_bytes{${session}}`, (bytes) => bytes > 1_000_000);
      await untilValue(`berth_session_processes{${session}}`, (count) => count >= 1);
      await untilValue(`berth_session_storage_used_bytes{${session}}`, (bytes) => bytes > 0);
      await untilValue(`berth_open_connections`, (count) => count >= 0);
      await untilValue(`nodejs_eventloop_lag_seconds{job="berth"}`, (seconds) => seconds >= 0);
      // No series names a session but the per-session gauges.
      assert.deepEqual(
        await prometheus?.query(
          `count by (__name__) ({job="berth",session!="",__name__!~"berth_session_.*"})`,
        ),
        [],
      );
    });

    it("answers every query of the Grafana dashboard (deploy/grafana) with Berth's series", async () => {
      const dashboard = JSON.parse(readFileSync(dashboardPath, "utf8")) as {
        panels: { title: string; targets?: { expr: string }[] }[];
      };
      const queries = dashboard.panels.flatMap((panel) =>
        (panel.targets ?? []).map((target) => ({ panel: panel.title, expr: target.expr })),
      );
      assert.ok(queries.length > 10);
      // What this test's Berth has none of: no object store, cluster, WebSocket or system error.
      const absentHere = /checkpoint|heartbeat|WebSocket|system_errors/;
      for (const { panel, expr } of queries) {
        const promql = expr.replaceAll("$runtime", ".*").replaceAll("$__rate_interval", "1m");
        // Each is valid PromQL (else query() throws); a rate needs two scrapes of its series.
        const answered = () => prometheus?.query(promql) ?? Promise.resolve([]);
        if (absentHere.test(expr)) await answered();
        else
          await waitFor(`${panel}: ${promql}`, async () =>
            (await answered()).length > 0 ? true : undefined,
          );
      }
    });

    it("forgets a session's series once it ended, and counts its start once", async () => {
      const berth = harness();
      const runtime = await createRuntime(berth, "probe");
      const sessionId = newSessionId("ending");
      await invokeProbe(berth.data, runtime.arn, sessionId, { action: "whoami" });
      const session = `session="${sessionId}"`;
      await untilValue(`berth_session_memory_bytes{${session}}`, (bytes) => bytes > 0);
      await berth.berth.sessions.stop(runtime.id, sessionId);
      await untilValue(`absent(berth_session_memory_bytes{${session}})`, equals(1));
      await untilValue(`absent(berth_active_sessions{runtime="${runtime.id}"})`, equals(1));
      await untilValue(
        `berth_session_start_duration_seconds_count{runtime="${runtime.id}"}`,
        equals(1),
      );
    });
  },
);

describe("the metrics listener", () => {
  const harness = useTestBerth(["--metrics-port", "0"]);

  it("serves GET /metrics only, unauthenticated, on its own port", async () => {
    const { berth } = harness();
    const metricsUrl = berth.metricsUrl ?? "";
    assert.notEqual(new URL(metricsUrl).port, String(berth.port));
    const scraped = await fetch(metricsUrl);
    assert.equal(scraped.status, 200);
    assert.match(scraped.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
    assert.match(await scraped.text(), /^berth_max_sessions 64$/m);
    assert.equal((await fetch(metricsUrl, { method: "POST" })).status, 405);
    assert.equal((await fetch(new URL("/", metricsUrl))).status, 404);
    // The API's port has no unauthenticated /metrics.
    assert.equal((await fetch(`${berth.url}/metrics`)).status, 403);
    assert.ok(
      harness().logLines.some(
        (line) => line["msg"] === "metrics listening" && line["url"] === metricsUrl,
      ),
      "its URL is logged at start",
    );
  });

  it("is refused on the API's port", async () => {
    const port = String(await freePort());
    const dataDir = makeDataDir();
    try {
      await assert.rejects(
        startTestBerth(["--port", port, "--metrics-port", port], dataDir),
        /metricsPort \d+ is the API's port/,
      );
    } finally {
      removeDir(dataDir);
    }
  });
});

/**
 * Holds one body that fills maxUnauthenticatedBufferBytes (a forged signature with the real key
 * id: held until its last byte comes), then sends another: the status it is answered with.
 */
async function throttledRequest(baseUrl: string, accessKeyId: string): Promise<number> {
  const { hostname, port } = new URL(baseUrl);
  const amzDate = new Date().toISOString().replace(/[-:]/g, "").replace(/\.\d+/, "");
  const head = (bytes: number) =>
    [
      "POST /runtimes/ HTTP/1.1",
      `host: ${hostname}:${port}`,
      "content-type: application/json",
      `content-length: ${bytes}`,
      `x-amz-date: ${amzDate}`,
      `authorization: AWS4-HMAC-SHA256 Credential=${accessKeyId}/${amzDate.slice(0, 8)}/us-east-1/bedrock-agentcore/aws4_request, SignedHeaders=host;x-amz-date, Signature=${"0".repeat(64)}`,
      "",
      "",
    ].join("\r\n");
  const open = () => connect({ host: hostname, port: Number(port) });
  const holding = open();
  try {
    holding.write(head(60_000));
    holding.write(Buffer.alloc(59_999, "x"));
    return await waitFor("the second body to be throttled", async () => {
      const status = await answerStatus(open(), head(20_000), Buffer.alloc(20_000, "y"));
      return status === 429 ? status : undefined;
    });
  } finally {
    holding.destroy();
  }
}

function answerStatus(
  socket: ReturnType<typeof connect>,
  head: string,
  body: Buffer,
): Promise<number> {
  return new Promise((resolve, reject) => {
    let text = "";
    socket.on("data", (chunk: Buffer) => {
      text += chunk.toString("latin1");
      const status = /^HTTP\/1\.1 (\d{3})/.exec(text)?.[1];
      if (status !== undefined) {
        socket.destroy();
        resolve(Number(status));
      }
    });
    socket.on("error", reject);
    socket.write(head);
    socket.write(body);
  });
}
