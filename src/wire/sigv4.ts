import { createHash, timingSafeEqual } from "node:crypto";
import { Hash } from "@smithy/hash-node";
import { HttpRequest } from "@smithy/protocol-http";
import { SignatureV4 } from "@smithy/signature-v4";
import { BerthError, type ErrorCode } from "../core/errors.ts";
import type { WireRequest } from "./http.ts";

export interface AccessKey {
  accessKeyId: string;
  secretAccessKey: string;
}

export const signingService = "bedrock-agentcore";
export const unsignedPayload = "UNSIGNED-PAYLOAD";

interface ParsedAuthorization {
  accessKeyId: string;
  scopeDate: string;
  scopeRegion: string;
  scopeService: string;
  signedHeaders: string[];
  signature: string;
}

/**
 * Verifies AWS Signature V4 by re-signing the request with the SDK's own signer and comparing
 * in constant time. The signer trusts x-amz-content-sha256, so the body is hashed and checked
 * here too; a streamed body (UNSIGNED-PAYLOAD) is allowed only where the route streams.
 */
export class SigV4Verifier {
  /** One signer per key: each caches its derived signing key, which costs four HMACs to make. */
  private readonly signers: Map<string, SignatureV4>;
  private readonly region: string;
  private readonly maxSkewMs: number;
  private readonly now: () => Date;

  constructor(options: {
    keys: AccessKey[];
    region: string;
    maxSkewSeconds: number;
    now: () => Date;
  }) {
    this.signers = new Map(
      options.keys.map((key) => [
        key.accessKeyId,
        new SignatureV4({
          credentials: key,
          region: options.region,
          service: signingService,
          sha256: Hash.bind(null, "sha256"),
          uriEscapePath: true,
          applyChecksum: false,
        }),
      ]),
    );
    this.region = options.region;
    this.maxSkewMs = options.maxSkewSeconds * 1000;
    this.now = options.now;
  }

  /** `body` is the whole body, or "streamed" when the route reads it later as a stream. */
  async verify(request: WireRequest, body: Buffer | "streamed"): Promise<void> {
    const header = single(request.headers.authorization);
    if (header === undefined) {
      throw authError(
        "MissingAuthenticationTokenException",
        `Request is not signed: sign it with AWS Signature V4 for service ${signingService}, e.g. with the AWS SDK and the credentials Berth printed at first start`,
      );
    }
    const auth = parseAuthorization(header);
    const signer = this.signers.get(auth.accessKeyId);
    if (signer === undefined) {
      throw authError(
        "UnrecognizedClientException",
        `Unknown access key id ${auth.accessKeyId}: use the key Berth printed at first start (stored in <data-dir>/credentials.json) or BERTH_ACCESS_KEY_ID`,
      );
    }
    const signingDate = this.checkDate(request, auth);
    this.checkScope(auth);
    this.checkPayloadHash(request, body);

    const resigned = await signer.sign(
      toHttpRequest(request, auth.signedHeaders, body === "streamed" ? undefined : body),
      {
        signingDate,
      },
    );
    const expected =
      /Signature=([0-9a-f]{64})/.exec(String(resigned.headers["authorization"]))?.[1] ?? "";
    if (!constantTimeEqual(expected, auth.signature)) {
      throw authError(
        "InvalidSignatureException",
        "The request signature does not match: check the secret access key and that nothing rewrites the request between client and server (proxies, path prefixes)",
      );
    }
  }

  private checkDate(request: WireRequest, auth: ParsedAuthorization): Date {
    const amzDate = single(request.headers["x-amz-date"]);
    const match =
      amzDate === undefined ? null : /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(amzDate);
    if (match === null || amzDate === undefined) {
      throw authError(
        "IncompleteSignatureException",
        "x-amz-date must be present and look like 20260102T030405Z",
      );
    }
    if (!auth.signedHeaders.includes("x-amz-date") || !auth.signedHeaders.includes("host")) {
      throw authError(
        "IncompleteSignatureException",
        "SignedHeaders must include host and x-amz-date",
      );
    }
    const [, year, month, day, hour, minute, second] = match;
    const signingDate = new Date(`${year}-${month}-${day}T${hour}:${minute}:${second}Z`);
    if (amzDate.slice(0, 8) !== auth.scopeDate) {
      throw authError(
        "IncompleteSignatureException",
        `Credential date ${auth.scopeDate} does not match x-amz-date ${amzDate}`,
      );
    }
    const skewMs = Math.abs(this.now().getTime() - signingDate.getTime());
    if (Number.isNaN(signingDate.getTime()) || skewMs > this.maxSkewMs) {
      throw authError(
        "InvalidSignatureException",
        `Signature expired: x-amz-date ${amzDate} is more than ${this.maxSkewMs / 1000} s from the server's time ${this.now().toISOString()}; check the client's clock`,
      );
    }
    return signingDate;
  }

