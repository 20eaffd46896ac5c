import { randomUUID } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { BerthError } from "../core/errors.ts";
import type { Logger } from "../core/logger.ts";
import { errorShapes } from "./error-status.ts";
import {
  parseJsonObject,
  parseRequestTarget,
  readBody,
  sendError,
  sendJson,
  type WireRequest,
} from "./http.ts";
import { matchOperation, type Operation } from "./operation.ts";
import type { SigV4Verifier } from "./sigv4.ts";

export interface HandlerOptions {
  operations: readonly Operation[];
  /** undefined only when the operator explicitly turned authentication off. */
  verifier: SigV4Verifier | undefined;
  log: Logger;
  maxRequestBodyBytes: number;
}

/**
 * The single place that turns HTTP into operations and outcomes into HTTP: it assigns the
 * request id, authenticates, routes, encodes errors, and logs one line per request.
 */
export function createRequestHandler(options: HandlerOptions) {
  return (incoming: IncomingMessage, outgoing: ServerResponse): void => {
    const startedAt = performance.now();
    const requestId = randomUUID();
    const outcome: { operation: string; errorCode?: string } = { operation: "unknown" };
    const abort = new AbortController();
    outgoing.on("close", () => {
      if (!outgoing.writableFinished) abort.abort(new Error("client disconnected"));
      options.log.info("request", {
        operation: outcome.operation,
        status: outgoing.statusCode,
        durationMs: Math.round((performance.now() - startedAt) * 100) / 100,
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
  outcome: { operation: string },
  signal: AbortSignal,
): Promise<void> {
  const method = incoming.method ?? "GET";
  const target = parseRequestTarget(incoming.url ?? "/");
  const request: WireRequest = { method, ...target, headers: incoming.headers, requestId };
  let matched: ReturnType<typeof matchOperation> | undefined;
  let unmatched: unknown;
  try {
    matched = matchOperation(options.operations, method, target.segments);
    outcome.operation = matched.operation.name;
  } catch (error) {
    unmatched = error; // answered only after authentication, so unsigned callers learn nothing
  }
  const streamed = matched?.operation.body === "streamed";
  const body = streamed ? "streamed" : await readBody(incoming, options.maxRequestBodyBytes);
  await options.verifier?.verify(request, body);
  if (matched === undefined) throw unmatched;

  const result = await matched.operation.handle({
    request,
    params: matched.params,
    body: body === "streamed" ? {} : parseJsonObject(body),
    raw: { incoming, outgoing, signal },
  });
  if ("json" in result) sendJson(outgoing, matched.operation.successStatus, result.json, requestId);
}

function describe(error: unknown): string {
  return error instanceof Error ? (error.stack ?? error.message) : String(error);
}
