import { once } from "node:events";
import {
  request,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type ServerResponse,
} from "node:http";
import { addAbortSignal, type Readable } from "node:stream";
import type { CoreContext } from "../core/context.ts";
import { BerthError } from "../core/errors.ts";
import type { RuntimeVersionRecord } from "../core/model.ts";
import type { SessionLease, SessionManager } from "../core/sessions.ts";
import { agentPool, agentTarget } from "./agent-client.ts";
import {
  onSession,
  operation,
  streamingOperation,
  type Operation,
  type OperationInput,
  type RequestPayload,
} from "./operation.ts";
import {
  invocationTargetOf,
  requireSessionId,
  sessionIdHeader,
  sessionResponseHeaders,
} from "./data-plane-request.ts";

const requestIdHeader = "x-amzn-bedrock-agentcore-runtime-request-id";
/** Headers always passed to the agent, beside the session and request ids. */
const forwardedHeaders = [
  "content-type",
  "accept",
  "mcp-session-id",
  "mcp-protocol-version",
  "x-amzn-trace-id",
  "traceparent",
  "tracestate",
  "baggage",
];

export interface DataPlaneOptions {
  maxPayloadBytes: number;
  /**
   * Aborts when Berth, shutting down, stops waiting for requests in flight. An invocation the
   * agent has not answered yet then fails with the signal's reason (a BerthError); an event
   * stream (text/event-stream) being relayed gets a last `error` event and ends cleanly.
   */
  shutdown: AbortSignal;
  /** Where ListSessions finds the sessions other nodes of a cluster run. */
  sessionsElsewhere: SessionsElsewhere;
}

export interface SessionsElsewhere {
  /** This node's name, shown with each of its sessions. */
  nodeName: string;
  /** The runtime's sessions on the other live nodes (undefined: there are none, no cluster). */
  list:
    | ((runtimeId: string) => Promise<{ sessions: unknown[]; unreachableNodes: string[] }>)
    | undefined;
}

/**
 * The AgentCore data plane: invocations go through to the agent inside the session, its answer
 * streamed back. The payload reaching the agent is the one the signature covers (see handler.ts).
 */
export function dataPlaneOperations(
  context: CoreContext,
  sessions: SessionManager,
  options: DataPlaneOptions,
): Operation[] {
  return [
    onSession(
      streamingOperation(
        "InvokeAgentRuntime",
        "/runtimes/:runtimeArn/invocations",
        "streamed",
        (input) => invoke(context, sessions, options, input),
        { bytes: options.maxPayloadBytes, setting: "maxPayloadBytes" },
      ),
      { place: true },
    ),
    onSession(
      operation(
        "StopRuntimeSession",
        "POST",
        "/runtimes/:runtimeArn/stopruntimesession",
        200,
        async (input) => {
          const sessionId = requireSessionId(input.request.headers);
          const target = await invocationTargetOf(context, input);
          if (!(await sessions.stop(target.runtime.id, sessionId))) {
            throw new BerthError(
              "ResourceNotFoundException",
              `No running session ${sessionId} for agent runtime ${target.runtime.id}`,
            );
          }
          input.raw.outgoing.setHeader(sessionIdHeader, sessionId);
          return {};
        },
      ),
      { place: false },
    ),
    operation(
      "ListSessions",
      "GET",
      "/berth/v1/runtimes/:runtimeId/sessions",
      200,
      async (input) => {
        const runtimeId = input.params["runtimeId"] ?? "";
        if ((await context.store.findRuntime(runtimeId)) === undefined) {
          throw new BerthError(
            "ResourceNotFoundException",
            `No agent runtime with id ${runtimeId}`,
          );
        }
        const here = (await sessions.list(runtimeId)).map((session) => ({
          ...session,
          node: options.sessionsElsewhere.nodeName,
        }));
        // A node asked by another answers for itself only.
        if (input.forwardedBy !== undefined || options.sessionsElsewhere.list === undefined) {
          return { sessions: here };
        }
        const elsewhere = await options.sessionsElsewhere.list(runtimeId);
        return {
          sessions: [...here, ...elsewhere.sessions],
          ...(elsewhere.unreachableNodes.length > 0
            ? { unreachableNodes: elsewhere.unreachableNodes }
            : {}),
        };
      },
    ),
  ];
}

async function invoke(
  context: CoreContext,
  sessions: SessionManager,
  options: DataPlaneOptions,
  input: OperationInput,
): Promise<void> {
  const { incoming, outgoing, signal } = input.raw;
  const sessionId = requireSessionId(input.request.headers);
  const declaredLength = Number(incoming.headers["content-length"] ?? 0);
  if (declaredLength > options.maxPayloadBytes) throw payloadTooLarge(options.maxPayloadBytes);
  const target = await invocationTargetOf(context, input);
  const lease = await sessions.acquire(target.runtime, target.version, sessionId);
  try {
    const agentResponse = await sendToAgent(
      input.payload.stream,
      lease,
      agentHeaders(input, sessionId, target.version),
      options.maxPayloadBytes,
      { caller: signal, shutdown: options.shutdown },
    );
    const status = agentResponse.statusCode ?? 500;
    if (status >= 300) {
      const body = await readSome(agentResponse, 4096);
      throw new BerthError(
        "RuntimeClientError",
        `The agent answered ${status} to POST /invocations: ${body || "(empty body)"}`,
      );
    }
    outgoing.writeHead(200, {
      "content-type": agentResponse.headers["content-type"] ?? "application/octet-stream",
      ...sessionResponseHeaders(incoming.headers, sessionId, input.request.requestId),
    });
    outgoing.flushHeaders(); // the SDK's send() resolves on headers; the body streams after
    await relayAnswer(agentResponse, outgoing, { caller: signal, shutdown: options.shutdown });
  } finally {
    lease.release();
  }
}

