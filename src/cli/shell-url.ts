import { Hash } from "@smithy/hash-node";
import { HttpRequest } from "@smithy/protocol-http";
import { SignatureV4 } from "@smithy/signature-v4";
import { emptySha256 } from "../core/payload-hash.ts";

/** The header (and, in a presigned URL, the query parameter) naming the session. */
export const sessionIdName = "x-amzn-bedrock-agentcore-runtime-session-id";
/** The longest a presigned URL may be valid, as in AWS: seven days. */
export const maxPresignSeconds = 604_800;

export interface ShellTarget {
  /** Berth's URL, http(s)://host:port[/prefix]. */
  endpoint: string;
  region: string;
  credentials: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  runtimeArn: string;
  sessionId: string;
  qualifier?: string | undefined;
  /** The shell to reattach to; none opens a new one. */
  shellId?: string | undefined;
  /** The window's columns and rows: a new shell starts with them, a found one is resized. */
  size?: { width: number; height: number } | undefined;
}

/** A shell's WebSocket URL without authentication, and the headers its upgrade is signed with. */
export interface SignedShellRequest {
  url: string;
  headers: Record<string, string>;
}

/**
 * The upgrade request of InvokeAgentRuntimeCommandShell signed with SigV4 headers, as a client
 * that can set headers (the `ws` package) sends it: the session id as a header, the signature
 * over an empty body.
 */
export async function signShellRequest(target: ShellTarget): Promise<SignedShellRequest> {
  const unsigned = shellHttpRequest(target, {
    [sessionIdName]: target.sessionId,
    "x-amz-content-sha256": emptySha256,
  });
  const signed = await signerFor(target).sign(unsigned);
  return { url: toUrl(signed), headers: { ...signed.headers } };
}

/**
 * A presigned shell URL (query authentication) valid for `expiresInSeconds`: any WebSocket
 * client (a browser's, `websocat`) can open it with the `v5.channel.k8s.io` subprotocol and no
 * headers. The session id is a query parameter, so the URL alone reaches the session.
 */
export async function presignShellUrl(
  target: ShellTarget & { expiresInSeconds: number; signingDate?: Date },
): Promise<string> {
  const unsigned = shellHttpRequest(target, {});
  unsigned.query[sessionIdName] = target.sessionId;
  const presigned = await signerFor(target).presign(unsigned, {
    expiresIn: target.expiresInSeconds,
    ...(target.signingDate === undefined ? {} : { signingDate: target.signingDate }),
  });
  return toUrl(presigned);
}

function signerFor(target: ShellTarget): SignatureV4 {
  return new SignatureV4({
    credentials: target.credentials,
    region: target.region,
    service: "bedrock-agentcore",
    sha256: Hash.bind(null, "sha256"),
    uriEscapePath: true,
  });
}

/** GET {endpoint}/runtimes/{url-encoded ARN}/ws/shells?qualifier=&shellId=&width=&height=, to sign. */
function shellHttpRequest(target: ShellTarget, headers: Record<string, string>): HttpRequest {
  const endpoint = new URL(target.endpoint);
  const prefix = endpoint.pathname.replace(/\/$/, "");
  return new HttpRequest({
    method: "GET",
    protocol: endpoint.protocol,
    hostname: endpoint.hostname,
    ...(endpoint.port === "" ? {} : { port: Number(endpoint.port) }),
    path: `${prefix}/runtimes/${encodeURIComponent(target.runtimeArn)}/ws/shells`,
    query: {
      ...(target.qualifier === undefined ? {} : { qualifier: target.qualifier }),
      ...(target.shellId === undefined ? {} : { shellId: target.shellId }),
      ...(target.size === undefined
        ? {}
        : { width: String(target.size.width), height: String(target.size.height) }),
    },
    headers: { host: endpoint.host, ...headers },
  });
}

/** What toUrl reads of a request the signer gave back. */
interface SignedRequest {
  protocol: string;
  hostname: string;
  port?: number | undefined;
  path: string;
  query?: Record<string, string | string[] | null>;
}

/** The ws:// (or wss:// for https://) URL of a signed request, its query strictly escaped. */
function toUrl(request: SignedRequest): string {
  const scheme = request.protocol === "https:" ? "wss:" : "ws:";
  const port = request.port === undefined ? "" : `:${String(request.port)}`;
  const query = Object.entries(request.query ?? {})
    .flatMap(([name, value]) =>
      (Array.isArray(value) ? value : [value ?? ""]).map(
        (single) => `${escapeStrictly(name)}=${escapeStrictly(single)}`,
      ),
    )
    .join("&");
  return `${scheme}//${request.hostname}${port}${request.path}${query === "" ? "" : `?${query}`}`;
}

/** RFC 3986 escaping, as SigV4's canonical query uses: what it signed is what the URL says. */
function escapeStrictly(text: string): string {
  return encodeURIComponent(text).replace(
    /[!'()*]/g,
    (character) => `%${character.charCodeAt(0).toString(16).toUpperCase()}`,
  );
}
