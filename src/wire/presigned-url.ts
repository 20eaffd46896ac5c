import { BerthError } from "../core/errors.ts";
import type { WireRequest } from "./http.ts";

/**
 * A SigV4-presigned URL's query authentication (X-Amz-Algorithm, -Credential, -Date, -Expires,
 * -SignedHeaders, -Signature), as a WebSocket client that cannot set headers sends it.
 */
export interface PresignedAuth {
  accessKeyId: string;
  scopeDate: string;
  scopeRegion: string;
  scopeService: string;
  signingDate: Date;
  expiresSeconds: number;
  signedHeaders: string[];
  signature: string;
}

export const presignedSignatureParameter = "X-Amz-Signature";

/** The longest a presigned URL may be valid, as in AWS: seven days. */
const maxExpiresSeconds = 604_800;

/** Whether the request carries query authentication at all. */
export function isPresigned(request: WireRequest): boolean {
  return request.query.has(presignedSignatureParameter);
}

/** Reads the query authentication; throws the AWS error that says what is wrong with it. */
export function parsePresignedAuth(query: URLSearchParams): PresignedAuth {
  const algorithm = single(query, "X-Amz-Algorithm");
  if (algorithm !== "AWS4-HMAC-SHA256") {
    throw incomplete("X-Amz-Algorithm must be AWS4-HMAC-SHA256");
  }
  const credential =
    /^([^/\s]+)\/(\d{8})\/([^/]+)\/([^/]+)\/aws4_request$/.exec(
      single(query, "X-Amz-Credential") ?? "",
    ) ?? undefined;
  if (credential === undefined) {
    throw incomplete("X-Amz-Credential must be KEY/DATE/REGION/bedrock-agentcore/aws4_request");
  }
  const [, accessKeyId = "", scopeDate = "", scopeRegion = "", scopeService = ""] = credential;
  const signingDate = parseAmzDate(single(query, "X-Amz-Date"));
  if (signingDate === undefined) {
    throw incomplete("X-Amz-Date must be present and look like 20260102T030405Z");
  }
  const expires = Number(single(query, "X-Amz-Expires"));
  if (!Number.isSafeInteger(expires) || expires < 1 || expires > maxExpiresSeconds) {
    throw incomplete(`X-Amz-Expires must be a number of seconds from 1 to ${maxExpiresSeconds}`);
  }
  const signedHeaders = (single(query, "X-Amz-SignedHeaders") ?? "").split(";");
  if (!signedHeaders.includes("host") || signedHeaders.some((name) => !/^[a-z0-9-]+$/.test(name))) {
    throw incomplete("X-Amz-SignedHeaders must list host (lower-case names, ;-separated)");
  }
  const signature = single(query, presignedSignatureParameter) ?? "";
  if (!/^[0-9a-f]{64}$/.test(signature)) {
    throw incomplete("X-Amz-Signature must be 64 lower-case hex digits");
  }
  return {
    accessKeyId,
    scopeDate,
    scopeRegion,
    scopeService,
    signingDate,
    expiresSeconds: expires,
    signedHeaders,
    signature,
  };
}

/**
 * Whether `now` is within the URL's validity: from its date (less the allowed clock skew, a
 * client's clock may run ahead) to its date plus X-Amz-Expires.
 */
export function checkPresignedWindow(auth: PresignedAuth, now: Date, maxSkewMs: number): void {
  const signedMs = auth.signingDate.getTime();
  if (now.getTime() < signedMs - maxSkewMs) {
    throw new BerthError(
      "InvalidSignatureException",
      `Signature not yet current: X-Amz-Date is more than ${maxSkewMs / 1000} s ahead of the server's time ${now.toISOString()}; check the client's clock`,
    );
  }
  if (now.getTime() > signedMs + auth.expiresSeconds * 1000) {
    throw new BerthError(
      "InvalidSignatureException",
      `Signature expired: the presigned URL was valid for ${auth.expiresSeconds} s from ${auth.signingDate.toISOString()}; presign a new one`,
    );
  }
}

function parseAmzDate(value: string | undefined): Date | undefined {
  const match =
    value === undefined ? null : /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(value);
  if (match === null) return undefined;
  const [, year, month, day, hour, minute, second] = match;
  const date = new Date(`${year}-${month}-${day}T${hour}:${minute}:${second}Z`);
  return Number.isNaN(date.getTime()) ? undefined : date;
}

/** A parameter given exactly once; twice is as bad as a forged one. */
function single(query: URLSearchParams, name: string): string | undefined {
  const values = query.getAll(name);
  if (values.length > 1) throw incomplete(`${name} is given more than once`);
  return values[0];
}

function incomplete(message: string): BerthError {
  return new BerthError("IncompleteSignatureException", message);
}
