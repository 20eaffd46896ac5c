import { randomUUID } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { BerthError } from "../core/errors.ts";
import type { Logger } from "../core/logger.ts";
import { errorShapes } from "./error-status.ts";
import { Readable } from "node:stream";
import {
  parseJsonObject,
  parseRequestTarget,
  sendError,
  sendJson,
  type WireRequest,
} from "./http.ts";
import { matchOperation, type Operation, type RequestPayload } from "./operation.ts";
import type { BodyHolder, BodyLimit } from "./signed-body.ts";
import type { PendingSignature, SigV4Verifier } from "./sigv4.ts";
import { isForwarded, PendingClusterSignature, type ClusterVerifier } from "./cluster-signature.ts";
import { noObserver, type Observer } from "../core/observer.ts";

export interface HandlerOptions {
  operations: readonly Operation[];
  /** undefined only when the operator explicitly turned authentication off. */
  verifier: SigV4Verifier | undefined;
  /** Checks requests other nodes of a cluster forward; undefined when this node is in none. */
  clusterVerifier?: ClusterVerifier | undefined;
  log: Logger;
  /** Told of every request (metrics, traces); none by default. */
  observer?: Observer;
  maxRequestBodyBytes: number;
  /** Holds bodies until their signature is checked. */
  bodies: BodyHolder;
}

interface RequestOutcome {
  operation: string;
  /** The parsed request, once parsed: what it addressed is learnt there (WireRequest.observed). */
  request?: WireRequest;
  errorCode?: string;
  /** Whether the signature was checked (or authentication is off). */
  authenticated: boolean;
  /** The node that forwarded the request, once its signature was checked. */
  forwardedBy?: string;
}

/**
 * The single place that turns HTTP into operations and outcomes into HTTP: it assigns the
 * request id, authenticates, routes, encodes errors, and logs one line per request.
 */
export function createRequestHandler(options: HandlerOptions) {
  return (incoming: IncomingMessage, outgoing: ServerResponse): void => {
    const startedAt = performance.now();
    const requestId = randomUUID();
    const outcome: RequestOutcome = { operation: "unknown", authenticated: false };
    const abort = new AbortController();
    const observer = options.observer ?? noObserver;
    outgoing.on("close", () => {
      if (!outgoing.writableFinished) abort.abort(new Error("client disconnected"));
      const durationMs = Math.round((performance.now() - startedAt) * 100) / 100;
      observer.requestEnded({
        requestId,
        operation: outcome.operation,
        runtimeId: outcome.request?.observed?.runtimeId,
        endpoint: outcome.request?.observed?.endpoint,
        // Gone before any answer: not a success (nginx's 499, "client closed request").
        status: outgoing.headersSent ? outgoing.statusCode : clientClosedRequest,
        errorCode: outcome.errorCode,
        forwardedBy: outcome.forwardedBy,
        durationMs,
      });
      options.log.info("request", {
        operation: outcome.operation,
        status: outgoing.statusCode,
        durationMs,
        requestId,
        ...(outcome.errorCode === undefined ? {} : { errorCode: outcome.errorCode }),
        ...(outgoing.writableFinished ? {} : { disconnected: true }),
      });
    });
    handle(options, incoming, outgoing, requestId, outcome, abort.signal).catch(
      (error: unknown) => {
        const known = BerthError.isInstance(error) ? error : undefined;
        if (known === undefined || errorShapes[known.code].fault === "server") {
          options.log.error("request failed", {
            requestId,
            operation: outcome.operation,
            error: describe(error),
          });
        }
        const answer =
          known ??
          new BerthError(
            "InternalServerException",
            `Berth failed to process the request; see the server log for request id ${requestId}`,
          );
        outcome.errorCode = answer.code;
        if (!incoming.complete) leaveUnreadBody(incoming, outgoing, outcome.authenticated);
        sendError(outgoing, answer, requestId);
      },
    );
  };
}

