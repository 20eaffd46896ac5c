import type { IncomingMessage, ServerResponse } from "node:http";
import type { Readable } from "node:stream";
import { BerthError } from "../core/errors.ts";
import type { WireRequest } from "./http.ts";
import type { BodyLimit } from "./signed-body.ts";

/** The request body, as the signature vouches for it: read it from here, not from `raw`. */
export interface RequestPayload {
  /** The bytes, read once. */
  stream: Readable;
  /** Known when Berth already holds the whole body, i.e. unless it streams as UNSIGNED-PAYLOAD. */
  sizeBytes: number | undefined;
  /** The hex SHA-256 of the held body (known with sizeBytes): what a forwarded request declares. */
  sha256?: string | undefined;
}

/** What a handler gets: the parsed request, its path parameters, and its body. */
export interface OperationInput {
  request: WireRequest;
  params: Record<string, string>;
  /** The JSON body, for operations that buffer it. */
  body: Record<string, unknown>;
  /** The body of a "streamed" operation. */
  payload: RequestPayload;
  /**
   * The node that forwarded this request to this one (its signature checked), or undefined for a
   * request straight from a client. A forwarded request is served here unless another node owns the session (RouteOptions.hops).
   */
  forwardedBy?: string | undefined;
  /** The raw message, for operations that write their own response. */
  raw: { incoming: IncomingMessage; outgoing: ServerResponse; signal: AbortSignal };
}

/** An operation answers with a JSON body, or has already written its own (streamed) response. */
export type OperationResult = { json: unknown } | { streamed: true };

export interface Operation {
  name: string;
  method: string;
  /** Path segments after splitting on "/"; ":name" captures one segment. "" marks a trailing slash. */
  path: readonly string[];
  successStatus: number;
  /**
   * "json": the body is held (maxRequestBodyBytes), its signature checked, then parsed.
   * "streamed": the body reaches the handler as `payload`: unread when signed as
   * UNSIGNED-PAYLOAD, otherwise held and checked against the signature first, up to `bodyLimit`.
   */
  body: "json" | "streamed";
  /** The largest "streamed" body Berth holds to check it (unset: only the shared budget). */
  bodyLimit?: BodyLimit;
  /**
   * Set on an operation on one session (named by its session-id header): in a cluster it runs on
   * the node that owns the session (wire/forwarding.ts).
   */
  session?: SessionScope;
  handle(input: OperationInput): Promise<OperationResult>;
}

export function operation(
  name: string,
  method: string,
  path: string,
  successStatus: number,
  handle: (input: OperationInput) => Promise<unknown>,
): Operation {
  return {
    name,
    method,
    path: path.split("/"),
    successStatus,
    body: "json",
    handle: async (input) => ({ json: await handle(input) }),
  };
}

export interface SessionScope {
  /** Whether the operation starts the session (placing it on a node) when it runs nowhere. */
  place: boolean;
  /**
   * The session the request names, where more than its session-id header can name it (an MCP
   * client's Mcp-Session-Id, or none on its first request). A session id this makes up is set
   * as the request's header, so every node that serves the request agrees on it. Unset: the
   * header (required).
   */
  sessionIdOf?: (input: Pick<OperationInput, "request" | "params">) => Promise<string>;
}

/** `operation`, marked as an operation on one session. */
export function onSession(operation: Operation, scope: SessionScope): Operation {
  return { ...operation, session: scope };
}

/** An operation that writes its own (streamed) response; `body` says how its request arrives. */
export function streamingOperation(
  name: string,
  path: string,
  body: Operation["body"],
  handle: (input: OperationInput) => Promise<void>,
  bodyLimit?: BodyLimit,
): Operation {
  return {
    name,
    method: "POST",
    path: path.split("/"),
    successStatus: 200,
    body,
    ...(bodyLimit === undefined ? {} : { bodyLimit }),
    handle: async (input) => {
      await handle(input);
      return { streamed: true };
    },
  };
}

export function matchOperation(
  operations: readonly Operation[],
  method: string,
  segments: readonly string[],
): { operation: Operation; params: Record<string, string> } {
  let pathMatched = false;
  for (const candidate of operations) {
    const params = matchPath(candidate.path, segments);
    if (params === undefined) continue;
    pathMatched = true;
    if (candidate.method === method) return { operation: candidate, params };
  }
  const path = segments.join("/");
  throw new BerthError(
    "UnknownOperationException",
    pathMatched
      ? `Method ${method} is not allowed on ${path}`
      : `No operation at ${method} ${path}`,
  );
}

/** The path parameters when `segments` match `pattern` (see Operation.path), else undefined. */
export function matchPath(
  pattern: readonly string[],
  segments: readonly string[],
): Record<string, string> | undefined {
  if (pattern.length !== segments.length) return undefined;
  const params: Record<string, string> = {};
  for (const [index, part] of pattern.entries()) {
    const segment = segments[index] ?? "";
    if (part.startsWith(":")) {
      if (segment === "") return undefined;
      params[part.slice(1)] = segment;
    } else if (part !== segment) {
      return undefined;
    }
  }
  return params;
}
