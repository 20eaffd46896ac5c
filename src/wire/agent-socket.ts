import { WebSocket, type RawData } from "ws";
import type { CoreContext } from "../core/context.ts";
import { BerthError } from "../core/errors.ts";
import { noObserver, type Observer } from "../core/observer.ts";
import { protocolContract } from "../core/protocols.ts";
import type { AgentEndpoint } from "../core/sandbox.ts";
import type { SessionLease, SessionManager } from "../core/sessions.ts";
import { traceHeadersForAgent } from "./agent-trace-headers.ts";
import { headersForAgent, invocationTargetOf, requireSessionId } from "./data-plane-request.ts";
import { watchLiveness } from "./socket-liveness.ts";
import type { SocketOperation, SocketOperationInput } from "./socket-operation.ts";

/** Headers always passed to the agent's /ws, beside the session and request ids and trace headers. */
const passedHeaders = ["user-agent"];
/**
 * How much may wait to be sent on one side before the other side's reading pauses: the relay
 * holds at most about this much (plus one message) per direction, however fast one side sends.
 */
const highWaterBytes = 1 << 20;
/** A close reason is at most 123 bytes (RFC 6455, 5.5: control frames carry 125). */
const maxReasonBytes = 123;

export interface AgentSocketOptions {
  /** The largest message either side may send (maxWebSocketMessageBytes). */
  maxMessageBytes: number;
  /** How often the client is pinged; one that answers none of an interval's pings is cut off. */
  livenessIntervalMs?: number;
  /** Told of the relay with the agent (traces); the agent joins the trace. None by default. */
  observer?: Observer;
}

const defaultLivenessIntervalMs = 30_000;

/**
 * WebSocket streaming to the agent: `GET /runtimes/{arn}/ws` is relayed to the agent's own
 * `GET /ws` inside the session (its protocol's port), both directions, text and binary, with
 * close codes passed on and backpressure across the relay. It starts the session like an
 * invoke, and the session counts as active while the socket is open.
 */
export function agentSocketOperations(
  context: CoreContext,
  sessions: SessionManager,
  options: AgentSocketOptions,
): SocketOperation[] {
  return [
    {
      name: "InvokeAgentRuntimeWebSocket",
      path: "/runtimes/:runtimeArn/ws".split("/"),
      maxMessageBytes: options.maxMessageBytes,
      session: { place: true },
      handle: (input) => relayToAgent(context, sessions, options, input),
    },
  ];
}

async function relayToAgent(
  context: CoreContext,
  sessions: SessionManager,
  options: AgentSocketOptions,
  input: SocketOperationInput,
): Promise<void> {
  const sessionId = requireSessionId(input.request.headers, input.request.query);
  const target = await invocationTargetOf(context, input);
  const { protocol, webSocketPath } = protocolContract(target.version.config.serverProtocol);
  if (webSocketPath === undefined) {
    throw new BerthError(
      "ValidationException",
      `WebSocket streaming reaches HTTP and AGUI agents; runtime ${target.runtime.id} serves ${protocol}: invoke it instead`,
    );
  }
  const lease = await sessions.acquire(target.runtime, target.version, sessionId);
  const observer = options.observer ?? noObserver;
  try {
    // One step for the whole conversation with the agent: its handshake carries the trace.
    await observer.step("agent.websocket", { runtimeId: target.runtime.id, sessionId }, () =>
      converse(input, options, lease, {
        path: webSocketPath,
        headers: {
          ...headersForAgent(input.request, sessionId, target.version, passedHeaders),
          ...traceHeadersForAgent(input.request.headers, observer.traceparent()),
        },
      }),
    );
  } finally {
    lease.release();
  }
}

/** Opens the agent's socket, then the client's, and relays between them until both close. */
async function converse(
  input: SocketOperationInput,
  options: AgentSocketOptions,
  lease: SessionLease,
  agentSide: { path: string; headers: Record<string, string> },
): Promise<void> {
  const agent = await connectToAgent(lease.agentEndpoint, agentSide.path, {
    headers: agentSide.headers,
    protocols: offeredProtocols(input),
    maxMessageBytes: options.maxMessageBytes,
  });
  const client = await input.accept({ protocol: agent.socket.protocol || undefined });
  const stopWatching = watchLiveness(
    client,
    options.livenessIntervalMs ?? defaultLivenessIntervalMs,
  );
  try {
    await relay(client, agent, { shutdown: input.shutdown, sessionEnded: lease.ended });
  } finally {
    stopWatching();
  }
}

/** The agent's open socket, and what it sent before the client's side was open. */
interface AgentConnection {
  socket: WebSocket;
  early: { data: RawData; isBinary: boolean }[];
  stopHolding: () => void;
}

/**
 * Opens the agent's /ws. An agent that refuses (no /ws: 404; or any answer but 101) or is not
 * listening fails the request before the client's handshake, as a RuntimeClientError. What the
 * agent sends at once is held (and its reading paused) until the client's side is open.
 */
