/** What every data-plane request carries: the session id, the target runtime, trace headers. */
import type { IncomingHttpHeaders } from "node:http";
import type { CoreContext } from "../core/context.ts";
import { BerthError } from "../core/errors.ts";
import { resolveInvocationTarget } from "../core/invocation-target.ts";
import type { RuntimeVersionRecord } from "../core/model.ts";
import type { WireRequest } from "./http.ts";
import type { OperationInput } from "./operation.ts";

export const sessionIdHeader = "x-amzn-bedrock-agentcore-runtime-session-id";
export const requestIdHeader = "x-amzn-bedrock-agentcore-runtime-request-id";
/** Trace headers a data-plane answer echoes back, as AgentCore does. */
const echoedHeaders = ["x-amzn-trace-id", "traceparent", "tracestate", "baggage", "mcp-session-id"];

export function requireSessionId(headers: IncomingHttpHeaders, query?: URLSearchParams): string {
  // A WebSocket client that cannot set headers (a browser, a presigned URL) puts it in the query.
  const value = headers[sessionIdHeader] ?? query?.get(sessionIdHeader) ?? undefined;
  if (typeof value !== "string" || value.length === 0) {
    throw new BerthError("ValidationException", `Header ${sessionIdHeader} is required`, {
      reason: "FieldValidationFailed",
      fieldList: [{ name: "runtimeSessionId", message: "is required" }],
    });
  }
  if (value.length < 33 || value.length > 256 || !/^[\x21-\x7e]+$/.test(value)) {
    throw new BerthError(
      "ValidationException",
      `runtimeSessionId must be 33 to 256 printable characters (got ${value.length})`,
      {
        reason: "FieldValidationFailed",
        fieldList: [
          { name: "runtimeSessionId", message: "must be 33 to 256 printable characters" },
        ],
      },
    );
  }
  return value;
}

/** The response headers every data-plane answer carries. */
export function sessionResponseHeaders(
  incoming: IncomingHttpHeaders,
  sessionId: string,
  requestId: string,
): Record<string, string> {
  const headers: Record<string, string> = {
    [sessionIdHeader]: sessionId,
    "x-amzn-requestid": requestId,
  };
  for (const name of echoedHeaders) {
    const value = incoming[name];
    if (typeof value === "string") headers[name] = value;
  }
  return headers;
}

/** The runtime and version a data-plane request addresses: its ARN (or id) and `?qualifier=`. */
export async function invocationTargetOf(
  context: CoreContext,
  input: Pick<OperationInput, "params" | "request">,
) {
  const qualifier = input.request.query.get("qualifier") ?? undefined;
  const target = await resolveInvocationTarget(
    context,
    input.params["runtimeArn"] ?? "",
    qualifier,
  );
  input.request.observed = { runtimeId: target.runtime.id, endpoint: qualifier ?? "DEFAULT" };
  return target;
}

/**
 * What every request Berth makes to an agent carries: the session and request ids, those of
 * `passed` the client sent, and the runtime's allow-listed headers (custom headers and
 * Authorization reach the agent only when the runtime allow-lists them).
 */
export function headersForAgent(
  request: WireRequest,
  sessionId: string,
  version: RuntimeVersionRecord,
  passed: readonly string[],
): Record<string, string> {
  const headers: Record<string, string> = {
    [sessionIdHeader]: sessionId,
    [requestIdHeader]: request.requestId,
  };
  for (const name of passed) {
    const value = request.headers[name];
    if (typeof value === "string") headers[name] = value;
  }
  for (const allowed of version.config.requestHeaderAllowlist) {
    const name = allowed.toLowerCase();
    const value = request.headers[name];
    if (typeof value === "string") headers[name] = value;
  }
  return headers;
}
