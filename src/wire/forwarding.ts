import { createHash } from "node:crypto";
import {
  Agent,
  request,
  type ClientRequest,
  type IncomingMessage,
  type OutgoingHttpHeaders,
} from "node:http";
import type { Socket } from "node:net";
import { Readable, type Duplex } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { CoreContext } from "../core/context.ts";
import type { NodeRecord } from "../core/cluster/cluster-store.ts";
import type { RouteOptions, SessionRoute } from "../core/cluster/session-router.ts";
import { BerthError } from "../core/errors.ts";
import { runtimeIdFromArnOrId } from "../core/ids.ts";
import { clusterHeaders, forwardedTarget, signForwarded } from "./cluster-signature.ts";
import { invocationTargetOf, requireSessionId } from "./data-plane-request.ts";
import type { Operation, OperationInput, SessionScope } from "./operation.ts";
import { emptySha256, unsignedPayload } from "./sigv4.ts";
import type { SocketOperation, SocketOperationInput } from "./socket-operation.ts";

/** Where a session's requests go (core/cluster/session-router.ts). */
export interface SessionRouting {
  route(runtimeId: string, sessionId: string, options: RouteOptions): Promise<SessionRoute>;
  /** Forgets where a session runs (a request forwarded there failed). */
  forget(runtimeId: string, sessionId: string): void;
}

/** How many nodes a forwarded request has been through: a signed header (see RouteOptions.hops). */
const clusterHopsHeader = "x-berth-cluster-hops";

/** Client headers that only the hop to this node meant: never passed on to the owner. */
const notForwarded = new Set([
  "authorization",
  "x-amz-date",
  "x-amz-security-token",
  "x-amz-content-sha256",
  "host",
  "connection",
  "keep-alive",
  "transfer-encoding",
  "content-length",
  "expect",
  "upgrade",
  "te",
  "trailer",
  "proxy-authorization",
  "proxy-authenticate",
  "proxy-connection",
  clusterHopsHeader,
  ...Object.values(clusterHeaders),
]);

/** How long another node gets to answer a listing. */
const peerAnswerMs = 5_000;

/** Answer headers that belong to the hop from the owner, not to the client's connection. */
const hopHeaders = new Set(["connection", "keep-alive", "transfer-encoding"]);

/**
 * Sends requests for sessions other nodes own to those nodes, signed with the cluster secret,
 * and relays the answers: the body streams both ways (backpressure crosses the hop) and a
 * caller that goes away ends the forwarded request too.
 */
export class Forwarder {
  private readonly nodeId: string;
  private readonly secret: string;
  private readonly now: () => Date;
  private readonly connectTimeoutMs: number;
  private readonly isLive: (nodeId: string) => boolean;
  /** Kept-alive connections to the other nodes: a forwarded warm request costs no handshake. */
  private readonly agent = new Agent({ keepAlive: true });

  constructor(options: {
    nodeId: string;
    secret: string;
    now: () => Date;
    /**
     * How long a node gets to accept a connection: one cut off by a dropped route never refuses,
     * and the kernel would try for minutes.
     */
    connectTimeoutMs: number;
    /**
     * Whether the cluster still holds a node live. A forwarded request to a node presumed gone
     * is given up: a node cut off mid-request never answers, not even with an error.
     */
    isLive: (nodeId: string) => boolean;
  }) {
    this.isLive = options.isLive;
    this.connectTimeoutMs = options.connectTimeoutMs;
    this.nodeId = options.nodeId;
    this.secret = options.secret;
    this.now = options.now;
  }

