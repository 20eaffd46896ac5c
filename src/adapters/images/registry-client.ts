import type { Readable } from "node:stream";
import type { ImageReference } from "../../core/image-reference.ts";
import { ArtifactProblem } from "../../core/preparation.ts";
import type { RegistryAddressPolicy } from "./registry-addresses.ts";
import { readBody, registryGet, shownUrl, type RegistryResponse } from "./registry-http.ts";

export interface RegistryCredentials {
  username: string;
  password: string;
}

export interface RegistryClientOptions {
  /** Credentials for a registry (`host` or `host:port`), if the operator configured any. */
  credentials: (registry: string) => RegistryCredentials | undefined;
  /** Registries that may be reached over plain HTTP. */
  insecure: (registry: string) => boolean;
  /** Which addresses registries, their redirects and token realms may be reached at. */
  addresses: RegistryAddressPolicy;
  /** Largest manifest or token answer read (the setting maxImageMetadataBytes). */
  maxMetadataBytes: number;
}

export const manifestMediaTypes = {
  ociIndex: "application/vnd.oci.image.index.v1+json",
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  dockerList: "application/vnd.docker.distribution.manifest.list.v2+json",
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
} as const;

/**
 * A client for the OCI distribution API (Docker Registry v2): manifests and blobs of one
 * repository, with anonymous, basic and bearer-token auth. A 401 answer says which scheme the
 * registry wants; bearer tokens are fetched from the realm it names (with the configured
 * credentials, if any) and reused until they expire. Every connection, redirects and token
 * realms included, goes only where the address policy allows (see registry-http.ts). Every
 * failure is an ArtifactProblem that says what the user can do about it, and none repeats
 * what a server answered beyond its status: the server may be something else than a registry.
 */
export class RegistryClient {
  private readonly options: RegistryClientOptions;
  private readonly authorizations = new Map<string, { header: string; expiresAtMs: number }>();

  constructor(options: RegistryClientOptions) {
    this.options = options;
  }

  /** The manifest (or index) `reference` (a tag or digest) names, as the registry sent it. */
  async manifest(
    image: ImageReference,
    reference: string,
    signal: AbortSignal,
  ): Promise<{ mediaType: string; body: Buffer }> {
    const response = await this.get(image, `manifests/${reference}`, signal, {
      accept: Object.values(manifestMediaTypes).join(", "),
    });
    // The document's own mediaType, when it has one, wins (see readManifest).
    const mediaType = response.headers["content-type"]?.split(";")[0]?.trim() ?? "";
    const what = `The manifest ${reference} of ${image.registry}/${image.repository}`;
    return { mediaType, body: await readBody(response, this.options.maxMetadataBytes, what) };
  }

  /** A blob's bytes as they arrive (verifying them is the caller's job). */
  async blob(image: ImageReference, digest: string, signal: AbortSignal): Promise<Readable> {
    return (await this.get(image, `blobs/${digest}`, signal, {})).body;
  }

  private async get(
    image: ImageReference,
    path: string,
    signal: AbortSignal,
    headers: Record<string, string>,
  ): Promise<RegistryResponse> {
    const url = new URL(`${this.baseUrl(image.registry)}/v2/${image.repository}/${path}`);
    const scopeKey = `${image.registry}/${image.repository}`;
    const cached = this.authorizations.get(scopeKey);
    const authorization =
      cached !== undefined && cached.expiresAtMs > Date.now() ? cached.header : undefined;
    let response = await this.request(image, url, signal, headers, authorization);
    if (response.status === 401) {
      response.body.destroy();
      const header = await this.authorize(
        image,
        response.headers["www-authenticate"] ?? "",
        signal,
      );
      response = await this.request(image, url, signal, headers, header);
    }
    if (response.status >= 200 && response.status < 300) return response;
    response.body.destroy();
    throw this.problemFor(image, path, response.status);
  }

  private async request(
    image: ImageReference,
    url: URL,
    signal: AbortSignal,
    headers: Record<string, string>,
    authorization: string | undefined,
  ): Promise<RegistryResponse> {
    try {
      return await registryGet(url, {
        headers: authorization === undefined ? headers : { ...headers, authorization },
        signal,
        policy: this.options.addresses,
        subject: `The registry ${image.registry}`,
      });
    } catch (error) {
      if (signal.aborted || error instanceof ArtifactProblem) throw error;
      const { code, message } = error as { code?: string; message: string };
      const hint =
        url.protocol === "https:"
          ? ` (if ${image.registry} serves plain HTTP and is trusted, add it to the setting registryInsecureHosts)`
          : "";
      throw new ArtifactProblem(
        `Cannot reach the registry ${image.registry}: ${code ?? message}${hint}`,
      );
    }
  }

