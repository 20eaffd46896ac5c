// Traces (docs/observability.md): a real Berth exports its spans over OTLP/HTTP to a receiver
// in this test. An invocation continues the caller's trace (traceparent, or X-Amzn-Trace-Id), its
// session's start shows its steps, and the agent (the probe, which answers with the headers it
// got) sees Berth's own span as its parent. A collector that never answers holds up nothing.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, it } from "node:test";
import {
  InvokeAgentRuntimeCommand,
  InvokeAgentRuntimeCommandCommand,
} from "@aws-sdk/client-bedrock-agentcore";
import { agentSources, installAgent, installWebSocketAgent, waitFor } from "./support/agents.ts";
import { removeDir, startTestBerth, type TestBerth } from "./support/berth.ts";
import { collect } from "./support/commands.ts";
import {
  startOtlpReceiver,
  startSilentCollector,
  type OtlpReceiver,
  type ReceivedSpan,
} from "./support/otlp-receiver.ts";
import { createRuntime, newSessionId, workspace } from "./support/runtimes.ts";
import { sendRaw } from "./support/signed-request.ts";
import { closeOf, nextMessage, openSigned, sessionIdHeader } from "./support/websockets.ts";

const serverKind = 2;
const errorStatus = 2;

const newTraceId = (): string => randomBytes(16).toString("hex");
const newSpanId = (): string => randomBytes(8).toString("hex");

/** Invokes the probe with `{}` and the given trace fields; the headers the agent got. */
async function agentHeadersOf(
  berth: TestBerth,
  arn: string,
  sessionId: string,
  trace: { traceParent?: string; traceState?: string; traceId?: string },
): Promise<Record<string, string>> {
  const response = await berth.data.send(
    new InvokeAgentRuntimeCommand({
      agentRuntimeArn: arn,
      runtimeSessionId: sessionId,
      payload: Buffer.from("{}"),
      ...trace,
    }),
  );
  const answer = JSON.parse((await response.response?.transformToString()) ?? "") as {
    headers: Record<string, string>;
  };
  return answer.headers;
}

function named(spans: ReceivedSpan[], name: string): ReceivedSpan {
  const found = spans.filter((span) => span.name === name);
  assert.equal(found.length, 1, `one ${name} span in ${spans.map((span) => span.name).join(", ")}`);
  return found[0] as ReceivedSpan;
}

const hasAll =
  (...names: string[]) =>
  (spans: ReceivedSpan[]): boolean =>
    names.every((name) => spans.some((span) => span.name === name));