  async forward(
    input: OperationInput,
    node: NodeRecord,
    bodyKind: "json" | "streamed",
    hops: number,
  ): Promise<void> {
    const { incoming, outgoing, signal } = input.raw;
    const { body, contentSha256, contentLength } = forwardedBody(input, bodyKind);
    const headers = { ...passedOnHeaders(incoming), [clusterHopsHeader]: String(hops) };
    const target = forwardedTarget(input.request);
    const method = input.request.method;
    const signed = signForwarded(
      { method, target, headers, contentSha256 },
      { nodeId: this.nodeId, secret: this.secret, now: this.now() },
      node.id,
    );
    const outbound: OutgoingHttpHeaders = { ...headers, ...signed };
    if (contentLength !== undefined) outbound["content-length"] = contentLength;
    const upstream = request(new URL(target, node.url), {
      method,
      headers: outbound,
      agent: this.agent,
      signal,
    });
    this.limitConnecting(upstream);
    const watch = setInterval(() => {
      if (!this.isLive(node.id)) upstream.destroy(new Error("the cluster presumes it gone"));
    }, this.connectTimeoutMs);
    upstream.once("close", () => {
      clearInterval(watch);
    });
    const answer = new Promise<IncomingMessage>((resolve, reject) => {
      upstream.once("response", resolve);
      upstream.once("error", reject);
    });
    const sent = pipeline(body, upstream).catch(() => undefined); // a failure surfaces in `answer`
    let response: IncomingMessage;
    try {
      response = await answer;
    } catch (error) {
      if (signal.aborted) throw signal.reason;
      throw unreachable(node, error);
    }
    outgoing.writeHead(response.statusCode ?? 502, answerHeaders(response));
    outgoing.flushHeaders();
    // Ends with the caller: a client that goes away destroys the answer, and its request.
    await pipeline(response, outgoing).catch(() => {
      upstream.destroy();
    });
    await sent;
  }

  /**
   * Passes a WebSocket upgrade on to the node that owns its session, unopened: the owner
   * authenticates it (this node's signature), completes the handshake, and from then on the two
   * connections are spliced, bytes both ways, until either side closes. An owner that refuses
   * the upgrade has its answer relayed as it is. Resolves when the conversation is over.
   */
  async forwardUpgrade(input: SocketOperationInput, node: NodeRecord, hops: number): Promise<void> {
    const { incoming, socket, head } = input.raw;
    const headers = {
      ...passedOnHeaders(incoming),
      upgrade: "websocket",
      [clusterHopsHeader]: String(hops),
    };
    const target = forwardedTarget(input.request);
    const signed = signForwarded(
      { method: "GET", target, headers, contentSha256: emptySha256 },
      { nodeId: this.nodeId, secret: this.secret, now: this.now() },
      node.id,
    );
    const upstream = request(new URL(target, node.url), {
      method: "GET",
      headers: { ...headers, ...signed, connection: "Upgrade" },
      agent: false,
    });
    this.limitConnecting(upstream);
    upstream.end();
    // A client that leaves before the owner's answer takes the forwarded upgrade with it.
    const clientGone = (): void => {
      upstream.destroy(new Error("the client went away"));
    };
    socket.once("close", clientGone);
    const answered = new Promise<void>((resolve, reject) => {
      upstream.once(
        "upgrade",
        (response: IncomingMessage, ownerSocket: Socket, ownerHead: Buffer) => {
          socket.off("close", clientGone);
          socket.write(responseHead(response));
          splice(socket, head, ownerSocket, ownerHead, resolve);
        },
      );
      upstream.once("response", (response: IncomingMessage) => {
        socket.write(responseHead(response));
        response.pipe(socket);
        response.once("end", resolve);
        response.once("error", resolve);
      });
      upstream.once("error", reject);
    });
    const watch = setInterval(() => {
      if (!this.isLive(node.id)) upstream.destroy(new Error("the cluster presumes it gone"));
    }, this.connectTimeoutMs);
    try {
      await answered;
    } catch (error) {
      if (socket.destroyed) return; // the client went away: nobody to answer
      throw unreachable(node, error);
    } finally {
      clearInterval(watch);
      socket.off("close", clientGone);
    }
  }

  /** A signed GET to another node, its JSON answer read up to `maxBytes`. */
  async getJson(node: NodeRecord, target: string, maxBytes: number): Promise<unknown> {
    const headers = signForwarded(
      { method: "GET", target, headers: {}, contentSha256: emptySha256 },
      { nodeId: this.nodeId, secret: this.secret, now: this.now() },
      node.id,
    );
    const upstream = request(new URL(target, node.url), {
      headers,
      agent: this.agent,
      signal: AbortSignal.timeout(peerAnswerMs),
    });
    this.limitConnecting(upstream);
    upstream.end();
    const response = await new Promise<IncomingMessage>((resolve, reject) => {
      upstream.once("response", resolve);
      upstream.once("error", reject);
    });
    const chunks: Buffer[] = [];
    let bytes = 0;
    for await (const chunk of response as AsyncIterable<Buffer>) {
      bytes += chunk.length;
      if (bytes > maxBytes)
        throw new Error(`node ${node.name} answered more than ${maxBytes} bytes`);
      chunks.push(chunk);
    }
    const text = Buffer.concat(chunks).toString("utf8");
    if (response.statusCode !== 200) {
      throw new Error(`node ${node.name} answered ${response.statusCode}: ${text.slice(0, 200)}`);
    }
    return JSON.parse(text) as unknown;
  }

