import { request as httpRequest, type IncomingHttpHeaders, type IncomingMessage } from "node:http";
import { request as httpsRequest } from "node:https";
import { ArtifactProblem } from "../../core/preparation.ts";
import { RefusedAddress, type RegistryAddressPolicy } from "./registry-addresses.ts";

export interface RegistryResponse {
  status: number;
  headers: IncomingHttpHeaders;
  /** The body as it arrives: read it, or destroy it. */
  body: IncomingMessage;
}

export interface RegistryGetOptions {
  headers: Record<string, string>;
  signal: AbortSignal;
  policy: RegistryAddressPolicy;
  /** Who is asked, to start messages with: "The registry host:5000". */
  subject: string;
}

/** Redirects followed for one request (a blob's, to its storage, is one or two). */
export const maxRedirects = 10;

const redirectStatuses = new Set([301, 302, 303, 307, 308]);

/**
 * GETs `url`, following redirects: at most maxRedirects, each target checked by the address
 * policy exactly like the first (blob downloads redirect to storage elsewhere, and a hostile
 * registry could redirect anywhere). The Authorization header is dropped once a redirect
 * leaves the origin it was meant for. Messages show URLs without their query: signed storage
 * URLs carry credentials there.
 */
export async function registryGet(
  url: URL,
  options: RegistryGetOptions,
): Promise<RegistryResponse> {
  let current = url;
  let headers = options.headers;
  let subject = options.subject;
  for (let redirects = 0; ; redirects++) {
    const response = await getOnce(current, headers, options, subject);
    const location = response.headers.location;
    if (!redirectStatuses.has(response.status) || location === undefined) return response;
    response.body.destroy();
    if (redirects === maxRedirects)
      throw new ArtifactProblem(`${options.subject} redirected more than ${maxRedirects} times`);
    const next = URL.parse(location, current.href);
    if (next === null)
      throw new ArtifactProblem(`${options.subject} redirected to something that is not a URL`);
    if (next.origin !== current.origin) headers = withoutAuthorization(headers);
    subject = `${options.subject} redirected to ${shownUrl(next)}, which`;
    current = next;
  }
}

/** A URL for messages: no query, no credentials. */
export function shownUrl(url: URL): string {
  return `${url.protocol}//${url.host}${url.pathname}`;
}

/** One GET, connected only to an address the policy allows. */
function getOnce(
  url: URL,
  headers: Record<string, string>,
  options: RegistryGetOptions,
  subject: string,
): Promise<RegistryResponse> {
  if (url.protocol !== "http:" && url.protocol !== "https:")
    throw new ArtifactProblem(`${subject} is not an http(s) URL`);
  // Names are checked as they resolve (see lookupFor); an address in the URL is checked here.
  const literal = options.policy.literalRefusal(url);
  if (literal !== undefined) throw new ArtifactProblem(`${subject} ${literal}`);
  const send = url.protocol === "https:" ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const request = send(
      url,
      { headers, signal: options.signal, lookup: options.policy.lookupFor(url), agent: false },
      (response) => {
        resolve({ status: response.statusCode ?? 0, headers: response.headers, body: response });
      },
    );
    request.on("error", (error) => {
      reject(
        error instanceof RefusedAddress
          ? new ArtifactProblem(`${subject} ${error.message}`)
          : error,
      );
    });
    request.end();
  });
}

function withoutAuthorization(headers: Record<string, string>): Record<string, string> {
  return Object.fromEntries(
    Object.entries(headers).filter(([name]) => name.toLowerCase() !== "authorization"),
  );
}

/** A small answer (a manifest, a token) read whole, refusing more than `maxBytes`. */
export async function readBody(
  response: RegistryResponse,
  maxBytes: number,
  what: string,
): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of response.body as AsyncIterable<Buffer>) {
    total += chunk.length;
    if (total > maxBytes) {
      response.body.destroy();
      throw new ArtifactProblem(
        `${what} is larger than the setting maxImageMetadataBytes (${maxBytes} bytes)`,
      );
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}
