import { emptySha256 } from "../core/payload-hash.ts";
import { readFileSync } from "node:fs";
import { request, type IncomingMessage } from "node:http";
import { request as httpsRequest } from "node:https";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { BerthApiError } from "./errors.ts";
import { BedrockAgentCoreClient } from "@aws-sdk/client-bedrock-agentcore";
import { BedrockAgentCoreControlClient } from "@aws-sdk/client-bedrock-agentcore-control";
import { Hash } from "@smithy/hash-node";
import { HttpRequest } from "@smithy/protocol-http";
import { SignatureV4 } from "@smithy/signature-v4";

export const defaultEndpoint = "http://127.0.0.1:8787";
const defaultDataDir = "/var/lib/berth";

interface Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

/**
 * How the CLI reaches Berth: the endpoint (--endpoint, BERTH_ENDPOINT, or the default), the
 * region, and credentials from, in order, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, the profile
 * AWS_PROFILE names, the credentials file Berth wrote at first start (when readable: on the
 * server's machine, as root), or the AWS SDK's usual chain (the default profile...).
 */
export class Connection {
  readonly endpoint: string;
  readonly region: string;
  readonly control: BedrockAgentCoreControlClient;
  readonly data: BedrockAgentCoreClient;

  constructor(options: {
    endpoint: string | undefined;
    region: string | undefined;
    env: NodeJS.ProcessEnv;
  }) {
    const { env } = options;
    this.endpoint = (options.endpoint ?? env["BERTH_ENDPOINT"] ?? defaultEndpoint).replace(
      /\/$/,
      "",
    );
    this.region = options.region ?? env["AWS_REGION"] ?? env["AWS_DEFAULT_REGION"] ?? "us-east-1";
    const credentials = explicitCredentials(env);
    const config = {
      endpoint: this.endpoint,
      region: this.region,
      maxAttempts: 2,
      ...(credentials === undefined ? {} : { credentials }),
    };
    this.control = new BedrockAgentCoreControlClient(config);
    this.data = new BedrockAgentCoreClient(config);
  }

  /**
   * A SigV4-signed request to Berth's own API (/berth/v1/...); resolves with the answer's JSON,
   * rejects with BerthApiError when Berth answers an error.
   */
  async berthApi(method: string, path: string, body?: Readable): Promise<Record<string, unknown>> {
    const response = await this.berthRequest(method, path, body);
    const text = await textOf(response);
    const json = (text === "" ? {} : JSON.parse(text)) as Record<string, unknown>;
    const status = response.statusCode ?? 0;
    if (status >= 300) throw BerthApiError.fromAnswer({ status, json });
    return json;
  }

  /**
   * berthApi's request, its answer not read: for answers that stream (a follow of logs). The
   * caller reads the body, and checks the status.
   */
  async berthRequest(method: string, path: string, body?: Readable): Promise<IncomingMessage> {
    const url = new URL(this.endpoint);
    const signer = new SignatureV4({
      credentials: await this.data.config.credentials(),
      region: this.region,
      service: "bedrock-agentcore",
      sha256: Hash.bind(null, "sha256"),
      uriEscapePath: true,
    });
    const [pathname = "", query = ""] = path.split("?");
    const unsigned = new HttpRequest({
      method,
      protocol: url.protocol,
      hostname: url.hostname,
      ...(url.port === "" ? {} : { port: Number(url.port) }),
      path: `${url.pathname.replace(/\/$/, "")}${pathname}`,
      query: Object.fromEntries(new URLSearchParams(query)),
      headers: {
        host: url.host,
        "x-amz-content-sha256": body === undefined ? emptySha256 : "UNSIGNED-PAYLOAD",
        ...(body === undefined ? {} : { "content-type": "application/octet-stream" }),
      },
    });
    const signed = await signer.sign(unsigned);
    const send = url.protocol === "https:" ? httpsRequest : request;
    return new Promise((resolve, reject) => {
      const outgoing = send(
        {
          host: url.hostname,
          port: url.port,
          method,
          path: `${signed.path}${query === "" ? "" : `?${query}`}`,
          headers: {
            ...signed.headers,
            ...(body === undefined ? {} : { "transfer-encoding": "chunked" }),
          },
        },
        resolve,
      );
      outgoing.on("error", reject);
      if (body === undefined) outgoing.end();
      else body.pipe(outgoing);
    });
  }

  close(): void {
    this.control.destroy();
    this.data.destroy();
  }
}

async function textOf(response: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of response as AsyncIterable<Buffer>) chunks.push(chunk);
  return Buffer.concat(chunks).toString("utf8");
}

function explicitCredentials(env: NodeJS.ProcessEnv): Credentials | undefined {
  const accessKeyId = env["AWS_ACCESS_KEY_ID"];
  const secretAccessKey = env["AWS_SECRET_ACCESS_KEY"];
  if (accessKeyId !== undefined && secretAccessKey !== undefined) {
    const sessionToken = env["AWS_SESSION_TOKEN"];
    return {
      accessKeyId,
      secretAccessKey,
      ...(sessionToken === undefined ? {} : { sessionToken }),
    };
  }
  if (env["AWS_PROFILE"] !== undefined) return undefined;
  try {
    const stored = JSON.parse(
      readFileSync(join(env["BERTH_DATA_DIR"] ?? defaultDataDir, "credentials.json"), "utf8"),
    ) as Partial<Credentials>;
    if (typeof stored.accessKeyId === "string" && typeof stored.secretAccessKey === "string")
      return { accessKeyId: stored.accessKeyId, secretAccessKey: stored.secretAccessKey };
  } catch {
    // not on the server's machine, or not allowed to read it: the SDK's chain decides
  }
  return undefined;
}