async function handle(
  options: HandlerOptions,
  incoming: IncomingMessage,
  outgoing: ServerResponse,
  requestId: string,
  outcome: RequestOutcome,
  signal: AbortSignal,
): Promise<void> {
  const method = incoming.method ?? "GET";
  const target = parseRequestTarget(incoming.url ?? "/");
  const request: WireRequest = { method, ...target, headers: incoming.headers, requestId };
  outcome.request = request;
  let matched: ReturnType<typeof matchOperation> | undefined;
  let unmatched: unknown;
  try {
    matched = matchOperation(options.operations, method, target.segments);
    outcome.operation = matched.operation.name;
  } catch (error) {
    unmatched = error; // answered only after authentication, so unsigned callers learn nothing
  }
  const streamed = matched?.operation.body === "streamed";
  // Everything the headers alone can prove is checked before one byte of the body is read.
  const pending = checkHeaders(options, request, streamed);
  const { json, payload } = await authenticatedBody(options, incoming, outgoing, {
    streamed,
    limit: streamed
      ? matched?.operation.bodyLimit
      : { bytes: options.maxRequestBodyBytes, setting: "maxRequestBodyBytes" },
    pending,
  });
  outcome.authenticated = true;
  if (pending instanceof PendingClusterSignature) outcome.forwardedBy = pending.fromNode;
  if (matched === undefined) throw unmatched;

  // Traced from here: a caller must prove who it is before its trace headers are honoured (an
  // unsigned flood could otherwise force spans out and crowd real ones from the export queue).
  const operation = matched.operation;
  // A client that left meanwhile was already reported ended: a request begun now would never end.
  if (signal.aborted) throw signal.reason;
  const result = await (options.observer ?? noObserver).request(
    request.headers,
    { requestId },
    () =>
      operation.handle({
        request,
        forwardedBy: pending instanceof PendingClusterSignature ? pending.fromNode : undefined,
        params: matched.params,
        body: json,
        payload,
        raw: { incoming, outgoing, signal },
      }),
  );
  if ("json" in result) sendJson(outgoing, matched.operation.successStatus, result.json, requestId);
}

/** The status a request is counted with when its client left before any answer. */
const clientClosedRequest = 499;

/** What proves a request's headers, and later its body: SigV4, or another node's signature. */
type RequestSignature = Pick<
  PendingSignature,
  "payloadUnsigned" | "verifyBody" | "verifyUnsignedPayload"
>;

function checkHeaders(
  options: HandlerOptions,
  request: WireRequest,
  streamed: boolean,
): RequestSignature | undefined {
  if (isForwarded(request.headers)) {
    if (options.clusterVerifier === undefined) {
      throw new BerthError(
        "UnrecognizedClientException",
        "This Berth is in no cluster (no databaseUrl): it takes no requests forwarded by other nodes",
      );
    }
    return options.clusterVerifier.checkHeaders(request);
  }
  return options.verifier?.checkHeaders(request, { unsignedPayloadAllowed: streamed });
}

/**
 * The body as the signature vouches for it. A streamed route signed as UNSIGNED-PAYLOAD gets it
 * unread; every other body is held whole, hashed as it arrives, and only handed on once the
 * signature over that hash is checked: bytes the caller did not sign never reach an operation.
 */
async function authenticatedBody(
  options: HandlerOptions,
  incoming: IncomingMessage,
  outgoing: ServerResponse,
  route: { streamed: boolean; limit: BodyLimit | undefined; pending: RequestSignature | undefined },
): Promise<{ json: Record<string, unknown>; payload: RequestPayload }> {
  const { streamed, pending } = route;
  // Without authentication there is no signature to hold a streamed body to.
  if (streamed && (pending === undefined || pending.payloadUnsigned)) {
    await pending?.verifyUnsignedPayload();
    return { json: {}, payload: { stream: incoming, sizeBytes: undefined } };
  }
  const held = await options.bodies.receive(incoming, route.limit);
  outgoing.once("close", () => {
    held.dispose().catch((error: unknown) => {
      options.log.warn("could not free a request body", { error: describe(error) });
    });
  });
  await pending?.verifyBody(held.sha256);
  held.markVerified();
  if (streamed) {
    const payload = { stream: held.stream(), sizeBytes: held.sizeBytes, sha256: held.sha256 };
    return { json: {}, payload };
  }
  return {
    json: parseJsonObject(await held.bytes()),
    payload: { stream: Readable.from([]), sizeBytes: 0 },
  };
}

/** Up to this, the unread rest of a body refused before authentication is read and dropped. */
const discardableBodyBytes = 65_536;

/**
 * After an error, the rest of the body is never held. It is read and dropped, so the answer
 * arrives cleanly and the connection serves on, when the caller proved who it is or the rest is
 * small. Otherwise it is not read at all and the connection closes once the answer is sent:
 * someone refused before authentication cannot make Berth read, and churn memory for, a body.
 */
function leaveUnreadBody(
  incoming: IncomingMessage,
  outgoing: ServerResponse,
  authenticated: boolean,
): void {
  const declaredBytes = Number(incoming.headers["content-length"] ?? Number.NaN);
  if (authenticated || declaredBytes <= discardableBodyBytes) {
    incoming.resume();
    return;
  }
  if (!outgoing.headersSent) outgoing.setHeader("connection", "close");
}

function describe(error: unknown): string {
  return error instanceof Error ? (error.stack ?? error.message) : String(error);
}
