import { createHmac, randomBytes } from "node:crypto";
import type { IncomingHttpHeaders } from "node:http";
import { BerthError } from "../core/errors.ts";
import type { WireRequest } from "./http.ts";
import { constantTimeEqual, unsignedPayload } from "./sigv4.ts";

/**
 * Requests one node forwards to another carry these instead of the client's signature (which is
 * never replayed): the sending node, the time, the headers signed, the body's SHA-256 (or
 * UNSIGNED-PAYLOAD, as the client signed a streamed body) and an HMAC-SHA256 with the cluster
 * secret over all of it (docs/decisions/0008-a-cluster-on-postgresql.md).
 */
export const clusterHeaders = {
  node: "x-berth-cluster-node",
  date: "x-berth-cluster-date",
  /** Random per request: a captured request replayed within the skew window is refused. */
  nonce: "x-berth-cluster-nonce",
  signedHeaders: "x-berth-cluster-signed-headers",
  contentSha256: "x-berth-cluster-content-sha256",
  signature: "x-berth-cluster-signature",
} as const;

/** How far a forwarded request's time may be from the receiver's: nodes keep their clocks in NTP. */
const maxSkewMs = 60_000;

/**
 * Headers a node's HTTP client sets by itself on the hop, left out of the signature; any other
 * header a forwarded request carries must be signed, so none can be slipped in on the way.
 */
const transportHeaders = new Set(["host", "connection", "content-length", "transfer-encoding"]);

/** Most nonces remembered at once (a minute of forwarded requests at ~1,600/s). */
const maxRememberedNonces = 100_000;

export interface ForwardedRequest {
  method: string;
  /** Path and query exactly as sent to the receiving node. */
  target: string;
  /** The headers forwarded (lower-case names); every one is signed. */
  headers: Record<string, string>;
  /** Hex SHA-256 of the body sent, or UNSIGNED-PAYLOAD for a body streamed unread. */
  contentSha256: string;
}

/**
 * The headers to add to a forwarded request: the sending node's signature over it, for the
 * node `to` alone (another node refuses it).
 */
export function signForwarded(
  request: ForwardedRequest,
  from: { nodeId: string; secret: string; now: Date },
  to: string,
): Record<string, string> {
  const names = Object.keys(request.headers).sort();
  const date = from.now.toISOString();
  const nonce = randomBytes(16).toString("hex");
  const signer = { nodeId: from.nodeId, date, names, nonce, to };
  const signature = hmac(from.secret, stringToSign(request, signer, request.headers));
  return {
    [clusterHeaders.node]: from.nodeId,
    [clusterHeaders.date]: date,
    [clusterHeaders.nonce]: nonce,
    [clusterHeaders.signedHeaders]: names.join(";"),
    [clusterHeaders.contentSha256]: request.contentSha256,
    [clusterHeaders.signature]: signature,
  };
}

/** What every cluster header's name starts with. */
const clusterHeaderPrefix = "x-berth-cluster-";

/**
 * True when the request claims to come from another node, by any cluster header at all: it is
 * then checked as such and refused unless signed. A client cannot pass one of them in beside
 * its SigV4 signature and have the request served as if the header were not there.
 */
export function isForwarded(headers: IncomingHttpHeaders): boolean {
  return Object.keys(headers).some((name) => name.startsWith(clusterHeaderPrefix));
}

/**
 * Checks forwarded requests in the two steps the handler uses for SigV4 (see PendingSignature):
 * the headers at once, the body's hash once it has been read.
 */
export class ClusterVerifier {
  private readonly secret: string;
  private readonly now: () => Date;
  /** This node's id: a request signed for another node is refused. */
  private readonly nodeId: string;
  /** Nonces of requests accepted within the skew window, with when each may be forgotten. */
  private readonly seenNonces = new Map<string, number>();

  constructor(options: { secret: string; now: () => Date; nodeId: string }) {
    this.secret = options.secret;
    this.now = options.now;
    this.nodeId = options.nodeId;
  }

