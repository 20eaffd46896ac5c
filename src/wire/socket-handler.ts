import { randomUUID } from "node:crypto";
import { STATUS_CODES, type IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import { WebSocketServer, type WebSocket } from "ws";
import { BerthError } from "../core/errors.ts";
import { noObserver, type Observer } from "../core/observer.ts";
import type { Logger } from "../core/logger.ts";
import { isForwarded, type ClusterVerifier } from "./cluster-signature.ts";
import { errorShapes } from "./error-status.ts";
import { errorAnswer, parseRequestTarget, type WireRequest } from "./http.ts";
import { matchPath } from "./operation.ts";
import { isPresigned } from "./presigned-url.ts";
import { emptySha256, type SigV4Verifier } from "./sigv4.ts";
import type { SocketOperation, SocketOperationInput } from "./socket-operation.ts";

export interface UpgradeHandlerOptions {
  operations: readonly SocketOperation[];
  /** undefined only when the operator explicitly turned authentication off. */
  verifier: SigV4Verifier | undefined;
  clusterVerifier?: ClusterVerifier | undefined;
  log: Logger;
  /** Aborts when a shutdown's grace period is over: every socket still open closes then. */
  shutdown: AbortSignal;
  /** Whether the server is shutting down: a new upgrade is refused, as a new request is. */
  draining: () => boolean;
  /** Told of every upgrade (metrics, traces); none by default. */
  observer?: Observer;
}

/** The `upgrade` listener of the HTTP server: WebSocket operations, authenticated as requests. */
export type UpgradeListener = (incoming: IncomingMessage, socket: Duplex, head: Buffer) => void;

/**
 * Turns `GET` + `Upgrade: websocket` into SocketOperations: authenticates the upgrade exactly as
 * a request (SigV4 headers, or a presigned URL, which only upgrades accept: a browser's
 * WebSocket cannot set headers), routes it, and logs one line when the conversation ends. Until
 * the operation accepts, every error is an ordinary AWS error response on the socket.
 */
export function createUpgradeHandler(options: UpgradeHandlerOptions): UpgradeListener {
  const servers = new Map<SocketOperation, WebSocketServer>();
  /** Per upgrade, the subprotocol its operation chose when it accepted (see accept()). */
  const chosenProtocols = new WeakMap<IncomingMessage, string>();
  const serverOf = (operation: SocketOperation): WebSocketServer => {
    let server = servers.get(operation);
    if (server === undefined) {
      server = new WebSocketServer({
        noServer: true,
        maxPayload: operation.maxMessageBytes,
        perMessageDeflate: false,
        handleProtocols: (offered, incoming) =>
          chooseProtocol(chosenProtocols.get(incoming) ?? operation.protocols ?? [], offered),
      });
      servers.set(operation, server);
    }
    return server;
  };
  return (incoming, socket, head) => {
    // Until the handshake, nothing else listens: a client that resets must not crash Berth.
    socket.on("error", () => undefined);
    const startedAt = performance.now();
    const requestId = randomUUID();
    const outcome: { operation: string; status: number; errorCode?: string } = {
      operation: "unknown",
      status: 101,
    };
    const upgrade: Upgrade = { incoming, socket, head, requestId, outcome, chosenProtocols };
    const observer = options.observer ?? noObserver;
    serve(options, serverOf, upgrade)
      .catch((error: unknown) => {
        const answer = asBerthError(error, requestId);
        if (errorShapes[answer.code].fault === "server") {
          options.log.error("request failed", {
            requestId,
            operation: outcome.operation,
            error: error instanceof Error ? (error.stack ?? error.message) : String(error),
          });
        }
        outcome.errorCode = answer.code;
        if (upgrade.opened === true) {
          socket.destroy(); // mid-conversation: no HTTP answer fits in a WebSocket stream
          return;
        }
        outcome.status = errorShapes[answer.code].status;
        refuseUpgrade(socket, answer, requestId);
      })
      .finally(() => {
        const durationMs = Math.round((performance.now() - startedAt) * 100) / 100;
        observer.requestEnded({
          requestId,
          operation: outcome.operation,
          runtimeId: upgrade.request?.observed?.runtimeId,
          endpoint: upgrade.request?.observed?.endpoint,
          status: outcome.status,
          errorCode: outcome.errorCode,
          forwardedBy: upgrade.forwardedBy,
          durationMs,
        });
        options.log.info("request", {
          operation: outcome.operation,
          status: outcome.status,
          durationMs,
          requestId,
          webSocket: true,
          ...(outcome.errorCode === undefined ? {} : { errorCode: outcome.errorCode }),
        });
      });
  };
}

interface Upgrade {
  incoming: IncomingMessage;
  socket: Duplex;
  head: Buffer;
  requestId: string;
  outcome: { operation: string; status: number };
  chosenProtocols: WeakMap<IncomingMessage, string>;
  /** Set once the handshake is done: an error after it can no longer be an HTTP answer. */
  opened?: boolean;
  /** The parsed request, once parsed: what it addressed is learnt there. */
  request?: WireRequest;
  /** The node that forwarded the upgrade, once its signature was checked. */
  forwardedBy?: string | undefined;
}

async function serve(
  options: UpgradeHandlerOptions,
  serverOf: (operation: SocketOperation) => WebSocketServer,
  upgrade: Upgrade,
): Promise<void> {
  const { incoming, socket, head, requestId } = upgrade;
  if (options.draining()) {
    throw new BerthError(
      "ThrottlingException",
      "Berth is shutting down and takes no new requests; retry against the new server",
    );
  }
  const target = parseRequestTarget(incoming.url ?? "/");
  const request: WireRequest = {
    method: incoming.method ?? "GET",
    ...target,
    headers: incoming.headers,
    requestId,
  };
  upgrade.request = request;
  let matched: { operation: SocketOperation; params: Record<string, string> } | undefined;
  for (const operation of options.operations) {
    const params = matchPath(operation.path, target.segments);
    if (params !== undefined) matched = { operation, params };
  }
  if (matched !== undefined) upgrade.outcome.operation = matched.operation.name;
  // Authenticated first, so unsigned callers learn nothing about the routes.
  const forwardedBy = await authenticate(options, request);
  upgrade.forwardedBy = forwardedBy;
  if (matched === undefined) {
    throw new BerthError(
      "UnknownOperationException",
      `No WebSocket operation at ${request.method} ${target.segments.join("/")}`,
    );
  }
  if (request.method !== "GET" || !isWebSocketHandshake(incoming)) {
    // Checked here, not left to the WebSocket server, which drops a bad handshake silently:
    // an operation waiting on accept() would wait forever.
    throw new BerthError(
      "ValidationException",
      `${matched.operation.name} is a WebSocket: send GET with Upgrade: websocket, Connection: Upgrade, Sec-WebSocket-Version: 13 and a Sec-WebSocket-Key of 16 bytes in base64`,
    );
  }
  const server = serverOf(matched.operation);
  let accepted: Promise<WebSocket> | undefined;
  const input: SocketOperationInput = {
    request,
    params: matched.params,
    forwardedBy,
    shutdown: options.shutdown,
    raw: { incoming, socket, head },
    accept: (choice) => {
      if (choice?.protocol !== undefined) upgrade.chosenProtocols.set(incoming, choice.protocol);
      accepted ??= new Promise<WebSocket>((resolve, reject) => {
        const gone = (): void => {
          reject(clientGone());
        };
        if (socket.destroyed) {
          gone();
          return;
        }
        // A client that leaves before the handshake completes never gets its callback.
        socket.once("close", gone);
        server.handleUpgrade(incoming, socket, head, (webSocket) => {
          socket.off("close", gone);
          upgrade.opened = true;
          resolve(webSocket);
        });
      });
      return accepted;
    },
  };
  // Traced from here, once authenticated (see handler.ts).
  const operation = matched.operation;
  await (options.observer ?? noObserver).request(
    incoming.headers,
    { requestId, webSocket: true },
    () => operation.handle(input),
  );
}

/**
 * SigV4 in the headers, a presigned URL, or another node's signature; resolves to the node that
 * forwarded the upgrade, if one did. An upgrade has no body: what is signed is the empty one.
 */
async function authenticate(
  options: UpgradeHandlerOptions,
  request: WireRequest,
): Promise<string | undefined> {
  if (isForwarded(request.headers)) {
    if (options.clusterVerifier === undefined) {
      throw new BerthError(
        "UnrecognizedClientException",
        "This Berth is in no cluster (no databaseUrl): it takes no requests forwarded by other nodes",
      );
    }
    const pending = options.clusterVerifier.checkHeaders(request);
    await pending.verifyBody(emptySha256);
    return pending.fromNode;
  }
  if (options.verifier === undefined) return undefined;
  if (isPresigned(request) && request.headers.authorization === undefined) {
    const signed = await options.verifier.verifyPresigned(request);
    // The signature covers the URL and these headers only: any other header (a session id
    // naming another session, an Authorization for the agent) was added by whoever holds the
    // URL, so none reaches an operation.
    keepOnly(request.headers, new Set([...signed, ...handshakeHeaders]));
    return undefined;
  }
  const pending = options.verifier.checkHeaders(request, { unsignedPayloadAllowed: true });
  if (pending.payloadUnsigned) await pending.verifyUnsignedPayload();
  else await pending.verifyBody(emptySha256);
  return undefined;
}

/** Headers a WebSocket client sends that carry no meaning for an operation, only the handshake. */
const handshakeHeaders = [
  "connection",
  "upgrade",
  "sec-websocket-key",
  "sec-websocket-version",
  "sec-websocket-protocol",
  "sec-websocket-extensions",
];

function keepOnly(headers: IncomingMessage["headers"], kept: Set<string>): void {
  for (const name of Object.keys(headers)) {
    if (!kept.has(name)) Reflect.deleteProperty(headers, name);
  }
}

/** Whether the request is a WebSocket handshake the server will complete (RFC 6455, 4.2.1). */
function isWebSocketHandshake(incoming: IncomingMessage): boolean {
  const { headers } = incoming;
  return (
    (headers.upgrade ?? "").toLowerCase() === "websocket" &&
    headers["sec-websocket-version"] === "13" &&
    /^[+/0-9A-Za-z]{21}[AQgw]==$/.test(headers["sec-websocket-key"] ?? "")
  );
}

/** Whether a request asks for a WebSocket: only those reach the upgrade handler. */
export function asksForWebSocket(incoming: IncomingMessage): boolean {
  return (incoming.headers.upgrade ?? "").toLowerCase() === "websocket";
}

function clientGone(): BerthError {
  return new BerthError(
    "ValidationException",
    "The client closed the connection before the WebSocket handshake completed",
  );
}

/** The first of the operation's subprotocols the client offered (none: the handshake has none). */
function chooseProtocol(spoken: string | readonly string[], offered: Set<string>): string | false {
  const candidates = typeof spoken === "string" ? [spoken] : spoken;
  return candidates.find((protocol) => offered.has(protocol)) ?? false;
}

/** An error before the handshake: the ordinary AWS error response, then the connection closes. */
function refuseUpgrade(socket: Duplex, error: BerthError, requestId: string): void {
  if (socket.destroyed) return;
  const answer = errorAnswer(error, requestId);
  const lines = [`HTTP/1.1 ${answer.status} ${STATUS_CODES[answer.status] ?? ""}`];
  for (const [name, value] of Object.entries(answer.headers)) lines.push(`${name}: ${value}`);
  lines.push("connection: close");
  socket.end(Buffer.concat([Buffer.from(`${lines.join("\r\n")}\r\n\r\n`), answer.payload]));
}

function asBerthError(error: unknown, requestId: string): BerthError {
  if (BerthError.isInstance(error)) return error;
  return new BerthError(
    "InternalServerException",
    `Berth failed to process the request; see the server log for request id ${requestId}`,
  );
}