  /** Answers a 401: returns the Authorization header to retry with. */
  private async authorize(
    image: ImageReference,
    challenge: string,
    signal: AbortSignal,
  ): Promise<string> {
    const credentials = this.options.credentials(image.registry);
    const basic =
      credentials === undefined
        ? undefined
        : `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`).toString("base64")}`;
    const scheme = challenge.split(" ", 1)[0]?.toLowerCase() ?? "";
    const scopeKey = `${image.registry}/${image.repository}`;
    if (scheme === "basic") {
      if (basic === undefined) throw this.needsCredentials(image);
      this.authorizations.set(scopeKey, { header: basic, expiresAtMs: Infinity });
      return basic;
    }
    if (scheme !== "bearer") {
      throw new ArtifactProblem(
        `The registry ${image.registry} asks for an authentication scheme Berth does not speak: ${/^[a-z0-9_-]{1,32}$/.test(scheme) ? scheme : "(none it can name)"}`,
      );
    }
    const parameters = parseChallenge(challenge);
    const realm = parameters.get("realm");
    if (realm === undefined)
      throw new ArtifactProblem(`The registry ${image.registry} named no token realm`);
    const tokenUrl = URL.parse(realm);
    if (tokenUrl === null)
      throw new ArtifactProblem(
        `The registry ${image.registry} named a token realm that is no URL`,
      );
    const service = parameters.get("service");
    if (service !== undefined) tokenUrl.searchParams.set("service", service);
    tokenUrl.searchParams.set("scope", `repository:${image.repository}:pull`);
    const token = await this.fetchToken(image, tokenUrl, basic, signal);
    const value = token.token ?? token.access_token;
    if (typeof value !== "string")
      throw new ArtifactProblem(`The token service of ${image.registry} sent no token`);
    const header = `Bearer ${value}`;
    // Tokens without a lifetime last 60 s (the distribution spec's default); renew a bit early.
    const lifetimeMs = (typeof token.expires_in === "number" ? token.expires_in : 60) * 1000;
    this.authorizations.set(scopeKey, { header, expiresAtMs: Date.now() + lifetimeMs * 0.9 });
    return header;
  }

  /** Asks the realm for a pull token; its answer is read whole, within the metadata bound. */
  private async fetchToken(
    image: ImageReference,
    tokenUrl: URL,
    basic: string | undefined,
    signal: AbortSignal,
  ): Promise<{ token?: unknown; access_token?: unknown; expires_in?: unknown }> {
    const service = `The token service of ${image.registry}`;
    let answer: RegistryResponse;
    try {
      answer = await registryGet(tokenUrl, {
        headers: basic === undefined ? {} : { authorization: basic },
        signal,
        policy: this.options.addresses,
        subject: `The token realm of ${image.registry}, ${shownUrl(tokenUrl)},`,
      });
    } catch (error) {
      if (signal.aborted || error instanceof ArtifactProblem) throw error;
      throw new ArtifactProblem(
        `Cannot reach the token service of ${image.registry} at ${tokenUrl.origin}`,
      );
    }
    if (answer.status === 401 || answer.status === 403) {
      answer.body.destroy();
      throw basic === undefined ? this.needsCredentials(image) : this.refused(image);
    }
    if (answer.status < 200 || answer.status >= 300) {
      answer.body.destroy();
      throw new ArtifactProblem(`${service} answered ${answer.status}`);
    }
    const body = await readBody(answer, this.options.maxMetadataBytes, `${service}'s answer`);
    try {
      const parsed = JSON.parse(body.toString("utf8")) as unknown;
      if (typeof parsed === "object" && parsed !== null) return parsed;
    } catch {
      // said below, without repeating what was sent
    }
    throw new ArtifactProblem(`${service} answered with something that is not a token (not JSON)`);
  }

  private problemFor(image: ImageReference, path: string, status: number): ArtifactProblem {
    const shown = `${image.registry}/${image.repository}`;
    if (status === 401 || status === 403) {
      return this.options.credentials(image.registry) === undefined
        ? this.needsCredentials(image)
        : this.refused(image);
    }
    if (status === 404 && path.startsWith("manifests/")) {
      return new ArtifactProblem(
        `Image not found: ${shown} has no ${path.slice("manifests/".length)} (check the repository and tag)`,
      );
    }
    if (status === 404)
      return new ArtifactProblem(`The registry has no blob ${path.slice(6)} for ${shown}`);
    return new ArtifactProblem(
      `The registry ${image.registry} answered ${status} for ${shown}/${path}`,
    );
  }

  private needsCredentials(image: ImageReference): ArtifactProblem {
    return new ArtifactProblem(
      `Unauthorized: ${image.registry}/${image.repository} needs credentials; add them for ${image.registry} to the file named by the setting registryCredentialsFile`,
    );
  }

  private refused(image: ImageReference): ArtifactProblem {
    return new ArtifactProblem(
      `Unauthorized: ${image.registry} refused the configured credentials for ${image.repository} (check them in registryCredentialsFile)`,
    );
  }

  private baseUrl(registry: string): string {
    return `${this.options.insecure(registry) ? "http" : "https"}://${registry}`;
  }
}

/** `Bearer realm="https://…",service="…",scope="…"` -> its parameters. */
function parseChallenge(challenge: string): Map<string, string> {
  const parameters = new Map<string, string>();
  for (const match of challenge.matchAll(/([a-zA-Z_]+)="([^"]*)"/g)) {
    parameters.set(match[1] ?? "", match[2] ?? "");
  }
  return parameters;
}