  checkHeaders(request: WireRequest): PendingClusterSignature {
    const header = (name: string): string => {
      const value = request.headers[name];
      const text = Array.isArray(value) ? value[0] : value;
      if (text === undefined || text === "") {
        throw refused(
          `the ${name} header is missing. ${clusterHeaderPrefix}* headers are for Berth nodes only: a client signs with SigV4 and sends none of them`,
        );
      }
      return text;
    };
    const nodeId = header(clusterHeaders.node);
    const date = header(clusterHeaders.date);
    const nonce = header(clusterHeaders.nonce);
    const sentAt = Date.parse(date);
    if (!Number.isFinite(sentAt) || Math.abs(this.now().getTime() - sentAt) > maxSkewMs) {
      throw refused(
        `its time ${date} is more than ${maxSkewMs / 1000} s from this node's: keep the nodes' clocks in sync (NTP)`,
      );
    }
    const signedList = headerText(request.headers[clusterHeaders.signedHeaders]);
    const names = signedList === "" ? [] : signedList.split(";");
    const unsigned = Object.keys(request.headers).filter(
      (name) =>
        !names.includes(name) &&
        !transportHeaders.has(name) &&
        !name.startsWith(clusterHeaderPrefix),
    );
    if (unsigned.length > 0) {
      throw refused(`it carries headers its signature does not cover: ${unsigned.join(", ")}`);
    }
    const headers: Record<string, string> = {};
    for (const name of names) headers[name] = headerText(request.headers[name]);
    const declared = header(clusterHeaders.contentSha256);
    const target = forwardedTarget(request);
    const signer = { nodeId, date, names, nonce, to: this.nodeId };
    const expected = hmac(
      this.secret,
      stringToSign(
        { method: request.method, target, headers, contentSha256: declared },
        signer,
        headers,
      ),
    );
    if (!constantTimeEqual(expected, header(clusterHeaders.signature))) {
      throw refused(
        "its signature does not match: the nodes' clusterSecret settings differ, it was meant for another node, or something on the way (a proxy) changed the request",
      );
    }
    this.rememberNonce(nonce, sentAt);
    return new PendingClusterSignature(nodeId, declared);
  }

  /** Refuses a nonce seen within the skew window: the same request sent again. */
  private rememberNonce(nonce: string, sentAt: number): void {
    const nowMs = this.now().getTime();
    for (const [seen, forgetAt] of this.seenNonces) {
      if (forgetAt > nowMs && this.seenNonces.size < maxRememberedNonces) break;
      this.seenNonces.delete(seen);
    }
    if (this.seenNonces.has(nonce)) throw refused("it was received before (a replay)");
    // Past the skew window its date refuses it anyway.
    this.seenNonces.set(nonce, sentAt + 2 * maxSkewMs);
  }
}

/** A forwarded request whose headers passed; the body must have the hash they declared. */
export class PendingClusterSignature {
  readonly fromNode: string;
  private readonly declaredSha256: string;

  constructor(fromNode: string, declaredSha256: string) {
    this.fromNode = fromNode;
    this.declaredSha256 = declaredSha256;
  }

  get payloadUnsigned(): boolean {
    return this.declaredSha256 === unsignedPayload;
  }

  verifyBody(bodySha256: string): Promise<void> {
    if (this.declaredSha256.toLowerCase() !== bodySha256) {
      return Promise.reject(refused("the body's SHA-256 is not the one it declared"));
    }
    return Promise.resolve();
  }

  verifyUnsignedPayload(): Promise<void> {
    if (!this.payloadUnsigned) {
      return Promise.reject(new Error("the request did not declare UNSIGNED-PAYLOAD"));
    }
    return Promise.resolve();
  }
}

function stringToSign(
  request: ForwardedRequest,
  signer: { nodeId: string; date: string; names: string[]; nonce: string; to: string },
  headers: Record<string, string>,
): string {
  return [
    "BERTH-CLUSTER-HMAC-SHA256",
    request.method,
    request.target,
    signer.date,
    signer.nodeId,
    signer.to,
    signer.nonce,
    ...signer.names.map((name) => `${name}:${headers[name] ?? ""}`),
    request.contentSha256,
  ].join("\n");
}

function hmac(secret: string, text: string): string {
  return createHmac("sha256", secret).update(text).digest("hex");
}

function headerText(value: string | string[] | undefined): string {
  return Array.isArray(value) ? value.join(",") : (value ?? "");
}

/**
 * The path and query a forwarded request is sent to and signed over: the query as parsed and
 * serialized again, so both ends compute it alike.
 */
export function forwardedTarget(request: Pick<WireRequest, "rawPath" | "query">): string {
  const query = request.query.toString();
  return query === "" ? request.rawPath : `${request.rawPath}?${query}`;
}

function refused(why: string): BerthError {
  return new BerthError(
    "UnrecognizedClientException",
    `A request forwarded by another Berth node was refused: ${why}`,
  );
}