describe("traces exported over OTLP/HTTP", () => {
  let receiver: OtlpReceiver;
  let berth: TestBerth;
  let runtime: { arn: string; id: string };

  before(async () => {
    receiver = await startOtlpReceiver();
    berth = await startTestBerth([
      "--otlp-traces-endpoint",
      receiver.url,
      "--otlp-traces-export-delay-ms",
      "20",
      "--node-name",
      "traced-node",
    ]);
    installAgent(berth.dataDir, agentSources.probe, "probe");
    installWebSocketAgent(berth.dataDir, "websocket");
    runtime = await createRuntime(berth, "probe", workspace);
  });

  after(async () => {
    await berth.close();
    removeDir(berth.dataDir);
    await receiver.close();
  });

  const sessionId = newSessionId("traced");

  it("continues the caller's traceparent through a session's start, and the agent joins it", async () => {
    const traceId = newTraceId();
    const callerSpanId = newSpanId();
    const agentGot = await agentHeadersOf(berth, runtime.arn, sessionId, {
      traceParent: `00-${traceId}-${callerSpanId}-01`,
      traceState: "caller=kept",
    });
    const spans = await receiver.trace(
      traceId,
      hasAll(
        "InvokeAgentRuntime",
        "session.start",
        "session.storage.attach",
        "session.sandbox.start",
        "session.agent.ready",
        "agent.invoke",
      ),
      "the invocation's spans",
    );

    const request = named(spans, "InvokeAgentRuntime");
    assert.equal(request.parentSpanId, callerSpanId, "the caller's span is the request's parent");
    assert.equal(request.kind, serverKind);
    assert.equal(request.attributes["berth.runtime.id"], runtime.id);
    assert.equal(request.attributes["berth.runtime.endpoint"], "DEFAULT");
    assert.equal(request.attributes["berth.session.id"], sessionId);
    assert.equal(request.attributes["http.response.status_code"], 200);
    assert.equal(typeof request.attributes["berth.request.id"], "string");
    assert.equal(request.resource["service.name"], "berth");
    assert.equal(request.resource["berth.node.name"], "traced-node");

    const start = named(spans, "session.start");
    assert.equal(start.parentSpanId, request.spanId);
    assert.equal(start.attributes["berth.session.id"], sessionId);
    const steps = ["session.storage.attach", "session.sandbox.start", "session.agent.ready"].map(
      (name) => named(spans, name),
    );
    for (const step of steps) assert.equal(step.parentSpanId, start.spanId, step.name);

    const invoke = named(spans, "agent.invoke");
    assert.equal(invoke.parentSpanId, request.spanId);
    assert.equal(
      agentGot["traceparent"],
      `00-${traceId}-${invoke.spanId}-01`,
      "the agent's parent is Berth's span that called it, in the caller's trace",
    );
    assert.equal(agentGot["tracestate"], "caller=kept");
  });

  it("continues an X-Amzn-Trace-Id, and points the agent's at Berth's span", async () => {
    const root = ["6745f3a1", randomBytes(12).toString("hex")];
    const callerSpanId = newSpanId();
    const traceId = root.join("");
    const agentGot = await agentHeadersOf(berth, runtime.arn, sessionId, {
      traceId: `Root=1-${root[0]}-${root[1]};Parent=${callerSpanId};Sampled=1`,
    });
    const spans = await receiver.trace(
      traceId,
      hasAll("InvokeAgentRuntime", "agent.invoke"),
      "the invocation's spans",
    );
    const request = named(spans, "InvokeAgentRuntime");
    assert.equal(request.parentSpanId, callerSpanId);
    assert.ok(
      !spans.some((span) => span.name === "session.start"),
      "the session was running: no start",
    );
    const invoke = named(spans, "agent.invoke");
    assert.equal(agentGot["traceparent"], `00-${traceId}-${invoke.spanId}-01`);
    assert.equal(
      agentGot["x-amzn-trace-id"],
      `Root=1-${root[0]}-${root[1]};Parent=${invoke.spanId};Sampled=1`,
    );
  });

  it("keeps a load balancer's Root (no Parent) as the trace id of a root span", async () => {
    const root = ["6745f3a2", randomBytes(12).toString("hex")];
    await agentHeadersOf(berth, runtime.arn, sessionId, {
      traceId: `Root=1-${root[0]}-${root[1]}`,
    });
    const spans = await receiver.trace(
      root.join(""),
      hasAll("InvokeAgentRuntime", "agent.invoke"),
      "the invocation's spans",
    );
    assert.equal(named(spans, "InvokeAgentRuntime").parentSpanId, undefined);
  });

  it("follows a caller that does not sample: nothing exported, the agent still told", async () => {
    const unsampled = newTraceId();
    const agentGot = await agentHeadersOf(berth, runtime.arn, sessionId, {
      traceParent: `00-${unsampled}-${newSpanId()}-00`,
    });
    assert.match(agentGot["traceparent"] ?? "", new RegExp(`^00-${unsampled}-[0-9a-f]{16}-00$`));
    // Spans leave in the order they ended: once a later request's have arrived, any of this
    // one's would have too.
    const sampled = newTraceId();
    await agentHeadersOf(berth, runtime.arn, sessionId, {
      traceParent: `00-${sampled}-${newSpanId()}-01`,
    });
    await receiver.trace(sampled, hasAll("InvokeAgentRuntime"), "the later request's span");
    assert.deepEqual(
      receiver.spans.filter((span) => span.traceId === unsampled),
      [],
    );
  });

  it("traces a command: its request and its run in the session", async () => {
    const traceId = newTraceId();
    const finished = await collect(
      await berth.data.send(
        new InvokeAgentRuntimeCommandCommand({
          agentRuntimeArn: runtime.arn,
          runtimeSessionId: sessionId,
          body: { command: "echo traced" },
          traceParent: `00-${traceId}-${newSpanId()}-01`,
        }),
      ),
    );
    assert.equal(finished.stdout, "traced\n");
    const spans = await receiver.trace(
      traceId,
      hasAll("InvokeAgentRuntimeCommand", "command.run"),
      "the command's spans",
    );
    const request = named(spans, "InvokeAgentRuntimeCommand");
    assert.equal(named(spans, "command.run").parentSpanId, request.spanId);
    assert.equal(request.attributes["berth.runtime.id"], runtime.id);
    assert.equal(request.attributes["http.response.status_code"], 200);
  });

  it("traces a WebSocket to the agent, whose handshake carries Berth's span", async () => {
    const webSocketRuntime = await createRuntime(berth, "websocket");
    const traceId = newTraceId();
    const socket = await openSigned(
      {
        endpoint: berth.berth.url,
        credentials: berth.berth.credentials,
        region: berth.settings.region,
        path: `/runtimes/${encodeURIComponent(webSocketRuntime.arn)}/ws`,
      },
      {
        headers: {
          [sessionIdHeader]: newSessionId("traced-ws"),
          traceparent: `00-${traceId}-${newSpanId()}-01`,
        },
      },
    );
    const greeting = JSON.parse((await nextMessage(socket)).data.toString("utf8")) as {
      headers: Record<string, string>;
    };
    const closed = closeOf(socket);
    socket.close(1000, "done");
    await closed;
    const spans = await receiver.trace(
      traceId,
      hasAll("InvokeAgentRuntimeWebSocket", "session.start", "agent.websocket"),
      "the WebSocket's spans",
    );
    const request = named(spans, "InvokeAgentRuntimeWebSocket");
    assert.equal(request.attributes["berth.webSocket"], true);
    assert.equal(request.attributes["http.response.status_code"], 101);
    const relay = named(spans, "agent.websocket");
    assert.equal(relay.parentSpanId, request.spanId);
    assert.equal(greeting.headers["traceparent"], `00-${traceId}-${relay.spanId}-01`);
  });

  it("exports nothing for an unsigned caller, whatever its traceparent says (no forced spans)", async () => {
    const forced = newTraceId();
    const refused = await sendRaw(berth.berth.url, {
      method: "POST",
      path: `/runtimes/${encodeURIComponent(runtime.arn)}/invocations`,
      unsigned: true,
      headers: { traceparent: `00-${forced}-${newSpanId()}-01`, [sessionIdHeader]: sessionId },
      body: "{}",
    });
    assert.equal(refused.status, 403);
    // Spans leave in the order they ended: once a later request's have arrived, any of this
    // one's would have too.
    const later = newTraceId();
    await agentHeadersOf(berth, runtime.arn, sessionId, {
      traceParent: `00-${later}-${newSpanId()}-01`,
    });
    await receiver.trace(later, hasAll("InvokeAgentRuntime"), "the later request's span");
    assert.deepEqual(
      receiver.spans.filter((span) => span.traceId === forced),
      [],
    );
  });

  it("says how a request failed: its status and error code", async () => {
    const traceId = newTraceId();
    await assert.rejects(
      agentHeadersOf(berth, `${runtime.arn.replace(/[^/]+$/, "")}missing-runtime-id`, sessionId, {
        traceParent: `00-${traceId}-${newSpanId()}-01`,
      }),
      { name: "ResourceNotFoundException" },
    );
    const spans = await receiver.trace(
      traceId,
      hasAll("InvokeAgentRuntime"),
      "the failed request's span",
    );
    const request = named(spans, "InvokeAgentRuntime");
    assert.equal(request.attributes["http.response.status_code"], 404);
    assert.equal(request.attributes["error.type"], "ResourceNotFoundException");
    // A client's mistake is not the server's failure (OpenTelemetry's HTTP conventions).
    assert.notEqual(request.status.code, errorStatus);
  });
});