  close(): void {
    this.agent.destroy();
  }

  /** Fails the request when its connection is not made within connectTimeoutMs. */
  private limitConnecting(upstream: ClientRequest): void {
    upstream.once("socket", (socket: Socket) => {
      // Each answer's pieces leave at once: a relay that waited to fill packets would add delay.
      socket.setNoDelay(true);
      if (!socket.connecting) return; // a kept-alive connection
      const timer = setTimeout(() => {
        upstream.destroy(new Error(`no connection within ${this.connectTimeoutMs} ms`));
      }, this.connectTimeoutMs);
      socket.once("connect", () => {
        clearTimeout(timer);
      });
      socket.once("close", () => {
        clearTimeout(timer);
      });
    });
  }
}

/**
 * Wraps a session's operation so that it runs on the session's owner: here when this node owns
 * it (or the request was forwarded to it), else forwarded there.
 */
export function servedByOwner(
  operation: Operation,
  deps: OwnerRouting & {
    /** Aborts once a shutdown's grace period is over: forwarded requests end then too. */
    shutdown: AbortSignal;
  },
  scope: SessionScope,
): Operation {
  const bodyKind = operation.body === "streamed" ? "streamed" : "json";
  return {
    ...operation,
    handle: async (input) => {
      const route = await routeToOwner(input, deps, scope, (request) =>
        requireSessionId(request.headers),
      );
      if (route.kind === "here") return operation.handle(input);
      const signal = AbortSignal.any([input.raw.signal, deps.shutdown]);
      await route.forwarding(() =>
        deps.forwarder.forward(
          { ...input, raw: { ...input.raw, signal } },
          route.node,
          bodyKind,
          route.hops,
        ),
      );
      return { streamed: true };
    },
  };
}

/** servedByOwner for a WebSocket operation: the upgrade is passed on to the owner unopened. */
export function socketServedByOwner(
  operation: SocketOperation,
  deps: OwnerRouting,
  scope: SessionScope,
): SocketOperation {
  return {
    ...operation,
    handle: async (input) => {
      // A client that cannot set headers names the session in the query.
      const route = await routeToOwner(input, deps, scope, (request) =>
        requireSessionId(request.headers, request.query),
      );
      if (route.kind === "here") {
        await operation.handle(input);
        return;
      }
      await route.forwarding(() => deps.forwarder.forwardUpgrade(input, route.node, route.hops));
    },
  };
}

/** What routing a session's operation to its owner needs. */
interface OwnerRouting {
  context: CoreContext;
  routing: SessionRouting;
  forwarder: Forwarder;
}

type OwnerRoute =
  | { kind: "here" }
  | {
      kind: "elsewhere";
      node: NodeRecord;
      /** The hops the forwarded request carries (this one included). */
      hops: number;
      /** Runs the forwarding; the owner is forgotten if it fails (it may have moved). */
      forwarding: (forward: () => Promise<void>) => Promise<void>;
    };

/**
 * Where an operation on one session runs: here, or on the node that owns (or is given) it. The
 * id alone routes a request; the runtime and its endpoint are checked where it is served, and
 * before a session is placed.
 */
async function routeToOwner(
  input: Pick<OperationInput, "request" | "params" | "forwardedBy">,
  deps: OwnerRouting,
  scope: SessionScope,
  headerSessionId: (request: OperationInput["request"]) => string,
): Promise<OwnerRoute> {
  const sessionId =
    scope.sessionIdOf === undefined
      ? headerSessionId(input.request)
      : await scope.sessionIdOf(input);
  const runtimeId = runtimeIdFromArnOrId(input.params["runtimeArn"] ?? "");
  const hops = hopsOf(input);
  const route = await deps.routing.route(runtimeId, sessionId, {
    place: scope.place,
    hops,
    beforePlacing: async () => {
      await invocationTargetOf(deps.context, input);
    },
  });
  if (route.kind === "here") return { kind: "here" };
  // For this node's metrics: a session owned elsewhere was placed for a runtime that was checked
  // to exist then, so its id is a bounded label. The endpoint, not checked here, is left out.
  input.request.observed ??= { runtimeId };
  return {
    kind: "elsewhere",
    node: route.node,
    hops: hops + 1,
    forwarding: async (forward) => {
      try {
        await forward();
      } catch (error) {
        deps.routing.forget(runtimeId, sessionId);
        throw error;
      }
    },
  };
}

