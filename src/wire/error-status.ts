import type { ErrorCode } from "../core/errors.ts";

export interface ErrorShape {
  status: number;
  /** Whether the caller (client) or Berth (server) is at fault; server faults are logged in full. */
  fault: "client" | "server";
  /** What the error means, for docs/errors.md (a test checks the doc lists every code). */
  meaning: string;
}

/** Every error code's HTTP status. The Record type makes the compiler demand an entry per code. */
export const errorShapes: Record<ErrorCode, ErrorShape> = {
  ValidationException: {
    status: 400,
    fault: "client",
    meaning: "The request is malformed or a field breaks a rule; `fieldList` names each field.",
  },
  ResourceNotFoundException: {
    status: 404,
    fault: "client",
    meaning: "The runtime, version, endpoint or session does not exist.",
  },
  ConflictException: {
    status: 409,
    fault: "client",
    meaning: "The name is taken, or the change conflicts with the resource's state.",
  },
  ServiceQuotaExceededException: {
    status: 402,
    fault: "client",
    meaning: "A limit set by the operator was reached.",
  },
  ThrottlingException: {
    status: 429,
    fault: "client",
    meaning: "Too many requests; the SDK retries.",
  },
  AccessDeniedException: { status: 403, fault: "client", meaning: "The caller may not do this." },
  RuntimeClientError: {
    status: 424,
    fault: "client",
    meaning: "The agent inside the session failed.",
  },
  InternalServerException: {
    status: 500,
    fault: "server",
    meaning: "Berth failed; the cause is in the server log under the request id.",
  },
  UnknownOperationException: {
    status: 404,
    fault: "client",
    meaning: "No operation matches the method and path.",
  },
  MissingAuthenticationTokenException: {
    status: 403,
    fault: "client",
    meaning: "The request has no SigV4 Authorization header.",
  },
  IncompleteSignatureException: {
    status: 403,
    fault: "client",
    meaning: "The Authorization header or x-amz-date is malformed.",
  },
  InvalidSignatureException: {
    status: 403,
    fault: "client",
    meaning:
      "The signature does not match, the body hash does not match, or the date is outside the allowed skew.",
  },
  UnrecognizedClientException: {
    status: 403,
    fault: "client",
    meaning: "The access key id is not one this server knows.",
  },
};