/**
 * Streams the agent's answer to the caller, with backpressure both ways. If the agent's side
 * fails (a stopped session, a crash) this throws, and the response is cut: the caller sees it
 * incomplete. A departed caller tears down the agent's side at once. When Berth shuts down, an
 * event stream ends cleanly with a last `error` event saying why; any other answer is cut, as
 * it has no way to say it is incomplete.
 */
async function relayAnswer(
  agentResponse: IncomingMessage,
  outgoing: ServerResponse,
  signals: { caller: AbortSignal; shutdown: AbortSignal },
): Promise<void> {
  const stop = AbortSignal.any([signals.caller, signals.shutdown]);
  addAbortSignal(stop, agentResponse);
  let lastBytes: Buffer = Buffer.alloc(0);
  try {
    for await (const chunk of agentResponse as AsyncIterable<Buffer>) {
      lastBytes = (chunk.length >= 2 ? chunk : Buffer.concat([lastBytes, chunk])).subarray(-2);
      if (!outgoing.write(chunk)) await once(outgoing, "drain", { signal: stop });
    }
  } catch (error) {
    if (signals.caller.aborted) return; // nobody left to answer
    const eventStream = /^text\/event-stream\b/i.test(agentResponse.headers["content-type"] ?? "");
    if (!signals.shutdown.aborted || !eventStream) throw error;
    outgoing.end(lastEvent(lastBytes, signals.shutdown.reason as Error));
    return;
  }
  outgoing.end();
}

/**
 * The event that ends a cut event stream: `event: error` with the reason as JSON data. A blank
 * line first if the agent's last event was left unfinished, so this one stands on its own.
 */
function lastEvent(lastBytes: Buffer, reason: Error): string {
  const text = lastBytes.toString("latin1");
  const separator = text.endsWith("\n\n") || text === "" ? "" : text.endsWith("\n") ? "\n" : "\n\n";
  const code = BerthError.isInstance(reason) ? reason.code : "InternalServerException";
  return `${separator}event: error\ndata: ${JSON.stringify({ error: code, message: reason.message })}\n\n`;
}

function sendToAgent(
  payload: Readable,
  lease: SessionLease,
  headers: Record<string, string>,
  maxPayloadBytes: number,
  signals: { caller: AbortSignal; shutdown: AbortSignal },
): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const toAgent = request(
      {
        ...agentTarget(lease.agentEndpoint),
        agent: agentPool(lease.agentEndpoint, lease.ended),
        method: "POST",
        path: "/invocations",
        headers,
        signal: AbortSignal.any([signals.caller, signals.shutdown]),
      },
      resolve,
    );
    let sent = 0;
    payload.on("data", (chunk: Buffer) => {
      sent += chunk.length;
      if (sent > maxPayloadBytes) toAgent.destroy(payloadTooLarge(maxPayloadBytes));
    });
    toAgent.on("error", (error) => {
      if (BerthError.isInstance(error)) {
        reject(error);
        return;
      }
      if (signals.shutdown.aborted && !signals.caller.aborted) {
        reject(signals.shutdown.reason as Error);
        return;
      }
      // Waiting a moment for the session's end lets the error say why (stopped, timed out,
      // crashed) instead of "socket hang up".
      void lease.endReasonSoon().then((reason) => {
        const why = reason !== undefined ? `the session ended: ${reason}` : error.message;
        const tailLines = lease.outputTail().slice(-5);
        reject(
          new BerthError(
            "RuntimeClientError",
            `The agent did not answer the invocation (${why})${tailLines.length > 0 ? `. Last output: ${tailLines.join(" | ")}` : ""}`,
          ),
        );
      });
    });
    payload.pipe(toAgent);
  });
}

function agentHeaders(
  input: OperationInput,
  sessionId: string,
  version: RuntimeVersionRecord,
): Record<string, string> {
  const incoming = input.request.headers;
  const headers: Record<string, string> = {
    [sessionIdHeader]: sessionId,
    [requestIdHeader]: input.request.requestId,
    "content-type": "application/octet-stream",
  };
  const length = payloadLength(input.payload, incoming);
  if (length !== undefined) headers["content-length"] = length;
  else headers["transfer-encoding"] = "chunked";
  for (const name of forwardedHeaders) {
    const value = incoming[name];
    if (typeof value === "string") headers[name] = value;
  }
  // Custom headers (and Authorization) reach the agent only when the runtime allow-lists them.
  const allowed = new Set(version.config.requestHeaderAllowlist.map((name) => name.toLowerCase()));
  for (const [name, value] of Object.entries(incoming)) {
    if (allowed.has(name) && typeof value === "string") headers[name] = value;
  }
  return headers;
}

/** The length of what is sent: the held body's own size, else what the caller declared. */
function payloadLength(payload: RequestPayload, incoming: IncomingHttpHeaders): string | undefined {
  if (payload.sizeBytes !== undefined) return String(payload.sizeBytes);
  return incoming["content-length"];
}

function payloadTooLarge(limit: number): BerthError {
  return new BerthError(
    "ValidationException",
    `The payload is larger than ${limit} bytes (maxPayloadBytes)`,
    { reason: "FieldValidationFailed" },
  );
}

async function readSome(stream: IncomingMessage, limit: number): Promise<string> {
  let text = "";
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    if (text.length < limit) text += chunk.toString("utf8");
  }
  return text.slice(0, limit);
}