describe("traces to a collector that never answers", () => {
  it("hold up no request, and Berth still stops", async () => {
    const collector = await startSilentCollector();
    const berth = await startTestBerth([
      "--otlp-traces-endpoint",
      collector.url,
      "--otlp-traces-export-delay-ms",
      "10",
    ]);
    try {
      installAgent(berth.dataDir, agentSources.probe, "probe");
      const runtime = await createRuntime(berth, "probe");
      const invoke = async (): Promise<void> => {
        const traceId = newTraceId();
        const agentGot = await agentHeadersOf(berth, runtime.arn, newSessionId("silent"), {
          traceParent: `00-${traceId}-${newSpanId()}-01`,
        });
        assert.match(agentGot["traceparent"] ?? "", new RegExp(`^00-${traceId}-`));
      };
      await invoke();
      await waitFor("an export to the collector", () => collector.openConnections() > 0);
      // The collector holds that export unanswered (for the exporter's 10 s) all along.
      for (let attempt = 0; attempt < 3; attempt += 1) await invoke();
      assert.ok(collector.openConnections() > 0, "the export is still waiting for its answer");
    } finally {
      await berth.close();
      removeDir(berth.dataDir);
      await collector.close();
    }
    assert.ok(
      berth.logLines.some((line) => line["msg"] === "traces not all exported before shutdown"),
      "the operator is told that spans were lost",
    );
  });
});
