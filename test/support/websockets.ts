import { Hash } from "@smithy/hash-node";
import { HttpRequest } from "@smithy/protocol-http";
import { SignatureV4 } from "@smithy/signature-v4";
import type { HttpRequest as SignedHttpRequest } from "@smithy/types";
import { WebSocket } from "ws";

export const sessionIdHeader = "x-amzn-bedrock-agentcore-runtime-session-id";

export interface WebSocketTarget {
  /** Berth's URL (http://host:port). */
  endpoint: string;
  credentials: { accessKeyId: string; secretAccessKey: string };
  region: string;
  /** The path, encoded as a client sends it, e.g. /runtimes/<encoded ARN>/ws. */
  path: string;
  query?: Record<string, string>;
}

function signer(target: WebSocketTarget): SignatureV4 {
  return new SignatureV4({
    credentials: target.credentials,
    region: target.region,
    service: "bedrock-agentcore",
    sha256: Hash.bind(null, "sha256"),
    uriEscapePath: true,
  });
}

function unsignedRequest(target: WebSocketTarget, headers: Record<string, string>): HttpRequest {
  const url = new URL(target.endpoint);
  return new HttpRequest({
    method: "GET",
    protocol: url.protocol,
    hostname: url.hostname,
    port: Number(url.port),
    path: target.path,
    query: { ...target.query },
    headers: { host: url.host, ...headers },
  });
}

function webSocketUrl(request: SignedHttpRequest): string {
  const query = new URLSearchParams(request.query as Record<string, string>).toString();
  const host = request.headers["host"] ?? `${request.hostname}:${request.port ?? ""}`;
  return `ws://${host}${request.path}${query === "" ? "" : `?${query}`}`;
}

/** The upgrade signed with SigV4 headers (as the SDKs sign a request), for the `ws` client. */
export async function signUpgrade(
  target: WebSocketTarget,
  headers: Record<string, string> = {},
): Promise<{ url: string; headers: Record<string, string> }> {
  const signed = await signer(target).sign(unsignedRequest(target, headers));
  return {
    url: webSocketUrl(signed),
    headers: Object.fromEntries(Object.entries(signed.headers)),
  };
}

/** A presigned ws:// URL: any WebSocket client opens it with no headers at all. */
export async function presignUpgrade(
  target: WebSocketTarget,
  options: { expiresIn: number; signingDate?: Date },
): Promise<string> {
  const presigned = await signer(target).presign(unsignedRequest(target, {}), {
    expiresIn: options.expiresIn,
    ...(options.signingDate === undefined ? {} : { signingDate: options.signingDate }),
  });
  return webSocketUrl(presigned);
}

/**
 * Messages each socket received that no one has taken yet. Kept from the socket's creation: a
 * message in the same packet as the handshake's answer is emitted before a listener attached
 * after `open` would be, and would be lost.
 */
const received = new WeakMap<WebSocket, { data: Buffer; isBinary: boolean }[]>();

/** Starts keeping the socket's messages for nextMessage; call right after creating it. */
export function keepMessages(socket: WebSocket): WebSocket {
  const queue: { data: Buffer; isBinary: boolean }[] = [];
  received.set(socket, queue);
  socket.on("message", (data: Buffer, isBinary: boolean) => {
    queue.push({ data, isBinary });
    socket.emit("kept");
  });
  return socket;
}

/** Opens a `ws` client with the upgrade signed in its headers; rejects with the refusal's status and body. */
export async function openSigned(
  target: WebSocketTarget,
  options: { headers?: Record<string, string>; protocols?: string[] } = {},
): Promise<WebSocket> {
  const { url, headers } = await signUpgrade(target, options.headers);
  return opened(keepMessages(new WebSocket(url, options.protocols ?? [], { headers })));
}

export class RefusedUpgrade extends Error {
  readonly status: number;
  readonly errorType: string;
  readonly body: string;

  constructor(status: number, errorType: string, body: string) {
    super(`upgrade refused: ${status} ${errorType} ${body}`);
    this.status = status;
    this.errorType = errorType;
    this.body = body;
  }
}

/** Resolves when the socket is open; rejects with RefusedUpgrade when Berth answered instead. */
export function opened(socket: WebSocket): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    socket.once("open", () => {
      resolve(socket);
    });
    socket.once("unexpected-response", (_request, response) => {
      let body = "";
      response.on("data", (chunk: Buffer) => (body += chunk.toString("utf8")));
      response.on("end", () => {
        reject(
          new RefusedUpgrade(
            response.statusCode ?? 0,
            String(response.headers["x-amzn-errortype"] ?? ""),
            body,
          ),
        );
      });
    });
    socket.once("error", reject);
  });
}

/** The next message of a socket given to keepMessages (openSigned's are). */
export async function nextMessage(socket: WebSocket): Promise<{ data: Buffer; isBinary: boolean }> {
  const queue = received.get(socket);
  if (queue === undefined) throw new Error("call keepMessages(socket) when creating it");
  for (;;) {
    const message = queue.shift();
    if (message !== undefined) return message;
    if (socket.readyState === WebSocket.CLOSED) throw new Error("closed before a message");
    await new Promise<void>((resolve) => {
      const done = (): void => {
        socket.off("kept", done);
        socket.off("close", done);
        resolve();
      };
      socket.once("kept", done);
      socket.once("close", done);
    });
  }
}

/** Resolves with the close code and reason. */
export function closeOf(socket: WebSocket): Promise<{ code: number; reason: string }> {
  if (socket.readyState === WebSocket.CLOSED) return Promise.resolve({ code: 1006, reason: "" });
  return new Promise((resolve) => {
    socket.once("close", (code: number, reason: Buffer) => {
      resolve({ code, reason: reason.toString("utf8") });
    });
  });
}
