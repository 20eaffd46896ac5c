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
import { noObserver, type Observer } from "../core/observer.ts";
import { protocolContract, type ProtocolContract } from "../core/protocols.ts";
import type { SessionLease, SessionManager } from "../core/sessions.ts";
import { agentCardOperation } from "./agent-card.ts";
import { agentPool, agentTarget } from "./agent-client.ts";
import { traceHeadersForAgent } from "./agent-trace-headers.ts";
import {
  mcpRequestSession,
  mcpSessionIdHeader,
  McpServerSessions,
  type McpServerSession,
} from "./mcp-sessions.ts";
import {
  onSession,
  operation,
  streamingOperation,
  type Operation,
  type OperationInput,
  type RequestPayload,
} from "./operation.ts";
import {
  headersForAgent,
  invocationTargetOf,
  requireSessionId,
  sessionIdHeader,
  sessionResponseHeaders,
} from "./data-plane-request.ts";

/**
 * Headers always passed to the agent, beside the session and request ids and the trace headers
 * (agent-trace-headers.ts). An MCP server gets its own Mcp-Session-Id instead of the client's
 * (mcp-sessions.ts).
 */
const forwardedHeaders = [
  "content-type",
  "accept",
  "mcp-protocol-version",
  "mcp-method",
  "mcp-name",
];
/** Headers of the agent's answer that reach the client (InvokeAgentRuntime's output has them). */
const answeredHeaders = ["mcp-protocol-version"];

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
  /** Told of each exchange with an agent (traces); the agent joins the trace. None by default. */
  observer?: Observer;
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
  const mcpServers = new McpServerSessions();
  return [
    onSession(
      streamingOperation(
        "InvokeAgentRuntime",
        "/runtimes/:runtimeArn/invocations",
        "streamed",
        (input) => invoke(context, sessions, options, mcpServers, input),
        { bytes: options.maxPayloadBytes, setting: "maxPayloadBytes" },
      ),
      { place: true, sessionIdOf: (input) => invokedSession(context, input) },
    ),
    agentCardOperation(context, sessions, options.shutdown, options.observer),
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

/**
 * The session an invocation names: its header; for an MCP runtime without one, the client's
 * Mcp-Session-Id, or (an MCP client's first request) a new id, which becomes the header.
 */
async function invokedSession(
  context: CoreContext,
  input: Pick<OperationInput, "request" | "params">,
): Promise<string> {
  const { headers } = input.request;
  if (headers[sessionIdHeader] !== undefined) return requireSessionId(headers);
  const target = await invocationTargetOf(context, input);
  if (target.version.config.serverProtocol !== "MCP") return requireSessionId(headers);
  const sessionId = mcpRequestSession(headers);
  headers[sessionIdHeader] = sessionId;
  return sessionId;
}

/**
 * InvokeAgentRuntime: the payload is POSTed to the agent's invocation path (core/protocols.ts)
 * and its answer streamed back, its 2xx status kept (an MCP server's 202 for a notification).
 */
async function invoke(
  context: CoreContext,
  sessions: SessionManager,
  options: DataPlaneOptions,
  mcpServers: McpServerSessions,
  input: OperationInput,
): Promise<void> {
  const { incoming } = input.raw;
  // A malformed session id is refused before anything is looked up, as it always was.
  if (input.request.headers[sessionIdHeader] !== undefined) requireSessionId(input.request.headers);
  const declaredLength = Number(incoming.headers["content-length"] ?? 0);
  if (declaredLength > options.maxPayloadBytes) throw payloadTooLarge(options.maxPayloadBytes);
  const target = await invocationTargetOf(context, input);
  const contract = protocolContract(target.version.config.serverProtocol);
  const sessionId =
    contract.protocol === "MCP"
      ? mcpRequestSession(input.request.headers)
      : requireSessionId(input.request.headers);
  const lease = await sessions.acquire(target.runtime, target.version, sessionId);
  try {
    const mcpServer =
      contract.protocol === "MCP"
        ? mcpServers.of(target.runtime.id, sessionId, lease.ended)
        : undefined;
    const observer = options.observer ?? noObserver;
    await observer.step("agent.invoke", { runtimeId: target.runtime.id, sessionId }, () =>
      exchangeWithAgent({
        input,
        options,
        lease,
        version: target.version,
        mcpServer,
        sessionId,
        observer,
      }),
    );
  } finally {
    lease.release();
  }
}

/**
 * Sends the payload to the agent and relays its answer, as a step of its own: the time spent in
 * the agent, and the span the agent's own spans are children of.
 */
async function exchangeWithAgent(exchange: {
  input: OperationInput;
  options: DataPlaneOptions;
  lease: SessionLease;
  version: RuntimeVersionRecord;
  mcpServer: McpServerSession | undefined;
  sessionId: string;
  observer: Observer;
}): Promise<void> {
  const { input, options, lease, version, mcpServer, sessionId } = exchange;
  const { incoming, outgoing, signal } = input.raw;
  const contract = protocolContract(version.config.serverProtocol);
  const headers = {
    ...agentHeaders(input, sessionId, version),
    ...traceHeadersForAgent(incoming.headers, exchange.observer.traceparent()),
  };
  const serverSessionId = mcpServer?.idForServer();
  if (serverSessionId !== undefined) headers[mcpSessionIdHeader] = serverSessionId;
  const agentResponse = await sendToAgent(
    input.payload.stream,
    lease,
    { path: contract.invocationPath, headers },
    options.maxPayloadBytes,
    { caller: signal, shutdown: options.shutdown },
  );
  const status = agentResponse.statusCode ?? 500;
  mcpServer?.noteAnswer(status, headerValue(agentResponse.headers[mcpSessionIdHeader]));
  if (status < 200 || status >= 300) throw await agentRefused(agentResponse, status, contract);
  outgoing.writeHead(status, {
    "content-type": agentResponse.headers["content-type"] ?? "application/octet-stream",
    ...answerHeaders(agentResponse.headers),
    ...sessionResponseHeaders(incoming.headers, sessionId, input.request.requestId),
    // What an MCP client keeps and sends back: the Berth session, whatever the server's own.
    ...(contract.protocol === "MCP" ? { [mcpSessionIdHeader]: sessionId } : {}),
  });
  outgoing.flushHeaders(); // the SDK's send() resolves on headers; the body streams after
  await relayAnswer(agentResponse, outgoing, { caller: signal, shutdown: options.shutdown });
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

/** The agent's answer outside 2xx, as the caller's error (its body's start says why). */
async function agentRefused(
  agentResponse: IncomingMessage,
  status: number,
  contract: ProtocolContract,
): Promise<BerthError> {
  const body = await readSome(agentResponse, 4096);
  return new BerthError(
    "RuntimeClientError",
    `The agent answered ${status} to POST ${contract.invocationPath}: ${body || "(empty body)"}`,
  );
}

/** The headers of the agent's answer that the client gets (answeredHeaders). */
function answerHeaders(headers: IncomingHttpHeaders): Record<string, string> {
  const passed: Record<string, string> = {};
  for (const name of answeredHeaders) {
    const value = headerValue(headers[name]);
    if (value !== undefined) passed[name] = value;
  }
  return passed;
}

function headerValue(value: string | string[] | undefined): string | undefined {
  return typeof value === "string" ? value : undefined;
}

function sendToAgent(
  payload: Readable,
  lease: SessionLease,
  target: { path: string; headers: Record<string, string> },
  maxPayloadBytes: number,
  signals: { caller: AbortSignal; shutdown: AbortSignal },
): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const toAgent = request(
      {
        ...agentTarget(lease.agentEndpoint),
        agent: agentPool(lease.agentEndpoint, lease.ended),
        method: "POST",
        path: target.path,
        headers: target.headers,
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
    "content-type": "application/octet-stream",
    ...headersForAgent(input.request, sessionId, version, forwardedHeaders),
  };
  const length = payloadLength(input.payload, incoming);
  if (length !== undefined) headers["content-length"] = length;
  else headers["transfer-encoding"] = "chunked";
  // An HTTP agent sees the client's Mcp-Session-Id as it was sent; an MCP server gets its own.
  const mcpSessionId = incoming[mcpSessionIdHeader];
  if (version.config.serverProtocol !== "MCP" && typeof mcpSessionId === "string")
    headers[mcpSessionIdHeader] = mcpSessionId;
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