function connectToAgent(
  endpoint: AgentEndpoint,
  path: string,
  options: { headers: Record<string, string>; protocols: string[]; maxMessageBytes: number },
): Promise<AgentConnection> {
  const url =
    "socketPath" in endpoint
      ? `ws+unix:${endpoint.socketPath}:${path}`
      : `ws://${endpoint.host}:${endpoint.port}${path}`;
  const agent = new WebSocket(url, options.protocols, {
    headers: options.headers,
    perMessageDeflate: false,
    maxPayload: options.maxMessageBytes,
    handshakeTimeout: 30_000,
  });
  return new Promise((resolve, reject) => {
    agent.once("open", () => {
      const early: AgentConnection["early"] = [];
      const hold = (data: RawData, isBinary: boolean): void => {
        early.push({ data, isBinary });
      };
      agent.on("message", hold);
      agent.pause();
      resolve({ socket: agent, early, stopHolding: () => agent.off("message", hold) });
    });
    agent.once("unexpected-response", (_request, response) => {
      response.resume();
      agent.terminate();
      reject(
        new BerthError(
          "RuntimeClientError",
          `The agent answered ${response.statusCode ?? "no status"} to GET /ws: it does not accept WebSocket connections there`,
        ),
      );
    });
    agent.once("error", (error) => {
      reject(
        new BerthError(
          "RuntimeClientError",
          `The agent did not accept a WebSocket connection on /ws (${error.message})`,
        ),
      );
    });
  });
}

/**
 * Relays messages both ways until either side closes, then closes the other with the same code
 * and reason (a code that cannot be sent, 1005 or 1006, becomes 1000 or 1011). Resolves once
 * both are closed.
 */
async function relay(
  client: WebSocket,
  connection: AgentConnection,
  ends: { shutdown: AbortSignal; sessionEnded: Promise<string> },
): Promise<void> {
  const agent = connection.socket;
  connection.stopHolding();
  for (const { data, isBinary } of connection.early) client.send(data, { binary: isBinary });
  pass(client, agent);
  pass(agent, client);
  agent.resume();
  client.on("close", (code, reason) => {
    closeWith(agent, code === 1006 ? 1001 : code, code === 1006 ? "the client went away" : reason);
  });
  agent.on("close", (code, reason) => {
    closeWith(
      client,
      code === 1006 ? 1011 : code,
      code === 1006 ? "the agent's connection broke" : reason,
    );
  });
  if (agent.readyState === WebSocket.CLOSED)
    closeWith(client, 1011, "the agent closed the connection");
  for (const side of [client, agent]) {
    side.on("error", () => {
      side.terminate();
    });
  }
  const onShutdown = (): void => {
    closeWith(client, 1001, "Berth is shutting down");
  };
  ends.shutdown.addEventListener("abort", onShutdown, { once: true });
  const bothClosed = Promise.all([closed(client), closed(agent)]);
  // Raced, so a relay that is over is not held in memory until its session ends.
  void Promise.race([ends.sessionEnded, bothClosed]).then((reason) => {
    if (typeof reason === "string") closeWith(client, 1011, `the session ended: ${reason}`);
  });
  await bothClosed;
  ends.shutdown.removeEventListener("abort", onShutdown);
}

/** Each message of `from` goes to `to` as it came (text or binary); `from` pauses while `to` is behind. */
function pass(from: WebSocket, to: WebSocket): void {
  from.on("message", (data: RawData, isBinary: boolean) => {
    if (to.readyState !== WebSocket.OPEN) return;
    to.send(data, { binary: isBinary }, () => {
      if (from.isPaused && to.bufferedAmount < highWaterBytes) from.resume();
    });
    if (to.bufferedAmount >= highWaterBytes) from.pause();
  });
}

function closeWith(socket: WebSocket, code: number, reason: string | Buffer): void {
  if (socket.readyState === WebSocket.CLOSED || socket.readyState === WebSocket.CLOSING) return;
  const text = Buffer.from(reason).subarray(0, maxReasonBytes);
  if (code === 1005) socket.close();
  else if (isSendableCode(code)) socket.close(code, text);
  else socket.close(1011, text);
}

/** Codes an endpoint may put in a close frame (RFC 6455, 7.4). */
function isSendableCode(code: number): boolean {
  return (
    (code >= 1000 && code <= 1014 && code !== 1004 && code !== 1005 && code !== 1006) ||
    (code >= 3000 && code <= 4999)
  );
}

function closed(socket: WebSocket): Promise<void> {
  if (socket.readyState === WebSocket.CLOSED) return Promise.resolve();
  return new Promise((resolve) => {
    socket.once("close", () => {
      resolve();
    });
  });
}

function offeredProtocols(input: SocketOperationInput): string[] {
  const header = input.request.headers["sec-websocket-protocol"];
  const text = Array.isArray(header) ? header.join(",") : (header ?? "");
  return text
    .split(",")
    .map((protocol) => protocol.trim())
    .filter((protocol) => protocol !== "");
}
