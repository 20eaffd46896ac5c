import { request as httpRequest } from "node:http";
import { Hash } from "@smithy/hash-node";
import { HttpRequest } from "@smithy/protocol-http";
import { SignatureV4 } from "@smithy/signature-v4";

export interface RawResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

export interface RawRequest {
  method: string;
  path: string;
  body?: string;
  credentials?: { accessKeyId: string; secretAccessKey: string };
  region?: string;
  signingDate?: Date;
  /** Change the request after signing, to tamper with it. */
  afterSigning?: (request: HttpRequest) => void;
  unsigned?: boolean;
  /** Extra headers, signed like the rest. */
  headers?: Record<string, string>;
}

/** Sends one request signed as the SDK signs it, for cases the SDK itself never produces. */
export async function sendRaw(baseUrl: string, options: RawRequest): Promise<RawResponse> {
  const url = new URL(baseUrl);
  const [path = "/", queryText = ""] = options.path.split("?");
  const query = Object.fromEntries(new URLSearchParams(queryText));
  let request = new HttpRequest({
    method: options.method,
    protocol: "http:",
    hostname: url.hostname,
    port: Number(url.port),
    path,
    query,
    headers: { host: url.host, "content-type": "application/json", ...options.headers },
    body: options.body ?? "",
  });
  if (options.unsigned !== true && options.credentials !== undefined) {
    const signer = new SignatureV4({
      credentials: options.credentials,
      region: options.region ?? "us-east-1",
      service: "bedrock-agentcore",
      sha256: Hash.bind(null, "sha256"),
      uriEscapePath: true,
      applyChecksum: true,
    });
    request = new HttpRequest(
      await signer.sign(request, options.signingDate ? { signingDate: options.signingDate } : {}),
    );
  }
  options.afterSigning?.(request);
  const search = new URLSearchParams(request.query as Record<string, string>).toString();
  return sendAsIs(baseUrl, {
    method: request.method,
    path: `${request.path}${search ? `?${search}` : ""}`,
    headers: request.headers,
    body: Buffer.from((request.body as string | undefined) ?? ""),
  });
}

/** Sends exactly these bytes, as someone holding a captured or hand-made request would. */
export function sendAsIs(
  baseUrl: string,
  request: { method: string; path: string; headers: Record<string, string>; body: Buffer },
): Promise<RawResponse> {
  const { hostname, port } = new URL(baseUrl);
  return new Promise((resolve, reject) => {
    const outgoing = httpRequest(
      {
        host: hostname,
        port,
        method: request.method,
        path: request.path,
        headers: request.headers,
      },
      (response) => {
        const chunks: Buffer[] = [];
        response.on("data", (chunk: Buffer) => chunks.push(chunk));
        response.on("end", () => {
          resolve({
            status: response.statusCode ?? 0,
            headers: response.headers,
            body: Buffer.concat(chunks).toString("utf8"),
          });
        });
      },
    );
    outgoing.on("error", reject);
    outgoing.end(request.body);
  });
}
