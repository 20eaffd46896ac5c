import { EventStreamCodec } from "@smithy/eventstream-codec";
import { fromUtf8, toUtf8 } from "@smithy/util-utf8";
import type { BerthError, ErrorCode } from "../core/errors.ts";

const codec = new EventStreamCodec(toUtf8, fromUtf8);

/** Exceptions InvokeAgentRuntimeCommand's stream models; the SDK types only these. */
const modeledExceptions: Partial<Record<ErrorCode, string>> = {
  ValidationException: "validationException",
  RuntimeClientError: "runtimeClientError",
  AccessDeniedException: "accessDeniedException",
  InternalServerException: "internalServerException",
  ResourceNotFoundException: "resourceNotFoundException",
  ServiceQuotaExceededException: "serviceQuotaExceededException",
  ThrottlingException: "throttlingException",
};

const string = (value: string) => ({ type: "string" as const, value });

/** One `chunk` event of an AWS event stream, its payload the event as JSON. */
export function encodeChunkEvent(event: unknown): Uint8Array {
  return codec.encode({
    headers: {
      ":message-type": string("event"),
      ":event-type": string("chunk"),
      ":content-type": string("application/json"),
    },
    body: fromUtf8(JSON.stringify(event)),
  });
}

/**
 * A modeled exception inside the stream. The type is the union member's lower-camel name: the
 * shape name would reach the SDK user as an untyped error. Unmodeled codes go as internal errors.
 */
export function encodeExceptionEvent(error: BerthError): Uint8Array {
  const body: Record<string, unknown> = { message: error.message };
  if (error.reason !== undefined) body["reason"] = error.reason;
  if (error.fieldList !== undefined) body["fieldList"] = error.fieldList;
  return codec.encode({
    headers: {
      ":message-type": string("exception"),
      ":exception-type": string(modeledExceptions[error.code] ?? "internalServerException"),
      ":content-type": string("application/json"),
    },
    body: fromUtf8(JSON.stringify(body)),
  });
}
