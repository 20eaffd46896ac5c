/**
 * AWS X-Ray's trace header, `X-Amzn-Trace-Id`, as W3C trace context ids and back. AWS clients
 * and load balancers send it where others send `traceparent`:
 *
 *   Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1
 *
 * The Root's 8 hex digits (epoch seconds) and 24 hex digits joined are a W3C trace id; Parent is
 * the caller's span id. A load balancer sends a Root alone (it starts the trace, no span of its
 * own); `Sampled=?` or none leaves the sampling decision to the callee.
 */
export interface AmznTraceContext {
  /** 32 lowercase hex digits. */
  traceId: string;
  /** 16 lowercase hex digits; undefined when the header names no Parent. */
  parentSpanId: string | undefined;
  /** Sampled=1: true, Sampled=0: false, `?` or none: undefined (the callee decides). */
  sampled: boolean | undefined;
}

export const amznTraceIdHeader = "x-amzn-trace-id";

const rootPattern = /^1-([0-9a-f]{8})-([0-9a-f]{24})$/;
const spanIdPattern = /^[0-9a-f]{16}$/;
const zeros = /^0+$/;

/**
 * The trace context in an `X-Amzn-Trace-Id` value, or undefined when it has no valid Root. Other
 * fields (Self, Lineage, a vendor's) are ignored; a malformed Parent is treated as none.
 */
export function parseAmznTraceId(header: string): AmznTraceContext | undefined {
  const fields = new Map<string, string>();
  for (const field of header.split(";")) {
    const equals = field.indexOf("=");
    if (equals > 0)
      fields.set(field.slice(0, equals).trim().toLowerCase(), field.slice(equals + 1).trim());
  }
  const root = rootPattern.exec(fields.get("root")?.toLowerCase() ?? "");
  if (root === null) return undefined;
  const traceId = `${root[1]}${root[2]}`;
  if (zeros.test(traceId)) return undefined;
  const parent = fields.get("parent")?.toLowerCase();
  const validParent = parent !== undefined && spanIdPattern.test(parent) && !zeros.test(parent);
  const sampled = fields.get("sampled");
  return {
    traceId,
    parentSpanId: validParent ? parent : undefined,
    sampled: sampled === "1" ? true : sampled === "0" ? false : undefined,
  };
}

/** The `X-Amzn-Trace-Id` value naming a span: its trace as Root, itself as Parent. */
export function formatAmznTraceId(traceId: string, spanId: string, sampled: boolean): string {
  return `Root=1-${traceId.slice(0, 8)}-${traceId.slice(8)};Parent=${spanId};Sampled=${sampled ? 1 : 0}`;
}