/** Splices two upgraded connections until either closes; `done` is called once, then. */
function splice(
  client: Duplex,
  clientHead: Buffer,
  owner: Socket,
  ownerHead: Buffer,
  done: () => void,
): void {
  owner.setNoDelay(true);
  if (ownerHead.length > 0) client.write(ownerHead);
  if (clientHead.length > 0) owner.write(clientHead);
  client.pipe(owner);
  owner.pipe(client);
  let ended = false;
  const end = (): void => {
    if (ended) return;
    ended = true;
    client.destroy();
    owner.destroy();
    done();
  };
  for (const side of [client, owner]) {
    side.on("close", end);
    side.on("error", end);
  }
  // Either may have closed before the listeners were there: its close is not emitted again.
  if (client.destroyed || owner.destroyed) end();
}

/** The status line and headers of an answer, as bytes for a raw connection. */
function responseHead(response: IncomingMessage): string {
  const lines = [`HTTP/1.1 ${response.statusCode ?? 502} ${response.statusMessage ?? ""}`];
  for (let index = 0; index + 1 < response.rawHeaders.length; index += 2) {
    lines.push(`${response.rawHeaders[index] ?? ""}: ${response.rawHeaders[index + 1] ?? ""}`);
  }
  return `${lines.join("\r\n")}\r\n\r\n`;
}

/** How many nodes forwarded the request here: only a node's signed word counts. */
function hopsOf(input: Pick<OperationInput, "forwardedBy" | "request">): number {
  if (input.forwardedBy === undefined) return 0;
  const hops = Number(input.request.headers[clusterHopsHeader] ?? 1);
  return Number.isSafeInteger(hops) && hops >= 1 ? hops : 1;
}

function forwardedBody(
  input: OperationInput,
  bodyKind: "json" | "streamed",
): { body: Readable; contentSha256: string; contentLength: number | undefined } {
  if (bodyKind === "json") {
    const bytes = Buffer.from(JSON.stringify(input.body));
    return {
      body: Readable.from([bytes]),
      contentSha256: createHash("sha256").update(bytes).digest("hex"),
      contentLength: bytes.length,
    };
  }
  const { stream, sizeBytes, sha256 } = input.payload;
  const declared = Number(input.raw.incoming.headers["content-length"] ?? Number.NaN);
  return {
    body: stream,
    contentSha256: sha256 ?? unsignedPayload,
    contentLength: sizeBytes ?? (Number.isSafeInteger(declared) ? declared : undefined),
  };
}

function passedOnHeaders(incoming: IncomingMessage): Record<string, string> {
  // Headers the client's Connection header names belong to its hop only (RFC 9110, 7.6.1).
  const hopOnly = new Set(
    headerList(incoming.headers.connection).map((name) => name.trim().toLowerCase()),
  );
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(incoming.headers)) {
    if (value === undefined || notForwarded.has(name) || hopOnly.has(name)) continue;
    headers[name] = Array.isArray(value) ? value.join(",") : value;
  }
  return headers;
}

function headerList(value: string | undefined): string[] {
  return value === undefined ? [] : value.split(",");
}

function answerHeaders(response: IncomingMessage): OutgoingHttpHeaders {
  const headers: OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(response.headers)) {
    if (value !== undefined && !hopHeaders.has(name)) headers[name] = value;
  }
  return headers;
}

function unreachable(node: NodeRecord, error: unknown): BerthError {
  const why = error instanceof Error ? error.message : String(error);
  return new BerthError(
    "ThrottlingException",
    `The session runs on node ${node.name}, which did not answer (${why}). If that node is gone, the session starts on another node once its lease runs out (nodeLeaseSeconds): retry`,
  );
}
