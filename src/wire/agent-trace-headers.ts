/**
 * The trace headers of a request Berth makes to an agent (an invocation, its card, its
 * WebSocket), so that the agent's own spans join the caller's trace. With tracing on, the agent's
 * parent is Berth's span that makes the request (Observer.traceparent()), itself a descendant of
 * the caller's; with tracing off, the caller's headers go through as they came.
 */
import type { IncomingHttpHeaders } from "node:http";
import { amznTraceIdHeader, formatAmznTraceId } from "../core/amzn-trace-id.ts";

/** Trace context headers an agent gets from the caller's request. */
const traceHeaderNames = ["traceparent", "tracestate", amznTraceIdHeader, "baggage"];

const traceparentPattern = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;

/**
 * The caller's trace headers, pointed at `berthTraceparent` when Berth traces: `traceparent` is
 * Berth's (sent even when the caller sent only X-Amzn-Trace-Id), and an `X-Amzn-Trace-Id` the
 * caller sent names Berth's span as its Parent. `tracestate` and `baggage` are the caller's:
 * Berth adds nothing to them.
 */
export function traceHeadersForAgent(
  incoming: IncomingHttpHeaders,
  berthTraceparent: string | undefined,
): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const name of traceHeaderNames) {
    const value = incoming[name];
    if (typeof value === "string") headers[name] = value;
  }
  const berth = traceparentPattern.exec(berthTraceparent ?? "");
  if (berthTraceparent === undefined || berth === null) return headers;
  const [, traceId = "", spanId = "", flags = "00"] = berth;
  headers["traceparent"] = berthTraceparent;
  if (headers[amznTraceIdHeader] !== undefined) {
    const sampled = (Number.parseInt(flags, 16) & 1) === 1; // the sampled flag
    headers[amznTraceIdHeader] = formatAmznTraceId(traceId, spanId, sampled);
  }
  return headers;
}
