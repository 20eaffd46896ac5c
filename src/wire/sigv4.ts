import { timingSafeEqual } from "node:crypto";
import { Hash } from "@smithy/hash-node";
import { HttpRequest } from "@smithy/protocol-http";
import { SignatureV4 } from "@smithy/signature-v4";
import { BerthError, type ErrorCode } from "../core/errors.ts";
import { emptySha256 } from "../core/payload-hash.ts";
import type { WireRequest } from "./http.ts";
import {
  checkPresignedWindow,
  parsePresignedAuth,
  presignedSignatureParameter,
  type PresignedAuth,
} from "./presigned-url.ts";

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
 * in constant time, in two steps: `checkHeaders` proves all the headers alone can (form, key,
 * date, scope, what the payload hash claims) before any byte of the body is read; the returned
 * `PendingSignature` then checks the signature once the body's SHA-256 is known.
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

  /**
   * Everything but the signature itself, from the headers alone. `unsignedPayloadAllowed` is
   * true on routes that may stream an UNSIGNED-PAYLOAD body.
   */
  checkHeaders(
    request: WireRequest,
    options: { unsignedPayloadAllowed: boolean },
  ): PendingSignature {
    const header = single(request.headers.authorization);
    if (header === undefined) {
      throw authError(
        "MissingAuthenticationTokenException",
        `Request is not signed: sign it with AWS Signature V4 for service ${signingService}, e.g. with the AWS SDK and the credentials Berth printed at first start`,
      );
    }
    const auth = parseAuthorization(header);
    const signer = this.signerOf(auth.accessKeyId);
    const signingDate = this.checkDate(request, auth);
    this.checkScope(auth);
    const declared = declaredPayloadHash(request, options.unsignedPayloadAllowed);
    return new PendingSignature(signer, request, auth, signingDate, declared);
  }

  /**
   * Verifies a SigV4-presigned URL (query authentication), as WebSocket clients send it: the
   * signature over the request without its body, the payload hash being the empty body's
   * SHA-256 or UNSIGNED-PAYLOAD (signers differ; both stand for the same empty body). Resolves
   * to the headers the signature covers: no other header of the request may be trusted.
   */
  async verifyPresigned(request: WireRequest): Promise<string[]> {
    const auth = parsePresignedAuth(request.query);
    const signer = this.signerOf(auth.accessKeyId);
    if (toAmzDate(auth.signingDate).slice(0, 8) !== auth.scopeDate) {
      throw authError(
        "IncompleteSignatureException",
        `Credential date ${auth.scopeDate} does not match X-Amz-Date ${toAmzDate(auth.signingDate)}`,
      );
    }
    this.checkScope(auth);
    checkPresignedWindow(auth, this.now(), this.maxSkewMs);
    for (const payloadHash of [emptySha256, unsignedPayload]) {
      const expected = await presignedSignature(signer, request, auth, payloadHash);
      if (constantTimeEqual(expected, auth.signature)) return auth.signedHeaders;
    }
    throw authError(
      "InvalidSignatureException",
      "The presigned URL's signature does not match: check the secret access key, the region, and that nothing rewrote the URL (its query included) between client and server",
    );
  }

  private signerOf(accessKeyId: string): SignatureV4 {
    const signer = this.signers.get(accessKeyId);
    if (signer === undefined) {
      throw authError(
        "UnrecognizedClientException",
        `Unknown access key id ${accessKeyId}: use the key Berth printed at first start (stored in <data-dir>/credentials.json) or BERTH_ACCESS_KEY_ID`,
      );
    }
    return signer;
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

  private checkScope(auth: Pick<ParsedAuthorization, "scopeService" | "scopeRegion">): void {
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
}

/**
 * A request whose headers passed; its signature waits for the hash of the body. The signature
 * covers a payload hash: the one x-amz-content-sha256 declares, or (botocore sends no such
 * header) the SHA-256 of the body itself. Either way the bytes acted on must have that hash.
 */
export class PendingSignature {
  /** `undefined`: no x-amz-content-sha256 header, so the signature covers the body's SHA-256. */
  readonly declaredPayloadHash: string | undefined;
  private readonly signer: SignatureV4;
  private readonly request: WireRequest;
  private readonly auth: ParsedAuthorization;
  private readonly signingDate: Date;

  constructor(
    signer: SignatureV4,
    request: WireRequest,
    auth: ParsedAuthorization,
    signingDate: Date,
    declaredPayloadHash: string | undefined,
  ) {
    this.signer = signer;
    this.request = request;
    this.auth = auth;
    this.signingDate = signingDate;
    this.declaredPayloadHash = declaredPayloadHash;
  }

  /** True when the body streams unread (UNSIGNED-PAYLOAD); otherwise it must be hashed first. */
  get payloadUnsigned(): boolean {
    return this.declaredPayloadHash === unsignedPayload;
  }

  /** Checks the signature over `bodySha256`, the hex SHA-256 of every byte received. */
  async verifyBody(bodySha256: string): Promise<void> {
    const declared = this.declaredPayloadHash;
    if (declared !== undefined && declared.toLowerCase() !== bodySha256) {
      throw authError(
        "InvalidSignatureException",
        "x-amz-content-sha256 does not match the SHA-256 of the body received",
      );
    }
    await this.verify(declared ?? bodySha256);
  }

  /** Checks the signature of a request whose body streams unread, signed as UNSIGNED-PAYLOAD. */
  async verifyUnsignedPayload(): Promise<void> {
    if (!this.payloadUnsigned) throw new Error("the request did not declare UNSIGNED-PAYLOAD");
    await this.verify(unsignedPayload);
  }

  private async verify(payloadHash: string): Promise<void> {
    const { signedHeaders } = this.auth;
    const resigned = await this.signer.sign(
      toHttpRequest(this.request, signedHeaders, payloadHash),
      {
        signingDate: this.signingDate,
        // The hash is always part of the canonical request; the header only when it was signed.
        ...(signedHeaders.includes(payloadHashHeader)
          ? {}
          : { unsignableHeaders: new Set([payloadHashHeader]) }),
      },
    );
    const expected =
      /Signature=([0-9a-f]{64})/.exec(String(resigned.headers["authorization"]))?.[1] ?? "";
    if (!constantTimeEqual(expected, this.auth.signature)) {
      throw authError(
        "InvalidSignatureException",
        "The request signature does not match: check the secret access key and that nothing rewrites the request between client and server (proxies, path prefixes)",
      );
    }
  }
}

const payloadHashHeader = "x-amz-content-sha256";
/** The SHA-256 of no bytes: what a request without a body is signed over. */
export { emptySha256 };

/**
 * The signature a presigned URL should carry: the URL re-presigned with the SDK's own signer from
 * the client's own query (less its signature), the signed headers as headers, and the given
 * payload hash, which goes into the canonical request only.
 */
async function presignedSignature(
  signer: SignatureV4,
  request: WireRequest,
  auth: PresignedAuth,
  payloadHash: string,
): Promise<string> {
  const unsigned = toHttpRequest(request, auth.signedHeaders, payloadHash);
  unsigned.query = Object.fromEntries(
    Object.entries(unsigned.query).filter(([name]) => name !== presignedSignatureParameter),
  );
  const kept = new Set([...auth.signedHeaders, payloadHashHeader]);
  const presigned = await signer.presign(unsigned, {
    signingDate: auth.signingDate,
    expiresIn: auth.expiresSeconds,
    // The client's signed headers stay headers, as it sent them; the hash is never signed.
    unhoistableHeaders: kept,
    unsignableHeaders: new Set([payloadHashHeader]),
  });
  const signature = presigned.query?.[presignedSignatureParameter];
  return typeof signature === "string" ? signature : "";
}

function toAmzDate(date: Date): string {
  return date
    .toISOString()
    .replace(/[-:]/g, "")
    .replace(/\.\d{3}/, "");
}

/** What x-amz-content-sha256 says: a hex SHA-256, UNSIGNED-PAYLOAD (where allowed), or nothing. */
function declaredPayloadHash(
  request: WireRequest,
  unsignedPayloadAllowed: boolean,
): string | undefined {
  const declared = single(request.headers[payloadHashHeader]);
  if (declared === undefined || /^[0-9a-fA-F]{64}$/.test(declared)) return declared;
  if (declared !== unsignedPayload) {
    throw authError(
      "IncompleteSignatureException",
      `x-amz-content-sha256 must be the hex SHA-256 of the body or ${unsignedPayload} (got "${declared.slice(0, 80)}")`,
    );
  }
  if (!unsignedPayloadAllowed) {
    throw authError(
      "InvalidSignatureException",
      `${unsignedPayload} is only accepted where the body streams (InvokeAgentRuntime, uploads); sign this request over the SHA-256 of its body`,
    );
  }
  return declared;
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

/**
 * Only the signed headers go in, so the signer's SignedHeaders list matches the client's. The
 * payload hash goes in as x-amz-content-sha256, which the signer takes as given (and keeps out
 * of SignedHeaders when the caller marks it unsignable).
 */
function toHttpRequest(
  request: WireRequest,
  signedHeaders: string[],
  payloadHash: string,
): HttpRequest {
  const headers: Record<string, string> = {};
  for (const name of signedHeaders) {
    const value = request.headers[name];
    if (value !== undefined) headers[name] = Array.isArray(value) ? value.join(",") : value;
  }
  headers[payloadHashHeader] ??= payloadHash;
  const query: Record<string, string | string[]> = {};
  for (const name of new Set(request.query.keys())) {
    const values = request.query.getAll(name);
    query[name] = values.length === 1 ? (values[0] ?? "") : values;
  }
  return new HttpRequest({
    method: request.method,
    protocol: "http:",
    hostname: "",
    path: request.rawPath,
    query,
    headers,
  });
}

function single(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

export function constantTimeEqual(a: string, b: string): boolean {
  const left = Buffer.from(a);
  const right = Buffer.from(b);
  return left.length === right.length && timingSafeEqual(left, right);
}

function authError(code: ErrorCode, message: string): BerthError {
  return new BerthError(code, message);
}