  private checkScope(auth: ParsedAuthorization): void {
    if (auth.scopeService !== signingService) {
      throw authError(
        "InvalidSignatureException",
        `Credential scope service must be ${signingService}, not ${auth.scopeService}`,
      );
    }
    if (auth.scopeRegion !== this.region) {
      throw authError(
        "InvalidSignatureException",
        `Credential scope region ${auth.scopeRegion} does not match this server's region ${this.region}: set the client's region to ${this.region}`,
      );
    }
  }

  private checkPayloadHash(request: WireRequest, body: Buffer | "streamed"): void {
    const declared = single(request.headers["x-amz-content-sha256"]);
    if (body === "streamed") {
      if (declared === undefined) {
        throw authError(
          "IncompleteSignatureException",
          "x-amz-content-sha256 is required (a hex SHA-256 or UNSIGNED-PAYLOAD)",
        );
      }
      return;
    }
    if (declared === unsignedPayload) {
      throw authError(
        "InvalidSignatureException",
        "UNSIGNED-PAYLOAD is only accepted for streamed invocation payloads",
      );
    }
    const actual = createHash("sha256").update(body).digest("hex");
    if (declared !== undefined && declared !== actual) {
      throw authError(
        "InvalidSignatureException",
        "x-amz-content-sha256 does not match the SHA-256 of the body received",
      );
    }
  }
}

function parseAuthorization(header: string): ParsedAuthorization {
  const match =
    /^AWS4-HMAC-SHA256 Credential=([^/,\s]+)\/(\d{8})\/([^/]+)\/([^/]+)\/aws4_request,\s*SignedHeaders=([a-z0-9;-]+),\s*Signature=([0-9a-f]{64})$/.exec(
      header.trim(),
    );
  if (match === null) {
    throw authError(
      "IncompleteSignatureException",
      "Authorization header is not an AWS4-HMAC-SHA256 signature (Credential=KEY/DATE/REGION/bedrock-agentcore/aws4_request, SignedHeaders=..., Signature=...)",
    );
  }
  const [, accessKeyId, scopeDate, scopeRegion, scopeService, signedHeaders, signature] =
    match as unknown as string[];
  return {
    accessKeyId: accessKeyId ?? "",
    scopeDate: scopeDate ?? "",
    scopeRegion: scopeRegion ?? "",
    scopeService: scopeService ?? "",
    signedHeaders: (signedHeaders ?? "").split(";"),
    signature: signature ?? "",
  };
}

/** Only the signed headers go in, so the signer's SignedHeaders list matches the client's. */
function toHttpRequest(
  request: WireRequest,
  signedHeaders: string[],
  body: Buffer | undefined,
): HttpRequest {
  const headers: Record<string, string> = {};
  for (const name of signedHeaders) {
    const value = request.headers[name];
    if (value !== undefined) headers[name] = Array.isArray(value) ? value.join(",") : value;
  }
  const query: Record<string, string | string[]> = {};
  for (const name of new Set(request.query.keys())) {
    const values = request.query.getAll(name);
    query[name] = values.length === 1 ? (values[0] ?? "") : values;
  }
  // Without an x-amz-content-sha256 header the signer hashes the body itself.
  return new HttpRequest({
    method: request.method,
    protocol: "http:",
    hostname: "",
    path: request.rawPath,
    query,
    headers,
    body,
  });
}

function single(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

function constantTimeEqual(a: string, b: string): boolean {
  const left = Buffer.from(a);
  const right = Buffer.from(b);
  return left.length === right.length && timingSafeEqual(left, right);
}

function authError(code: ErrorCode, message: string): BerthError {
  return new BerthError(code, message);
}
